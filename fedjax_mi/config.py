"""The settings of one experiment: `RunConfig`, five frozen sub-configs.

Each setting is declared once, here, with its default and its help text;
the absl flags of `experiments.flags` are made from these declarations, and
`config.json` records them under the same names. A setting's name is unique
across the sub-configs, so a config can also be made, read and changed by
flat names (`make`, `RunConfig.flat`, `RunConfig.replace`).

Two marks on a declaration say how it behaves in a sweep and on resume:

- `per_run`: the runs of one sweep (one compiled program, vmapped over a
  run axis) may differ in it; every other setting fixes a shape or the
  compiled programs and must be shared (`check_sweep`).
- `resumable`: it may change when a run is resumed (where the data lives,
  the output policy); every other setting must match the checkpoint's.

Library errors are `ConfigError`s that name the setting; the command-line
programs print them as flags (`ConfigError.as_flag`).
"""

import dataclasses
import math
import os
import typing
from typing import Any, Optional, Sequence

from fedjax_mi import data as data_lib
from fedjax_mi import federated, measure, models
from fedjax_mi.mi import edge_reference


class ConfigError(ValueError):
    """A bad setting: `setting` names it, the message says what is wrong."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}")
        self.setting, self.message = setting, message

    def as_flag(self) -> str:
        """The message as the command line reports it: '--lr: must be > 0, got 0'."""
        return f"--{self.setting}: {self.message}"


def _fail(setting: str, message: str):
    raise ConfigError(setting, message)


def setting(
    default: Any,
    help: str,
    *,
    per_run: bool = False,
    resumable: bool = False,
    enum: Optional[Sequence[str]] = None,
) -> Any:
    """A declared setting: its default, help text and marks (module docstring)."""
    return dataclasses.field(
        default=default, metadata=dict(help=help, per_run=per_run, resumable=resumable, enum=enum)
    )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What each worker trains on."""

    dataset: str = setting(
        "digits",
        f"one of {data_lib.DATASETS}; 'digits' is the embedded "
        "offline default, 'cifar10' reads --cifar_dir or TFDS",
    )
    cifar_dir: Optional[str] = setting(
        None, "folder in the official cifar-10-batches-py layout (or its parent)", resumable=True
    )
    tfds_data_dir: Optional[str] = setting(
        None, "TFDS data_dir holding a prepared cifar10", resumable=True
    )
    workers: int = setting(2, "number of workers K")
    split: str = setting("iid", f"partition of the training set: {data_lib.SPLITS}", per_run=True)
    alpha: Optional[float] = setting(
        None, "Dirichlet concentration (only with --split=dirichlet)", per_run=True
    )
    per_worker: Optional[int] = setting(None, "truncate every local dataset to this many samples")
    data_seed: Optional[int] = setting(
        None, "seed of the data partition (default: --seed)", per_run=True
    )

    def validate(self) -> None:
        if self.dataset not in data_lib.DATASETS:
            _fail("dataset", f"unknown dataset {self.dataset!r}; choose from {data_lib.DATASETS}")
        if self.cifar_dir is not None and self.dataset != "cifar10":
            _fail("cifar_dir", f"is only used with --dataset=cifar10, not {self.dataset!r}")
        if self.workers < 1:
            _fail("workers", f"must be >= 1, got {self.workers}")
        if self.split not in data_lib.SPLITS:
            _fail("split", f"unknown split {self.split!r}; choose from {data_lib.SPLITS}")
        if self.split == "dirichlet" and (self.alpha is None or not self.alpha > 0):
            _fail("alpha", f"the dirichlet split needs --alpha > 0, got {self.alpha}")
        if self.split != "dirichlet" and self.alpha is not None:
            _fail("alpha", f"only applies to --split=dirichlet, not {self.split!r}")
        _at_least_one_when_given(self, "per_worker")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How each worker trains between syncs."""

    epochs: float = setting(20.0, "epochs of each worker over its local data")
    batch_size: int = setting(32, "local mini-batch size")
    lr: float = setting(0.01, "SGD learning rate", per_run=True)
    momentum: float = setting(0.0, "SGD momentum (0: plain SGD)")
    init: str = setting(
        "flax",
        "initial weights: flax's defaults (lecun_normal, zero biases) "
        "or PyTorch's (U(+-1/sqrt(fan_in)) for weights and biases)",
        per_run=True,
        enum=models.INITS,
    )
    input_scale: str = setting(
        "unit",
        "pixels scaled to [0, 1] (unit) or [-1, 1] (symmetric, PyTorch's CIFAR-10 tutorial)",
        enum=models.INPUT_SCALES,
    )
    opt_sync: str = setting("average", "optimiser state at a sync: average, reset or keep")
    independent_init: bool = setting(
        False, "draw each worker's initial weights independently (default: identical)"
    )
    seed: int = setting(
        0, "seed of the initial weights, data order and estimator keys", per_run=True
    )

    def validate(self) -> None:
        if self.batch_size < 1:
            _fail("batch_size", f"must be >= 1, got {self.batch_size}")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            _fail("epochs", f"must be > 0, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _fail("lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            _fail("momentum", f"must be in [0, 1), got {self.momentum}")
        if self.init not in models.INITS:
            _fail("init", f"unknown scheme {self.init!r}; choose from {models.INITS}")
        if self.input_scale not in models.INPUT_SCALES:
            _fail(
                "input_scale",
                f"unknown choice {self.input_scale!r}; choose from {models.INPUT_SCALES}",
            )
        if self.opt_sync not in federated.OPT_SYNCS:
            _fail(
                "opt_sync", f"unknown choice {self.opt_sync!r}; choose from {federated.OPT_SYNCS}"
            )


PERIODIC = ("periodic", "sync")  # "sync": the old name, kept for flagfiles
TRIGGER_METRICS = ("acc", "mi_zy")


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """When the workers' models are aggregated, and how (docs/protocols.md)."""

    protocol: str = setting(
        "nosync",
        "'nosync': the average is only measured; 'periodic' (or its old name "
        "'sync'): sent back every --sync_period steps; 'dynamic': when a worker drifts from the "
        "last average by more than --delta; 'triggered': when the measurement says so "
        "(docs/protocols.md)",
        per_run=True,
    )
    sync_period: Optional[int] = setting(
        None, "local steps between averagings (protocol periodic)", per_run=True
    )
    check_every: Optional[int] = setting(
        None, "dynamic: local steps b between condition checks", per_run=True
    )
    delta: Optional[float] = setting(
        None,
        "dynamic: sync when some worker's ||w - r||^2 > delta "
        "(squared L2 distance of all its parameters from the last "
        "average r)",
        per_run=True,
    )
    trigger_metric: Optional[str] = setting(
        None,
        "triggered: 'acc' (default) or 'mi_zy' (the "
        "primary I(Z;Y) estimator of --mi), on the local "
        "datasets",
        per_run=True,
    )
    trigger_ratio: Optional[float] = setting(
        None,
        "triggered: sync when the average's quality < "
        "rho x the local models' own (0: never, inf: at "
        "every eval point)",
        per_run=True,
    )
    aggregate: str = setting(
        "mean",
        "what a sync sends back: 'mean', 'median' (coordinate-wise, "
        "K >= 3) or 'weighted' (refused: shares are cut to one size)",
    )

    def validate(self) -> None:
        if self.protocol not in federated.PROTOCOLS:
            _fail(
                "protocol", f"unknown protocol {self.protocol!r}; choose from {federated.PROTOCOLS}"
            )
        if self.protocol in PERIODIC:
            if self.sync_period is None or self.sync_period < 1:
                _fail(
                    "sync_period",
                    f"the {self.protocol} protocol needs --sync_period >= 1, "
                    f"got {self.sync_period}",
                )
        elif self.sync_period is not None:
            _fail(
                "sync_period",
                f"has no meaning with --protocol={self.protocol} (only periodic "
                "syncs every --sync_period steps); drop it or use --protocol=periodic",
            )
        if self.protocol == "dynamic":
            if self.check_every is None or self.check_every < 1:
                _fail(
                    "check_every",
                    f"the dynamic protocol needs --check_every >= 1, got {self.check_every}",
                )
            if self.delta is None or not self.delta >= 0:  # also refuses NaN
                _fail(
                    "delta",
                    f"the dynamic protocol needs --delta >= 0 (inf: never sync), got {self.delta}",
                )
        else:
            for name in ("check_every", "delta"):
                if getattr(self, name) is not None:
                    _fail(name, f"only applies to --protocol=dynamic, not {self.protocol!r}")
        if self.protocol == "triggered":
            if self.trigger_ratio is None or not self.trigger_ratio >= 0:
                _fail(
                    "trigger_ratio",
                    f"the triggered protocol needs --trigger_ratio >= 0 "
                    f"(0: never sync, inf: at every eval point), got {self.trigger_ratio}",
                )
            if self.metric not in TRIGGER_METRICS:
                _fail(
                    "trigger_metric",
                    f"unknown metric {self.metric!r}; choose from {TRIGGER_METRICS}",
                )
        else:
            for name in ("trigger_metric", "trigger_ratio"):
                if getattr(self, name) is not None:
                    _fail(name, f"only applies to --protocol=triggered, not {self.protocol!r}")
        if self.aggregate not in federated.AGGREGATES:
            _fail(
                "aggregate",
                f"unknown choice {self.aggregate!r}; choose from {federated.AGGREGATES}",
            )
        if self.aggregate == "weighted":
            _fail(
                "aggregate",
                "'weighted' weighs workers by their local dataset sizes, but every "
                "share is cut to the smallest one's size (data.federate), so it would equal "
                "'mean'; use --aggregate=mean",
            )

    @property
    def metric(self) -> str:
        """The triggered protocol's quality measure ('acc' when not given)."""
        return self.trigger_metric or "acc"

    @property
    def label(self) -> str:
        """e.g. "periodic every 100", "dynamic b=10 delta=0.5", "triggered acc rho=0.9"."""
        if self.protocol in PERIODIC:
            return f"{self.protocol} every {self.sync_period}"
        if self.protocol == "dynamic":
            return f"dynamic b={self.check_every} delta={self.delta:g}"
        if self.protocol == "triggered":
            return f"triggered {self.metric} rho={self.trigger_ratio:g}"
        return self.protocol


