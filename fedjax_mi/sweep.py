"""Runs of one experiment as one compiled program: data assembly, the
compiled round and measurement, and the loop over eval points.

The host loop only sequences compiled programs: a round of `eval_period`
steps (one `lax.scan`, compiled once; a shorter last round reuses it with
fewer active steps) and the eval-point measurement (compiled once), both
vmapped over a run axis. `run_sweep` locks the output folders and handles
signals; `_train` is the loop; `_eval_point` is one turn of it.
"""

import contextlib
import functools
import math
import os
import shutil
import time
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mi import data as data_lib
from fedjax_mi import (
    checkpoint,
    federated,
    folder_lock,
    measure,
    metrics_io,
    models,
    outputs,
    preemption,
    program_cache,
    sharding,
)
from fedjax_mi.config import (
    ConfigError,
    RunConfig,
    Schedule,
    check_sweep,
    make_schedule,
    resumable_part,
)

Records = list[list[dict[str, Any]]]  # each run's records


class SweepData(NamedTuple):
    """The distinct partitions of a sweep, stacked: G groups of K local datasets."""

    train_x: np.ndarray  # (G, K, n, H, W, C) uint8
    train_y: np.ndarray  # (G, K, n) int32
    test_x: np.ndarray  # (T, H, W, C) uint8
    test_y: np.ndarray  # (T,) int32
    num_classes: int
    groups: tuple[int, ...]  # the group of each run
    dropped: tuple[int, ...]  # per group, what federate left out


def load_sweep_data(cfgs: Sequence[RunConfig]) -> SweepData:
    """Load the dataset once and federate it once per distinct (split, alpha,
    data seed); groups of unequal share sizes are cut to the smallest."""
    d = cfgs[0].data
    dataset = data_lib.load_dataset(d.dataset, cifar_dir=d.cifar_dir, tfds_data_dir=d.tfds_data_dir)
    keys = [(c.data.split, c.data.alpha, c.seeds[0]) for c in cfgs]
    distinct = list(dict.fromkeys(keys))
    feds = [
        data_lib.federate(
            dataset, d.workers, split, seed=seed, alpha=alpha, per_worker=d.per_worker
        )
        for split, alpha, seed in distinct
    ]
    n = min(f.train_x.shape[1] for f in feds)
    return SweepData(
        np.stack([f.train_x[:, :n] for f in feds]),
        np.stack([f.train_y[:, :n] for f in feds]),
        feds[0].test_x,
        feds[0].test_y,
        feds[0].num_classes,
        tuple(distinct.index(k) for k in keys),
        tuple(int(f.dropped) + d.workers * (f.train_x.shape[1] - n) for f in feds),
    )


class EvalData(NamedTuple):
    """What is measured: the first `mi_samples` of each local share (already
    in random order) and the first `test_samples` of the test split."""

    local_x: jax.Array  # (G, K, m, H, W, C)
    local_y: jax.Array  # (G, K, m)
    test_x: jax.Array  # (T, H, W, C)
    test_y: jax.Array  # (T,)


def eval_subsets(cfg: RunConfig, data: SweepData) -> EvalData:
    n = data.train_x.shape[2]
    m = n if cfg.measurement.mi_samples is None else cfg.measurement.mi_samples
    if m > n:
        raise ConfigError("mi_samples", f"{m} is more than a local dataset holds ({n})")
    t = (
        data.test_x.shape[0]
        if cfg.measurement.test_samples is None
        else min(cfg.measurement.test_samples, data.test_x.shape[0])
    )
    return EvalData(
        jnp.asarray(data.train_x[:, :, :m]),
        jnp.asarray(data.train_y[:, :, :m]),
        jnp.asarray(data.test_x[:t]),
        jnp.asarray(data.test_y[:t]),
    )


