"""The project's benchmark suite: one JSON file of every speed figure.

    python -m benchmarks.suite --preset=gpu --cifar_dir DIR    # full paper size, one GPU
    python -m benchmarks.suite --preset=cpu --cifar_dir DIR    # reduced sizes for a CPU
    python -m benchmarks.suite --preset=cpu --dataset=digits   # no files needed

Also `python -m benchmarks.suite ...` (`--preset=paper` is `gpu`). Writes
`--out` (default runs/suite.json) and `--markdown` (default runs/suite.md,
the table), prints the table, and prints the JSON record as the last line;
its `measure_forward_us_per_image` is the measurement's forward pass per
image and model with the formulation `models.measure_conv_impl()` picks.
Parts (`--skip` any of them):

  sweep       the four paper experiments (reproduce.FIGURES on PRESETS["paper"])
              as one `sweep.run_sweep`, default estimators: wall time
              with and without compile.
  sweep_edge  the same with `--mi=edge_reference` (EDGE reference mode).
  separate    the same four as four `sweep.run` calls in one process.
  seeds       `--seeds_per_figure` seeds x the four figures as one sweep
              (16 runs on the gpu preset) vs one run.
  edge        EDGE seconds per call after compilation at N = 25,000:
              I(X;Z) (3,072-dim pixels vs 84-dim z) and I(Z;Y) (10 labels vs z),
              in the reference 4.2.0 and the default configs of
              `measure.paper_edge_configs` and the quantile variant.
  steps       steady-state training steps/s of the sweep round (the four runs)
              and of one run's round, and seconds per eval-point measurement.
  eval_split  one eval point of the four-run sweep, default estimators and
              EDGE reference: the whole measurement, its forward passes alone,
              and the rest (the estimators and bounds) by difference.
  runs_vmap   milliseconds per training step against the number of runs
              vmapped (`--vmap_runs`), and against the steps per scan body
              (`--unrolls`) for the four runs.
  forward     the measurement's forward pass per image: every formulation of
              the convolutions (`benchmarks/measure_forward.py`), interleaved,
              and on the gpu preset chunk sizes and matmul precisions.
  compile     (from `sweep` and `separate`) compile time of the round and of the
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
import functools
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

from benchmarks import edge_speed, timing
from experiments import reproduce
from experiments import configs
from fedjax_mi import config, federated, measure, models
from fedjax_mi import sweep as sweep_lib
from fedjax_mi import mi

PARTS = (
    "sweep",
    "sweep_edge",
    "separate",
    "seeds",
    "edge",
    "steps",
    "eval_split",
    "runs_vmap",
    "forward",
)
EDGE_N = 25_000
# The gpu preset is the paper's full size; None = every sample measured.
PRESETS = {
    "gpu": dict(
        epochs=20.0,
        per_worker=None,
        eval_period=100,
        mi_samples=None,
        test_samples=None,
        seeds_per_figure=4,
        steps_repeats=5,
        warm_repeat=False,
        vmap_runs="1,4,16,64",
        unrolls="1,2,4,8",
        vmap_steps=100,
        forward_images=25_000,
        forward_chunks="500,5000,25000",
        forward_precisions="float32,tensorfloat32,bfloat16",
    ),
    # Every part at reduced size: 2 epochs of 62 steps, so eval points 0, 100,
    # 124 include a shorter last round (which reuses the compiled round).
    "cpu": dict(
        epochs=2.0,
        per_worker=2000,
        eval_period=100,
        mi_samples=1000,
        test_samples=1000,
        seeds_per_figure=2,
        steps_repeats=3,
        warm_repeat=True,
        vmap_runs="1,4,16",
        unrolls="1,4",
        vmap_steps=10,
        forward_images=2000,
        forward_chunks="500",
        forward_precisions="float32",
    ),
}
PRESETS["paper"] = PRESETS["gpu"]
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


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
        out["top_other"] = {
            k: round(v, 3) for k, v in sorted(other.items(), key=lambda kv: -kv[1])[:3]
        }
        return out


def _category(fun_name: str) -> str:
    return "round" if "round_fn" in fun_name else "measure" if "measure" in fun_name else "other"


def timed(log: CompileLog, fn: Callable[[], object]) -> dict:
    """Wall seconds of fn(), its compile spans, and the wall time without them."""
    t0, p0 = time.time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - p0
    compile_s = log.between(t0, time.time())
    return dict(
        wall_s=round(wall, 3),
        compile_s=compile_s,
        wall_excl_compile_s=round(wall - compile_s["total"], 3),
    )


def paper_configs(args, out_root: str, total_steps: int = None) -> list[config.RunConfig]:
    """The four figures' paper configs (experiments/configs), with the
    suite's sizes. Sync periods keep their ratio to the eval period (fig2
    10x, fig4 1x, as reproduce's quick preset does), capped at the run's
    `total_steps` (a longer one is refused); at full size they are the paper's."""
    sizes = dict(
        dataset=args.dataset,
        cifar_dir=args.cifar_dir,
        epochs=args.epochs,
        eval_period=args.eval_period,
        per_worker=args.per_worker,
        mi_samples=args.mi_samples,
        test_samples=args.test_samples,
        eval_chunk=args.eval_chunk,
    )
    cfgs = []
    for name in reproduce.FIGURES:
        paper = configs.load(name)
        cfg = paper.replace(**sizes, out=os.path.join(out_root, name))
        if paper.protocol.sync_period is not None:
            period = paper.protocol.sync_period // paper.measurement.eval_period * args.eval_period
            cfg = cfg.replace(sync_period=min(period, total_steps or period))
        cfgs.append(cfg)
    return cfgs


