"""fedjax_mi.sweep: run r of a sweep writes what that run writes alone (also
mixing protocols), the communication counts of a sweep by hand, resuming
only with the same settings, and the divergence check."""

import os

import pytest

from fedjax_mi import config, metrics_io, sweep
from helpers.shared import CONFIG, TINY, assert_records_close


@pytest.mark.slow
@pytest.mark.portability
def test_sweep_run_equals_that_run_alone(tmp_path, tiny_run):
    """Run r of a sweep (vmapped over runs that differ in seed, lr, split and
    protocol) writes the metrics of that run alone, to the tolerances of two
    different programs (`helpers.shared.assert_records_close`; XLA does not
    round a vmapped program as it rounds the run alone: docs/reliability.md,
    "Determinism")."""
    alone_cfg, alone_records, _ = tiny_run
    base = dict(TINY)
    cfgs = [
        config.make(**{**base, "lr": 0.02}, protocol="nosync", seed=1, out=str(tmp_path / "a")),
        config.make(**base, protocol="sync", sync_period=4, out=str(tmp_path / "b")),
        config.make(
            **base, split="classes", protocol="sync", sync_period=8, seed=2, out=str(tmp_path / "c")
        ),
    ]
    swept = sweep.run_sweep(cfgs, log=lambda line: None)
    assert_records_close(swept[1], alone_records)  # cfgs[1] is the tiny_run's config
    assert metrics_io.read_records(os.path.join(cfgs[1].out, "metrics.jsonl")) == swept[1]
    # The other runs really differ (different seed / lr / split).
    acc = lambda records: [r["acc"] for r in records]
    assert acc(swept[0]) != acc(swept[1]) and acc(swept[2]) != acc(swept[1])
    alone_c = config.make(**{**cfgs[2].flat(), "out": str(tmp_path / "c_alone")})
    assert_records_close(sweep.run(alone_c, log=lambda line: None), swept[2])


MIXED_TINY = dict(
    dataset="digits",
    workers=2,
    per_worker=32,
    batch_size=16,
    epochs=4.0,
    eval_period=2,
    lr=0.05,
    mi="none",
    test_samples=40,
    checkpoint_every=0,
)
# 2 steps per epoch, 8 steps, eval points 0, 2, 4, 6, 8.
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
        config.make(**MIXED_TINY, **p, out=str(root / f"sweep{i}")) for i, p in enumerate(MIXED)
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
    tolerances of two programs (`assert_records_close`): in this configuration
    (4 runs of 32 samples a worker) the sweep's batched arithmetic differs from
    one run's in the last bits even for periodic and nosync alone (measured on
    the code before the protocols: worker losses 1e-6 apart)."""
    swept, alone = mixed
    for run_swept, run_alone in zip(swept, alone):
        assert len(run_swept) == len(run_alone) == 5 * 3 * 3
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
        (2, 0, 0, 0),
        (4, 1, 4, 4 * lenet_bytes),
        (6, 1, 4, 4 * lenet_bytes),
        (8, 2, 8, 8 * lenet_bytes),
    ]
    # dynamic, delta 0, checked before every step > 0: the workers move at every
    # step, so it syncs before steps 1..7; eval point s has seen those before 1..s-1.
    assert [c[1:3] for c in comm_at_points(swept[1])] == [(0, 0), (1, 4), (3, 12), (5, 20), (7, 28)]
    # triggered, ratio inf: decides to sync at every eval point but the last;
    # each decision sends 2K models (its sync then sends nothing more).
    assert comm_at_points(swept[2]) == [
        (s, s // 2, 4 * (s // 2), 4 * (s // 2) * lenet_bytes) for s in (0, 2, 4, 6, 8)
    ]
    # triggered, ratio 0: never syncs, but its decisions still cost.
    assert [c[1] for c in comm_at_points(swept[3])] == [0] * 5
    assert [c[2] for c in comm_at_points(swept[3])] == [0, 4, 8, 12, 16]


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
