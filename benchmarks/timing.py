"""How the benchmarks time a call, and label what they measured.

Every speed script times with `time_calls`: one first call (it compiles a
jitted function, so its seconds are compile plus run), then `repeats` more,
each blocked until its result is ready (JAX dispatches asynchronously: an
unblocked call returns before the work is done). The figure a script
reports is usually `median_s` (robust to one slow call on a shared machine);
`best_s` where the script wants the machine's capability.

>>> t = time_calls(lambda: sum(range(1000)), repeats=3)
>>> len(t.times), t.value
(3, 499500)
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import statistics
import subprocess
import time
from typing import Any, Callable

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of the first call and of each later one, and the last result."""

    first_s: float
    times: tuple[float, ...]
    value: Any

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.times))

    @property
    def best_s(self) -> float:
        return float(min(self.times))


def time_calls(fn: Callable[..., Any], *args, repeats: int = 5) -> Timing:
    """Times fn(*args): one first (compiling) call, then `repeats` calls.

    A stateful `fn` (one that advances a training state, or draws a new key
    per call) is fine: it is simply called 1 + repeats times in order.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    value = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return Timing(first, tuple(times), value)


@dataclasses.dataclass(frozen=True)
class Interleaved:
    """Per call name: the first call's seconds, then each round's wall and
    process CPU seconds (all threads; on a machine shared with other jobs it
    moves less with their load than wall time)."""

    first_s: dict[str, float]
    times: dict[str, tuple[float, ...]]
    cpu: dict[str, tuple[float, ...]]


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int) -> Interleaved:
    """Times several zero-argument calls round-robin: each one first (it
    compiles), then `rounds` rounds of one call each, so a change of load
    from other jobs hits all of them alike; compare them by per-round ratios."""
    first = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return Interleaved(
        first, {n: tuple(t) for n, t in times.items()}, {n: tuple(c) for n, c in cpu.items()}
    )


def code_version() -> dict:
    """The git commit and a hash of the estimator sources (fedjax_mi/mi/*.py)
    measured; the sources may be uncommitted, so the hash tells two runs of
    one commit apart."""
    digest = hashlib.sha1()
    for f in sorted((ROOT / "fedjax_mi" / "mi").glob("*.py")):
        digest.update(f.name.encode() + f.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"commit": commit, "mi_sources_sha1": digest.hexdigest()[:12]}
