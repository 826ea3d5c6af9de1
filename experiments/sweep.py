"""Many runs in one compiled program: the product of seeds, learning rates,
splits, protocols and sync periods, vmapped over a run axis.

    python -m experiments.sweep --seeds=0,1,2,3 --lrs=0.02,0.05 \\
        --protocols=sync,nosync --sync_periods=100,1000 --out=runs/sweep

Every flag of `experiments.run` sets what the runs share. Writes
OUT/<run-name>/{metrics.jsonl,config.json,figures/} per run (the format of
`experiments.run`), OUT/runs.json listing the runs, and OUT/summary.md with
OUT/tradeoff.png: each run's final accuracy and I(Z;Y) of the average
against the bytes it communicated (docs/protocols.md).
"""

import itertools
import json
import os

from absl import app, flags

from experiments import flags as run_flags
from experiments import progress
from fedjax_mi import config, metrics_io, plotting, summary
from fedjax_mi import sweep as sweep_lib

flags.adopt_module_key_flags(run_flags)

flags.DEFINE_list("seeds", None, "seeds (default: --seed)")
flags.DEFINE_list("lrs", None, "learning rates (default: --lr)")
flags.DEFINE_list("splits", None, "splits (default: --split)")
flags.DEFINE_list("protocols", None, "protocols (default: --protocol)")
flags.DEFINE_list("sync_periods", None, "sync periods of the sync runs (default: --sync_period)")
FLAGS = flags.FLAGS


def _values(name, single, cast):
    raw = getattr(FLAGS, name)
    try:
        return [single] if raw is None else [cast(v) for v in raw]
    except ValueError:
        raise config.ConfigError(name, f"cannot read {raw} as {cast.__name__}s") from None


def run_name(cfg: config.RunConfig) -> str:
    """e.g. 'iid-periodic100-lr0.05-seed0', 'classes-dynamic4-d0.9-lr0.05-seed1'."""
    p, t = cfg.protocol, cfg.training
    if p.protocol == "dynamic":
        sync = f"dynamic{p.check_every}-d{p.delta:g}"
    elif p.protocol == "triggered":
        sync = f"triggered-{p.metric}{p.trigger_ratio:g}"
    else:
        sync = p.protocol if p.protocol == "nosync" else f"{p.protocol}{p.sync_period}"
    return f"{cfg.data.split}-{sync}-lr{t.lr:g}-seed{t.seed}"


def sweep_configs(out: str) -> list[config.RunConfig]:
    """The product of the list flags; no-sync runs ignore the sync periods."""
    cfgs = []
    for seed, lr, split, protocol in itertools.product(
        _values("seeds", FLAGS.seed, int),
        _values("lrs", FLAGS.lr, float),
        _values("splits", FLAGS.split, str),
        _values("protocols", FLAGS.protocol, str),
    ):
        periods = (
            [None]
            if protocol not in config.PERIODIC
            else _values("sync_periods", FLAGS.sync_period, int)
        )
        for period in periods:
            # A protocol's own flags reach only its runs (--delta: the dynamic ones).
            own = {
                f: (getattr(FLAGS, f) if protocol == p else None)
                for p, names in (
                    ("dynamic", ("check_every", "delta")),
                    ("triggered", ("trigger_metric", "trigger_ratio")),
                )
                for f in names
            }
            cfg = run_flags.config_from_flags(
                seed=seed, lr=lr, split=split, protocol=protocol, sync_period=period, **own
            )
            cfgs.append(cfg.replace(out=os.path.join(out, run_name(cfg))))
    return cfgs


def write_sweep_files(cfgs, out: str) -> None:
    """Each run's figures, OUT/runs.json, and the accuracy-communication
    trade-off, one point per run (OUT/summary.md, OUT/tradeoff.png;
    docs/protocols.md)."""
    for cfg in cfgs:
        plotting.plot_run(cfg.out, title=run_name(cfg))
    listed = [name for name in config.PER_RUN if name != "out"]  # what may differ per run
    metrics_io.write_atomic(
        os.path.join(out, "runs.json"),
        json.dumps(
            [{"name": run_name(c), "out": c.out, **{k: c.flat()[k] for k in listed}} for c in cfgs],
            indent=2,
        ),
    )
    runs = {
        run_name(c): metrics_io.read_records(os.path.join(c.out, "metrics.jsonl")) for c in cfgs
    }
    named = {run_name(c): c for c in cfgs}
    plotting.plot_tradeoff(
        [
            dict(summary.final_point(runs[n]), split=c.data.split, protocol=c.protocol.label)
            for n, c in named.items()
        ],
        os.path.join(out, "tradeoff.png"),
    )
    metrics_io.write_atomic(
        os.path.join(out, "summary.md"),
        "\n".join(
            ["# Sweep: accuracy against communication", ""]
            + summary.tradeoff_table(runs, named)
            + ["", "![trade-off](tradeoff.png)", ""]
        ),
    )
    print(f"[sweep] {len(cfgs)} runs written under {out}; trade-off: {out}/summary.md")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        out = FLAGS.out if FLAGS["out"].present else "runs/sweep"
        cfgs = sweep_configs(out)
        config.check_sweep(cfgs)
        sweep_lib.check_devices(len(cfgs), FLAGS.devices)
        # The whole command holds the lock: runs, checkpoints, runs.json, summary.
        with run_flags.command_folder(out, "sweep") as writer:
            sweep_lib.run_sweep(cfgs, devices=FLAGS.devices, progress=progress.Printer())
            if writer:
                write_sweep_files(cfgs, out)

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