def moved(cfgs, folder: str) -> list[config.RunConfig]:
    """The same runs writing under a fresh folder: every timed call starts
    from scratch (run_sweep refuses, or would resume, a folder with results)."""
    return [
        c.replace(out=os.path.join(os.path.dirname(c.out), folder, os.path.basename(c.out)))
        for c in cfgs
    ]


def quiet(_line: str) -> None:
    """run_sweep's progress lines are not part of the suite's output."""


def part_sweep(args, log, cfgs) -> dict:
    """The four experiments as one run_sweep (first in the process: cold)."""
    result = timed(log, lambda: sweep_lib.run_sweep(moved(cfgs, "sweep"), quiet))
    if args.warm_repeat:  # everything compiled now: the direct compile-free figure
        warm = timed(log, lambda: sweep_lib.run_sweep(moved(cfgs, "sweep-warm"), quiet))
        result["warm_repeat_wall_s"] = warm["wall_s"]
    return result


def part_separate(log, cfgs) -> dict:
    """The four experiments one after the other in this process."""
    runs = {
        os.path.basename(c.out): timed(log, lambda c=c: sweep_lib.run(c, quiet))
        for c in moved(cfgs, "separate")
    }
    total = {
        k: round(sum(r[k] for r in runs.values()), 3) for k in ("wall_s", "wall_excl_compile_s")
    }
    return dict(runs=runs, **total)


def part_seeds(args, log, cfgs) -> dict:
    """`seeds_per_figure` seeds (0..S-1, so S partitions too, as
    experiments.sweep --seeds does) x the four figures as one sweep, vs
    fig1's seed-0 run alone."""
    fig1 = cfgs[0]
    root = os.path.dirname(fig1.out)
    sweep = [
        c.replace(seed=s, out=os.path.join(root, "seeds", f"{s}-{os.path.basename(c.out)}"))
        for s in range(args.seeds_per_figure)
        for c in cfgs
    ]
    one = timed(
        log, lambda: sweep_lib.run(fig1.replace(out=os.path.join(root, "seeds-one")), quiet)
    )
    many = timed(log, lambda: sweep_lib.run_sweep(sweep, quiet))
    return dict(
        runs=len(sweep),
        one=one,
        sweep=many,
        ratio=round(many["wall_s"] / one["wall_s"], 3),
        ratio_excl_compile=round(
            many["wall_excl_compile_s"] / max(one["wall_excl_compile_s"], 1e-9), 3
        ),
    )


def edge_inputs(n: int):
    """x (n, 3072) pixels in [0, 1], z (n, 84) of a randomly initialised
    project LeNet, y (n,) labels: synthetic CIFAR-like images, so that the
    part needs no dataset of 25,000 images (EDGE's cost depends on shapes)."""
    x, z, y = edge_speed.eval_point_inputs(jax.random.key(0), [jax.random.key(1)], n)
    return x, z[0], y


