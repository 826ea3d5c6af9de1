"""One federated experiment: load and split data, train, measure at every
eval point, write `metrics.jsonl` and `config.json`.

The host loop only sequences compiled programs: a round of `eval_period`
steps (one `lax.scan`, compiled once; a shorter last round reuses it with
fewer active steps) and the eval-point measurement (compiled once).
"""

import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_mi import data as data_lib
from fedjax_mi import federated, measure, metrics_io, models


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
    eval_period: int = 100
    epochs: float = 20.0
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    opt_sync: str = "average"
    independent_init: bool = False
    seed: int = 0
    data_seed: Optional[int] = None
    mi_samples: Optional[int] = None
    test_samples: Optional[int] = None
    edge: str = "reference"
    edge_version: str = "4.2.0"
    eval_chunk: int = 500
    out: str = "runs/default"

    @property
    def seeds(self) -> tuple[int, int]:
        """(data seed for the partition, seed of the training/EDGE keys)."""
        return (self.seed if self.data_seed is None else self.data_seed), self.seed


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
    if cfg.protocol == "sync" and (cfg.sync_period is None or cfg.sync_period < 1):
        _fail("sync_period", f"the sync protocol needs --sync_period >= 1, got {cfg.sync_period}")
    if cfg.protocol == "nosync" and cfg.sync_period is not None:
        _fail("sync_period", "has no meaning with --protocol=nosync (the workers never "
              "receive the average); drop it or use --protocol=sync")
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
    if cfg.opt_sync not in federated.OPT_SYNCS:
        _fail("opt_sync", f"unknown choice {cfg.opt_sync!r}; choose from {federated.OPT_SYNCS}")
    if cfg.edge not in ("reference", "default"):
        _fail("edge", f"must be 'reference' or 'default', got {cfg.edge!r}")
    if cfg.edge_version not in ("4.2.0", "4.3.1", "4.4.1"):
        _fail("edge_version", f"must be 4.2.0, 4.3.1 or 4.4.1, got {cfg.edge_version!r}")


def prepare_out(out: str) -> None:
    """Create the output folder and check it is writable, before any work."""
    try:
        os.makedirs(os.path.join(out, "figures"), exist_ok=True)
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
    if cfg.protocol == "sync" and cfg.sync_period > total:
        _fail("sync_period", f"{cfg.sync_period} steps is longer than the whole run ({total} steps)")
    return Schedule(steps_per_epoch, total, cfg.eval_period)


def load_federated(cfg: RunConfig) -> data_lib.FederatedData:
    dataset = data_lib.load_dataset(cfg.dataset, cifar_dir=cfg.cifar_dir,
                                    tfds_data_dir=cfg.tfds_data_dir)
    return data_lib.federate(dataset, cfg.workers, cfg.split, seed=cfg.seeds[0],
                             alpha=cfg.alpha, per_worker=cfg.per_worker)


def eval_subsets(cfg: RunConfig, fed: data_lib.FederatedData):
    """The local samples (first `mi_samples` of each share, which is in random
    order already) and test samples that are measured."""
    m = fed.train_x.shape[1] if cfg.mi_samples is None else cfg.mi_samples
    if m > fed.train_x.shape[1]:
        _fail("mi_samples", f"{m} is more than a local dataset holds ({fed.train_x.shape[1]})")
    t = fed.test_x.shape[0] if cfg.test_samples is None else min(cfg.test_samples, fed.test_x.shape[0])
    return (jnp.asarray(fed.train_x[:, :m]), jnp.asarray(fed.train_y[:, :m]),
            jnp.asarray(fed.test_x[:t]), jnp.asarray(fed.test_y[:t]))


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


def to_records(step: int, epoch: float, m: measure.Measurement, losses) -> list[dict[str, Any]]:
    """One record per (model, dataset) of one eval point."""
    num_models, num_datasets = m.acc.shape
    names = [f"worker{k}" for k in range(num_models - 1)] + ["average"]
    clean = lambda v: None if not math.isfinite(v) else round(float(v), 6)
    records = []
    for i, model in enumerate(names):
        loss = None if (losses is None or model == "average") else clean(losses[i])
        for d in range(num_datasets):
            records.append(dict(step=step, epoch=round(epoch, 4), model=model, dataset=f"local{d}",
                                mi_xz=clean(m.mi_xz[i, d]), mi_zy=clean(m.mi_zy[i, d]),
                                acc=clean(m.acc[i, d]), loss=loss))
        records.append(dict(step=step, epoch=round(epoch, 4), model=model, dataset="test",
                            mi_xz=None, mi_zy=None, acc=clean(m.test_acc[i]), loss=loss))
    return records


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


