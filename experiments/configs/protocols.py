"""The communication study (docs/protocols.md): nosync, periodic at a short
and a long period, dynamic averaging (Kamp et al., "Efficient decentralized
deep learning by dynamic model averaging", 2018) with three deltas checked
every half short period, and measurement-triggered sync with two ratios,
on the iid and the classes split, 3 seeds each: 48 runs in one sweep.

    python -m experiments.reproduce --preset=protocols_digits         # digits, CPU
    python -m experiments.reproduce --preset=protocols --cifar_dir=DIR  # full size

Deltas: the drift max_k ||w_k - r||^2 that periodic runs reach 0.1, ~0.3 and
1 x the long period after a sync (pilot runs of seed 100, not a study seed;
median over their sync cycles and both splits; docs/protocols.md gives the
commands and figures). Ratios: 0.8 (the summaries' earlier "clearly
below", since replaced: docs/reproduction.md, "The claim rules") and a
stricter 0.95, chosen a priori, not tuned. KDE alone measures I(Z;Y) (cheap;
the trigger reads the accuracy).

Expected (digits, docs/protocols.md): on the classes split dynamic delta=0.9
reaches 89.5% against periodic-8's 92.8%, at 1/3.6 of its bytes. CIFAR-10 at
2,000 images a worker (--per_worker=2000): dynamic delta=5.6 reaches 34.9%
against periodic-100's 35.9%, at 1/4.0 of its bytes. Full size, classes
split, seeds 0-1 (--study_runs): dynamic delta=5.6 reaches 49.0% against
periodic-100's 48.5%, at 1/6.6 of its bytes; on iid every protocol tried
is within 0.3 points (delta=23 at 1/18 of the bytes).
"""

import fnmatch
from typing import Optional, Sequence

from experiments.configs import common
from fedjax_mi.config import ConfigError, RunConfig


def base(study: str) -> RunConfig:
    """The settings every run of the study shares."""
    if study == "protocols":
        return common.base("paper").replace(mi="kde")
    if study == "protocols_digits":
        # 256 samples a worker, batch 16 (16 steps an epoch), 10 epochs,
        # measured every epoch. lr stated on its own: the deltas and the
        # docs' table were measured at 0.05, and the quick preset's rate
        # (chosen for fig 1's collapse) is not that.
        return common.base("quick").replace(
            per_worker=256, batch_size=16, epochs=10.0, eval_period=16, lr=0.05, mi="kde"
        )
    raise KeyError(study)


STUDIES = {
    "protocols": dict(
        periods=(100, 1000), check_every=50, deltas=(0.96, 5.6, 23.0), ratios=(0.8, 0.95)
    ),
    "protocols_digits": dict(
        periods=(8, 80), check_every=4, deltas=(0.27, 0.9, 3.3), ratios=(0.8, 0.95)
    ),
}
SEEDS = (0, 1, 2)
# The settings each run of the study sets (so a flag may not override them).
PER_RUN = (
    "split",
    "protocol",
    "sync_period",
    "check_every",
    "delta",
    "trigger_metric",
    "trigger_ratio",
    "seed",
)


def protocol_runs(study: str) -> dict[str, dict]:
    """{run name: its protocol, split and seed} of a protocol study."""
    spec = STUDIES[study]
    settings = [("nosync", dict(protocol="nosync"))]
    settings += [
        (f"periodic{p}", dict(protocol="periodic", sync_period=p)) for p in spec["periods"]
    ]
    settings += [
        (
            f"dynamic{spec['check_every']}-d{d:g}",
            dict(protocol="dynamic", check_every=spec["check_every"], delta=d),
        )
        for d in spec["deltas"]
    ]
    settings += [
        (f"triggered-acc{r:g}", dict(protocol="triggered", trigger_metric="acc", trigger_ratio=r))
        for r in spec["ratios"]
    ]
    return {
        f"{split}-{name}-seed{seed}": dict(values, split=split, seed=seed)
        for split in ("iid", "classes")
        for name, values in settings
        for seed in SEEDS
    }


def get_configs(study: str, patterns: Optional[Sequence[str]] = None) -> dict[str, RunConfig]:
    """{run name: its RunConfig} (without `out`) of a protocol study; with
    `patterns` (shell-style, e.g. "classes-periodic*") only the runs whose
    names match one of them. Raises ConfigError when none does.

    >>> list(get_configs("protocols_digits", ["classes-periodic8-seed*"]))
    ['classes-periodic8-seed0', 'classes-periodic8-seed1', 'classes-periodic8-seed2']
    """
    clear = {name: None for name in PER_RUN[2:-1]}
    runs = protocol_runs(study)
    if patterns:
        runs = {n: v for n, v in runs.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}
        if not runs:
            raise ConfigError(
                "study_runs",
                f"no run of {study} matches {list(patterns)}; its runs are named like "
                f"{next(iter(protocol_runs(study)))!r}",
            )
    return {name: base(study).replace(**{**clear, **values}) for name, values in runs.items()}