@functools.lru_cache(maxsize=8)
def _training(
    num_classes: int,
    momentum: float,
    batch_size: int,
    eval_period: int,
    opt_sync: str,
    aggregate: str,
    input_scale: str,
):
    """(model, optimizer, sweep round) of `programs`: they do not depend on
    what is measured, so sweeps that measure differently share them (and the
    compilations of the round and of `federated.init_runs`)."""
    model = models.LeNet(num_classes=num_classes, input_scale=input_scale)
    opt = federated.make_optimizer(momentum)
    round_fn = federated.make_sweep_round(
        model, opt, batch_size=batch_size, steps=eval_period, opt_sync=opt_sync, how=aggregate
    )
    return model, opt, round_fn


@functools.lru_cache(maxsize=8)
def programs(
    num_classes: int,
    momentum: float,
    batch_size: int,
    eval_period: int,
    opt_sync: str,
    study: measure.StudySettings,
    eval_chunk: int,
    aggregate: str = "mean",
    input_scale: str = "unit",
):
    """(model, optimizer, sweep round, sweep measurement), built once per
    setting so that sweeps of the same shapes in one process share compilations."""
    model, opt, round_fn = _training(
        num_classes, momentum, batch_size, eval_period, opt_sync, aggregate, input_scale
    )
    # The measurement's forward passes are not vmapped over workers (models
    # run in sequence), so they use the formulation fastest on this backend:
    # the same function of the same parameters (docs/performance.md).
    eval_model = models.LeNet(
        num_classes=num_classes, conv_impl=models.measure_conv_impl(), input_scale=input_scale
    )
    measure_fn = measure.make_sweep_measure(
        eval_model,
        measure.study_estimators(study, num_classes),
        chunk=measure.forward_chunk(eval_chunk),
    )
    return model, opt, round_fn, measure_fn


class Sweep(NamedTuple):
    """The compiled programs of a sweep and their arguments at the start."""

    round_fn: Callable  # (states, train_x, train_y, groups, protocols, active)
    measure_fn: Callable  # (step_keys, params, local_x, local_y, groups, test_x, test_y)
    states: federated.FedState  # initial states of the R runs (RUN_AXES)
    edge_keys: jax.Array  # (R,) keys folded with the step at each eval point
    groups: jax.Array  # (R,) data group of each run
    protocols: federated.Protocol  # each field (R,): the runs' protocols
    train_x: jax.Array  # (G, K, n, H, W, C) uint8
    train_y: jax.Array  # (G, K, n)
    mesh: Optional[Any]  # the "runs" mesh when split over devices, else None


def prepare_sweep(cfgs: Sequence[RunConfig], data: SweepData, devices: int = 1) -> Sweep:
    """Programs (shared per setting, see `programs`), initial states, keys
    and per-run arrays of a sweep over `data` (from `load_sweep_data`):
    everything `run_sweep` builds before its loop, for it and for benchmarks."""
    first = cfgs[0]
    t, m = first.training, first.measurement
    settings = (
        data.num_classes,
        t.momentum,
        t.batch_size,
        m.eval_period,
        t.opt_sync,
        m.study,
        m.eval_chunk,
        first.protocol.aggregate,
        t.input_scale,
    )
    model, opt, round_fn, measure_fn = programs(*settings)
    mesh = sharding.run_mesh(devices) if devices > 1 else None
    if mesh is not None:
        round_fn, measure_fn = sharding.over_runs(round_fn, measure_fn, mesh)
    else:  # a later process with the same settings skips their tracing
        round_fn = program_cache.cached(round_fn, "round", settings)
        measure_fn = program_cache.cached(measure_fn, "measure", settings)
    keys = jnp.stack([jax.random.split(jax.random.key(c.seeds[1])) for c in cfgs])
    workers, samples, identical = first.data.workers, data.train_x.shape[2], not t.independent_init
    init_runs = program_cache.cached(
        lambda k, x, lrs, torch: federated.init_runs(
            k, model, opt, x, workers, samples, lrs, identical, torch
        ),
        "init_runs",
        (settings, workers, samples, identical),
    )
    states = init_runs(
        keys[:, 0],
        jnp.zeros((1,) + data.train_x.shape[3:]),
        jnp.asarray([c.training.lr for c in cfgs], jnp.float32),
        jnp.asarray([c.training.init == "torch" for c in cfgs]),
    )
    protocols = [
        federated.protocol_of(
            c.protocol.protocol, c.protocol.sync_period, c.protocol.check_every, c.protocol.delta
        )
        for c in cfgs
    ]
    stacked = federated.Protocol(*(jnp.asarray(np.stack(f)) for f in zip(*protocols)))
    return Sweep(
        round_fn,
        measure_fn,
        states,
        keys[:, 1],
        jnp.asarray(data.groups, jnp.int32),
        stacked,
        jnp.asarray(data.train_x),
        jnp.asarray(data.train_y),
        mesh,
    )


