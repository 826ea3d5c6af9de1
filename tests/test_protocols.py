"""Protocols beyond periodic averaging, aggregation operators and the
communication counters (docs/protocols.md).

Ground truths: the existing periodic and no-sync code paths (bitwise), numpy
(median, weighted mean), hand counts of syncs and bytes, and runs alone
against the same runs in one mixed-protocol sweep.
"""

import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mi import config, federated, outputs, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, N, B, D, C = 3, 12, 4, 6, 3   # 3 workers (median), 3 steps per epoch, 6 features, 3 classes
STEPS = 10
# Parameters of one Tiny model, counted by hand: 6x5 + 5 + 5x3 + 3.
PARAMS_PER_MODEL = 6 * 5 + 5 + 5 * 3 + 3


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        z = nn.relu(nn.Dense(5)(x))
        return nn.Dense(C)(z), z


MODEL = Tiny()
OPT = federated.make_optimizer(0.9)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (K, N, D), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, C, (K, N), dtype=np.int32))
    state = federated.init(jax.random.key(0), MODEL, OPT, jnp.zeros((1, D)), K, N, 0.3,
                           identical=False)
    # One compiled round serves every protocol (the protocol is traced data).
    round_fn = federated.make_round(MODEL, OPT, batch_size=B, steps=STEPS)
    return x, y, state, round_fn


def run(setup, protocol, active=STEPS):
    """`active` is always passed: a defaulted argument of a jitted function is
    a constant of its trace, so omitting it would compile a second program."""
    x, y, state, round_fn = setup
    return round_fn(state, x, y, protocol, active)[0]


def assert_same_training(a, b):
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)


def test_dynamic_with_delta_zero_and_b_equal_p_is_periodic(setup):
    periodic = run(setup, 3)  # the existing integer path: sync every 3 steps
    dynamic = run(setup, federated.protocol_of("dynamic", check_every=3, delta=0.0))
    assert_same_training(dynamic, periodic)
    assert int(periodic.syncs) == int(dynamic.syncs) == 3  # before steps 3, 6, 9
    assert int(dynamic.models_sent) == int(periodic.models_sent) == 3 * 2 * K


def test_dynamic_with_delta_inf_is_nosync(setup):
    nosync = run(setup, 0)
    dynamic = run(setup, federated.protocol_of("dynamic", check_every=1, delta=float("inf")))
    assert_same_training(dynamic, nosync)
    assert int(dynamic.syncs) == int(dynamic.models_sent) == 0
    # ... and the workers really drifted apart (a sync would have changed them).
    assert not np.allclose(nosync.params["Dense_0"]["kernel"][0],
                           nosync.params["Dense_0"]["kernel"][1])


def test_dynamic_syncs_exactly_when_the_condition_is_violated(setup):
    """b = 4, 5 steps: one check, before step 4. A delta just below the drift
    the workers reach after 4 steps (measured on the no-sync path, the same
    up to there) syncs there; one just above does not."""
    x, y, state, round_fn = setup
    after4 = run(setup, 0, 4)
    d4 = float(jnp.max(federated.drift(after4.params, after4.ref)))
    assert d4 > 0
    below = run(setup, federated.protocol_of("dynamic", check_every=4, delta=0.999 * d4), 5)
    above = run(setup, federated.protocol_of("dynamic", check_every=4, delta=1.001 * d4), 5)
    assert (int(below.syncs), int(above.syncs)) == (1, 0)
    # The reference is now the aggregate the workers restarted from.
    mean = federated.average(after4.params)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], below.ref), mean, rtol=1e-6)