@dataclasses.dataclass(frozen=True)
class MeasurementConfig:
    """When and how the models are measured (docs/estimators.md)."""

    eval_period: int = setting(100, "local steps between measurements")
    mi_samples: Optional[int] = setting(None, "local samples measured per dataset (default: all)")
    test_samples: Optional[int] = setting(None, "test samples measured (default: all)")
    mi: str = setting(
        measure.DEFAULT_MI,
        "estimators to record, comma-separated, from "
        "edge_reference, quantile, knn, probe, kde (docs/estimators.md), or 'none' "
        "(accuracy and the head's bounds only); the first defining a quantity also "
        "fills mi_xz / mi_zy",
    )
    edge_version: str = setting(
        measure.StudySettings.edge_version, f"EDGE reference version {edge_reference.VERSIONS}"
    )
    edge_xz: str = setting(
        "",
        "edge_reference options for I(X;Z), 'NAME=VALUE; ...': the "
        "reference's keywords (U, gamma, epsilon, L_ensemble, ...) replacing "
        "the study's settings",
    )
    edge_zy: str = setting("", "edge_reference options for I(Z;Y), as --edge_xz")
    kde_noise_var: float = setting(
        measure.StudySettings.kde_noise_var,
        "KDE noise variance s^2: a multiple of Z's mean per-dimension "
        "variance (--kde_relative, the default) or absolute",
    )
    kde_relative: bool = setting(
        True, "KDE noise relative to Z's own scale (--nokde_relative: absolute s^2)"
    )
    kde_queries: Optional[int] = setting(
        measure.StudySettings.kde_queries,
        "KDE query rows per estimate (all N rows enter each "
        "sum); default as docs/estimators.md measured",
    )
    eval_chunk: int = setting(
        500,
        "images per forward chunk when measuring (at most 50 on the "
        "CPU, faster there: docs/performance.md)",
    )

    def validate(self) -> None:
        for name in ("eval_period", "eval_chunk"):
            if getattr(self, name) < 1:
                _fail(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("mi_samples", "test_samples"):
            _at_least_one_when_given(self, name)
        try:
            measure.parse_mi(self.mi)
        except ValueError as e:
            _fail("mi", str(e))
        if self.edge_version not in edge_reference.VERSIONS:
            _fail(
                "edge_version",
                f"must be one of {edge_reference.VERSIONS}, got {self.edge_version!r}",
            )
        for name in ("edge_xz", "edge_zy"):
            try:
                options = measure.parse_edge_options(getattr(self, name))
                side = dict(edge_xz=(options, ()), edge_zy=((), options))[name]
                measure.paper_edge_configs(self.edge_version, *side)
            except (ValueError, TypeError) as e:
                _fail(name, f"{e} (EDGE reference keywords)")
        if not (self.kde_noise_var > 0 and math.isfinite(self.kde_noise_var)):
            _fail("kde_noise_var", f"must be > 0, got {self.kde_noise_var}")
        if self.kde_queries is not None and self.kde_queries < 2:
            _fail("kde_queries", f"must be >= 2 when given, got {self.kde_queries}")

    @property
    def study(self) -> measure.StudySettings:
        """The estimator settings (`--mi`, `--edge_*`, `--kde_*`)."""
        return measure.StudySettings(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(measure.StudySettings)}
        )


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where the results go and what happens to results already there."""

    out: str = setting("runs/default", "output folder", per_run=True)
    checkpoint_every: int = setting(
        10, "save the whole training state every N eval points (0: never)", resumable=True
    )
    resume: bool = setting(
        False, "continue the run in --out from its last checkpoint", resumable=True
    )
    overwrite: bool = setting(False, "delete the results already in --out first", resumable=True)
    continue_on_divergence: bool = setting(
        False, "warn instead of stopping when a training loss is NaN or inf", resumable=True
    )

    def validate(self) -> None:
        if self.checkpoint_every < 0:
            _fail("checkpoint_every", f"must be >= 0 (0: never), got {self.checkpoint_every}")
        if self.resume and self.overwrite:
            _fail("resume", "and --overwrite exclude each other")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of one experiment, by concern."""

    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    measurement: MeasurementConfig = MeasurementConfig()
    output: OutputConfig = OutputConfig()

    @property
    def seeds(self) -> tuple[int, int]:
        """(data seed for the partition, seed of the training and estimator keys)."""
        seed = self.training.seed
        return (seed if self.data.data_seed is None else self.data.data_seed), seed

    @property
    def out(self) -> str:
        return self.output.out

    def flat(self) -> dict[str, Any]:
        """{setting: value}, in declaration order (the flags, `config.json`)."""
        return {
            name: getattr(getattr(self, section), name) for name, (section, _) in FIELDS.items()
        }

    def replace(self, **changes) -> "RunConfig":
        """A copy with the settings named (flat names) changed."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown settings {unknown}")
        sections = {}
        for name, value in changes.items():
            sections.setdefault(FIELDS[name][0], {})[name] = value
        return dataclasses.replace(
            self,
            **{
                section: dataclasses.replace(getattr(self, section), **values)
                for section, values in sections.items()
            },
        )

    def validate(self) -> None:
        """Every check that needs no data: each sub-config's, then those across them."""
        for section in SECTIONS:
            getattr(self, section).validate()
        if self.protocol.aggregate == "median" and self.data.workers < 3:
            _fail(
                "aggregate",
                f"'median' needs --workers >= 3 (of 2 it is the mean), got {self.data.workers}",
            )
        if (
            self.protocol.protocol == "triggered"
            and self.protocol.metric == "mi_zy"
            and self.measurement.mi == "none"
        ):
            _fail("trigger_metric", "'mi_zy' needs an I(Z;Y) estimator in --mi, got 'none'")


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))
# Every setting by its flat name: (sub-config, declaration).
FIELDS: dict[str, tuple[str, dataclasses.Field]] = {
    f.name: (section, f)
    for section in SECTIONS
    for f in dataclasses.fields(RunConfig.__dataclass_fields__[section].type)
}
PER_RUN = tuple(name for name, (_, f) in FIELDS.items() if f.metadata["per_run"])
SHARED = tuple(name for name in FIELDS if name not in PER_RUN)
RESUMABLE = tuple(name for name, (_, f) in FIELDS.items() if f.metadata["resumable"])


