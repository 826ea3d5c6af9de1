"""The paper's four experiments (figures 1-4) in one command, with a summary.

    python -m experiments.reproduce                                   # quick, embedded digits
    python -m experiments.reproduce --preset=paper --cifar_dir DIR    # full size, CIFAR-10

Every flag of `experiments.run` passes through and overrides the preset
(e.g. `--epochs=2` for a shorter paper run). The four experiments train and
are measured as one sweep (`fedjax_mi.experiment.run_sweep`): one compiled
program, vmapped over the four runs. Writes OUT/figN/ for each
experiment (metrics.jsonl, config.json, figures/) and OUT/summary.md.

`--seeds=N` runs every figure with seeds --seed, ..., --seed + N - 1 (each
its own initial weights, data order and partition), all 4N runs in the same
compiled sweep: OUT/figN/seedS/ per run, OUT/figN/seeds.png (mean of the
seeds within their min-max band) and a summary with mean ± sd over seeds.
"""

import dataclasses
import os
import time

from absl import app, flags

from experiments import flags as run_flags
from fedjax_mi import experiment, metrics_io, plotting, summary

# What distinguishes the four experiments (the paper's figures 1-4).
FIGURES = {
    "fig1": dict(split="iid", protocol="nosync", sync_period=None),
    "fig2": dict(split="iid", protocol="sync", sync_period=1000),
    "fig3": dict(split="classes", protocol="nosync", sync_period=None),
    "fig4": dict(split="classes", protocol="sync", sync_period=100),
}

# Shared settings of each preset; the figure settings above come on top.
PRESETS = {
    # The paper's setting at full size (the same as experiments/configs/figN.flags).
    # lr 0.05: the smallest of {0.01, 0.02, 0.05} with which the iid no-sync
    # locals pass 75% training accuracy in 20 epochs (BUILD_NOTES.md, "Learning rate").
    "paper": dict(dataset="cifar10", workers=2, epochs=20.0, batch_size=32, eval_period=100,
                  lr=0.05, momentum=0.0, mi="edge_reference,kde,probe", edge_version="4.2.0"),
    # The embedded digits, small enough for the README's one-minute main job;
    # sync periods keep the paper's order (fig2 rarely, fig4 at every eval
    # point). The validated default estimators (EDGE reference mode
    # saturates at H(Y) with the 750 samples of a digits share). lr 0.3: of
    # {0.05, 0.1, 0.2, 0.3, 0.4}, the rate at which fig1's never-synced locals
    # drift apart enough that their average falls clearly below them (a loss
    # barrier of 1 nat) while fig2's and fig4's synced averages stay with
    # their locals (docs/reproduction.md, "The quick preset"; one seed).
    "quick": dict(dataset="digits", workers=2, epochs=6.0, batch_size=32, eval_period=10,
                  lr=0.3, momentum=0.0),
}
QUICK_SYNC = {"fig2": 50, "fig4": 10}

flags.DEFINE_enum("preset", "quick", list(PRESETS), "base settings of the four runs")
flags.DEFINE_list("figures", list(FIGURES), "which of the four experiments to run")
flags.DEFINE_integer("fig2_sync_period", None, "override fig2's sync period")
flags.DEFINE_integer("fig4_sync_period", None, "override fig4's sync period")
flags.DEFINE_integer("seeds", 1, "run every figure with this many seeds (--seed, --seed + 1, ...) "
                     "in the same sweep; figures and summary give mean and spread")
FLAGS = flags.FLAGS

# Flags that reproduce sets per figure, so explicit values of them are refused.
_PER_FIGURE = ("split", "protocol", "sync_period", "out")