def part_edge(repeats: int) -> dict:
    """EDGE per call at N = 25,000, both measured pairs, both modes; the
    argument order is measure's (labels on the first side of I(Z;Y))."""
    x, z, y = edge_inputs(EDGE_N)
    key, out = jax.random.key(2), {}
    modes = {
        "reference": measure.paper_edge_configs(),
        "quantile": (mi.EdgeQuantile(), mi.EdgeQuantile()),
    }
    for mode, (cfg_xz, cfg_zy) in modes.items():
        for pair, a, b, cfg in (("xz", x, z, cfg_xz), ("zy", y, z, cfg_zy)):
            t = timing.time_calls(mi.estimate, key, a, b, cfg, repeats=repeats)
            out[f"{mode}_{pair}"] = dict(
                s_per_call=round(t.median_s, 4),
                first_call_s=round(t.first_s, 3),
                bits=round(float(mi.estimate(key, a, b, cfg)), 4),
            )
    return dict(n=EDGE_N, x_dim=int(x.shape[1]), z_dim=int(z.shape[1]), classes=10, **out)


def sweep_setup(cfgs):
    """What run_sweep builds before its loop (`sweep.prepare_sweep`)."""
    first = cfgs[0]
    data = sweep_lib.load_sweep_data(cfgs)
    local_x, local_y, test_x, test_y = sweep_lib.eval_subsets(first, data)
    sweep = sweep_lib.prepare_sweep(cfgs, data)
    round_args = (
        sweep.states,
        sweep.train_x,
        sweep.train_y,
        sweep.groups,
        sweep.protocols,
        first.measurement.eval_period,
    )
    measure_args = (
        sweep.edge_keys,
        sweep.states.params,
        local_x,
        local_y,
        sweep.groups,
        test_x,
        test_y,
    )
    return sweep.round_fn, round_args, sweep.measure_fn, measure_args


def part_steps(cfgs, repeats: int) -> dict:
    """Steady-state round (eval_period steps of every run) and measurement,
    for the four-run sweep and for one run (fig1)."""
    out = {}
    for name, group in (("sweep4", cfgs), ("one_run", cfgs[:1])):
        round_fn, round_args, measure_fn, measure_args = sweep_setup(group)
        round_s = timing.time_calls(round_fn, *round_args, repeats=repeats).median_s
        measure_s = timing.time_calls(measure_fn, *measure_args, repeats=repeats).median_s
        runs, workers, steps = len(group), group[0].data.workers, group[0].measurement.eval_period
        out[name] = dict(
            runs=runs,
            round_s=round(round_s, 4),
            steps_per_round=steps,
            steps_per_s=round(steps / round_s, 2),  # every run advances one step
            fed_steps_per_s=round(runs * steps / round_s, 2),  # K workers each
            worker_steps_per_s=round(runs * workers * steps / round_s, 2),
            measure_s=round(measure_s, 4),
        )
    return out


def with_mi(cfgs, mi_names: str) -> list[config.RunConfig]:
    """The same runs recording other estimators (`--mi`)."""
    return [c.replace(mi=mi_names) for c in cfgs]


def part_sweep_edge(log, cfgs) -> dict:
    """The four experiments as one sweep in EDGE reference mode."""
    return timed(
        log,
        lambda: sweep_lib.run_sweep(moved(with_mi(cfgs, "edge_reference"), "sweep-edge"), quiet),
    )


def sweep_forward(cfgs, num_classes: int) -> Callable:
    """The forward passes of the sweep measurement alone, same shapes and
    formulation: `(params (R, K, ...), local_x, groups, test_x) -> (logits, z)`."""
    model = models.LeNet(num_classes=num_classes, conv_impl=models.measure_conv_impl())
    chunk = measure.forward_chunk(cfgs[0].measurement.eval_chunk)

    def one_run(params, local_x, test_x):
        images = jnp.concatenate([local_x.reshape((-1,) + local_x.shape[2:]), test_x])
        return jax.lax.map(
            lambda p: measure.chunked_forward(model, p, images, chunk),
            measure.models_to_measure(params),
        )

    return jax.jit(
        lambda params, local_x, groups, test_x: jax.lax.map(
            lambda a: one_run(a[0], local_x[a[1]], test_x), (params, groups)
        )
    )


