"""One federated experiment: load and split data, train, measure at every
eval point, write `metrics.jsonl` and `config.json`.

The host loop only sequences compiled programs: a round of `eval_period`
steps (one `lax.scan`, compiled once; a shorter last round reuses it with
fewer active steps) and the eval-point measurement (compiled once).
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mi import data as data_lib
from fedjax_mi import checkpoint, federated, folder_lock, measure, metrics_io, models, preemption
from fedjax_mi import sharding
from fedjax_mi.mi import edge_reference


class ConfigError(ValueError):
    """A bad setting; the message starts with the flag's name."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of one experiment (the absl flags of `experiments.run`)."""
    dataset: str = "digits"
    cifar_dir: Optional[str] = None
    tfds_data_dir: Optional[str] = None
    workers: int = 2
    split: str = "iid"
    alpha: Optional[float] = None
    per_worker: Optional[int] = None
    protocol: str = "nosync"
    sync_period: Optional[int] = None
    check_every: Optional[int] = None
    delta: Optional[float] = None
    trigger_metric: Optional[str] = None
    trigger_ratio: Optional[float] = None
    eval_period: int = 100
    epochs: float = 20.0
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    init: str = "flax"
    input_scale: str = "unit"
    opt_sync: str = "average"
    aggregate: str = "mean"
    independent_init: bool = False
    seed: int = 0
    data_seed: Optional[int] = None
    mi_samples: Optional[int] = None
    test_samples: Optional[int] = None
    mi: str = measure.DEFAULT_MI
    edge_version: str = "4.2.0"
    edge_xz: str = ""
    edge_zy: str = ""
    kde_noise_var: float = measure.StudySettings.kde_noise_var
    kde_relative: bool = True
    kde_queries: Optional[int] = measure.StudySettings.kde_queries
    eval_chunk: int = 500
    out: str = "runs/default"
    checkpoint_every: int = 10
    resume: bool = False
    overwrite: bool = False
    continue_on_divergence: bool = False

    @property
    def seeds(self) -> tuple[int, int]:
        """(data seed for the partition, seed of the training/EDGE keys)."""
        return (self.seed if self.data_seed is None else self.data_seed), self.seed

    @property
    def study(self) -> measure.StudySettings:
        """The estimator settings (`--mi`, `--edge_*`, `--kde_*`)."""
        return measure.StudySettings(**{f.name: getattr(self, f.name)
                                        for f in dataclasses.fields(measure.StudySettings)})


def _fail(flag: str, message: str):
    raise ConfigError(f"--{flag}: {message}")