def figure_config(figure: str, preset: str, out: str) -> experiment.RunConfig:
    """The preset, then the figure's settings, then every flag given explicitly."""
    values = dict(PRESETS[preset])
    values.update(FIGURES[figure])
    if preset == "quick" and figure in QUICK_SYNC:
        values["sync_period"] = QUICK_SYNC[figure]
    override = getattr(FLAGS, f"{figure}_sync_period", None)
    if override is not None:
        values["sync_period"] = override
    for field in dataclasses.fields(experiment.RunConfig):
        if field.name not in _PER_FIGURE and FLAGS[field.name].present:
            values[field.name] = getattr(FLAGS, field.name)
    return run_flags.config_from_flags(**values, out=os.path.join(out, figure))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        for name in _PER_FIGURE[:-1]:
            if FLAGS[name].present:
                raise experiment.ConfigError(f"--{name}: is set per figure by reproduce; "
                                             "use experiments.run for a single setting")
        unknown = [f for f in FLAGS.figures if f not in FIGURES]
        if unknown:
            raise experiment.ConfigError(f"--figures: unknown {unknown}; choose from {list(FIGURES)}")
        out = FLAGS.out if FLAGS["out"].present else "runs/reproduce"
        if FLAGS.seeds < 1:
            raise experiment.ConfigError(f"--seeds: must be >= 1, got {FLAGS.seeds}")
        if FLAGS.seeds > 1:
            return reproduce_seeds(out)
        configs = {f: figure_config(f, FLAGS.preset, out) for f in FLAGS.figures}
        experiment.check_sweep(list(configs.values()))  # every setting, before any work
        experiment.check_devices(len(configs), FLAGS.devices)
        experiment.prepare_out(out, FLAGS.resume, FLAGS.overwrite)
        t0 = time.perf_counter()
        print(f"[reproduce] {', '.join(configs)} as one sweep (one compiled program)")
        experiment.run_sweep(list(configs.values()), devices=FLAGS.devices)
        for figure, cfg in configs.items():
            plotting.plot_run(cfg.out, title=f"{figure}: {cfg.split}, {cfg.protocol}"
                              f"{'' if cfg.sync_period is None else f' every {cfg.sync_period}'}")
        runs = {f: metrics_io.read_records(os.path.join(c.out, "metrics.jsonl"))
                for f, c in configs.items()}
        path = os.path.join(out, "summary.md")
        metrics_io.write_atomic(path, summary.summary_markdown(runs, configs))
        print(f"[reproduce] {len(configs)} experiments in {time.perf_counter() - t0:.1f} s; "
              f"summary: {path}")

    run_flags.main_guard(go)


def reproduce_seeds(out: str) -> None:
    """Every figure with `--seeds` seeds as one sweep; per-seed runs, per-figure
    seed figures, and the summary with mean ± sd over seeds."""
    seeds = [FLAGS.seed + i for i in range(FLAGS.seeds)]
    configs = {}
    for f in FLAGS.figures:
        base = figure_config(f, FLAGS.preset, out)
        configs[f] = [dataclasses.replace(base, seed=s, out=os.path.join(base.out, f"seed{s}"))
                      for s in seeds]
    flat = [c for cfgs in configs.values() for c in cfgs]
    experiment.check_sweep(flat)
    experiment.check_devices(len(flat), FLAGS.devices)
    experiment.prepare_out(out, FLAGS.resume, FLAGS.overwrite)
    t0 = time.perf_counter()
    print(f"[reproduce] {', '.join(configs)} x seeds {seeds} as one sweep of {len(flat)} runs")
    experiment.run_sweep(flat, devices=FLAGS.devices)
    runs = {}
    for figure, cfgs in configs.items():
        title = (f"{figure}: {cfgs[0].split}, {cfgs[0].protocol}"
                 f"{'' if cfgs[0].sync_period is None else f' every {cfgs[0].sync_period}'}")
        for cfg in cfgs:
            plotting.plot_run(cfg.out, title=f"{title}, seed {cfg.seed}")
        runs[figure] = [metrics_io.read_records(os.path.join(c.out, "metrics.jsonl")) for c in cfgs]
        plotting.plot_seeds(runs[figure], os.path.join(out, figure, "seeds.png"), title)
    path = os.path.join(out, "summary.md")
    metrics_io.write_atomic(path, summary.seeds_markdown(runs, configs))
    print(f"[reproduce] {len(flat)} runs in {time.perf_counter() - t0:.1f} s; summary: {path}")


if __name__ == "__main__":
    app.run(main)