def check_devices(runs: int, devices: int) -> None:
    """`devices` must be a device jax sees and split the `runs` evenly."""
    available = len(jax.devices())
    if not 1 <= devices <= available:
        raise ConfigError(
            "devices", f"must be in 1..{available} (the devices jax sees), got {devices}"
        )
    if runs % devices:
        raise ConfigError("devices", f"{runs} runs do not split evenly over {devices} devices")


class Progress(Protocol):
    """What a caller is told while a sweep runs (`experiments.progress` prints it)."""

    def start(self, cfgs: Sequence[RunConfig], schedule: Schedule, local_size: int) -> None: ...

    def point(
        self, step: int, steps_done: int, schedule: Schedule, m: measure.Measurement, elapsed: float
    ) -> None: ...


def run(
    cfg: RunConfig, log: Callable[[str], None] = print, progress: Optional[Progress] = None
) -> list[dict[str, Any]]:
    """Run one experiment (a sweep of one) and write its files under
    `cfg.out`; returns its records."""
    return run_sweep([cfg], log, progress=progress)[0]


def run_sweep(
    cfgs: Sequence[RunConfig],
    log: Callable[[str], None] = print,
    checkpoint_dir: Optional[str] = None,
    devices: int = 1,
    progress: Optional[Progress] = None,
) -> Records:
    """Train and measure R runs as one compiled program (vmapped over a run
    axis) and write each run's files under its `out`; returns each run's records.

    Runs may differ in the settings `config.PER_RUN` lists. Each run's
    metrics are those it would produce alone. Every `checkpoint_every` eval
    points the whole state is saved in `checkpoint_dir` (default:
    `outputs.default_checkpoint_dir`); with `resume` a run continues from
    there and writes the metrics an uninterrupted run would have written.
    `devices` > 1 splits the runs over that many devices
    (`sharding.over_runs`; R must be a multiple of it). `log` receives
    warnings and notices, `progress` the progress of the loop.

    While it runs, each run's `out` (and the default checkpoint folder's
    parent) is locked (`folder_lock.hold`: another process gets
    `folder_lock.LockError`). A SIGTERM or SIGINT finishes the current eval
    point, saves a checkpoint there and raises `preemption.Preempted`; a
    failed write raises `metrics_io.OutputError`; the previous metrics and
    checkpoint stay intact in both cases.
    """
    check_sweep(cfgs)
    check_devices(len(cfgs), devices)
    out = cfgs[0].output
    # Several processes (sharding.init_distributed) compute the same
    # records; process 0 alone locks the folders, writes files and prints.
    writer = jax.process_index() == 0
    if not writer:
        log, progress = (lambda line: None), None
    if jax.process_count() > 1 and devices == 1 and out.checkpoint_every:
        raise ConfigError(
            "checkpoint_every",
            f"with {jax.process_count()} processes, "
            "checkpoints need the runs split over their devices (--devices > 1); "
            "or set 0",
        )
    folders = [c.out for c in cfgs] + (
        [] if checkpoint_dir else [os.path.dirname(outputs.default_checkpoint_dir(cfgs))]
    )
    checkpoint_dir = checkpoint_dir or outputs.default_checkpoint_dir(cfgs)
    with contextlib.ExitStack() as stack:
        if writer:
            for folder in dict.fromkeys(folders):
                stack.enter_context(folder_lock.hold(folder))
            for cfg in cfgs:
                outputs.prepare_out(cfg.out, out.resume, out.overwrite)
            if out.overwrite and os.path.isdir(checkpoint_dir):
                shutil.rmtree(checkpoint_dir)
        sharding.barrier("fedjax_mi prepared out")

        def open_manager():  # after the checks that need the data; closed on every path
            mgr = checkpoint.manager(checkpoint_dir)
            stack.callback(checkpoint.close, mgr)
            return mgr

        stop = stack.enter_context(preemption.stop_on_signals())
        return _train(cfgs, log, progress, checkpoint_dir, devices, open_manager, stop)