def validate(cfg: RunConfig) -> None:
    """Check every setting that can be checked without the data."""
    if cfg.dataset not in data_lib.DATASETS:
        _fail("dataset", f"unknown dataset {cfg.dataset!r}; choose from {data_lib.DATASETS}")
    if cfg.cifar_dir is not None and cfg.dataset != "cifar10":
        _fail("cifar_dir", f"is only used with --dataset=cifar10, not {cfg.dataset!r}")
    if cfg.workers < 1:
        _fail("workers", f"must be >= 1, got {cfg.workers}")
    if cfg.split not in data_lib.SPLITS:
        _fail("split", f"unknown split {cfg.split!r}; choose from {data_lib.SPLITS}")
    if cfg.split == "dirichlet" and (cfg.alpha is None or not cfg.alpha > 0):
        _fail("alpha", f"the dirichlet split needs --alpha > 0, got {cfg.alpha}")
    if cfg.split != "dirichlet" and cfg.alpha is not None:
        _fail("alpha", f"only applies to --split=dirichlet, not {cfg.split!r}")
    if cfg.protocol not in federated.PROTOCOLS:
        _fail("protocol", f"unknown protocol {cfg.protocol!r}; choose from {federated.PROTOCOLS}")
    validate_protocol(cfg)
    for flag in ("eval_period", "batch_size", "eval_chunk"):
        if getattr(cfg, flag) < 1:
            _fail(flag, f"must be >= 1, got {getattr(cfg, flag)}")
    for flag in ("per_worker", "mi_samples", "test_samples"):
        value = getattr(cfg, flag)
        if value is not None and value < 1:
            _fail(flag, f"must be >= 1 when given, got {value}")
    if not (cfg.epochs > 0 and math.isfinite(cfg.epochs)):
        _fail("epochs", f"must be > 0, got {cfg.epochs}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        _fail("lr", f"must be > 0, got {cfg.lr}")
    if not 0 <= cfg.momentum < 1:
        _fail("momentum", f"must be in [0, 1), got {cfg.momentum}")
    if cfg.init not in models.INITS:
        _fail("init", f"unknown scheme {cfg.init!r}; choose from {models.INITS}")
    if cfg.input_scale not in models.INPUT_SCALES:
        _fail("input_scale", f"unknown choice {cfg.input_scale!r}; choose from {models.INPUT_SCALES}")
    if cfg.opt_sync not in federated.OPT_SYNCS:
        _fail("opt_sync", f"unknown choice {cfg.opt_sync!r}; choose from {federated.OPT_SYNCS}")
    if cfg.aggregate not in federated.AGGREGATES:
        _fail("aggregate", f"unknown choice {cfg.aggregate!r}; choose from {federated.AGGREGATES}")
    if cfg.aggregate == "median" and cfg.workers < 3:
        _fail("aggregate", f"'median' needs --workers >= 3 (of 2 it is the mean), got {cfg.workers}")
    if cfg.aggregate == "weighted":
        _fail("aggregate", "'weighted' weighs workers by their local dataset sizes, but every "
              "share is cut to the smallest one's size (data.federate), so it would equal "
              "'mean'; use --aggregate=mean")
    if cfg.checkpoint_every < 0:
        _fail("checkpoint_every", f"must be >= 0 (0: never), got {cfg.checkpoint_every}")
    if cfg.resume and cfg.overwrite:
        _fail("resume", "and --overwrite exclude each other")
    try:
        measure.parse_mi(cfg.mi)
    except ValueError as e:
        _fail("mi", str(e))
    if cfg.edge_version not in edge_reference.VERSIONS:
        _fail("edge_version", f"must be one of {edge_reference.VERSIONS}, got {cfg.edge_version!r}")
    for flag in ("edge_xz", "edge_zy"):
        try:
            options = measure.parse_edge_options(getattr(cfg, flag))
            side = dict(edge_xz=(options, ()), edge_zy=((), options))[flag]
            measure.paper_edge_configs(cfg.edge_version, *side)
        except (ValueError, TypeError) as e:
            _fail(flag, f"{e} (EDGE reference keywords)")
    if not (cfg.kde_noise_var > 0 and math.isfinite(cfg.kde_noise_var)):
        _fail("kde_noise_var", f"must be > 0, got {cfg.kde_noise_var}")
    if cfg.kde_queries is not None and cfg.kde_queries < 2:
        _fail("kde_queries", f"must be >= 2 when given, got {cfg.kde_queries}")


PERIODIC = ("periodic", "sync")  # "sync": the old name, kept for flagfiles
TRIGGER_METRICS = ("acc", "mi_zy")


def validate_protocol(cfg: RunConfig) -> None:
    """The protocol and the flags that belong to it (docs/protocols.md)."""
    if cfg.protocol not in federated.PROTOCOLS:
        _fail("protocol", f"unknown protocol {cfg.protocol!r}; choose from {federated.PROTOCOLS}")
    if cfg.protocol in PERIODIC:
        if cfg.sync_period is None or cfg.sync_period < 1:
            _fail("sync_period", f"the {cfg.protocol} protocol needs --sync_period >= 1, "
                  f"got {cfg.sync_period}")
    elif cfg.sync_period is not None:
        _fail("sync_period", f"has no meaning with --protocol={cfg.protocol} (only periodic "
              "syncs every --sync_period steps); drop it or use --protocol=periodic")
    if cfg.protocol == "dynamic":
        if cfg.check_every is None or cfg.check_every < 1:
            _fail("check_every", f"the dynamic protocol needs --check_every >= 1, "
                  f"got {cfg.check_every}")
        if cfg.delta is None or not cfg.delta >= 0:  # also refuses NaN
            _fail("delta", f"the dynamic protocol needs --delta >= 0 (inf: never sync), "
                  f"got {cfg.delta}")
    else:
        for flag in ("check_every", "delta"):
            if getattr(cfg, flag) is not None:
                _fail(flag, f"only applies to --protocol=dynamic, not {cfg.protocol!r}")
    if cfg.protocol == "triggered":
        if cfg.trigger_ratio is None or not cfg.trigger_ratio >= 0:
            _fail("trigger_ratio", f"the triggered protocol needs --trigger_ratio >= 0 "
                  f"(0: never sync, inf: at every eval point), got {cfg.trigger_ratio}")
        metric = cfg.trigger_metric or "acc"
        if metric not in TRIGGER_METRICS:
            _fail("trigger_metric", f"unknown metric {metric!r}; choose from {TRIGGER_METRICS}")
        if metric == "mi_zy" and cfg.mi == "none":
            _fail("trigger_metric", "'mi_zy' needs an I(Z;Y) estimator in --mi, got 'none'")
    else:
        for flag in ("trigger_metric", "trigger_ratio"):
            if getattr(cfg, flag) is not None:
                _fail(flag, f"only applies to --protocol=triggered, not {cfg.protocol!r}")


def protocol_label(cfg: RunConfig) -> str:
    """e.g. "periodic every 100", "dynamic b=10 delta=0.5", "triggered acc rho=0.9"."""
    if cfg.protocol in PERIODIC:
        return f"{cfg.protocol} every {cfg.sync_period}"
    if cfg.protocol == "dynamic":
        return f"dynamic b={cfg.check_every} delta={cfg.delta:g}"
    if cfg.protocol == "triggered":
        return f"triggered {cfg.trigger_metric or 'acc'} rho={cfg.trigger_ratio:g}"
    return cfg.protocol


RESULTS = ("metrics.jsonl", "config.json", "checkpoints", "figures", "summary.md", "runs.json")


def prepare_out(out: str, resume: bool = False, overwrite: bool = False) -> None:
    """Create the output folder and check it is writable, before any work.

    A folder that already holds results is refused unless `resume` (continue
    from its checkpoint) or `overwrite` (delete those results first)."""
    held = [name for name in RESULTS if os.path.exists(os.path.join(out, name))
            and name != "figures"]
    if held and not (resume or overwrite):
        raise ConfigError(f"--out: {out!r} already holds results ({', '.join(held)}); pass "
                          f"--resume to continue that run or --overwrite to start over")
    if overwrite:
        for name in RESULTS:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write_test")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--out: cannot write to {out!r} ({e.strerror or e})") from None


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How the run's steps are cut into rounds between eval points."""
    steps_per_epoch: int
    total_steps: int
    eval_period: int

    @property
    def eval_steps(self) -> list[int]:
        """Steps after which the models are measured: 0, P, 2P, ..., total."""
        points = list(range(0, self.total_steps, self.eval_period))
        return points + [self.total_steps]


