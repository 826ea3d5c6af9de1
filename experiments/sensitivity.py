"""How fig 1's collapse depends on the training settings the paper leaves
open: learning rate, momentum, initialisation and input scale, over seeds.

    python -m experiments.sensitivity --cifar_dir=DIR --out=runs/sensitivity
    python -m experiments.sensitivity --settings=torch:symmetric:0.9:0.005,flax:unit:0:0.05 \\
        --seeds=0,1,2 --epochs=20 --cifar_dir=DIR

Every setting is fig 1's (iid, no-sync; `experiments.reproduce`'s paper
preset) except for the four varied choices; accuracy only (`--mi=none`),
measured every `--eval_period` (500) steps. Settings sharing momentum and
input scale (which fix the compiled program) run as one vmapped sweep over
their learning rates, initialisations and seeds. Each run writes
OUT/<setting>/seed<S>/ (the format of `experiments.run`); after every sweep
OUT/table.md, OUT/results.json and OUT/sensitivity.png are rewritten from all
runs finished so far, so nothing is lost when the study is stopped. Runs
already complete in OUT are not run again.
"""

import collections
import json
import os
import time
from typing import Any

import numpy as np
from absl import app, flags

from experiments import flags as run_flags
from experiments import progress
from fedjax_mi import config, metrics_io, sweep

flags.adopt_module_key_flags(run_flags)

# The pruned grid (docs/reproduction.md): today's setting, PyTorch's
# CIFAR-10 tutorial corner (torch init, [-1, 1] inputs, momentum 0.9) with an
# lr sweep, and plain SGD at the rates around the collapse seen in a
# one-seed probe (docs/reproduction.md, "The sensitivity study").
DEFAULT_SETTINGS = (
    "flax:unit:0:0.05",
    "flax:unit:0:0.1",
    "flax:unit:0:0.2",
    "torch:symmetric:0.9:0.001",
    "torch:symmetric:0.9:0.005",
    "torch:symmetric:0.9:0.01",
    "torch:symmetric:0.9:0.02",
)
# Fig 1 of the paper: locals above 75% training accuracy, the average 36%.
PAPER_POINT = (0.75, 0.36)

flags.DEFINE_list("settings", list(DEFAULT_SETTINGS), "settings init:input_scale:momentum:lr")
flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds of every setting (weights, order, partition)")
FLAGS = flags.FLAGS

# What the study sets unless a flag is given explicitly (fig 1, accuracy only).
BASE = dict(
    dataset="cifar10",
    workers=2,
    split="iid",
    protocol="nosync",
    epochs=20.0,
    batch_size=32,
    eval_period=500,
    mi="none",
    checkpoint_every=0,
)


def parse_setting(text: str) -> dict[str, Any]:
    """'torch:symmetric:0.9:0.005' -> {init, input_scale, momentum, lr}."""
    parts = text.split(":")
    if len(parts) != 4:
        raise config.ConfigError("settings", f"{text!r} is not init:input_scale:momentum:lr")
    try:
        return dict(
            init=parts[0], input_scale=parts[1], momentum=float(parts[2]), lr=float(parts[3])
        )
    except ValueError:
        raise config.ConfigError("settings", f"cannot read numbers in {text!r}") from None


def setting_name(s: dict[str, Any]) -> str:
    return f"{s['init']}-{s['input_scale']}-m{s['momentum']:g}-lr{s['lr']:g}"


def final_point(records: list[dict[str, Any]]) -> dict[str, float]:
    """At the last eval point: the locals' accuracy on their own data (mean
    of worker d on local d), the average's on the local datasets (mean), on
    test, and the average's barrier (mean over local datasets) and weight
    distance."""
    last = max(r["step"] for r in records)
    at = [r for r in records if r["step"] == last]
    local = [r for r in at if r["dataset"].startswith("local")]
    own = [r["acc"] for r in local if r["model"] == f"worker{r['dataset'][5:]}"]
    avg = [r for r in local if r["model"] == "average"]
    test = [r for r in at if r["model"] == "average" and r["dataset"] == "test"]
    nan = lambda v: float("nan") if v is None else v
    return dict(
        step=last,
        locals=float(np.mean(own)),
        average=float(np.mean([r["acc"] for r in avg])),
        average_test=nan(test[0]["acc"]) if test else float("nan"),
        barrier=float(np.mean([nan(r.get("barrier")) for r in avg])),
        weight_distance=nan(avg[0].get("weight_distance")),
    )