def make(**settings) -> RunConfig:
    """A RunConfig from flat settings; the others take their defaults."""
    return RunConfig().replace(**settings)


def setting_type(name: str) -> type:
    """The declared type of a setting, without Optional: int, float, str or bool."""
    section, f = FIELDS[name]
    hint = typing.get_type_hints(type(getattr(RunConfig(), section)))[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _at_least_one_when_given(sub, name: str) -> None:
    value = getattr(sub, name)
    if value is not None and value < 1:
        _fail(name, f"must be >= 1 when given, got {value}")


def check_sweep(cfgs: Sequence[RunConfig]) -> None:
    """Every setting of every run, and what the runs must share, before any work."""
    if not cfgs:
        raise ConfigError("seeds", "a sweep needs at least one run")
    for cfg in cfgs:
        cfg.validate()
    flats = [c.flat() for c in cfgs]
    for name in SHARED:
        values = {f[name] for f in flats}
        if len(values) > 1:
            _fail(
                name, f"must be the same for every run of a sweep, got {sorted(map(str, values))}"
            )
    outs = [os.path.abspath(c.out) for c in cfgs]
    if len(set(outs)) < len(outs):
        _fail("out", "two runs of the sweep would write to the same folder")


def resumable_part(cfg: RunConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint."""
    return {k: v for k, v in cfg.flat().items() if k not in RESUMABLE}


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
    """The schedule, with the checks that need the local dataset size n."""
    batch, epochs = cfg.training.batch_size, cfg.training.epochs
    period = cfg.measurement.eval_period
    steps_per_epoch = num_samples // batch
    if steps_per_epoch < 1:
        _fail("batch_size", f"{batch} is larger than a local dataset ({num_samples})")
    total = int(round(epochs * steps_per_epoch))
    if total < 1:
        _fail("epochs", f"{epochs} epochs of {steps_per_epoch} steps is no step at all")
    if period > total:
        _fail(
            "eval_period",
            f"{period} steps is longer than the whole run "
            f"({total} steps = {epochs} epochs x {steps_per_epoch} steps)",
        )
    if cfg.protocol.protocol in PERIODIC and cfg.protocol.sync_period > total:
        _fail(
            "sync_period",
            f"{cfg.protocol.sync_period} steps is longer than the whole run ({total} steps)",
        )
    return Schedule(steps_per_epoch, total, period)