def make_schedule(cfg: RunConfig, num_samples: int) -> Schedule:
    """Checks that need the local dataset size n."""
    steps_per_epoch = num_samples // cfg.batch_size
    if steps_per_epoch < 1:
        _fail("batch_size", f"{cfg.batch_size} is larger than a local dataset ({num_samples})")
    total = int(round(cfg.epochs * steps_per_epoch))
    if total < 1:
        _fail("epochs", f"{cfg.epochs} epochs of {steps_per_epoch} steps is no step at all")
    if cfg.eval_period > total:
        _fail("eval_period", f"{cfg.eval_period} steps is longer than the whole run "
              f"({total} steps = {cfg.epochs} epochs x {steps_per_epoch} steps)")
    if cfg.protocol in PERIODIC and cfg.sync_period > total:
        _fail("sync_period", f"{cfg.sync_period} steps is longer than the whole run ({total} steps)")
    return Schedule(steps_per_epoch, total, cfg.eval_period)


# Settings that every run of a sweep must share (they fix shapes or the
# compiled programs); the others (split, alpha, seeds, lr, init, protocol
# and its settings, out) may differ per run.
SHARED = ("dataset", "cifar_dir", "tfds_data_dir", "workers", "per_worker", "eval_period",
          "epochs", "batch_size", "momentum", "input_scale", "opt_sync", "aggregate",
          "independent_init", "mi_samples",
          "test_samples", "mi", "edge_version", "edge_xz", "edge_zy", "kde_noise_var",
          "kde_relative", "kde_queries", "eval_chunk",
          "checkpoint_every", "resume",
          "overwrite", "continue_on_divergence")
# Settings that may change when a run is resumed (the rest must match its checkpoint).
RESUMABLE = ("resume", "overwrite", "checkpoint_every", "continue_on_divergence",
             "cifar_dir", "tfds_data_dir")


class SweepData(NamedTuple):
    """The distinct partitions of a sweep, stacked: G groups of K local datasets."""
    train_x: np.ndarray   # (G, K, n, H, W, C) uint8
    train_y: np.ndarray   # (G, K, n) int32
    test_x: np.ndarray    # (T, H, W, C) uint8
    test_y: np.ndarray    # (T,) int32
    num_classes: int
    groups: tuple[int, ...]   # the group of each run
    dropped: tuple[int, ...]  # per group, what federate left out


def load_sweep_data(cfgs: Sequence[RunConfig]) -> SweepData:
    """Load the dataset once and federate it once per distinct (split, alpha,
    data seed); groups of unequal share sizes are cut to the smallest."""
    first = cfgs[0]
    dataset = data_lib.load_dataset(first.dataset, cifar_dir=first.cifar_dir,
                                    tfds_data_dir=first.tfds_data_dir)
    keys = [(c.split, c.alpha, c.seeds[0]) for c in cfgs]
    distinct = list(dict.fromkeys(keys))
    feds = [data_lib.federate(dataset, first.workers, split, seed=seed, alpha=alpha,
                              per_worker=first.per_worker) for split, alpha, seed in distinct]
    n = min(f.train_x.shape[1] for f in feds)
    return SweepData(np.stack([f.train_x[:, :n] for f in feds]),
                     np.stack([f.train_y[:, :n] for f in feds]),
                     feds[0].test_x, feds[0].test_y, feds[0].num_classes,
                     tuple(distinct.index(k) for k in keys),
                     tuple(int(f.dropped) + first.workers * (f.train_x.shape[1] - n) for f in feds))