class _Loop(NamedTuple):
    """What every eval point of a sweep shares."""

    cfgs: Sequence[RunConfig]
    sweep: Sweep
    evals: EvalData
    schedule: Schedule
    mgr: Any
    meta: dict
    stop: preemption.StopRequest
    log: Callable[[str], None]
    progress: Optional[Progress]
    writer: bool
    started: tuple[int, float]  # (step, time) the loop started at


def _train(
    cfgs: Sequence[RunConfig],
    log: Callable[[str], None],
    progress: Optional[Progress],
    checkpoint_dir: str,
    devices: int,
    open_manager: Callable[[], Any],
    stop: preemption.StopRequest,
) -> Records:
    """The loop of `run_sweep`, in its locked folders: a round of training
    and an eval point, until the last eval point or until `stop` fired (in
    any process, when there are several)."""
    writer = jax.process_index() == 0
    data = load_sweep_data(cfgs)
    n = data.train_x.shape[2]
    for cfg in cfgs[1:]:  # each run's own sync period must fit the run
        make_schedule(cfg, n)
    schedule = make_schedule(cfgs[0], n)
    evals = eval_subsets(cfgs[0], data)
    if writer:
        for cfg, group in zip(cfgs, data.groups):
            outputs.write_config(
                cfg,
                dict(
                    local_size=n,
                    dropped=data.dropped[group],
                    test_size=int(data.test_x.shape[0]),
                    measured_local=int(evals.local_x.shape[2]),
                    measured_test=int(evals.test_x.shape[0]),
                ),
                schedule,
                len(cfgs),
            )
    sweep = prepare_sweep(cfgs, data, devices)
    if sweep.mesh is not None and jax.process_count() > 1:
        sweep, evals = _place_over_processes(sweep, evals)
    if progress is not None:
        progress.start(cfgs, schedule, n)
    points = schedule.eval_steps
    mgr = open_manager()
    last, states, records = resume_point(mgr, sweep.states, cfgs, points, log)
    if sweep.mesh is not None:  # restored arrays sit on one device
        states = sharding.place_runs(states, sweep.mesh)
    if last >= 0:
        log(f"resumed from the checkpoint at step {points[last]} in {checkpoint_dir}")
    loop = _Loop(
        cfgs,
        sweep,
        evals,
        schedule,
        mgr,
        {"configs": [resumable_part(c) for c in cfgs]},
        stop,
        log,
        progress,
        writer,
        (points[max(last, 0)], time.perf_counter()),
    )
    for i in range(last + 1, len(points)):
        states, stopping = _eval_point(loop, i, states, records)
        if stopping and i < len(points) - 1:
            where = cfgs[0].out if len(cfgs) == 1 else "each run's folder"
            raise preemption.Preempted(
                f"stopped by {stop.name} after step {points[i]}/{schedule.total_steps}: "
                f"checkpoint in {checkpoint_dir}, metrics up to step {points[i]} in {where}",
                stop.signum,
                points[i],
            )
    return records


