"""The paper's four experiments (figures 1-4) in one command, with a summary.

    python -m experiments.reproduce                                   # quick, embedded digits
    python -m experiments.reproduce --preset=paper --cifar_dir DIR    # full size, CIFAR-10
    python -m experiments.reproduce --preset=protocols_digits         # protocol study, digits
    python -m experiments.reproduce --preset=protocols --cifar_dir DIR  # ... on CIFAR-10

The settings are the Python configs of experiments/configs (figN.py with
the preset's shared settings, protocols.py for the studies). Every flag of
`experiments.run` passes through and overrides them (e.g. `--epochs=2` for
a shorter paper run). The four experiments train and are measured as one
sweep (`fedjax_mi.sweep.run_sweep`): one compiled program, vmapped over the
four runs. Writes OUT/figN/ for each experiment (metrics.jsonl,
config.json, figures/) and OUT/summary.md.

`--seeds=N` runs every figure with seeds --seed, ..., --seed + N - 1 (each
its own initial weights, data order and partition), all 4N runs in the same
compiled sweep: OUT/figN/seedS/ per run, OUT/figN/seeds.png (mean of the
seeds within their min-max band) and a summary with mean ± sd over seeds.
"""

import os
import time

from absl import app, flags

from experiments import configs
from experiments import flags as run_flags
from experiments import progress
from experiments.configs import common, protocols
from fedjax_mi import config, folder_lock, metrics_io, outputs, plotting, summary, sweep
from fedjax_mi.config import ConfigError, RunConfig

FIGURES = ("fig1", "fig2", "fig3", "fig4")

flags.adopt_module_key_flags(run_flags)
flags.DEFINE_enum(
    "preset",
    "quick",
    list(common.PRESETS) + list(protocols.STUDIES),
    "settings of the four runs (experiments/configs), or a protocol study "
    "(protocols, protocols_digits: docs/protocols.md)",
)
flags.DEFINE_list("figures", list(FIGURES), "which of the four experiments to run")
flags.DEFINE_list(
    "study_runs",
    None,
    "protocol studies only: run just the runs whose names match one of these "
    "shell-style patterns, e.g. 'classes-periodic*,classes-dynamic*-seed0' "
    "(names: SPLIT-PROTOCOL-seedS, as the study's folders)",
)
flags.DEFINE_integer("fig2_sync_period", None, "override fig2's sync period")
flags.DEFINE_integer("fig4_sync_period", None, "override fig4's sync period")
flags.DEFINE_integer(
    "seeds",
    1,
    "run every figure with this many seeds (--seed, --seed + 1, ...) "
    "in the same sweep; figures and summary give mean and spread",
)
FLAGS = flags.FLAGS

# Settings that reproduce sets per figure, so explicit values of them are refused.
_PER_FIGURE = ("split", "protocol", "sync_period")


def figure_title(figure: str, cfg: RunConfig) -> str:
    """The figures' title: figure, split, protocol and sync period."""
    p = cfg.protocol
    every = "" if p.sync_period is None else f" every {p.sync_period}"
    return f"{figure}: {cfg.data.split}, {p.protocol}{every}"


def figure_config(figure: str, preset: str, out: str) -> RunConfig:
    """The figure's config at the preset, its sync period flag, then every
    setting given explicitly."""
    cfg = configs.load(f"{figure}:{preset}")
    override = getattr(FLAGS, f"{figure}_sync_period", None)
    if override is not None:
        cfg = cfg.replace(sync_period=override)
    explicit = {k: v for k, v in run_flags.explicit_settings().items() if k != "out"}
    return cfg.replace(**explicit, out=os.path.join(out, figure))


def figure_runs(out: str) -> dict[str, list[RunConfig]]:
    """{figure: its runs}: one run in OUT/figN, or with --seeds=N > 1 one run
    per seed in OUT/figN/seedS."""
    runs = {}
    for figure in FLAGS.figures:
        cfg = figure_config(figure, FLAGS.preset, out)
        seeds = [cfg.training.seed + i for i in range(FLAGS.seeds)]
        runs[figure] = (
            [cfg]
            if FLAGS.seeds == 1
            else [cfg.replace(seed=s, out=os.path.join(cfg.out, f"seed{s}")) for s in seeds]
        )
    return runs


def write_figures(out: str, runs_of: dict[str, list[RunConfig]]) -> str:
    """Each run's figures, each figure's seed band (with several seeds), and
    OUT/summary.md, whose verdicts on the paper's claims come from
    `fedjax_mi.claims` ("shown in s of S seeds"); returns the summary's path."""
    records = {}
    for figure, cfgs in runs_of.items():
        title = figure_title(figure, cfgs[0])
        for cfg in cfgs:
            plotting.plot_run(
                cfg.out, title=title if len(cfgs) == 1 else f"{title}, seed {cfg.training.seed}"
            )
        records[figure] = [
            metrics_io.read_records(os.path.join(c.out, "metrics.jsonl")) for c in cfgs
        ]
        if len(cfgs) > 1:
            plotting.plot_seeds(records[figure], os.path.join(out, figure, "seeds.png"), title)
    path = os.path.join(out, "summary.md")
    if FLAGS.seeds == 1:
        text = summary.summary_markdown(
            {f: r[0] for f, r in records.items()}, {f: c[0] for f, c in runs_of.items()}
        )
    else:
        text = summary.seeds_markdown(records, runs_of)
    metrics_io.write_atomic(path, text)
    return path