@functools.lru_cache(maxsize=8)
def programs(num_classes: int, momentum: float, batch_size: int, eval_period: int,
             opt_sync: str, edge_mode: str, edge_version: str, eval_chunk: int):
    """(model, optimizer, round_fn, measure_fn), built once per setting so that
    runs of the same shapes in one process (reproduce, tests) share compilations."""
    model = models.LeNet(num_classes=num_classes)
    opt = federated.make_optimizer(momentum)
    round_fn = federated.make_round(model, opt, batch_size=batch_size, steps=eval_period,
                                    opt_sync=opt_sync)
    measure_fn = measure.make_measure(model, *measure.paper_edge_configs(edge_mode, edge_version),
                                      chunk=eval_chunk)
    return model, opt, round_fn, measure_fn


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run one experiment and write its files under `cfg.out`; returns the records."""
    validate(cfg)
    prepare_out(cfg.out)
    fed = load_federated(cfg)
    schedule = make_schedule(cfg, fed.train_x.shape[1])
    local_x, local_y, test_x, test_y = eval_subsets(cfg, fed)
    with open(os.path.join(cfg.out, "config.json"), "w") as fh:
        json.dump({"config": dataclasses.asdict(cfg), "environment": environment(),
                   "data": {"local_size": int(fed.train_x.shape[1]), "dropped": int(fed.dropped),
                            "test_size": int(fed.test_x.shape[0]),
                            "measured_local": int(local_x.shape[1]),
                            "measured_test": int(test_x.shape[0])},
                   "schedule": dataclasses.asdict(schedule)}, fh, indent=2)

    model, opt, round_fn, measure_fn = programs(
        fed.num_classes, cfg.momentum, cfg.batch_size, cfg.eval_period, cfg.opt_sync,
        cfg.edge, cfg.edge_version, cfg.eval_chunk)
    train_x, train_y = jnp.asarray(fed.train_x), jnp.asarray(fed.train_y)
    init_key, edge_key = jax.random.split(jax.random.key(cfg.seeds[1]))
    state = federated.init(init_key, model, opt, jnp.zeros((1,) + fed.train_x.shape[2:]),
                           cfg.workers, fed.train_x.shape[1], cfg.lr,
                           identical=not cfg.independent_init)
    sync_period = federated.sync_period_of(cfg.protocol, cfg.sync_period or 0)
    log(f"[run] {cfg.dataset} {cfg.split} K={cfg.workers} n={fed.train_x.shape[1]}/worker "
        f"protocol={cfg.protocol}{'' if cfg.protocol == 'nosync' else f' every {sync_period}'} "
        f"steps={schedule.total_steps} eval every {cfg.eval_period} -> {cfg.out}")

    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    records, losses, t_start = [], None, time.perf_counter()
    points = schedule.eval_steps
    for i, step in enumerate(points):
        if i > 0:
            state, round_losses = round_fn(state, train_x, train_y, sync_period,
                                           step - points[i - 1])
            round_losses = np.asarray(round_losses[:step - points[i - 1]])
            losses = round_losses.mean(axis=0)
        m = jax.device_get(measure_fn(jax.random.fold_in(edge_key, step), state.params,
                                      local_x, local_y, test_x, test_y))
        records += to_records(step, step / schedule.steps_per_epoch, m, losses)
        metrics_io.write_records(metrics_path, records)
        elapsed = time.perf_counter() - t_start
        rate = step / elapsed if step else 0.0
        eta = (schedule.total_steps - step) / rate if rate else float("nan")
        fmt = lambda values: "/".join(f"{v:.2f}" for v in np.ravel(values))
        log(f"[run] step {step}/{schedule.total_steps} (epoch {step / schedule.steps_per_epoch:.2f})"
            f"  acc own {fmt(m.acc[:-1].diagonal())} avg {fmt(m.acc[-1])}"
            f"  I(Z;Y) own {fmt(m.mi_zy[:-1].diagonal())} avg {fmt(m.mi_zy[-1])}"
            f"  {rate:.1f} steps/s  ETA {_duration(eta) if rate else '?'}")
        if losses is not None and not np.all(np.isfinite(round_losses)):
            bad_step, bad_worker = np.argwhere(~np.isfinite(round_losses))[0]
            raise FloatingPointError(
                f"training diverged: non-finite loss at step {points[i - 1] + bad_step + 1} "
                f"on worker {bad_worker} (metrics up to step {step} are in {metrics_path}); "
                f"lower --lr")
    return records