def _eval_point(
    loop: _Loop, i: int, states: federated.FedState, records: Records
) -> tuple[federated.FedState, bool]:
    """Eval point i: the round of training that leads to it (none before
    point 0), the measurement, each run's records written, the triggered
    protocol's decision, a checkpoint when due; (states, whether to stop)."""
    cfgs, sweep, evals, schedule = loop.cfgs, loop.sweep, loop.evals, loop.schedule
    points = schedule.eval_steps
    step, losses = points[i], None
    if i > 0:
        active = step - points[i - 1]
        states, round_losses = sweep.round_fn(
            states, sweep.train_x, sweep.train_y, sweep.groups, sweep.protocols, active
        )
        round_losses = sharding.fetch(round_losses)[:active]  # (active, R, K)
        losses = round_losses.astype(np.float64).mean(axis=0)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(sweep.edge_keys, step)
    m = sharding.fetch(
        sweep.measure_fn(
            step_keys,
            states.params,
            evals.local_x,
            evals.local_y,
            sweep.groups,
            evals.test_x,
            evals.test_y,
        )
    )
    comm = comm_fields(states)
    for r, cfg in enumerate(cfgs):
        records[r] += outputs.to_records(
            step,
            step / schedule.steps_per_epoch,
            jax.tree.map(lambda a: a[r], m),
            None if losses is None else losses[r],
            comm[r],
        )
        if loop.writer:
            metrics_io.write_records(os.path.join(cfg.out, "metrics.jsonl"), records[r])
    if i < len(points) - 1 and any(c.protocol.protocol == "triggered" for c in cfgs):
        states = _apply_triggers(states, cfgs, m, sweep.mesh)
    # Read once: a signal from here on stops at the next eval point. All
    # processes must agree, or one would save (a collective) alone.
    stopping = sharding.any_process(bool(loop.stop))
    every = cfgs[0].output.checkpoint_every
    if (i > 0 and every and (i % every == 0 or i == len(points) - 1)) or stopping:
        checkpoint.save(loop.mgr, step, states, loop.meta)
    if loop.progress is not None:
        loop.progress.point(
            step, step - loop.started[0], schedule, m, time.perf_counter() - loop.started[1]
        )
    if i > 0:
        check_finite(round_losses, points[i - 1], cfgs, step, loop.log)
    return states, stopping


def _apply_triggers(
    states: federated.FedState, cfgs: Sequence[RunConfig], m: measure.Measurement, mesh
) -> federated.FedState:
    """The triggered protocol's decision, on the host between rounds: the
    next round's first step syncs (docs/protocols.md)."""
    pending, sent = trigger_updates(cfgs, m)
    pending, sent = jnp.asarray(pending), states.models_sent + jnp.asarray(sent)
    if mesh is not None:
        pending, sent = (sharding.shard_leading(a, mesh, sharding.RUNS) for a in (pending, sent))
    return states._replace(pending=pending, models_sent=sent)


def _place_over_processes(sweep: Sweep, evals: EvalData) -> tuple[Sweep, EvalData]:
    """Global arrays over the processes: run-axis arrays split, data replicated."""
    mesh = sweep.mesh
    edge_keys, groups, protocols = sharding.shard_leading(
        (sweep.edge_keys, sweep.groups, sweep.protocols), mesh, sharding.RUNS
    )
    train_x, train_y = sharding.replicate((sweep.train_x, sweep.train_y), mesh)
    sweep = sweep._replace(
        states=sharding.place_runs(sweep.states, mesh),
        edge_keys=edge_keys,
        groups=groups,
        protocols=protocols,
        train_x=train_x,
        train_y=train_y,
    )
    return sweep, EvalData(*sharding.replicate(tuple(evals), mesh))


def resume_point(
    mgr,
    template: federated.FedState,
    cfgs: Sequence[RunConfig],
    points: list[int],
    log: Callable[[str], None] = print,
) -> tuple[int, federated.FedState, Records]:
    """(index of the eval point to continue after, states, each run's records
    up to it) from the newest intact checkpoint (damaged newer ones are
    skipped with a warning and deleted); records after it are dropped (they
    are recomputed). (-1, template, empty records) when there is none."""
    restored = checkpoint.restore_latest(mgr, template, warn=log)
    if restored is None:
        return -1, template, [[] for _ in cfgs]
    step, states, meta = restored
    saved = meta.get("configs")
    if saved is not None:  # settings added since the checkpoint was written take their defaults
        saved = [{**resumable_part(RunConfig()), **s} for s in saved]
    for i, cfg in enumerate(cfgs):
        if saved is None or len(saved) != len(cfgs) or saved[i] != resumable_part(cfg):
            changed = sorted(
                k
                for k, v in resumable_part(cfg).items()
                if saved and i < len(saved) and saved[i].get(k) != v
            )
            raise ConfigError(
                "resume",
                f"the checkpoint in {mgr.directory} was written by other "
                f"settings (differing: {', '.join(changed) or 'the runs'})",
            )
    if step not in points:
        raise ConfigError("resume", f"checkpoint step {step} is not an eval point of this run")
    for damaged in [s for s in mgr.all_steps() if s > step]:  # they would block saving again
        mgr.delete(damaged)
    return points.index(step), states, [outputs.kept_records(c.out, step) for c in cfgs]


