"""Terminal progress of a sweep: one line per run at the start, one line
per eval point (accuracies and I(Z;Y) of the local models and the average,
steps per second, ETA). `Printer` implements `fedjax_mi.sweep.Progress`."""

from typing import Callable, Sequence

import numpy as np

from fedjax_mi import measure
from fedjax_mi.config import RunConfig, Schedule


def duration(seconds: float) -> str:
    """A short duration for an ETA.

    >>> duration(75), duration(3 * 3600 + 125)
    ('1m15s', '3h02m')
    """
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def start_line(tag: str, cfg: RunConfig, schedule: Schedule, local_size: int) -> str:
    d, t, p = cfg.data, cfg.training, cfg.protocol
    return (
        f"{tag} {d.dataset} {d.split} K={d.workers} n={local_size}/worker lr={t.lr:g} "
        f"protocol={p.label} steps={schedule.total_steps} eval every "
        f"{schedule.eval_period} -> {cfg.out}"
    )


def progress_line(
    tag: str, done: int, step: int, schedule: Schedule, m: measure.Measurement, elapsed: float
) -> str:
    """One line per eval point: accuracies and I(Z;Y) of each run's own local
    models (worker d on local d) and average, rate (over the `done` steps of
    this process) and ETA."""
    rate = done / elapsed if done else 0.0
    eta = duration((schedule.total_steps - step) / rate) if rate else "?"
    fmt = lambda values: "/".join(f"{v:.2f}" for v in np.ravel(values))
    own = lambda a: np.diagonal(a[:, :-1], axis1=1, axis2=2)
    runs = "" if m.acc.shape[0] == 1 else " (runs joined by |)"
    join = lambda values: " | ".join(fmt(v) for v in values)
    return (
        f"{tag} step {step}/{schedule.total_steps} (epoch {step / schedule.steps_per_epoch:.2f})"
        f"  acc own {join(own(m.acc))} avg {join(m.acc[:, -1])}"
        f"  I(Z;Y) own {join(own(m.mi_zy))} avg {join(m.mi_zy[:, -1])}"
        f"  {rate:.1f} steps/s  ETA {eta}{runs}"
    )


class Printer:
    """Progress lines through `log` (print by default), shortened to
    `max_width` characters when given (a 48-run line is long)."""

    def __init__(self, log: Callable[[str], None] = print, max_width: int = 0):
        self.log, self.max_width, self.tag = log, max_width, "[run]"

    def _emit(self, line: str) -> None:
        if self.max_width and len(line) >= self.max_width:
            line = f"{line[: self.max_width - 80]} ... {line[-50:]}"
        self.log(line)

    def start(self, cfgs: Sequence[RunConfig], schedule: Schedule, local_size: int) -> None:
        self.tag = "[run]" if len(cfgs) == 1 else f"[sweep of {len(cfgs)}]"
        for cfg in cfgs:
            self._emit(start_line(self.tag, cfg, schedule, local_size))

    def point(
        self, step: int, steps_done: int, schedule: Schedule, m: measure.Measurement, elapsed: float
    ) -> None:
        self._emit(progress_line(self.tag, steps_done, step, schedule, m, elapsed))