def test_counts_and_bytes_by_hand(setup):
    x, y, state, round_fn = setup
    periodic = run(setup, federated.protocol_of("periodic", sync_period=3))
    batched = jax.tree.map(lambda a: a[None], periodic._replace(step=None))
    comm = sweep.comm_fields(batched._replace(step=periodic.step))[0]
    # 10 steps, period 3: syncs before steps 3, 6 and 9; each K models up and K down.
    assert comm["syncs"] == 3 and comm["models_sent"] == 18
    assert comm["bytes_sent"] == PARAMS_PER_MODEL * 4 * 18 == 3816
    # The drift field is max_k ||w_k - r||^2 with r the sync-9 average: numpy.
    flat = lambda tree: np.concatenate([np.asarray(a).reshape(K, -1)
                                        for a in jax.tree.leaves(tree)], axis=1)
    want = np.max(np.sum((flat(periodic.params) - flat(periodic.ref)) ** 2, axis=1))
    assert comm["drift"] == pytest.approx(want, rel=1e-5)
    # A second round continues the counts (they live in the state).
    again = round_fn(periodic, x, y, 3, STEPS)[0]  # steps 10..19: syncs before 12, 15, 18
    assert int(again.syncs) == 6 and int(again.models_sent) == 36


def test_weighted_with_equal_sizes_is_mean_and_unequal_is_numpy():
    rng = np.random.default_rng(1)
    tree = {"w": jnp.asarray(rng.normal(size=(K, 4, 2)).astype(np.float32)),
            "b": jnp.asarray(rng.normal(size=(K, 3)).astype(np.float32))}
    equal = federated.aggregate(tree, "weighted", (500, 500, 500))
    chex.assert_trees_all_close(equal, federated.aggregate(tree, "mean"), rtol=1e-6, atol=1e-7)
    sizes = (100, 300, 600)
    got = federated.aggregate(tree, "weighted", sizes)
    for name, leaf in tree.items():
        want = sum(s * np.asarray(leaf[k], np.float64) for k, s in enumerate(sizes)) / sum(sizes)
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


def test_median_of_three_is_numpys_also_for_the_optimiser_state():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(K, 4, 2)).astype(np.float32))}
    opt_state = OPT.init(jax.tree.map(lambda a: a[0], params))
    opt_state = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=(K,) + a.shape), a.dtype),
                             opt_state)
    new_params, new_opt = federated.sync(params, opt_state, OPT, "average", how="median")
    for k in range(K):
        np.testing.assert_array_equal(new_params["w"][k], np.median(np.asarray(params["w"]), 0))
        np.testing.assert_array_equal(new_opt[0].trace["w"][k],
                                      np.median(np.asarray(opt_state[0].trace["w"]), 0))


def test_trigger_decision_edges():
    avg, own = np.array([0.2, 0.3, 0.1]), np.array([0.9, 0.8, 0.95])
    assert federated.trigger_decision(avg, own, 0.0) is False  # never, however bad
    assert federated.trigger_decision(own, avg, float("inf")) is True  # always
    assert federated.trigger_decision(avg, own, 0.5) is True    # 0.2 < 0.5 x 0.883
    assert federated.trigger_decision(avg, own, 0.2) is False   # 0.2 >= 0.2 x 0.883


# --- end to end: a mixed-protocol sweep against each run alone ---------------

TINY = dict(dataset="digits", workers=2, per_worker=32, batch_size=16, epochs=4.0,
            eval_period=2, lr=0.05, mi="none", test_samples=40, checkpoint_every=0)
# 2 steps per epoch, 8 steps, eval points 0, 2, 4, 6, 8.
MIXED = [dict(protocol="periodic", sync_period=3),
         dict(protocol="dynamic", check_every=1, delta=0.0),
         dict(protocol="triggered", trigger_ratio=float("inf")),
         dict(protocol="triggered", trigger_ratio=0.0, seed=1)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    cfgs = [config.make(**TINY, **p, out=str(root / f"sweep{i}"))
            for i, p in enumerate(MIXED)]
    swept = sweep.run_sweep(cfgs, log=lambda line: None)
    alone = [sweep.run(config.make(**{**c.flat(), "out": str(root / f"alone{i}")}),
                            log=lambda line: None) for i, c in enumerate(cfgs)]
    return swept, alone


@pytest.mark.slow
def test_mixed_protocol_sweep_writes_what_each_run_writes_alone(mixed):
    """Each run of a sweep mixing periodic, dynamic and triggered writes the
    communication each writes alone, exactly, and the same accuracies. The
    losses, the head's bound and the drift agree to float32 rounding: in this
    configuration (4 runs of 32 samples a worker) the sweep's batched
    arithmetic differs from one run's in the last bits even for periodic and
    nosync alone (measured on the code before the protocols: worker losses
    1e-6 apart), so they are not compared bit for bit."""
    swept, alone = mixed
    exact = ("step", "epoch", "model", "dataset", "acc", "syncs", "models_sent", "bytes_sent")
    for run_swept, run_alone in zip(swept, alone):
        assert len(run_swept) == len(run_alone) == 5 * 3 * 3
        for a, b in zip(run_swept, run_alone):
            assert a.keys() == b.keys()
            assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
            for k in set(a) - set(exact):
                if a[k] is None or b[k] is None:
                    assert a[k] == b[k], k
                else:
                    assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5), (a["step"], k)