def complete(cfg: config.RunConfig, total_steps: int) -> bool:
    path = os.path.join(cfg.out, "metrics.jsonl")
    return os.path.exists(path) and any(
        r["step"] == total_steps for r in metrics_io.read_records(path)
    )


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: mean ± sd over seeds of each setting's final point."""
    cell = lambda v: f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"
    rows = [
        "| setting | seeds | locals (own data) | average (local data) | average (test) "
        "| barrier [nats] | weight distance |",
        "| --- |" + " --- |" * 6,
    ]
    for name, points in results.items():
        cols = [
            [p[k] for p in points]
            for k in ("locals", "average", "average_test", "barrier", "weight_distance")
        ]
        rows.append(f"| {name} | {len(points)} | " + " | ".join(cell(c) for c in cols) + " |")
    return "\n".join(rows) + "\n"


def plot(results: dict[str, list[dict[str, float]]], path: str) -> None:
    """Locals' final accuracy against the average's, one point per setting
    (mean over seeds, bars ±1 sd), the paper's fig 1 point as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, points in results.items():
        x, y = [p["locals"] for p in points], [p["average"] for p in points]
        sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0
        ax.errorbar(np.mean(x), np.mean(y), xerr=sd(x), yerr=sd(y), fmt="o", capsize=3, label=name)
    ax.plot(*PAPER_POINT, "k*", ms=14, label="paper, fig 1")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6)
    ax.set_xlabel("locals' final training accuracy (own local data)")
    ax.set_ylabel("average's final accuracy (local data)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("fig 1 (iid, no-sync): mean over seeds, bars ±1 sd")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(
    out: str, cfgs_by_setting: dict[str, list[config.RunConfig]], total_steps: int
) -> dict[str, list[dict[str, float]]]:
    results = collections.OrderedDict()
    for name, cfgs in cfgs_by_setting.items():
        done = [
            final_point(metrics_io.read_records(os.path.join(c.out, "metrics.jsonl")))
            for c in cfgs
            if complete(c, total_steps)
        ]
        if done:
            results[name] = done
    metrics_io.write_atomic(os.path.join(out, "results.json"), json.dumps(results, indent=2))
    metrics_io.write_atomic(os.path.join(out, "table.md"), table(results))
    if results:
        plot(results, os.path.join(out, "sensitivity.png"))
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        out = FLAGS.out if FLAGS["out"].present else "runs/sensitivity"
        values = dict(
            BASE, **{k: v for k, v in run_flags.explicit_settings().items() if k != "out"}
        )
        settings = [parse_setting(s) for s in FLAGS.settings]
        try:
            seeds = [int(s) for s in FLAGS.seeds]
        except ValueError:
            raise config.ConfigError("seeds", f"cannot read {FLAGS.seeds} as integers") from None
        cfgs_by_setting = collections.OrderedDict()
        for s in settings:
            cfgs_by_setting[setting_name(s)] = [
                run_flags.config_from_flags(
                    **{**values, **s, "seed": seed},
                    out=os.path.join(out, setting_name(s), f"seed{seed}"),
                )
                for seed in seeds
            ]
        groups = collections.OrderedDict()
        for name, cfgs in cfgs_by_setting.items():
            groups.setdefault((cfgs[0].training.momentum, cfgs[0].training.input_scale), []).extend(
                cfgs
            )
        for cfgs in groups.values():
            config.check_sweep(cfgs)
        os.makedirs(out, exist_ok=True)
        first = groups[next(iter(groups))][0]
        data = sweep.load_sweep_data([first])
        total = config.make_schedule(first, data.train_x.shape[2]).total_steps
        log_path = os.path.join(out, "progress.log")

        def log(line):
            print(line, flush=True)
            with open(log_path, "a") as fh:
                fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")

        for (momentum, scale), cfgs in groups.items():
            todo = [c for c in cfgs if not complete(c, total)]
            if not todo:
                log(f"[sensitivity] momentum {momentum:g}, {scale}: all {len(cfgs)} runs done")
                continue
            t0 = time.perf_counter()
            log(f"[sensitivity] momentum {momentum:g}, {scale}: {len(todo)} runs as one sweep")
            sweep.run_sweep(
                [c.replace(overwrite=True) for c in todo], log=log, progress=progress.Printer(log)
            )
            log(
                f"[sensitivity] momentum {momentum:g}, {scale}: {len(todo)} runs in "
                f"{time.perf_counter() - t0:.0f} s"
            )
            write_results(out, cfgs_by_setting, total)
        results = write_results(out, cfgs_by_setting, total)
        log(
            f"[sensitivity] {sum(map(len, results.values()))} runs; table: {out}/table.md\n"
            + table(results)
        )

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
