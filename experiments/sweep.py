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

import contextlib
import itertools
import json
import os

import jax
from absl import app, flags

from experiments import flags as run_flags
from fedjax_mi import experiment, folder_lock, metrics_io, plotting, sharding, summary

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
        raise experiment.ConfigError(f"--{name}: cannot read {raw} as {cast.__name__}s") from None


def run_name(cfg: experiment.RunConfig) -> str:
    if cfg.protocol == "dynamic":
        sync = f"dynamic{cfg.check_every}-d{cfg.delta:g}"
    elif cfg.protocol == "triggered":
        sync = f"triggered-{cfg.trigger_metric or 'acc'}{cfg.trigger_ratio:g}"
    else:
        sync = cfg.protocol if cfg.protocol == "nosync" else f"{cfg.protocol}{cfg.sync_period}"
    return f"{cfg.split}-{sync}-lr{cfg.lr:g}-seed{cfg.seed}"


def sweep_configs(out: str) -> list[experiment.RunConfig]:
    """The product of the list flags; no-sync runs ignore the sync periods."""
    cfgs = []
    for seed, lr, split, protocol in itertools.product(
            _values("seeds", FLAGS.seed, int), _values("lrs", FLAGS.lr, float),
            _values("splits", FLAGS.split, str), _values("protocols", FLAGS.protocol, str)):
        periods = ([None] if protocol not in experiment.PERIODIC
                   else _values("sync_periods", FLAGS.sync_period, int))
        for period in periods:
            # A protocol's own flags reach only its runs (--delta: the dynamic ones).
            own = {f: (getattr(FLAGS, f) if protocol == p else None) for p, names in
                   (("dynamic", ("check_every", "delta")),
                    ("triggered", ("trigger_metric", "trigger_ratio"))) for f in names}
            cfg = run_flags.config_from_flags(seed=seed, lr=lr, split=split, protocol=protocol,
                                              sync_period=period, **own)
            cfgs.append(cfg.__class__(**{**cfg.__dict__, "out": os.path.join(out, run_name(cfg))}))
    return cfgs


def write_sweep_files(cfgs, out: str) -> None:
    """Each run's figures, OUT/runs.json, and the accuracy-communication
    trade-off, one point per run (OUT/summary.md, OUT/tradeoff.png;
    docs/protocols.md)."""
    for cfg in cfgs:
        plotting.plot_run(cfg.out, title=run_name(cfg))
    metrics_io.write_atomic(os.path.join(out, "runs.json"), json.dumps(
        [{"name": run_name(c), "out": c.out, "seed": c.seed, "lr": c.lr, "split": c.split,
          "protocol": c.protocol, "sync_period": c.sync_period, "check_every": c.check_every,
          "delta": c.delta, "trigger_metric": c.trigger_metric,
          "trigger_ratio": c.trigger_ratio} for c in cfgs], indent=2))
    runs = {run_name(c): metrics_io.read_records(os.path.join(c.out, "metrics.jsonl"))
            for c in cfgs}
    named = {run_name(c): c for c in cfgs}
    plotting.plot_tradeoff([dict(summary.final_point(runs[n]), split=c.split,
                                 protocol=experiment.protocol_label(c))
                            for n, c in named.items()], os.path.join(out, "tradeoff.png"))
    metrics_io.write_atomic(os.path.join(out, "summary.md"), "\n".join(
        ["# Sweep: accuracy against communication", ""]
        + summary.tradeoff_table(runs, named, experiment.protocol_label)
        + ["", "![trade-off](tradeoff.png)", ""]))
    print(f"[sweep] {len(cfgs)} runs written under {out}; trade-off: {out}/summary.md")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go():
        out = FLAGS.out if FLAGS["out"].present else "runs/sweep"
        cfgs = sweep_configs(out)
        experiment.check_sweep(cfgs)
        experiment.check_devices(len(cfgs), FLAGS.devices)
        writer = jax.process_index() == 0  # of several processes, 0 writes the files
        # The whole command holds the lock: runs, checkpoints, runs.json, summary.
        with folder_lock.hold(out) if writer else contextlib.nullcontext():
            if writer:
                experiment.prepare_out(out, FLAGS.resume, FLAGS.overwrite)
            sharding.barrier("fedjax_mi sweep out")
            experiment.run_sweep(cfgs, devices=FLAGS.devices)
            if writer:
                write_sweep_files(cfgs, out)

    run_flags.main_guard(go)


if __name__ == "__main__":
    app.run(main)