def part_eval_split(cfgs, repeats: int) -> dict:
    """One eval point of the four-run sweep: the whole measurement, its
    forward passes alone (`sweep_forward`), and the estimators and bounds
    as the difference; default estimators and EDGE reference mode."""
    out = {}
    for mode, group in (("default", cfgs), ("edge_reference", with_mi(cfgs, "edge_reference"))):
        _, _, measure_fn, (keys, params, local_x, local_y, groups, test_x, test_y) = sweep_setup(
            group
        )
        num_classes = int(sweep_lib.load_sweep_data(group[:1]).num_classes)
        forward = sweep_forward(group, num_classes)
        whole = timing.time_calls(
            measure_fn, keys, params, local_x, local_y, groups, test_x, test_y, repeats=repeats
        ).median_s
        fwd = timing.time_calls(forward, params, local_x, groups, test_x, repeats=repeats).median_s
        images = (
            len(group)
            * (jax.tree.leaves(params)[0].shape[1] + 1)
            * (local_x.shape[1] * local_x.shape[2] + test_x.shape[0])
        )
        out[mode] = dict(
            mi=group[0].measurement.mi,
            measure_s=round(whole, 4),
            forward_s=round(fwd, 4),
            estimators_s=round(whole - fwd, 4),
            forward_share=round(fwd / whole, 3),
            forward_us_per_image=round(fwd / images * 1e6, 2),
        )
    return out


def vmap_configs(cfgs, runs: int) -> list[config.RunConfig]:
    """`runs` runs cycling over the four figures (seeds 0, 1, ...), all on
    data seed 0, so the sweep holds at most four partitions."""
    return [cfgs[i % len(cfgs)].replace(seed=i // len(cfgs), data_seed=0) for i in range(runs)]


def part_runs_vmap(args, cfgs) -> dict:
    """Milliseconds per training step (every run advancing one step) of a
    `vmap_steps`-step sweep round against the runs vmapped, and for the
    four figures against `unroll` (steps per scan body)."""
    first = cfgs[0]
    out = {}
    for runs in args.vmap_runs:
        group = vmap_configs(cfgs, runs)
        _, (states, train_x, train_y, groups, periods, _), _, _ = sweep_setup(group)
        num_classes = int(sweep_lib.load_sweep_data(group[:1]).num_classes)
        for unroll in args.unrolls if runs == len(cfgs) else (1,):
            round_fn = federated.make_sweep_round(
                models.LeNet(num_classes=num_classes),
                federated.make_optimizer(first.training.momentum),
                batch_size=first.training.batch_size,
                steps=args.vmap_steps,
                opt_sync=first.training.opt_sync,
                unroll=unroll,
            )
            t = timing.time_calls(
                round_fn, states, train_x, train_y, groups, periods, repeats=args.steps_repeats
            )
            compile_call, s = t.first_s, t.median_s
            out[f"runs{runs}_unroll{unroll}"] = dict(
                runs=runs,
                unroll=unroll,
                steps=args.vmap_steps,
                ms_per_step=round(s / args.vmap_steps * 1e3, 3),
                ms_per_run_step=round(s / args.vmap_steps / runs * 1e3, 4),
                first_call_s=round(compile_call, 2),
            )
    return out


def part_forward(args) -> dict:
    """The measurement's forward pass per image and model: every uniform
    formulation and the automatic one, interleaved over rounds
    (`benchmarks/measure_forward.py`); then chunk sizes and matmul
    precisions with the automatic formulation."""
    from benchmarks import measure_forward as mf

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (args.forward_images, 32, 32, 3), dtype=np.uint8))
    one = models.LeNet().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    stacked = measure.models_to_measure(jax.tree.map(lambda a: jnp.stack([a, a * 1.01]), one))
    per_image = 1e6 / (3 * args.forward_images)
    auto, auto_chunk = models.measure_conv_impl(), measure.forward_chunk(args.eval_chunk)
    impls = {"auto": auto, **{i: (i, i) for i in mf.IMPLS if (i, i) != auto}}
    variants = {
        f"impl_{name}_chunk{args.eval_chunk}_float32": (impl, args.eval_chunk, "float32")
        for name, impl in impls.items()
    }
    # What the measurement runs: the automatic form and chunk.
    variants[f"impl_auto_chunk{auto_chunk}_float32"] = (auto, auto_chunk, "float32")
    variants.update(
        {
            f"impl_auto_chunk{c}_{p}": (auto, c, p)
            for c in args.forward_chunks
            for p in args.forward_precisions
        }
    )
    fns = {name: mf.forward_fn(impl, chunk) for name, (impl, chunk, _) in variants.items()}

    def call(name):
        with jax.default_matmul_precision(variants[name][2]):
            return jax.block_until_ready(fns[name](stacked, images))

    timed = timing.interleaved(
        {name: functools.partial(call, name) for name in fns}, max(args.steps_repeats, 3)
    )
    first, times, cpu = timed.first_s, timed.times, timed.cpu
    ref = call(f"impl_auto_chunk{auto_chunk}_float32")[1]
    base = np.asarray(
        next(
            times[n]
            for n, v in variants.items()
            if v == (("xla", "xla"), args.eval_chunk, "float32")
        )
    )
    out = {
        name: dict(
            impl=list(variants[name][0]),
            chunk=variants[name][1],
            precision=variants[name][2],
            us_per_image=round(float(np.median(t)) * per_image, 2),
            cpu_us_per_image=round(float(np.median(cpu[name])) * per_image, 2),
            ratio_to_xla=round(float(np.median(np.asarray(t) / base)), 3),
            first_call_s=round(first[name], 2),
            max_abs_z_diff=float(jnp.max(jnp.abs(call(name)[1] - ref))),
        )
        for name, t in times.items()
    }
    return dict(
        images=args.forward_images,
        models=3,
        auto=list(auto),
        auto_chunk=auto_chunk,
        auto_us_per_image=out[f"impl_auto_chunk{auto_chunk}_float32"]["us_per_image"],
        variants=out,
    )