def reproduce(out: str) -> None:
    """The figures (with their seeds) as one sweep, then figures and summary."""
    for name in _PER_FIGURE:
        if FLAGS[name].present:
            raise ConfigError(
                name, "is set per figure by reproduce; use experiments.run for a single setting"
            )
    unknown = [f for f in FLAGS.figures if f not in FIGURES]
    if unknown:
        raise ConfigError("figures", f"unknown {unknown}; choose from {list(FIGURES)}")
    if FLAGS.seeds < 1:
        raise ConfigError("seeds", f"must be >= 1, got {FLAGS.seeds}")
    runs_of = figure_runs(out)
    cfgs = [c for runs in runs_of.values() for c in runs]
    config.check_sweep(cfgs)  # every setting, before any work
    sweep.check_devices(len(cfgs), FLAGS.devices)
    # The whole command holds the lock: runs, checkpoints, summary.
    with run_flags.command_folder(out, "reproduce") as writer:
        t0 = time.perf_counter()
        if writer:
            seeds = (
                ""
                if FLAGS.seeds == 1
                else f" x seeds {[c.training.seed for c in next(iter(runs_of.values()))]}"
            )
            print(
                f"[reproduce] {', '.join(runs_of)}{seeds} as one sweep of {len(cfgs)} runs "
                f"(one compiled program)"
            )
        sweep.run_sweep(cfgs, devices=FLAGS.devices, progress=progress.Printer())
        if writer:
            path = write_figures(out, runs_of)
            print(
                f"[reproduce] {len(cfgs)} runs in {time.perf_counter() - t0:.1f} s; summary: {path}"
            )


def run_study(out: str) -> None:
    """A protocol study as one sweep; OUT/summary.md holds its trade-off
    table and OUT/tradeoff.png its figure (no per-run figures: 48 runs)."""
    for name in protocols.PER_RUN:
        if FLAGS[name].present:
            raise ConfigError(name, "is set per run by the protocol study")
    explicit = {k: v for k, v in run_flags.explicit_settings().items() if k != "out"}
    cfgs = {
        name: cfg.replace(**explicit, out=os.path.join(out, name))
        for name, cfg in protocols.get_configs(FLAGS.preset, FLAGS.study_runs).items()
    }
    config.check_sweep(list(cfgs.values()))
    sweep.check_devices(len(cfgs), FLAGS.devices)
    outputs.prepare_out(out, FLAGS.resume, FLAGS.overwrite)
    t0 = time.perf_counter()
    print(f"[reproduce] protocol study {FLAGS.preset}: {len(cfgs)} runs as one sweep")
    sweep.run_sweep(
        list(cfgs.values()), devices=FLAGS.devices, progress=progress.Printer(max_width=200)
    )
    runs = {
        n: metrics_io.read_records(os.path.join(c.out, "metrics.jsonl")) for n, c in cfgs.items()
    }
    points = [
        dict(summary.final_point(runs[n]), split=c.data.split, protocol=c.protocol.label)
        for n, c in cfgs.items()
    ]
    first = next(iter(cfgs.values()))
    d, t = first.data, first.training
    figure = plotting.plot_tradeoff(
        points,
        os.path.join(out, "tradeoff.png"),
        title=f"{FLAGS.preset}: {d.dataset}, K={d.workers}",
    )
    lines = [
        f"# Protocol study {FLAGS.preset}",
        "",
        f"{d.dataset}, {d.workers} workers, {t.epochs:g} epochs, batch "
        f"{t.batch_size}, lr {t.lr:g}, eval every {first.measurement.eval_period} steps, "
        f"aggregate {first.protocol.aggregate}, seeds {sorted({c.training.seed for c in cfgs.values()})}. Final test "
        f"accuracy and I(Z;Y) of the average; communication as docs/protocols.md counts it.",
        "",
    ]
    lines += summary.tradeoff_table(runs, cfgs)
    lines += ["", f"![trade-off]({os.path.basename(figure)})", ""]
    path = os.path.join(out, "summary.md")
    metrics_io.write_atomic(path, "\n".join(lines))
    print(f"[reproduce] {len(cfgs)} runs in {time.perf_counter() - t0:.1f} s; summary: {path}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        if FLAGS.config:
            raise ConfigError(
                "config",
                "reproduce takes its settings from --preset "
                "(experiments/configs); use experiments.run --config",
            )
        if FLAGS.study_runs and FLAGS.preset not in protocols.STUDIES:
            raise ConfigError(
                "study_runs",
                f"selects runs of a protocol study (--preset={'|'.join(protocols.STUDIES)}), "
                f"not of --preset={FLAGS.preset}",
            )
        if FLAGS.preset in protocols.STUDIES:
            out = FLAGS.out if FLAGS["out"].present else f"runs/{FLAGS.preset}"
            with folder_lock.hold(out):
                return run_study(out)
        reproduce(FLAGS.out if FLAGS["out"].present else "runs/reproduce")

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