def comm_at_points(records):
    test = [r for r in records if r["model"] == "average" and r["dataset"] == "test"]
    return [(r["step"], r["syncs"], r["models_sent"], r["bytes_sent"]) for r in test]


@pytest.mark.slow
def test_sweep_counts_by_hand(mixed):
    swept, _ = mixed
    lenet_bytes = 4 * 61706  # LeNet on 8x8 digits upscaled to 32x32, 10 classes (hand count below)
    # periodic 3 over 8 steps: syncs before steps 3 and 6 (2K = 4 models each).
    assert comm_at_points(swept[0]) == [(0, 0, 0, 0), (2, 0, 0, 0), (4, 1, 4, 4 * lenet_bytes),
                                        (6, 1, 4, 4 * lenet_bytes), (8, 2, 8, 8 * lenet_bytes)]
    # dynamic, delta 0, checked before every step > 0: the workers move at every
    # step, so it syncs before steps 1..7; eval point s has seen those before 1..s-1.
    assert [c[1:3] for c in comm_at_points(swept[1])] == [(0, 0), (1, 4), (3, 12), (5, 20),
                                                          (7, 28)]
    # triggered, ratio inf: decides to sync at every eval point but the last;
    # each decision sends 2K models (its sync then sends nothing more).
    assert comm_at_points(swept[2]) == [(s, s // 2, 4 * (s // 2), 4 * (s // 2) * lenet_bytes)
                                        for s in (0, 2, 4, 6, 8)]
    # triggered, ratio 0: never syncs, but its decisions still cost.
    assert [c[1] for c in comm_at_points(swept[3])] == [0] * 5
    assert [c[2] for c in comm_at_points(swept[3])] == [0, 4, 8, 12, 16]


def test_lenet_parameter_count_by_hand():
    from fedjax_mi import models
    params = jax.eval_shape(models.LeNet(num_classes=10).init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 1)))["params"]
    # conv 5x5x1x6 + 6, conv 5x5x6x16 + 16, fc 400x120 + 120, 120x84 + 84, 84x10 + 10.
    hand = (5 * 5 * 1 * 6 + 6) + (5 * 5 * 6 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84) \
        + (84 * 10 + 10)
    assert hand == 61706 == sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("settings, flag", [
    (dict(protocol="dynamic", check_every=2, delta=-0.1), "delta"),
    (dict(protocol="dynamic", delta=1.0), "check_every"),
    (dict(protocol="periodic", sync_period=2, aggregate="median"), "aggregate"),  # K = 2
    (dict(protocol="nosync", aggregate="weighted"), "aggregate"),
    (dict(protocol="periodic", sync_period=2, trigger_ratio=0.9), "trigger_ratio"),
    (dict(protocol="nosync", trigger_metric="acc"), "trigger_metric"),
    (dict(protocol="nosync", delta=1.0), "delta"),
    (dict(protocol="triggered", trigger_ratio=1.0, trigger_metric="loss"), "trigger_metric"),
])
def test_bad_protocol_settings_are_refused(settings, flag):
    with pytest.raises(config.ConfigError, match=f"^{flag}: "):
        config.make(**settings).validate()


@pytest.mark.slow
def test_cli_bad_delta_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "--protocol=dynamic",
                           "--check_every=2", "--delta=-1", f"--out={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: --delta")