def parse_args(argv=None):
    """`--preset` sets the defaults of the size flags; explicit flags win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument(
        "--dataset", default="cifar10", help="cifar10 (needs --cifar_dir) or digits"
    )
    parser.add_argument("--cifar_dir", default=None, help="official cifar-10-batches-py folder")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--per_worker", type=int, help="truncate each local dataset")
    parser.add_argument("--eval_period", type=int)
    parser.add_argument("--mi_samples", type=int, help="local samples measured (default all)")
    parser.add_argument("--test_samples", type=int, help="test samples measured (default all)")
    parser.add_argument(
        "--eval_chunk",
        type=int,
        default=config.MeasurementConfig.eval_chunk,
        help="images per forward chunk in the measurement (--eval_chunk)",
    )
    parser.add_argument(
        "--seeds_per_figure", type=int, help="seeds of the seed sweep (x 4 figures)"
    )
    parser.add_argument("--vmap_runs", help="runs vmapped in the runs_vmap part, comma-separated")
    parser.add_argument("--unrolls", help="scan unrolls timed with the four runs, comma-separated")
    parser.add_argument("--vmap_steps", type=int, help="steps of the runs_vmap round")
    parser.add_argument("--forward_images", type=int, help="images of the forward part")
    parser.add_argument("--forward_chunks", help="forward chunk sizes timed, comma-separated")
    parser.add_argument(
        "--forward_precisions",
        help="matmul precisions of the forward part (float32, tensorfloat32, bfloat16)",
    )
    parser.add_argument("--steps_repeats", type=int, help="timed calls per steady-state figure")
    parser.add_argument(
        "--warm_repeat",
        action=argparse.BooleanOptionalAction,
        help="rerun the four-run sweep compiled, to check the subtraction",
    )
    parser.add_argument("--skip", default="", help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--out", default="runs/suite.json")
    parser.add_argument("--markdown", default="runs/suite.md", help="where the table goes")
    args = parser.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("vmap_runs", "unrolls", "forward_chunks"):
        setattr(args, name, tuple(int(v) for v in str(getattr(args, name)).split(",")))
    args.forward_precisions = tuple(str(args.forward_precisions).split(","))
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
    return dict(
        out,
        target_s=10.0,
        max_round_or_measure_s=worst,
        under_target=None if worst is None else worst < 10.0,
    )


def rows_of(record: dict) -> list[tuple[str, str]]:
    """(what, figures) rows of the readable summary of the JSON record."""
    r, rows = record["results"], []
    for part, label in (
        ("sweep", "4 paper experiments, one sweep (default estimators)"),
        ("sweep_edge", "4 paper experiments, one sweep (EDGE reference)"),
    ):
        if part in r:
            s = r[part]
            rows.append(
                (
                    label,
                    f"wall {s['wall_s']:.2f} s, excl. compile "
                    f"{s['wall_excl_compile_s']:.2f} s"
                    + (
                        f" (warm rerun {s['warm_repeat_wall_s']:.2f} s)"
                        if "warm_repeat_wall_s" in s
                        else ""
                    ),
                )
            )
    if "separate" in r:
        s = r["separate"]
        rows.append(
            (
                "4 paper experiments, 4 runs",
                f"wall {s['wall_s']:.2f} s, excl. compile "
                f"{s['wall_excl_compile_s']:.2f} s; per run "
                + " ".join(f"{v['wall_s']:.1f}" for v in s["runs"].values()),
            )
        )
    if "seeds" in r:
        s = r["seeds"]
        rows.append(
            (
                f"{s['runs']}-run sweep vs 1 run",
                f"wall {s['sweep']['wall_s']:.2f} vs {s['one']['wall_s']:.2f} s "
                f"(x{s['ratio']:.2f}); excl. compile {s['sweep']['wall_excl_compile_s']:.2f} "
                f"vs {s['one']['wall_excl_compile_s']:.2f} s (x{s['ratio_excl_compile']:.2f}; "
                "target <= 3 on one GPU)",
            )
        )
    if "edge" in r:
        e = r["edge"]
        for mode in ("reference", "quantile"):
            rows.append(
                (
                    f"EDGE {mode} N={e['n']}",
                    f"I(X;Z) {e[mode + '_xz']['s_per_call'] * 1e3:.1f} ms, I(Z;Y) "
                    f"{e[mode + '_zy']['s_per_call'] * 1e3:.1f} ms per call",
                )
            )
    if "steps" in r:
        for name, s in r["steps"].items():
            rows.append(
                (
                    f"round {name} ({s['runs']} run{'s' if s['runs'] > 1 else ''})",
                    f"{s['fed_steps_per_s']:.1f} fed steps/s, {s['worker_steps_per_s']:.1f} "
                    f"worker-steps/s; measurement {s['measure_s']:.3f} s",
                )
            )
    if "eval_split" in r:
        for mode, s in r["eval_split"].items():
            rows.append(
                (
                    f"eval point, 4 runs, {mode}",
                    f"{s['measure_s']:.3f} s = forwards {s['forward_s']:.3f} s "
                    f"({s['forward_share']:.0%}, {s['forward_us_per_image']:.1f} us/image) "
                    f"+ estimators {s['estimators_s']:.3f} s",
                )
            )
    if "runs_vmap" in r:
        for s in r["runs_vmap"].values():
            rows.append(
                (
                    f"training step, {s['runs']} runs vmapped, unroll {s['unroll']}",
                    f"{s['ms_per_step']:.2f} ms per step ({s['ms_per_run_step']:.3f} ms "
                    "per run-step)",
                )
            )
    if "forward" in r:
        f = r["forward"]
        for name, v in f["variants"].items():
            rows.append(
                (
                    f"measurement forward {name}",
                    f"{v['us_per_image']:.2f} us/image, "
                    f"CPU time {v.get('cpu_us_per_image')} us/image, x{v.get('ratio_to_xla')} "
                    f"of xla (max abs z diff {v['max_abs_z_diff']:.1e})",
                )
            )
    for name, c in r.get("compile", {}).items():
        if isinstance(c, dict):
            rows.append(
                (
                    f"compile {name}",
                    f"round {c['round']:.2f} s, measure {c['measure']:.2f} s "
                    f"(target < 10 s), other {c['other']:.2f} s"
                    + (f" (mostly {next(iter(c['top_other']))})" if c["top_other"] else ""),
                )
            )
    return rows


def table(record: dict) -> str:
    """The summary as plain text."""
    return "\n".join(f"{what:58s} {figures}" for what, figures in rows_of(record))


def markdown(record: dict) -> str:
    """The summary as a markdown table, with the machine and the load."""
    head = (
        f"{record['device_kind']} ({record['device']}), jax {record['jax']}, "
        f"preset {record['preset']}, git {record['git']}, load before "
        f"{', '.join(f'{v:.1f}' for v in record['load_before'])}\n\n"
    )
    return (
        head
        + "| what | figures |\n|---|---|\n"
        + "\n".join(f"| {what} | {figures} |" for what, figures in rows_of(record))
        + "\n"
    )


def sizes_of(args, cfgs, n: int, schedule) -> dict:
    """Every size the suite used (the JSON's `sizes`)."""
    first = cfgs[0].flat()
    return dict(
        dataset=args.dataset,
        cifar_dir=args.cifar_dir,
        workers=first["workers"],
        per_worker=n,
        epochs=args.epochs,
        batch_size=first["batch_size"],
        eval_period=args.eval_period,
        total_steps=schedule.total_steps,
        eval_points=len(schedule.eval_steps),
        mi_samples=args.mi_samples or n,
        test_samples=args.test_samples or "all",
        seeds_per_figure=args.seeds_per_figure,
        mi=first["mi"],
        edge_version=first["edge_version"],
        eval_chunk=first["eval_chunk"],
        edge_n=EDGE_N,
        steps_repeats=args.steps_repeats,
        vmap_runs=args.vmap_runs,
        unrolls=args.unrolls,
        vmap_steps=args.vmap_steps,
        forward_images=args.forward_images,
        measure_conv_impl=models.measure_conv_impl(),
        figures={
            os.path.basename(c.out): dict(
                split=c.data.split, protocol=c.protocol.protocol, sync_period=c.protocol.sync_period
            )
            for c in cfgs
        },
    )


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
        return (
            subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.abspath(__file__)),
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None):
    args = parse_args(argv)
    log = CompileLog()
    device = jax.devices()[0]
    record = dict(
        device=str(device),
        device_kind=device.device_kind,
        jax=jax.__version__,
        jaxlib=jaxlib_version(),
        argv=sys.argv,
        git=git_version(),
        preset=args.preset,
        compilation_cache_dir=jax.config.jax_compilation_cache_dir,
        load_before=os.getloadavg(),
        measure_forward_us_per_image=None,
        sizes={},
        results={},
    )
    results = record["results"]
    with tempfile.TemporaryDirectory() as tmp:
        fig1 = paper_configs(args, tmp)[0]  # no-sync: fixes the schedule
        fig1.validate()
        t0 = time.perf_counter()  # every run_sweep / run call loads the data like this
        n = sweep_lib.load_sweep_data([fig1]).train_x.shape[2]
        record["data_load_s"] = round(time.perf_counter() - t0, 3)
        schedule = config.make_schedule(fig1, n)
        cfgs = paper_configs(args, tmp, schedule.total_steps)
        config.check_sweep(cfgs)
        record["sizes"] = sizes_of(args, cfgs, n, schedule)
        # Order matters: the sweep runs first so that its compiles are cold.
        # The record is written after every part, so a run stopped by a
        # time limit keeps the parts it finished.
        # The forward part comes early: it is the CPU's headline figure.
        parts = dict(
            sweep=lambda: part_sweep(args, log, cfgs),
            forward=lambda: part_forward(args),
            sweep_edge=lambda: part_sweep_edge(log, cfgs),
            eval_split=lambda: part_eval_split(cfgs, args.steps_repeats),
            steps=lambda: part_steps(cfgs, args.steps_repeats),
            runs_vmap=lambda: part_runs_vmap(args, cfgs),
            separate=lambda: part_separate(log, cfgs),
            seeds=lambda: part_seeds(args, log, cfgs),
        )
        for name, part in parts.items():
            if name not in args.skip:
                print(f"[suite] {name} ...", file=sys.stderr, flush=True)
                results[name] = part()
                if name == "forward":
                    record["measure_forward_us_per_image"] = results[name]["auto_us_per_image"]
                save(record, args.out)
    if "edge" not in args.skip:
        results["edge"] = part_edge(args.steps_repeats)
    save(record, args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
    with open(args.markdown, "w") as fh:
        fh.write(markdown(record))
    print(
        f"jax {record['jax']} on {record['device_kind']} ({record['device']}); sizes: "
        + ", ".join(f"{k}={v}" for k, v in record["sizes"].items() if k != "figures")
    )
    print(table(record))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