def check_finite(
    round_losses: np.ndarray,
    first_step: int,
    cfgs: Sequence[RunConfig],
    step: int,
    log: Callable[[str], None],
) -> None:
    """Stop (or, with --continue_on_divergence, warn) on a non-finite loss,
    naming the step, worker and run; called after the metrics are written."""
    if np.all(np.isfinite(round_losses)):
        return
    bad_step, bad_run, bad_worker = np.argwhere(~np.isfinite(round_losses))[0]
    message = (
        f"training diverged: non-finite loss at step {first_step + bad_step + 1} on worker "
        f"{bad_worker}{'' if len(cfgs) == 1 else f' of run {bad_run} ({cfgs[bad_run].out})'}"
        f"; metrics up to step {step} are in {cfgs[bad_run].out}/metrics.jsonl"
    )
    if not cfgs[0].output.continue_on_divergence:
        raise FloatingPointError(f"{message}; lower --lr (or pass --continue_on_divergence)")
    log(f"warning: {message}; continuing (--continue_on_divergence)")


@jax.jit
def _offsets(states: federated.FedState):
    """(R, K, ...) leaves w_k - r_k."""
    return jax.tree.map(
        lambda p, r: p.astype(jnp.float32) - r.astype(jnp.float32), states.params, states.ref
    )


def comm_fields(states: federated.FedState) -> list[dict[str, Any]]:
    """Per run: `syncs`, `models_sent`, `bytes_sent` (parameters of one model
    x 4 bytes x models sent) and `drift` (max_k ||w_k - r||^2 now, the
    quantity the dynamic protocol bounds by delta; summed in float64 on the
    host per run. It magnifies last-bit differences of the parameters, which
    a run's sweep and its run alone can have: equal to float32 rounding
    only), for `outputs.to_records`."""
    syncs, sent, offsets = sharding.fetch((states.syncs, states.models_sent, _offsets(states)))
    leaves = jax.tree.leaves(offsets)
    runs, workers = leaves[0].shape[:2]
    sq = sum(
        np.square(a.astype(np.float64)).reshape(runs, workers, -1).sum(axis=2) for a in leaves
    )  # (R, K)
    drift = sq.max(axis=1)
    model_bytes = sum(
        int(np.prod(a.shape[2:])) * a.dtype.itemsize for a in jax.tree.leaves(states.params)
    )
    return [
        dict(
            syncs=int(s),
            models_sent=int(n),
            bytes_sent=int(n) * model_bytes,
            drift=float(f"{d:.7g}") if math.isfinite(d) else None,
        )
        for s, n, d in zip(syncs, sent, drift)
    ]


def trigger_updates(
    cfgs: Sequence[RunConfig], m: measure.Measurement
) -> tuple[np.ndarray, np.ndarray]:
    """The triggered runs' decisions at an eval point, taken on the host from
    its measurement m (batched over runs): (R,) bool pending sync, (R,) int
    models the decision sent (2K per triggered run: the K models up to form
    the average, the average down to each worker to measure it on its local
    data; docs/protocols.md)."""
    pending = np.zeros(len(cfgs), bool)
    sent = np.zeros(len(cfgs), np.int32)
    for r, cfg in enumerate(cfgs):
        if cfg.protocol.protocol != "triggered":
            continue
        quality = m.acc if cfg.protocol.metric == "acc" else m.mi_zy
        quality = np.asarray(quality[r])  # (K + 1, K): models x local datasets
        k = quality.shape[1]
        pending[r] = federated.trigger_decision(
            quality[k], np.diagonal(quality[:k]), cfg.protocol.trigger_ratio
        )
        sent[r] = 2 * k
    return pending, sent