def eval_subsets(cfg: RunConfig, data: SweepData):
    """The local samples (the first `mi_samples` of each share, which is in
    random order already) and the test samples that are measured:
    (G, K, m, ...), (G, K, m), (T, ...), (T,)."""
    n = data.train_x.shape[2]
    m = n if cfg.mi_samples is None else cfg.mi_samples
    if m > n:
        _fail("mi_samples", f"{m} is more than a local dataset holds ({n})")
    t = data.test_x.shape[0] if cfg.test_samples is None else min(cfg.test_samples,
                                                                  data.test_x.shape[0])
    return (jnp.asarray(data.train_x[:, :, :m]), jnp.asarray(data.train_y[:, :, :m]),
            jnp.asarray(data.test_x[:t]), jnp.asarray(data.test_y[:t]))


def check_sweep(cfgs: Sequence[RunConfig]) -> None:
    """Every setting of every run, and what the runs must share, before any work."""
    if not cfgs:
        raise ConfigError("--seeds: a sweep needs at least one run")
    for cfg in cfgs:
        validate(cfg)
    for name in SHARED:
        values = {getattr(c, name) for c in cfgs}
        if len(values) > 1:
            _fail(name, f"must be the same for every run of a sweep, got {sorted(map(str, values))}")
    outs = [os.path.abspath(c.out) for c in cfgs]
    if len(set(outs)) < len(outs):
        _fail("out", "two runs of the sweep would write to the same folder")


def environment() -> dict[str, Any]:
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "tensorflow-datasets"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"packages": versions, "python": platform.python_version(),
            "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
            "platform": platform.platform(), "argv": sys.argv}


