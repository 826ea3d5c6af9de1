"""Sharded over 4 fake CPU devices, the worker axis of a round (on a two-layer
model) and the run axis of a LeNet sweep give the numbers of one device."""

import json
import os
import subprocess
import sys

import pytest

from helpers.shared import assert_records_close, fake_devices_env

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Both checks of tests/helpers/sharded_check.py, in one subprocess: the
    worker-sharded round and the sweeps split over devices."""
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "helpers", "sharded_check.py"),
            str(tmp_path_factory.mktemp("sweeps")),
        ],
        cwd=ROOT,
        env=fake_devices_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("devices", [4, 2])
@pytest.mark.parametrize("period", ["0", "2", "dyn"])  # "dyn": dynamic averaging, b = 2
def test_sharded_round_equals_one_device(results, devices, period):
    # pmean of per-device means vs one mean over 4 workers: float32 summation
    # order differs, a few ulps that 5 steps of SGD at lr 0.05 keep below 1e-5.
    assert results[f"max_abs_diff_d{devices}_p{period}"] < 1e-5
    assert results[f"step_d{devices}_p{period}"] == 5
    assert results[f"sharded_over_d{devices}"] == devices
    # Determinism on the sharded path: the same inputs give the same bits.
    assert results[f"bitwise_repeat_d{devices}_p{period}"]
    # The same syncs on both paths (dynamic: the cross-device any agrees), and
    # periodic 2 over 5 steps syncs before steps 2 and 4.
    sharded_syncs, plain_syncs = results[f"syncs_d{devices}_p{period}"]
    assert sharded_syncs == plain_syncs == {"0": 0, "2": 2}.get(period, plain_syncs)
    if period == "dyn":
        assert plain_syncs >= 1  # delta 1e-3 is violated within 2 steps


@pytest.mark.parametrize("devices", [4, 2])
def test_only_collective_is_the_average(results, devices):
    # The sync's pmean is the one all-reduce (XLA fuses the parameters' into one).
    assert results[f"all-reduce_d{devices}"] >= 1
    for op in ("all-gather", "all-to-all", "collective-permute"):
        assert results[f"{op}_d{devices}"] == 0


@pytest.mark.parametrize("devices", ["d2", "d4", "resumed_d4"])
@pytest.mark.portability
def test_sweep_split_over_devices_gives_the_one_device_records(results, devices):
    # Each device runs R / D runs with the same vmapped code; only the batch
    # size of the compiled ops changes, so values agree to float rounding
    # (measured: identical records for 2 devices; one loss 1e-6 apart for 4).
    # resumed_d4: checkpointed on 2 devices, resumed on 4 from the one before
    # the last checkpoint.
    one, split = results["records_d1"], results[f"records_{devices}"]
    assert [len(r) for r in split] == [len(r) for r in one] and len(one) == 4
    for run_one, run_split in zip(one, split):
        assert_records_close(run_one, run_split)


def test_sweep_device_count_errors(results):
    assert results["resumed"]
    assert results["error_d3"].startswith("devices: 4 runs do not split evenly")
    assert results["error_d8"].startswith("devices: must be in 1..4")
