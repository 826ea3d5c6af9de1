"""Settings and helpers that several test modules share (imported as
`helpers.shared`: pytest puts tests/ on the import path).

Two tiny digits runs: `TINY` (10 steps, eval points 0, 4, 8, 10; the
session-wide fixture `tiny_run` of tests/conftest.py) and `CONFIG` / `FLAGS`
(6 eval points, a checkpoint after every one; the fixture `uninterrupted`).
"""

import errno
import os
import subprocess
import sys

import pytest

from fedjax_mi import config, metrics_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Tiny: 64 digits per worker, batch 16 -> 4 steps per epoch, 10 steps, eval every 4
# (eval points 0, 4, 8, 10: the last round is a shorter one).
# The mixed kNN and KDE measure (both cheap to compile); the default
# estimators (probe, kde) run end to end in the reproduce test.
TINY = dict(
    dataset="digits", per_worker=64, batch_size=16, epochs=2.5, eval_period=4, lr=0.05, mi="knn,kde"
)
TINY_FLAGS = [
    "--per_worker=64",
    "--batch_size=16",
    "--epochs=2.5",
    "--eval_period=4",
    "--lr=0.05",
    "--mi=knn,kde",
]


def cli(module, *args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


# 6 eval points (0, 4, 8, 12, 16, 18: the last round a shorter one), a
# checkpoint after every one: a kill after the second checkpoint, a stop in the
# round to 12 and a resume from there to the end (tests/test_preemption.py). KDE
# alone measures (what is tested here does not depend on the estimator, and
# each subprocess compiles its measurement anew: the probe's would dominate).
FLAGS = [
    "--per_worker=64",
    "--batch_size=16",
    "--epochs=4.5",
    "--eval_period=4",
    "--lr=0.05",
    "--protocol=sync",
    "--sync_period=8",
    "--checkpoint_every=1",
    "--mi=kde",
]
# The same run as a config (in-process runs share the compiled programs).
CONFIG = config.make(
    dataset="digits",
    per_worker=64,
    batch_size=16,
    epochs=4.5,
    eval_period=4,
    lr=0.05,
    protocol="sync",
    sync_period=8,
    checkpoint_every=1,
    mi="kde",
)


def checkpoint_steps(ckpts):
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def fails_on_full_disk(run, out, message_path):
    """`run()` must stop with one line naming `message_path` and ENOSPC."""
    with pytest.raises(metrics_io.OutputError) as info:
        run()
    message = str(info.value)
    assert "\n" not in message and info.value.errno == errno.ENOSPC
    assert message.startswith(f"cannot write {message_path} (No space left on device)")


# fan_in of each LeNet layer written out by hand from the architecture
# (conv 6@5x5 on 3 channels, conv 16@5x5 on 6, fc 400 -> 120 -> 84 -> 10).
FAN_IN = {
    "Conv_0": 3 * 5 * 5,
    "Conv_1": 6 * 5 * 5,
    "Dense_0": 16 * 5 * 5,
    "Dense_1": 120,
    "Dense_2": 84,
}


# Tolerances for records computed by two different programs, or on two machines
# (docs/reliability.md, "Determinism": the table there is this one). Runs of at most
# a few dozen steps of the tiny digits settings; each entry: (abs, rel).
# Counts and labels are exact; an accuracy may move by a prediction or two of the
# tiny evaluation sets (40-96 samples); the probe's I(Z;Y) is continuous in its inputs
# to 1e-3 bits (tests/test_mi_probe.py), other estimates to 2e-3 bits (a kNN or EDGE
# count can flip on a last-bit change of a distance); means of float32
# cross-entropies and norms to float32 rounding, relative to their size.
EXACT = ("step", "epoch", "model", "dataset", "syncs", "models_sent", "bytes_sent")
TOLERANCES = {
    "acc": (0.03, 0.0),
    "mi_zy_fano": (0.05, 0.0),  # a function of the accuracy
    "mi_zy_probe": (1e-3, 0.0),
    "mi_": (2e-3, 0.0),
    "drift": (1e-6, 1e-4),
    "": (1e-5, 1e-4),  # losses, the head's bound, barrier, interpolants' losses, distance
}


def tolerance(key: str) -> tuple[float, float]:
    """(abs, rel) for a record field: the longest `TOLERANCES` prefix naming it
    (`interp_acc_a0.5` takes the accuracy's)."""
    if key.startswith("interp_acc"):
        key = "acc"
    return TOLERANCES[max((p for p in TOLERANCES if key.startswith(p)), key=len)]


def assert_records_close(a: list, b: list, what: str = ""):
    """Two runs' records agree: the same records and fields, counts and labels
    exactly, every float within `tolerance(field)`, nulls where the other has nulls."""
    assert len(a) == len(b), what
    for ra, rb in zip(a, b):
        assert list(ra) == list(rb), what
        where = (what, ra["step"], ra["model"], ra["dataset"])
        for k, va in ra.items():
            vb = rb[k]
            if k in EXACT or va is None or vb is None or isinstance(va, (str, bool)):
                assert va == vb, (*where, k, va, vb)
            else:
                atol, rtol = tolerance(k)
                assert vb == pytest.approx(va, abs=atol, rel=rtol), (*where, k, va, vb)


def fake_devices_env(devices: int) -> dict:
    """The environment for a subprocess that fakes `devices` CPU devices; the
    caller's XLA_FLAGS (a portability pass's --xla_cpu_max_isa) stay in force."""
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    return dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