def to_records(step: int, epoch: float, m: measure.Measurement, losses,
               comm: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """One record per (model, dataset) of one eval point.

    Every record has `mi_xz`, `mi_zy` and their floors (the primary
    estimator's, `measure.primary`; null on the test split and where no
    chosen estimator defines them), every estimator's own fields
    (`measure.Measurement.mi`, null on the test split), and the head's
    bounds `mi_zy_head` (Barber–Agakov) and `mi_zy_fano`. `comm` (the
    communication so far and the drift, `comm_fields`) is added to every record."""
    num_models, num_datasets = m.acc.shape
    names = [f"worker{k}" for k in range(num_models - 1)] + ["average"]
    clean = lambda v: None if not math.isfinite(v) else round(float(v), 6)
    records = []
    for i, model in enumerate(names):
        loss = None if (losses is None or model == "average") else clean(losses[i])
        for d in range(num_datasets):
            records.append(dict(step=step, epoch=round(epoch, 4), model=model, dataset=f"local{d}",
                                mi_xz=clean(m.mi_xz[i, d]), mi_zy=clean(m.mi_zy[i, d]),
                                acc=clean(m.acc[i, d]), loss=loss,
                                mi_xz_floor=clean(m.mi_xz_floor[i, d]),
                                mi_zy_floor=clean(m.mi_zy_floor[i, d]),
                                mi_zy_head=clean(m.head[i, d]), mi_zy_fano=clean(m.fano[i, d]),
                                **{k: clean(v[i, d]) for k, v in sorted(m.mi.items())},
                                **(comm or {}),
                                **(interp_fields(m, d, clean) if model == "average" else {})))
        records.append(dict(step=step, epoch=round(epoch, 4), model=model, dataset="test",
                            mi_xz=None, mi_zy=None, acc=clean(m.test_acc[i]), loss=loss,
                            mi_xz_floor=None, mi_zy_floor=None,
                            mi_zy_head=clean(m.test_head[i]), mi_zy_fano=clean(m.test_fano[i]),
                            **{k: None for k in sorted(m.mi)}, **(comm or {}),
                            **(interp_fields(m, None, clean) if model == "average" else {})))
    return records


@jax.jit
def _offsets(states: federated.FedState):
    """(R, K, ...) leaves w_k - r_k."""
    return jax.tree.map(lambda p, r: p.astype(jnp.float32) - r.astype(jnp.float32),
                        states.params, states.ref)


def comm_fields(states: federated.FedState) -> list[dict[str, Any]]:
    """Per run: `syncs`, `models_sent`, `bytes_sent` (parameters of one model
    x 4 bytes x models sent) and `drift` (max_k ||w_k - r||^2 now, the
    quantity the dynamic protocol bounds by delta; summed in float64 on the
    host per run. It magnifies last-bit differences of the parameters, which
    a run's sweep and its run alone can have: equal to float32 rounding
    only), for `to_records`."""
    syncs, sent, offsets = sharding.fetch((states.syncs, states.models_sent, _offsets(states)))
    leaves = jax.tree.leaves(offsets)
    runs, workers = leaves[0].shape[:2]
    sq = sum(np.square(a.astype(np.float64)).reshape(runs, workers, -1).sum(axis=2)
             for a in leaves)  # (R, K)
    drift = sq.max(axis=1)
    model_bytes = sum(int(np.prod(a.shape[2:])) * a.dtype.itemsize
                      for a in jax.tree.leaves(states.params))
    return [dict(syncs=int(s), models_sent=int(n), bytes_sent=int(n) * model_bytes,
                 drift=float(f"{d:.7g}") if math.isfinite(d) else None)
            for s, n, d in zip(syncs, sent, drift)]


def trigger_updates(cfgs: Sequence[RunConfig], m: measure.Measurement
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The triggered runs' decisions at an eval point, taken on the host from
    its measurement m (batched over runs): (R,) bool pending sync, (R,) int
    models the decision sent (2K per triggered run: the K models up to form
    the average, the average down to each worker to measure it on its local
    data; docs/protocols.md)."""
    pending = np.zeros(len(cfgs), bool)
    sent = np.zeros(len(cfgs), np.int32)
    for r, cfg in enumerate(cfgs):
        if cfg.protocol != "triggered":
            continue
        quality = m.acc if (cfg.trigger_metric or "acc") == "acc" else m.mi_zy
        quality = np.asarray(quality[r])  # (K + 1, K): models x local datasets
        k = quality.shape[1]
        pending[r] = federated.trigger_decision(quality[k], np.diagonal(quality[:k]),
                                                cfg.trigger_ratio)
        sent[r] = 2 * k
    return pending, sent


def interp_name(quantity: str, alpha: float) -> str:
    """Record field of the interpolant at `alpha`: interp_acc_a0.25, interp_loss_a1, ..."""
    return f"interp_{quantity}_a{alpha:g}"


def interp_fields(m: measure.Measurement, d: Optional[int], clean: Callable) -> dict[str, Any]:
    """Fields of the average's record on local dataset d (None: the test
    split, where only the weight distance is defined): `barrier` = loss at
    a = 0.5 minus the mean of the losses at a = 0 and 1 (nats), the
    `weight_distance` and every interpolant's accuracy and loss."""
    alphas = measure.INTERP_ALPHAS
    out = {"barrier": None, "weight_distance": clean(m.weight_distance)}
    for quantity, values in (("acc", m.interp_acc), ("loss", m.interp_loss)):
        for j, a in enumerate(alphas):
            out[interp_name(quantity, a)] = None if d is None else clean(values[j, d])
    if d is not None:
        loss = {a: float(m.interp_loss[j, d]) for j, a in enumerate(alphas)}
        out["barrier"] = clean(loss[0.5] - 0.5 * (loss[0.0] + loss[1.0]))
    return out


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


@functools.lru_cache(maxsize=8)
def programs(num_classes: int, momentum: float, batch_size: int, eval_period: int,
             opt_sync: str, study: measure.StudySettings, eval_chunk: int,
             aggregate: str = "mean", input_scale: str = "unit"):
    """(model, optimizer, sweep round, sweep measurement), built once per
    setting so that sweeps of the same shapes in one process share compilations."""
    model = models.LeNet(num_classes=num_classes, input_scale=input_scale)
    opt = federated.make_optimizer(momentum)
    round_fn = federated.make_sweep_round(model, opt, batch_size=batch_size, steps=eval_period,
                                          opt_sync=opt_sync, how=aggregate)
    # The measurement's forward passes are not vmapped over workers (models
    # run in sequence), so they use the formulation fastest on this backend:
    # the same function of the same parameters (docs/performance.md).
    eval_model = models.LeNet(num_classes=num_classes, conv_impl=models.measure_conv_impl(),
                              input_scale=input_scale)
    measure_fn = measure.make_sweep_measure(
        eval_model, measure.study_estimators(study, num_classes),
        chunk=measure.forward_chunk(eval_chunk))
    return model, opt, round_fn, measure_fn


def write_config(cfg: RunConfig, data: SweepData, group: int, schedule: Schedule,
                 measured: tuple[int, int], sweep_size: int) -> None:
    info = {"config": dataclasses.asdict(cfg), "environment": environment(),
            "data": {"local_size": int(data.train_x.shape[2]), "dropped": data.dropped[group],
                     "test_size": int(data.test_x.shape[0]), "measured_local": measured[0],
                     "measured_test": measured[1]},
            "schedule": dataclasses.asdict(schedule), "runs_in_program": sweep_size}
    metrics_io.write_atomic(os.path.join(cfg.out, "config.json"), json.dumps(info, indent=2))


def default_checkpoint_dir(cfgs: Sequence[RunConfig]) -> str:
    """OUT/checkpoints for one run; the runs' common parent folder for a sweep."""
    if len(cfgs) == 1:
        return os.path.join(cfgs[0].out, "checkpoints")
    return os.path.join(os.path.commonpath([os.path.abspath(c.out) for c in cfgs]), "checkpoints")


def _resumable(cfg: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE}


def resume_point(mgr, template: federated.FedState, cfgs: Sequence[RunConfig],
                 points: list[int], log: Callable[[str], None] = print
                 ) -> tuple[int, federated.FedState, list[list[dict[str, Any]]]]:
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
        saved = [{**_resumable(RunConfig()), **s} for s in saved]
    for i, cfg in enumerate(cfgs):
        if saved is None or len(saved) != len(cfgs) or saved[i] != _resumable(cfg):
            changed = sorted(k for k, v in _resumable(cfg).items()
                             if saved and i < len(saved) and saved[i].get(k) != v)
            raise ConfigError(f"--resume: the checkpoint in {mgr.directory} was written by other "
                              f"settings (differing: {', '.join(changed) or 'the runs'})")
    if step not in points:
        raise ConfigError(f"--resume: checkpoint step {step} is not an eval point of this run")
    for damaged in [s for s in mgr.all_steps() if s > step]:  # they would block saving again
        mgr.delete(damaged)
    records = []
    for cfg in cfgs:
        path = os.path.join(cfg.out, "metrics.jsonl")
        kept = [r for r in metrics_io.read_records(path) if r["step"] <= step] \
            if os.path.exists(path) else []
        records.append(kept)
    return points.index(step), states, records


def check_finite(round_losses: np.ndarray, first_step: int, cfgs: Sequence[RunConfig],
                 step: int, log: Callable[[str], None]) -> None:
    """Stop (or, with --continue_on_divergence, warn) on a non-finite loss,
    naming the step, worker and run; called after the metrics are written."""
    if np.all(np.isfinite(round_losses)):
        return
    bad_step, bad_run, bad_worker = np.argwhere(~np.isfinite(round_losses))[0]
    message = (f"training diverged: non-finite loss at step {first_step + bad_step + 1} on worker "
               f"{bad_worker}{'' if len(cfgs) == 1 else f' of run {bad_run} ({cfgs[bad_run].out})'}"
               f"; metrics up to step {step} are in {cfgs[bad_run].out}/metrics.jsonl")
    if not cfgs[0].continue_on_divergence:
        raise FloatingPointError(f"{message}; lower --lr (or pass --continue_on_divergence)")
    log(f"warning: {message}; continuing (--continue_on_divergence)")


class Sweep(NamedTuple):
    """The compiled programs of a sweep and their arguments at the start."""
    round_fn: Callable     # (states, train_x, train_y, groups, sync_periods, active)
    measure_fn: Callable   # (step_keys, params, local_x, local_y, groups, test_x, test_y)
    states: federated.FedState  # initial states of the R runs (RUN_AXES)
    edge_keys: jax.Array   # (R,) keys folded with the step at each eval point
    groups: jax.Array      # (R,) data group of each run
    sync_periods: federated.Protocol  # each field (R,): the runs' protocols
    train_x: jax.Array     # (G, K, n, H, W, C) uint8
    train_y: jax.Array     # (G, K, n)
    mesh: Optional[Any]    # the "runs" mesh when split over devices, else None


def prepare_sweep(cfgs: Sequence[RunConfig], data: SweepData, devices: int = 1) -> Sweep:
    """Programs (shared per setting, see `programs`), initial states, keys
    and per-run arrays of a sweep over `data` (from `load_sweep_data`):
    everything `run_sweep` builds before its loop, for it and for benchmarks."""
    first = cfgs[0]
    model, opt, round_fn, measure_fn = programs(
        data.num_classes, first.momentum, first.batch_size, first.eval_period, first.opt_sync,
        first.study, first.eval_chunk, first.aggregate, first.input_scale)
    mesh = sharding.run_mesh(devices) if devices > 1 else None
    if mesh is not None:
        round_fn, measure_fn = sharding.over_runs(round_fn, measure_fn, mesh)
    keys = jnp.stack([jax.random.split(jax.random.key(c.seeds[1])) for c in cfgs])
    states = federated.init_runs(keys[:, 0], model, opt, jnp.zeros((1,) + data.train_x.shape[3:]),
                                 first.workers, data.train_x.shape[2], [c.lr for c in cfgs],
                                 identical=not first.independent_init,
                                 torch_inits=[c.init == "torch" for c in cfgs])
    protocols = [federated.protocol_of(c.protocol, c.sync_period, c.check_every, c.delta)
                 for c in cfgs]
    sync_periods = federated.Protocol(*(jnp.asarray(np.stack(f)) for f in zip(*protocols)))
    return Sweep(round_fn, measure_fn, states, keys[:, 1], jnp.asarray(data.groups, jnp.int32),
                 sync_periods, jnp.asarray(data.train_x), jnp.asarray(data.train_y), mesh)


def check_devices(runs: int, devices: int) -> None:
    """`devices` must be a device jax sees and split the `runs` evenly."""
    available = len(jax.devices())
    if not 1 <= devices <= available:
        _fail("devices", f"must be in 1..{available} (the devices jax sees), got {devices}")
    if runs % devices:
        _fail("devices", f"{runs} runs do not split evenly over {devices} devices")


def run_sweep(cfgs: Sequence[RunConfig], log: Callable[[str], None] = print,
              checkpoint_dir: Optional[str] = None, devices: int = 1
              ) -> list[list[dict[str, Any]]]:
    """Train and measure R runs as one compiled program (vmapped over a run
    axis) and write each run's files under its `out`; returns each run's records.

    Runs may differ in split, alpha, seeds, lr, protocol and its settings
    (`SHARED` lists what they must share). Each run's metrics are those it
    would produce alone. Every `checkpoint_every` eval points the whole state
    is saved in `checkpoint_dir` (default: `default_checkpoint_dir`); with
    `resume` a run continues from there and writes the metrics an
    uninterrupted run would have written. `devices` > 1 splits the runs over
    that many devices (`sharding.over_runs`; R must be a multiple of it).

    While it runs, each run's `out` (and the default checkpoint folder's
    parent) is locked (`folder_lock.hold`: another process gets
    `folder_lock.LockError`). A SIGTERM or SIGINT finishes the current eval
    point, saves a checkpoint there and raises `preemption.Preempted`; a
    failed write raises `metrics_io.OutputError`; the previous metrics and
    checkpoint stay intact in both cases.
    """
    check_sweep(cfgs)
    check_devices(len(cfgs), devices)
    first = cfgs[0]
    # Several processes (sharding.init_distributed) compute the same
    # records; process 0 alone locks the folders, writes files and prints.
    writer = jax.process_index() == 0
    log = log if writer else (lambda line: None)
    if jax.process_count() > 1 and devices == 1 and first.checkpoint_every:
        _fail("checkpoint_every", f"with {jax.process_count()} processes, checkpoints need the "
              "runs split over their devices (--devices > 1); or set 0")
    folders = [c.out for c in cfgs] + ([] if checkpoint_dir else
                                       [os.path.dirname(default_checkpoint_dir(cfgs))])
    checkpoint_dir = checkpoint_dir or default_checkpoint_dir(cfgs)
    with contextlib.ExitStack() as stack:
        if writer:
            for folder in dict.fromkeys(folders):
                stack.enter_context(folder_lock.hold(folder))
            for cfg in cfgs:
                prepare_out(cfg.out, first.resume, first.overwrite)
            if first.overwrite and os.path.isdir(checkpoint_dir):
                shutil.rmtree(checkpoint_dir)
        sharding.barrier("fedjax_mi prepared out")

        def open_manager():  # after the checks that need the data; closed on every path
            mgr = checkpoint.manager(checkpoint_dir)
            stack.callback(checkpoint.close, mgr)
            return mgr

        stop = stack.enter_context(preemption.stop_on_signals())
        return _train_sweep(cfgs, log, checkpoint_dir, devices, open_manager, stop)


def _train_sweep(cfgs: Sequence[RunConfig], log: Callable[[str], None], checkpoint_dir: str,
                 devices: int, open_manager: Callable[[], Any], stop: preemption.StopRequest
                 ) -> list[list[dict[str, Any]]]:
    """The body of `run_sweep`, in its locked folders; `open_manager()`
    gives the checkpoint manager. Stops after the eval point during which
    `stop` fired (in any process, when there are several)."""
    first = cfgs[0]
    writer = jax.process_index() == 0
    data = load_sweep_data(cfgs)
    n = data.train_x.shape[2]
    for cfg in cfgs[1:]:  # each run's own sync period must fit the run
        make_schedule(cfg, n)
    schedule = make_schedule(first, n)
    local_x, local_y, test_x, test_y = eval_subsets(first, data)
    for cfg, group in zip(cfgs, data.groups):
        if writer:
            write_config(cfg, data, group, schedule, (local_x.shape[2], test_x.shape[0]),
                         len(cfgs))

    sweep = prepare_sweep(cfgs, data, devices)
    round_fn, measure_fn, states, edge_keys = (sweep.round_fn, sweep.measure_fn, sweep.states,
                                               sweep.edge_keys)
    groups, sync_periods, train_x, train_y = (sweep.groups, sweep.sync_periods, sweep.train_x,
                                              sweep.train_y)
    mesh = sweep.mesh
    if mesh is not None and jax.process_count() > 1:  # global arrays over the processes
        states = sharding.place_runs(states, mesh)
        edge_keys, groups, sync_periods = sharding.shard_leading(
            (edge_keys, groups, sync_periods), mesh, sharding.RUNS)
        train_x, train_y, local_x, local_y, test_x, test_y = sharding.replicate(
            (train_x, train_y, local_x, local_y, test_x, test_y), mesh)
    tag = "[run]" if len(cfgs) == 1 else f"[sweep of {len(cfgs)}]"
    for cfg in cfgs:
        log(f"{tag} {cfg.dataset} {cfg.split} K={cfg.workers} n={n}/worker lr={cfg.lr:g} "
            f"protocol={protocol_label(cfg)}"
            f" steps={schedule.total_steps} eval every {cfg.eval_period} -> {cfg.out}")

    points = schedule.eval_steps
    triggered = any(c.protocol == "triggered" for c in cfgs)
    mgr = open_manager()
    last, states, records = resume_point(mgr, states, cfgs, points, log)
    if mesh is not None:  # restored arrays sit on one device
        states = sharding.place_runs(states, mesh)
    if last >= 0:
        log(f"{tag} resumed from the checkpoint at step {points[last]} in {checkpoint_dir}")
    meta = {"configs": [_resumable(c) for c in cfgs]}
    losses, t_start = None, time.perf_counter()
    for i in range(last + 1, len(points)):
        step = points[i]
        if i > 0:
            active = step - points[i - 1]
            states, round_losses = round_fn(states, train_x, train_y, groups, sync_periods, active)
            round_losses = sharding.fetch(round_losses)[:active]  # (active, R, K)
            losses = round_losses.astype(np.float64).mean(axis=0)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(edge_keys, step)
        m = sharding.fetch(measure_fn(step_keys, states.params, local_x, local_y, groups,
                                      test_x, test_y))
        comm = comm_fields(states)
        for r, cfg in enumerate(cfgs):
            records[r] += to_records(step, step / schedule.steps_per_epoch,
                                     jax.tree.map(lambda a: a[r], m),
                                     None if losses is None else losses[r], comm[r])
            if writer:
                metrics_io.write_records(os.path.join(cfg.out, "metrics.jsonl"), records[r])
        if triggered and i < len(points) - 1:
            # The triggered protocol's decision, on the host between rounds:
            # the next round's first step syncs (docs/protocols.md).
            pending, sent = trigger_updates(cfgs, m)
            pending, sent = jnp.asarray(pending), states.models_sent + jnp.asarray(sent)
            if mesh is not None:
                pending, sent = (sharding.shard_leading(a, mesh, sharding.RUNS)
                                 for a in (pending, sent))
            states = states._replace(pending=pending, models_sent=sent)
        # Read once: a signal from here on stops at the next eval point. All
        # processes must agree, or one would save (a collective) alone.
        stopping = sharding.any_process(bool(stop))
        if (i > 0 and first.checkpoint_every and (i % first.checkpoint_every == 0
                                                 or i == len(points) - 1)) or stopping:
            checkpoint.save(mgr, step, states, meta)
        log(progress_line(tag, step - points[max(last, 0)], step, schedule, m,
                          time.perf_counter() - t_start))
        if i > 0:
            check_finite(round_losses, points[i - 1], cfgs, step, log)
        if stopping and i < len(points) - 1:
            where = cfgs[0].out if len(cfgs) == 1 else "each run's folder"
            raise preemption.Preempted(
                f"stopped by {stop.name} after step {step}/{schedule.total_steps}: checkpoint "
                f"in {checkpoint_dir}, metrics up to step {step} in {where}", stop.signum, step)
    return records


def progress_line(tag: str, done: int, step: int, schedule: Schedule, m: measure.Measurement,
                  elapsed: float) -> str:
    """One terminal line per eval point: accuracies and I(Z;Y) of each run's
    own local models (worker d on local d) and average, rate (over the `done`
    steps of this process) and ETA."""
    rate = done / elapsed if done else 0.0
    eta = _duration((schedule.total_steps - step) / rate) if rate else "?"
    fmt = lambda values: "/".join(f"{v:.2f}" for v in np.ravel(values))
    own = lambda a: np.diagonal(a[:, :-1], axis1=1, axis2=2)
    runs = "" if m.acc.shape[0] == 1 else " (runs joined by |)"
    join = lambda values: " | ".join(fmt(v) for v in values)
    return (f"{tag} step {step}/{schedule.total_steps} (epoch {step / schedule.steps_per_epoch:.2f})"
            f"  acc own {join(own(m.acc))} avg {join(m.acc[:, -1])}"
            f"  I(Z;Y) own {join(own(m.mi_zy))} avg {join(m.mi_zy[:, -1])}"
            f"  {rate:.1f} steps/s  ETA {eta}{runs}")


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run one experiment (a sweep of one) and write its files under
    `cfg.out`; returns its records."""
    return run_sweep([cfg], log)[0]
