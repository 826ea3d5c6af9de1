"""The project's benchmark suite: one JSON file of every speed figure.

    python -m benchmarks.suite --cifar_dir DIR                 # full paper size (a GPU)
    python -m benchmarks.suite --preset=cpu --cifar_dir DIR    # reduced, ~7 min on 2 shared CPU cores
    python -m benchmarks.suite --preset=cpu --dataset=digits   # no files needed

Also `python benchmarks/suite.py ...`. Writes `--out` (default runs/suite.json),
prints a table, and prints the JSON record as the last line. Parts (`--skip`
any of them):

  sweep     the four paper experiments (reproduce.FIGURES on PRESETS["paper"])
            as one `experiment.run_sweep`: wall time with and without compile.
  separate  the same four as four `experiment.run` calls in one process.
  seeds     a `--seed_runs` seed sweep (fig1 settings, seeds 0..R-1) vs one run.
  edge      EDGE seconds per call after compilation at N = 25,000:
            I(X;Z) (3,072-dim pixels vs 84-dim z) and I(Z;Y) (10 labels vs z),
            in the reference 4.2.0 and the default configs of
            `measure.paper_edge_configs` and the quantile variant.
  steps     steady-state training steps/s of the sweep round (the four runs)
            and of one run's round, and seconds per eval-point measurement.
  compile   (from `sweep` and `separate`) compile time of the round and of the
            eval-point measurement; the issue's target is < 10 s each.

How compile is separated: a `jax.monitoring` time-span listener records every
trace, lowering and XLA compile that jax does (the events
/jax/core/compile/{jaxpr_trace,jaxpr_to_mlir_module,backend_compile}_duration)
while a part runs, so the compile of the very calls that run_sweep makes is
measured, with the arguments it uses. Nested spans (inner jits traced inside
the round) are merged into the outermost one, which names the category:
`round` (round_fn), `measure` (measure) or `other` (eager ops, e.g. the
initialisation). Wall time without compile = wall time - all merged spans.
`--warm_repeat` reruns the sweep with everything compiled, a direct check of
that subtraction.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments import reproduce
from fedjax_mi import experiment, federated, measure, models
from fedjax_mi import mi

PARTS = ("sweep", "separate", "seeds", "edge", "steps")
EDGE_N = 25_000
# Defaults are the paper's full size; None = every sample measured.
PRESETS = {
    "paper": dict(epochs=20.0, per_worker=None, eval_period=100, mi_samples=None,
                  test_samples=None, seed_runs=16, steps_repeats=5, warm_repeat=False),
    # Every part at reduced size: 2 epochs of 62 steps, so eval points 0, 100,
    # 124 include a shorter last round (which reuses the compiled round).
    "cpu": dict(epochs=2.0, per_worker=2000, eval_period=100, mi_samples=1000,
                test_samples=1000, seed_runs=4, steps_repeats=3, warm_repeat=True),
}
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileLog:
    """Time spans of every trace, lowering and compile jax does (see docstring)."""

    def __init__(self):
        self.spans = []
        jax.monitoring.register_event_time_span_listener(self._on_span)

    def _on_span(self, event, start, end, **kwargs):
        if event in COMPILE_EVENTS:
            self.spans.append((start, end, str(kwargs.get("fun_name", ""))))

    def between(self, t0: float, t1: float) -> dict:
        """Seconds per category within [t0, t1] (time.time() clock), nested
        spans merged into the outermost; 'total' is their sum."""
        spans = sorted(s for s in self.spans if s[0] >= t0 and s[1] <= t1)
        out, group, other = {"round": 0.0, "measure": 0.0, "other": 0.0}, None, {}
        for start, end, name in spans + [(float("inf"), float("inf"), "")]:
            if group is not None and start < group[1]:
                if end - start > group[3]:  # the longest span of a group is the outer one
                    group[2], group[3] = name, end - start
                group[1] = max(group[1], end)
                continue
            if group is not None:
                out[_category(group[2])] += group[1] - group[0]
                if _category(group[2]) == "other":
                    other[group[2]] = other.get(group[2], 0.0) + group[1] - group[0]
            group = [start, end, name, end - start]
        out["total"] = sum(out.values())
        out = {k: round(v, 3) for k, v in out.items()}
        # What 'other' is (on CPU mostly the eager initialisation's random ops).
        out["top_other"] = {k: round(v, 3) for k, v in sorted(other.items(), key=lambda kv: -kv[1])[:3]}
        return out


def _category(fun_name: str) -> str:
    return "round" if "round_fn" in fun_name else "measure" if "measure" in fun_name else "other"


def timed(log: CompileLog, fn: Callable[[], object]) -> dict:
    """Wall seconds of fn(), its compile spans, and the wall time without them."""
    t0, p0 = time.time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - p0
    compile_s = log.between(t0, time.time())
    return dict(wall_s=round(wall, 3), compile_s=compile_s,
                wall_excl_compile_s=round(wall - compile_s["total"], 3))


def paper_configs(args, out_root: str, total_steps: int = None) -> list[experiment.RunConfig]:
    """reproduce.FIGURES on PRESETS['paper'], with the suite's sizes. Sync
    periods keep their ratio to the eval period (fig2 10x, fig4 1x, as
    reproduce's quick preset does), capped at the run's `total_steps`
    (experiment refuses longer ones); at full size they are the paper's."""
    paper = reproduce.PRESETS["paper"]
    base = dict(paper, dataset=args.dataset, cifar_dir=args.cifar_dir,
                epochs=args.epochs, eval_period=args.eval_period, per_worker=args.per_worker,
                mi_samples=args.mi_samples, test_samples=args.test_samples,
                eval_chunk=args.eval_chunk)
    cfgs = []
    for name, fig in reproduce.FIGURES.items():
        fig = dict(fig)
        if fig["sync_period"] is not None:
            period = fig["sync_period"] // paper["eval_period"] * args.eval_period
            fig["sync_period"] = min(period, total_steps or period)
        cfgs.append(experiment.RunConfig(**base, **fig, out=os.path.join(out_root, name)))
    return cfgs


def moved(cfgs, folder: str) -> list[experiment.RunConfig]:
    """The same runs writing under a fresh folder: every timed call starts
    from scratch (run_sweep refuses, or would resume, a folder with results)."""
    return [dataclasses.replace(c, out=os.path.join(os.path.dirname(c.out), folder,
                                                    os.path.basename(c.out))) for c in cfgs]


def quiet(_line: str) -> None:
    """run_sweep's progress lines are not part of the suite's output."""


def part_sweep(args, log, cfgs) -> dict:
    """The four experiments as one run_sweep (first in the process: cold)."""
    result = timed(log, lambda: experiment.run_sweep(moved(cfgs, "sweep"), quiet))
    if args.warm_repeat:  # everything compiled now: the direct compile-free figure
        warm = timed(log, lambda: experiment.run_sweep(moved(cfgs, "sweep-warm"), quiet))
        result["warm_repeat_wall_s"] = warm["wall_s"]
    return result


def part_separate(log, cfgs) -> dict:
    """The four experiments one after the other in this process."""
    runs = {os.path.basename(c.out): timed(log, lambda c=c: experiment.run(c, quiet))
            for c in moved(cfgs, "separate")}
    total = {k: round(sum(r[k] for r in runs.values()), 3)
             for k in ("wall_s", "wall_excl_compile_s")}
    return dict(runs=runs, **total)


def part_seeds(args, log, cfgs) -> dict:
    """`seed_runs` runs of fig1's settings (seeds 0..R-1, so R partitions too,
    as experiments.sweep --seeds does) as one sweep, vs the seed-0 run alone."""
    fig1 = cfgs[0]
    root = os.path.dirname(fig1.out)
    sweep = [dataclasses.replace(fig1, seed=s, out=os.path.join(root, "seeds", str(s)))
             for s in range(args.seed_runs)]
    one = timed(log, lambda: experiment.run(
        dataclasses.replace(fig1, out=os.path.join(root, "seeds-one")), quiet))
    many = timed(log, lambda: experiment.run_sweep(sweep, quiet))
    return dict(runs=args.seed_runs, one=one, sweep=many,
                ratio=round(many["wall_s"] / one["wall_s"], 3),
                ratio_excl_compile=round(many["wall_excl_compile_s"]
                                         / max(one["wall_excl_compile_s"], 1e-9), 3))


def edge_inputs(n: int):
    """x (n, 3072) pixels in [0, 1], z (n, 84) of a randomly initialised
    project LeNet, y (n,) labels: synthetic CIFAR-like images, so that the
    part needs no dataset of 25,000 images (EDGE's cost depends on shapes)."""
    from benchmarks.edge_speed import cifar_like  # committed with the EDGE benchmark
    images, labels = cifar_like(jax.random.key(0), n)
    model = models.LeNet()
    params = model.init(jax.random.key(1), images[:1])["params"]
    images_u8 = jnp.round(images * 255).astype(jnp.uint8)
    _, z = jax.jit(lambda p, x: measure.chunked_forward(model, p, x, 500))(params, images_u8)
    return federated.scale_images(images_u8).reshape(n, -1), z, labels


def time_call(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first, compiling call; median seconds of `repeats` more)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def part_edge(repeats: int) -> dict:
    """EDGE per call at N = 25,000, both measured pairs, both modes; the
    argument order is measure's (labels on the first side of I(Z;Y))."""
    x, z, y = edge_inputs(EDGE_N)
    key, out = jax.random.key(2), {}
    modes = {"reference": measure.paper_edge_configs(),
             "quantile": (mi.EdgeQuantile(), mi.EdgeQuantile())}
    for mode, (cfg_xz, cfg_zy) in modes.items():
        for pair, a, b, cfg in (("xz", x, z, cfg_xz), ("zy", y, z, cfg_zy)):
            first, steady = time_call(lambda: mi.estimate(key, a, b, cfg), repeats)
            out[f"{mode}_{pair}"] = dict(s_per_call=round(steady, 4),
                                         first_call_s=round(first, 3),
                                         bits=round(float(mi.estimate(key, a, b, cfg)), 4))
    return dict(n=EDGE_N, x_dim=int(x.shape[1]), z_dim=int(z.shape[1]), classes=10, **out)


def sweep_setup(cfgs):
    """What run_sweep builds before its loop (`experiment.prepare_sweep`)."""
    first = cfgs[0]
    data = experiment.load_sweep_data(cfgs)
    local_x, local_y, test_x, test_y = experiment.eval_subsets(first, data)
    sweep = experiment.prepare_sweep(cfgs, data)
    round_args = (sweep.states, sweep.train_x, sweep.train_y, sweep.groups, sweep.sync_periods,
                  first.eval_period)
    measure_args = (sweep.edge_keys, sweep.states.params, local_x, local_y, sweep.groups, test_x,
                    test_y)
    return sweep.round_fn, round_args, sweep.measure_fn, measure_args


def part_steps(cfgs, repeats: int) -> dict:
    """Steady-state round (eval_period steps of every run) and measurement,
    for the four-run sweep and for one run (fig1)."""
    out = {}
    for name, group in (("sweep4", cfgs), ("one_run", cfgs[:1])):
        round_fn, round_args, measure_fn, measure_args = sweep_setup(group)
        _, round_s = time_call(lambda: round_fn(*round_args), repeats)
        _, measure_s = time_call(lambda: measure_fn(*measure_args), repeats)
        runs, workers, steps = len(group), group[0].workers, group[0].eval_period
        out[name] = dict(runs=runs, round_s=round(round_s, 4), steps_per_round=steps,
                         steps_per_s=round(steps / round_s, 2),  # every run advances one step
                         fed_steps_per_s=round(runs * steps / round_s, 2),  # K workers each
                         worker_steps_per_s=round(runs * workers * steps / round_s, 2),
                         measure_s=round(measure_s, 4))
    return out


def parse_args(argv=None):
    """`--preset` sets the defaults of the size flags; explicit flags win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 (needs --cifar_dir) or digits")
    parser.add_argument("--cifar_dir", default=None, help="official cifar-10-batches-py folder")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--per_worker", type=int, help="truncate each local dataset")
    parser.add_argument("--eval_period", type=int)
    parser.add_argument("--mi_samples", type=int, help="local samples measured (default all)")
    parser.add_argument("--test_samples", type=int, help="test samples measured (default all)")
    parser.add_argument("--eval_chunk", type=int, default=experiment.RunConfig.eval_chunk,
                        help="images per forward chunk in the measurement (RunConfig.eval_chunk)")
    parser.add_argument("--seed_runs", type=int, help="runs of the seed sweep")
    parser.add_argument("--steps_repeats", type=int, help="timed calls per steady-state figure")
    parser.add_argument("--warm_repeat", action=argparse.BooleanOptionalAction,
                        help="rerun the four-run sweep compiled, to check the subtraction")
    parser.add_argument("--skip", default="", help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--out", default="runs/suite.json")
    args = parser.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.skip = [p for p in args.skip.split(",") if p]
    unknown = set(args.skip) - set(PARTS)
    if unknown:
        parser.error(f"--skip: unknown parts {sorted(unknown)}; choose from {PARTS}")
    if args.dataset == "cifar10" and args.cifar_dir is None:
        parser.error("--cifar_dir: needed with --dataset=cifar10 (or use --dataset=digits)")
    if args.dataset != "cifar10":
        args.cifar_dir = None
    return args


def compile_summary(results: dict) -> dict:
    """Part 6: compile of the round and of the measurement, from the logs of
    the parts that compiled them cold (sweep: 4 runs; separate: 1 run)."""
    out = {}
    if "sweep" in results:
        out["sweep4"] = results["sweep"]["compile_s"]
    if "separate" in results:
        out["one_run"] = next(iter(results["separate"]["runs"].values()))["compile_s"]
    worst = max([max(c["round"], c["measure"]) for c in out.values()], default=None)
    return dict(out, target_s=10.0, max_round_or_measure_s=worst,
                under_target=None if worst is None else worst < 10.0)


def table(record: dict) -> str:
    """The readable summary of the JSON record."""
    r, rows = record["results"], []
    if "sweep" in r:
        s = r["sweep"]
        rows.append(f"4 paper experiments, one sweep      wall {s['wall_s']:9.2f} s   "
                    f"excl. compile {s['wall_excl_compile_s']:9.2f} s"
                    + (f"   (warm rerun {s['warm_repeat_wall_s']:.2f} s)" if "warm_repeat_wall_s" in s else ""))
    if "separate" in r:
        s = r["separate"]
        rows.append(f"4 paper experiments, 4 runs         wall {s['wall_s']:9.2f} s   "
                    f"excl. compile {s['wall_excl_compile_s']:9.2f} s   per run "
                    + " ".join(f"{v['wall_s']:.1f}" for v in s["runs"].values()))
    if "seeds" in r:
        s = r["seeds"]
        rows.append(f"seed sweep of {s['runs']:2d} vs 1 run           wall {s['sweep']['wall_s']:9.2f} "
                    f"vs {s['one']['wall_s']:.2f} s (x{s['ratio']:.2f})   excl. compile "
                    f"{s['sweep']['wall_excl_compile_s']:.2f} vs {s['one']['wall_excl_compile_s']:.2f} s "
                    f"(x{s['ratio_excl_compile']:.2f}; target <= 3 on one H100)")
    if "edge" in r:
        e = r["edge"]
        for mode in ("reference", "default"):
            rows.append(f"EDGE {mode:9s} N={e['n']}             I(X;Z) {e[mode + '_xz']['s_per_call'] * 1e3:8.1f} ms"
                        f"   I(Z;Y) {e[mode + '_zy']['s_per_call'] * 1e3:8.1f} ms per call")
    if "steps" in r:
        for name, s in r["steps"].items():
            rows.append(f"round {name:8s} ({s['runs']} run{'s' if s['runs'] > 1 else ''})        "
                        f"{s['fed_steps_per_s']:9.1f} fed steps/s   {s['worker_steps_per_s']:9.1f} "
                        f"worker-steps/s   measurement {s['measure_s']:.3f} s")
    for name, c in r["compile"].items():
        if isinstance(c, dict):
            rows.append(f"compile {name:8s}                   round {c['round']:6.2f} s   "
                        f"measure {c['measure']:6.2f} s   (target < 10 s)   other {c['other']:6.2f} s"
                        + (f" (mostly {next(iter(c['top_other']))})" if c["top_other"] else ""))
    return "\n".join(rows)


def sizes_of(args, cfgs, n: int, schedule) -> dict:
    """Every size the suite used (the JSON's `sizes`)."""
    first = cfgs[0]
    return dict(
        dataset=args.dataset, cifar_dir=args.cifar_dir, workers=first.workers, per_worker=n,
        epochs=args.epochs, batch_size=first.batch_size, eval_period=args.eval_period,
        total_steps=schedule.total_steps, eval_points=len(schedule.eval_steps),
        mi_samples=args.mi_samples or n, test_samples=args.test_samples or "all",
        seed_runs=args.seed_runs, mi=first.mi, edge_version=first.edge_version,
        eval_chunk=first.eval_chunk, edge_n=EDGE_N, steps_repeats=args.steps_repeats,
        figures={os.path.basename(c.out): dict(split=c.split, protocol=c.protocol,
                                               sync_period=c.sync_period) for c in cfgs})


def jaxlib_version() -> str | None:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def save(record: dict, path: str) -> None:
    """Writes the record (with the compile summary so far) to `path`."""
    record["results"]["compile"] = compile_summary(record["results"])
    record["load_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(record, fh, indent=2)


def git_version() -> str:
    """The commit of the code measured ('-dirty': with uncommitted edits)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None):
    args = parse_args(argv)
    log = CompileLog()
    device = jax.devices()[0]
    record = dict(device=str(device), device_kind=device.device_kind, jax=jax.__version__,
                  jaxlib=jaxlib_version(), argv=sys.argv, git=git_version(), preset=args.preset,
                  compilation_cache_dir=jax.config.jax_compilation_cache_dir,
                  load_before=os.getloadavg(), sizes={}, results={})
    results = record["results"]
    with tempfile.TemporaryDirectory() as tmp:
        fig1 = paper_configs(args, tmp)[0]  # no-sync: fixes the schedule
        experiment.validate(fig1)
        t0 = time.perf_counter()  # every run_sweep / run call loads the data like this
        n = experiment.load_sweep_data([fig1]).train_x.shape[2]
        record["data_load_s"] = round(time.perf_counter() - t0, 3)
        schedule = experiment.make_schedule(fig1, n)
        cfgs = paper_configs(args, tmp, schedule.total_steps)
        experiment.check_sweep(cfgs)
        record["sizes"] = sizes_of(args, cfgs, n, schedule)
        # Order matters: the sweep runs first so that its compiles are cold.
        # The record is written after every part, so a run stopped by a
        # time limit keeps the parts it finished.
        parts = dict(sweep=lambda: part_sweep(args, log, cfgs),
                     separate=lambda: part_separate(log, cfgs),
                     seeds=lambda: part_seeds(args, log, cfgs),
                     steps=lambda: part_steps(cfgs, args.steps_repeats))
        for name, part in parts.items():
            if name not in args.skip:
                results[name] = part()
                save(record, args.out)
    if "edge" not in args.skip:
        results["edge"] = part_edge(args.steps_repeats)
    save(record, args.out)
    print(f"jax {record['jax']} on {record['device_kind']} ({record['device']}); sizes: "
          + ", ".join(f"{k}={v}" for k, v in record["sizes"].items() if k != "figures"))
    print(table(record))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
