"""Two processes on loopback (2 fake CPU devices each, joined by
jax.distributed with gloo) run `experiments.sweep --devices=4` and write
the records one process writes; the worker-sharded round over the two
processes gives the one-device round."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fedjax_mi import metrics_io, sharding
from helpers.shared import assert_records_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("multihost"))
    port = str(free_port())
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "tests", "helpers", "multihost_check.py"),
                root,
                port,
                str(i),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:  # a process left waiting for its peer
            if p.poll() is None:
                p.kill()
    return root, outs


def records(folder: str) -> dict:
    runs = sorted(
        d for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, "metrics.jsonl"))
    )
    return {r: metrics_io.read_records(os.path.join(folder, r, "metrics.jsonl")) for r in runs}


@pytest.mark.slow
def test_processes_see_four_devices(two_processes):
    _, outs = two_processes
    assert [o["process"] for o in outs] == [0, 1]
    for o in outs:
        assert (o["processes"], o["devices"], o["local_devices"]) == (2, 4, 2)


@pytest.mark.slow
def test_sweep_over_two_processes_writes_the_one_process_records(two_processes):
    root, _ = two_processes
    two, one = records(os.path.join(root, "two")), records(os.path.join(root, "one"))
    assert len(one) == 4 and two.keys() == one.keys()
    # 2 x 3 eval points x (3 models x 2 local datasets + ... ) records per run.
    for name in one:
        assert len(two[name]) == len(one[name]) > 0
        # One device per run vs a run per device: XLA batches the runs' ops
        # differently (docs/reliability.md, "Determinism").
        assert_records_close(one[name], two[name], name)
    # The sweep's own files and the checkpoints written jointly by both processes.
    for folder in ("two", "one"):
        with open(os.path.join(root, folder, "runs.json")) as fh:
            assert len(json.load(fh)) == 4
    assert sorted(os.listdir(os.path.join(root, "two", "checkpoints"))) == ["3", "6"]


@pytest.mark.slow
def test_worker_sharded_round_over_two_processes(two_processes):
    _, outs = two_processes
    # pmean of per-device means vs one mean of 4 workers: float32 rounding.
    for o in outs:
        assert o["round_max_abs_diff"] < 1e-5


@pytest.mark.parametrize(
    "args, match",
    [
        (("127.0.0.1:1234", None, None), "go together"),
        (("127.0.0.1:1234", 2, 2), "must be in 0..1"),
    ],
)
def test_init_distributed_rejects_partial_or_bad_flags(args, match):
    with pytest.raises(ValueError, match=match):
        sharding.init_distributed(*args)
