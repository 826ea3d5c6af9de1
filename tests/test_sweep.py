"""fedjax_mi.sweep: run r of a sweep writes what that run writes alone (also
mixing protocols), the communication counts of a sweep by hand, resuming
only with the same settings, and the divergence check.

Every sweep here has the shapes and settings of `helpers.shared.CONFIG` (4
runs on 2 data partitions, or one run alone), so the session compiles their
programs once (those of the sweep in tests/test_preemption.py and of CONFIG)."""

import os

import pytest

from fedjax_mi import config, metrics_io, sweep
from helpers.shared import CONFIG, assert_records_close

# CONFIG's shapes: 64 samples a worker, batch 16 (4 steps an epoch), measured
# every 4 steps; 2.5 epochs: eval points 0, 4, 8, 10 (a shorter last round).
BASE = {**CONFIG.flat(), "epochs": 2.5, "checkpoint_every": 0}
NOSYNC = dict(protocol="nosync", sync_period=None)


@pytest.mark.slow
@pytest.mark.portability
def test_sweep_run_equals_that_run_alone(tmp_path):
    """Run r of a sweep (vmapped over runs that differ in seed, lr, split and
    protocol) writes the metrics of that run alone, to the tolerances of two
    different programs (`helpers.shared.assert_records_close`; XLA does not
    round a vmapped program as it rounds the run alone: docs/reliability.md,
    "Determinism")."""
    runs = [
        dict(lr=0.02, seed=0, **NOSYNC),
        dict(seed=0, protocol="sync", sync_period=4),
        dict(split="classes", seed=1, protocol="sync", sync_period=8),
        dict(split="classes", seed=1, lr=0.1, **NOSYNC),
    ]
    cfgs = [config.make(**{**BASE, **r, "out": str(tmp_path / str(i))}) for i, r in enumerate(runs)]
    swept = sweep.run_sweep(cfgs, log=lambda line: None)
    for i in (1, 2):
        alone = config.make(**{**cfgs[i].flat(), "out": str(tmp_path / f"alone{i}")})
        assert_records_close(sweep.run(alone, log=lambda line: None), swept[i], str(i))
    assert metrics_io.read_records(os.path.join(cfgs[1].out, "metrics.jsonl")) == swept[1]
    # The runs really differ (different seed / lr / split / protocol).
    acc = lambda records: [r["acc"] for r in records]
    assert len({tuple(acc(records)) for records in swept}) == 4


# 2 epochs: 8 steps, eval points 0, 4, 8.
MIXED_BASE = {**BASE, "epochs": 2.0}
MIXED = [
    dict(protocol="periodic", sync_period=3),
    dict(protocol="dynamic", check_every=1, delta=0.0),
    dict(protocol="triggered", trigger_ratio=float("inf")),
    dict(protocol="triggered", trigger_ratio=0.0, seed=1),
]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    cfgs = [
        config.make(**{**MIXED_BASE, "sync_period": None, **p, "out": str(root / f"sweep{i}")})
        for i, p in enumerate(MIXED)
    ]
    swept = sweep.run_sweep(cfgs, log=lambda line: None)
    alone = [
        sweep.run(
            config.make(**{**c.flat(), "out": str(root / f"alone{i}")}), log=lambda line: None
        )
        for i, c in enumerate(cfgs)
    ]
    return swept, alone


@pytest.mark.slow
@pytest.mark.portability
def test_mixed_protocol_sweep_writes_what_each_run_writes_alone(mixed):
    """Each run of a sweep mixing periodic, dynamic and triggered writes the
    communication each writes alone, exactly, and its other fields to the
    tolerances of two programs (`assert_records_close`): the sweep's batched
    arithmetic differs from one run's in the last bits even for periodic and
    nosync alone (measured on the code before the protocols, 4 runs of 32
    samples a worker: worker losses 1e-6 apart)."""
    swept, alone = mixed
    for run_swept, run_alone in zip(swept, alone):
        assert len(run_swept) == len(run_alone) == 3 * 3 * 3
        assert_records_close(run_swept, run_alone)


def comm_at_points(records):
    test = [r for r in records if r["model"] == "average" and r["dataset"] == "test"]
    return [(r["step"], r["syncs"], r["models_sent"], r["bytes_sent"]) for r in test]


@pytest.mark.slow
def test_sweep_counts_by_hand(mixed):
    swept, _ = mixed
    lenet_bytes = 4 * 61706  # LeNet on 8x8 digits upscaled to 32x32, 10 classes (hand count below)
    # periodic 3 over 8 steps: syncs before steps 3 and 6 (2K = 4 models each).
    assert comm_at_points(swept[0]) == [
        (0, 0, 0, 0),
        (4, 1, 4, 4 * lenet_bytes),
        (8, 2, 8, 8 * lenet_bytes),
    ]
    # dynamic, delta 0, checked before every step > 0: the workers move at every
    # step, so it syncs before steps 1..7; eval point s has seen those before 1..s-1.
    assert [c[1:3] for c in comm_at_points(swept[1])] == [(0, 0), (3, 12), (7, 28)]
    # triggered, ratio inf: decides to sync at every eval point but the last;
    # each decision sends 2K models (its sync then sends nothing more): at eval
    # point s, the decisions of the s // 4 points before it.
    assert comm_at_points(swept[2]) == [
        (s, s // 4, 4 * (s // 4), 4 * (s // 4) * lenet_bytes) for s in (0, 4, 8)
    ]
    # triggered, ratio 0: never syncs, but its decisions still cost.
    assert [c[1] for c in comm_at_points(swept[3])] == [0] * 3
    assert [c[2] for c in comm_at_points(swept[3])] == [0, 4, 8]


@pytest.mark.slow
def test_resume_refuses_other_settings(tmp_path):
    cfg = config.make(**{**CONFIG.flat(), "epochs": 2, "out": str(tmp_path)})
    sweep.run(cfg, log=lambda line: None)
    changed = config.make(**{**cfg.flat(), "lr": 0.2, "resume": True})
    with pytest.raises(config.ConfigError, match="resume: .*differing: lr"):
        sweep.run(changed, log=lambda line: None)


@pytest.mark.slow
def test_divergence_stops_with_step_and_worker_after_writing_metrics(tmp_path):
    cfg = config.make(**{**CONFIG.flat(), "epochs": 3, "lr": 1e6, "out": str(tmp_path)})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+ on worker \d"):
        sweep.run(cfg, log=lambda line: None)
    records = metrics_io.read_records(str(tmp_path / "metrics.jsonl"))
    assert {r["step"] for r in records} >= {0, 4}
    lines = []
    cont = config.make(**{**cfg.flat(), "continue_on_divergence": True, "overwrite": True})
    records = sweep.run(cont, log=lines.append)
    assert max(r["step"] for r in records) == 12
    assert any(line.startswith("warning: training diverged") for line in lines)
