"""What a run leaves on disk: its output folder, `config.json`, and the
records of `metrics.jsonl` (one per eval point, model and dataset)."""

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
from importlib import metadata
from typing import Any, Callable, Optional, Sequence

import jax

from fedjax_mi import config, measure, metrics_io
from fedjax_mi.config import ConfigError, RunConfig, Schedule

RESULTS = ("metrics.jsonl", "config.json", "checkpoints", "figures", "summary.md", "runs.json")


def prepare_out(out: str, resume: bool = False, overwrite: bool = False) -> None:
    """Create the output folder and check it is writable, before any work.

    A folder that already holds results is refused unless `resume` (continue
    from its checkpoint) or `overwrite` (delete those results first)."""
    held = [
        name for name in RESULTS if os.path.exists(os.path.join(out, name)) and name != "figures"
    ]
    if held and not (resume or overwrite):
        raise ConfigError(
            "out",
            f"{out!r} already holds results ({', '.join(held)}); pass "
            f"--resume to continue that run or --overwrite to start over",
        )
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
        raise ConfigError("out", f"cannot write to {out!r} ({e.strerror or e})") from None


def default_checkpoint_dir(cfgs: Sequence[RunConfig]) -> str:
    """OUT/checkpoints for one run; the runs' common parent folder for a sweep."""
    if len(cfgs) == 1:
        return os.path.join(cfgs[0].out, "checkpoints")
    return os.path.join(os.path.commonpath([os.path.abspath(c.out) for c in cfgs]), "checkpoints")


def environment() -> dict[str, Any]:
    """Package versions, Python, device and command line, for `config.json`."""
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "tensorflow-datasets"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "argv": sys.argv,
    }


def write_config(
    cfg: RunConfig, data_info: dict[str, int], schedule: Schedule, sweep_size: int
) -> None:
    """OUT/config.json: every setting by its flat name, the environment, the
    data sizes (`data_info`), the schedule and the sweep's size."""
    info = {
        "config": cfg.flat(),
        "environment": environment(),
        "data": data_info,
        "schedule": dataclasses.asdict(schedule),
        "runs_in_program": sweep_size,
    }
    metrics_io.write_atomic(os.path.join(cfg.out, "config.json"), json.dumps(info, indent=2))


def read_config(run_dir: str) -> RunConfig:
    """The RunConfig a run recorded in its config.json."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise ConfigError("runs", f"{run_dir!r} holds no config.json")
    with open(path) as fh:
        return config.make(**json.load(fh)["config"])


def to_records(
    step: int, epoch: float, m: measure.Measurement, losses, comm: Optional[dict[str, Any]] = None
) -> list[dict[str, Any]]:
    """One record per (model, dataset) of one eval point.

    Every record has `mi_xz`, `mi_zy` and their floors (the primary
    estimator's, `measure.primary`; null where no chosen estimator defines
    them, and I(X;Z) on the test split), every estimator's own fields
    (`measure.Measurement.mi`; on the test split the I(Z;Y) ones,
    `Measurement.test_mi`, cross-fitted on the test samples), and the head's
    bounds `mi_zy_head` (Barber–Agakov) and `mi_zy_fano`. `comm` (the
    communication so far and the drift, `sweep.comm_fields`) is added to
    every record; the average's records also hold the interpolation fields
    (`interp_fields`)."""
    num_models, num_datasets = m.acc.shape
    names = [f"worker{k}" for k in range(num_models - 1)] + ["average"]
    clean = lambda v: None if not math.isfinite(v) else round(float(v), 6)
    records = []
    for i, model in enumerate(names):
        loss = None if (losses is None or model == "average") else clean(losses[i])
        for d in range(num_datasets):
            records.append(
                dict(
                    step=step,
                    epoch=round(epoch, 4),
                    model=model,
                    dataset=f"local{d}",
                    mi_xz=clean(m.mi_xz[i, d]),
                    mi_zy=clean(m.mi_zy[i, d]),
                    acc=clean(m.acc[i, d]),
                    loss=loss,
                    mi_xz_floor=clean(m.mi_xz_floor[i, d]),
                    mi_zy_floor=clean(m.mi_zy_floor[i, d]),
                    mi_zy_head=clean(m.head[i, d]),
                    mi_zy_fano=clean(m.fano[i, d]),
                    **{k: clean(v[i, d]) for k, v in sorted(m.mi.items())},
                    **(comm or {}),
                    **(interp_fields(m, d, clean) if model == "average" else {}),
                )
            )
        records.append(
            dict(
                step=step,
                epoch=round(epoch, 4),
                model=model,
                dataset="test",
                mi_xz=None,
                mi_zy=clean(m.test_mi_zy[i]),
                acc=clean(m.test_acc[i]),
                loss=loss,
                mi_xz_floor=None,
                mi_zy_floor=clean(m.test_mi_zy_floor[i]),
                mi_zy_head=clean(m.test_head[i]),
                mi_zy_fano=clean(m.test_fano[i]),
                **{k: clean(m.test_mi[k][i]) if k in m.test_mi else None for k in sorted(m.mi)},
                **(comm or {}),
                **(interp_fields(m, None, clean) if model == "average" else {}),
            )
        )
    return records


def interp_name(quantity: str, alpha: float) -> str:
    """Record field of the interpolant at `alpha`.

    >>> interp_name("acc", 0.25), interp_name("loss", 1.0)
    ('interp_acc_a0.25', 'interp_loss_a1')
    """
    return f"interp_{quantity}_a{alpha:g}"


def interp_fields(m: measure.Measurement, d: Optional[int], clean: Callable) -> dict[str, Any]:
    """Fields of the average's record on local dataset d (None: the test
    split): every interpolant's accuracy and loss (nats), the `weight_distance`,
    `barrier` = the loss at a = 0.5 minus the mean of the losses at a = 0 and
    1, and `max_barrier` = the largest excess over the alphas of the path's
    loss over the linear interpolation of its ends, max_a L(a) - ((1 - a) L(0)
    + a L(1)) (Frankle et al. 2020; >= 0, as a = 0 and 1 give 0)."""
    alphas = measure.INTERP_ALPHAS
    acc = m.test_interp_acc if d is None else m.interp_acc[:, d]
    loss = m.test_interp_loss if d is None else m.interp_loss[:, d]
    out = {"barrier": None, "max_barrier": None, "weight_distance": clean(m.weight_distance)}
    for quantity, values in (("acc", acc), ("loss", loss)):
        for j, a in enumerate(alphas):
            out[interp_name(quantity, a)] = clean(values[j])
    losses = {a: float(loss[j]) for j, a in enumerate(alphas)}
    out["barrier"] = clean(losses[0.5] - 0.5 * (losses[0.0] + losses[1.0]))
    out["max_barrier"] = clean(
        max(losses[a] - ((1.0 - a) * losses[0.0] + a * losses[1.0]) for a in alphas)
    )
    return out


def kept_records(out: str, step: int) -> list[dict[str, Any]]:
    """The records of OUT/metrics.jsonl up to `step` (none if there is no file)."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [r for r in metrics_io.read_records(path) if r["step"] <= step]
