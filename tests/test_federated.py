"""fedjax_mi.federated: the vmapped, scanned round against per-worker ground
truth; the protocols beyond periodic averaging, the aggregation operators and
the communication counters on a tiny model (docs/protocols.md; ground truths:
the periodic and no-sync code paths bitwise, numpy, hand counts); the
initialisation of a sweep's runs. tests/test_round_reference.py checks the
round against an independent reference implementation.

The LeNet states are built by hand (parameters drawn with numpy), and every
LeNet program is compiled once for the module: one round per momentum (8
steps, shorter rounds through `active`), one local step per momentum and
batch shape; `federated.init` and `init_runs` are checked on the tiny model
(what they do with the `identical` flag and the schemes does not depend on
the model; tests/test_models.py checks LeNet's initialisations)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_mi import federated, models, sweep

K, N, B = 2, 48, 8  # workers, samples per worker, batch size: 6 steps per epoch
MODEL = models.LeNet(num_classes=10)
# float32 results of the same arithmetic in a different order (vmapped batched
# matmuls vs unbatched ones) differ in the last bits; after a few SGD steps at
# lr 0.05 that stays far below 1e-5.
TOL = dict(rtol=1e-5, atol=1e-5)


def make_data(seed=0, workers=K, n=N):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (workers, n, 32, 32, 1), dtype=np.uint8)
    y = rng.integers(0, 10, (workers, n), dtype=np.int32)
    return jnp.asarray(x), jnp.asarray(y)


LR = 0.05
# One optimiser per momentum: the compiled programs take it as a static
# argument, so a new optimiser object would compile them again.
OPTS = {momentum: federated.make_optimizer(momentum) for momentum in (0.0, 0.9)}
LENET_SHAPES = jax.eval_shape(MODEL.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))["params"]


def make_state(opt, seed=0, identical=True, workers=K, n=N, lr=LR):
    """LeNet workers' FedState built from its documented fields: parameters
    drawn with numpy at flax's scale (kernels N(0, 1 / fan_in), zero biases),
    one draw copied to every worker if `identical`; data keys from `seed`."""
    rng = np.random.default_rng(seed)

    def draw():
        return jax.tree.map(
            lambda s: (
                rng.normal(0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1])), s.shape)
                if len(s.shape) > 1
                else np.zeros(s.shape)
            ).astype(np.float32),
            LENET_SHAPES,
        )

    draws = [draw()] * workers if identical else [draw() for _ in range(workers)]
    params = jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *draws)
    return federated.with_protocol_fields(
        federated.FedState(
            params=params,
            opt_state=jax.vmap(opt.init)(params),
            data_keys=jax.random.split(jax.random.key(seed), workers),
            perm=jnp.zeros((workers, n), jnp.int32),
            lr=jnp.float32(lr),
            step=jnp.int32(0),
            # Identical workers are their own average (as `federated.init`).
            ref=params if identical else None,
        )
    )


@pytest.fixture(scope="module")
def data():
    return make_data()


ROUND_STEPS = 8  # every round below: shorter ones pass fewer `active` steps
# One compiled round per momentum, and one local step per momentum (jitted once
# per batch shape), shared by the tests.
_ROUNDS = {}
_LOCAL_STEPS = {}


def get_round(momentum):
    """(optimizer, round of up to ROUND_STEPS steps). Call it with `active`
    always given: a defaulted argument of a jitted function is a constant of
    its trace, so omitting it would compile a second program."""
    if momentum not in _ROUNDS:
        _ROUNDS[momentum] = federated.make_round(
            MODEL, OPTS[momentum], batch_size=B, steps=ROUND_STEPS
        )
    return OPTS[momentum], _ROUNDS[momentum]


def local_step_of(momentum, vmapped=False):
    """`make_local_step` jitted, alone or vmapped over the workers."""
    if (momentum, vmapped) not in _LOCAL_STEPS:
        step = federated.make_local_step(MODEL, OPTS[momentum])
        if vmapped:
            step = jax.vmap(step, in_axes=(0, 0, 0, 0, None))
        _LOCAL_STEPS[momentum, vmapped] = jax.jit(step)
    return _LOCAL_STEPS[momentum, vmapped]


def test_average_is_hand_computed_mean():
    params = {"w": jnp.arange(12.0).reshape(3, 2, 2), "b": jnp.array([[1.0], [2.0], [6.0]])}
    avg = federated.average(params)
    chex.assert_trees_all_close(
        avg, {"w": (params["w"][0] + params["w"][1] + params["w"][2]) / 3, "b": jnp.array([3.0])}
    )


def test_init_identical_and_independent():
    same, diff = TINY_INIT(jax.random.key(0), True), TINY_INIT(jax.random.key(0), False)
    for leaf in jax.tree.leaves(same.params):
        assert leaf.shape[0] == TINY_K
        for k in range(1, TINY_K):
            chex.assert_trees_all_equal(leaf[0], leaf[k])
    kernels = diff.params["Dense_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])


def test_vmapped_step_equals_each_workers_own_step(data):
    x, y = data
    state = make_state(OPTS[0.9], identical=False)
    xb, yb = x[:, :B], y[:, :B]
    params, opt_state, losses = local_step_of(0.9, vmapped=True)(
        state.params, state.opt_state, xb, yb, LR
    )
    for k in range(K):
        take = lambda t: jax.tree.map(lambda a: a[k], t)
        p_k, o_k, l_k = local_step_of(0.9)(
            take(state.params), take(state.opt_state), xb[k], yb[k], LR
        )
        chex.assert_trees_all_close(take(params), p_k, **TOL)
        chex.assert_trees_all_close(take(opt_state), o_k, **TOL)
        chex.assert_trees_all_close(losses[k], l_k, **TOL)


def test_sync_makes_workers_identical():
    opt = OPTS[0.9]
    state = make_state(opt, identical=False)
    params, opt_state = federated.sync(state.params, state.opt_state, opt, "average")
    avg = federated.average(state.params)
    for k in range(K):
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[k], params), avg)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_nosync_equals_independent_workers(data, momentum):
    """No-sync: each worker's params after a round equal a plain loop of that
    worker's own steps over its own epoch order (averaging never touches them)."""
    x, y = data
    steps = ROUND_STEPS  # crosses the epoch boundary at step 6
    opt, round_fn = get_round(momentum)
    state = make_state(opt, identical=False)
    new_state, losses = round_fn(state, x, y, 0, steps)
    chex.assert_shape(losses, (steps, K))
    local_step = local_step_of(momentum)
    spe = N // B
    for k in range(K):
        p = jax.tree.map(lambda a: a[k], state.params)
        o = jax.tree.map(lambda a: a[k], state.opt_state)
        for s in range(steps):
            epoch, pos = divmod(s, spe)
            order = jax.random.permutation(jax.random.fold_in(state.data_keys[k], epoch), N)
            idx = order[pos * B : (pos + 1) * B]
            p, o, _ = local_step(p, o, x[k][idx], y[k][idx], LR)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[k], new_state.params), p, **TOL)
    assert int(new_state.step) == steps


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sync_every_step_equals_large_batch_sgd(data, momentum):
    """With identical init, sync_period 1 and averaged optimiser state, the
    average after each step is SGD on the workers' batches taken together."""
    x, y = data
    steps = 4
    opt, round_fn = get_round(momentum)
    state = make_state(opt, identical=True)
    new_state, _ = round_fn(state, x, y, 1, steps)
    assert int(new_state.step) == steps
    local_step = local_step_of(momentum)  # on batches of K * B: its own compilation
    p = jax.tree.map(lambda a: a[0], state.params)
    o = opt.init(p)
    orders = federated.epoch_order(state.data_keys, 0, N)
    for s in range(steps):
        idx = orders[:, s * B : (s + 1) * B]
        xb = jnp.concatenate([x[k][idx[k]] for k in range(K)])
        yb = jnp.concatenate([y[k][idx[k]] for k in range(K)])
        p, o, _ = local_step(p, o, xb, yb, LR)
    chex.assert_trees_all_close(federated.average(new_state.params), p, **TOL)


def test_sync_period_broadcasts_average_at_the_next_step(data):
    """After a round of exactly `sync_period` steps the workers still hold
    their local models (measured before the sync); the next step starts from
    their average, and (opt_sync "average") from their momentum buffers' average."""
    x, y = data
    opt, round_fn = get_round(0.9)
    state = make_state(opt, identical=False)
    state, _ = round_fn(state, x, y, 4, 4)
    assert int(state.step) == 4
    kernels = state.params["Conv_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])
    step = jax.jit(federated.make_step(MODEL, opt, batch_size=B))
    avg = federated.average(state.params)
    synced, _ = step(state, x, y, jnp.int32(4))
    # Redo that step by hand from the broadcast averages.
    idx = state.perm[:, 4 * B : 5 * B]
    xb, yb = jax.vmap(lambda a, b, i: (a[i], b[i]))(x, y, idx)
    expected, expected_opt, _ = local_step_of(0.9, vmapped=True)(
        federated.broadcast(avg, K),
        federated.broadcast(federated.average(state.opt_state), K),
        xb,
        yb,
        LR,
    )
    chex.assert_trees_all_close(synced.params, expected, **TOL)
    chex.assert_trees_all_close(synced.opt_state, expected_opt, **TOL)


def test_epochs_visit_every_sample_once(data):
    x, y = data
    opt, round_fn = get_round(0.0)
    state, _ = round_fn(make_state(opt), x, y, 0, 8)
    # After step 8 the current order is epoch 1's: a permutation of 0..N-1.
    for k in range(K):
        assert sorted(np.asarray(state.perm[k]).tolist()) == list(range(N))
    chex.assert_trees_all_equal(state.perm, federated.epoch_order(state.data_keys, 1, N))


def test_same_seed_gives_identical_state(data):
    x, y = data
    opt, round_fn = get_round(0.9)
    a, _ = round_fn(make_state(opt, seed=3), x, y, 3, 8)
    b, _ = round_fn(make_state(opt, seed=3), x, y, 3, 8)
    c, _ = round_fn(make_state(opt, seed=4), x, y, 3, 8)
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)
    assert not np.array_equal(a.params["Dense_2"]["kernel"], c.params["Dense_2"]["kernel"])


def test_round_compiles_once_across_rounds_and_protocols(data):
    x, y = data
    opt, round_fn = get_round(0.0)
    state = make_state(opt)
    state, _ = round_fn(state, x, y, 0, 8)  # the one compilation
    compiles = []
    listener = lambda event, duration, **kw: compiles.append(event) if "compile" in event else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for sync_period, active in ((0, 8), (3, 8), (100, 5), (0, 8)):
            state, _ = round_fn(state, x, y, sync_period, active)
        jax.block_until_ready(state)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


@pytest.mark.parametrize("opt_sync", ["average", "reset", "keep"])
def test_opt_sync_choices(opt_sync):
    opt = OPTS[0.9]
    state = make_state(opt, identical=False)
    # Give each worker a distinct momentum buffer.
    opt_state = jax.tree.map(
        lambda a: a + jnp.arange(K, dtype=a.dtype).reshape((K,) + (1,) * (a.ndim - 1)),
        state.opt_state,
    )
    _, synced = federated.sync(state.params, opt_state, opt, opt_sync)
    trace = synced[0].trace["Dense_2"]["bias"]
    if opt_sync == "average":
        chex.assert_trees_all_close(trace, jnp.full_like(trace, 0.5))
    elif opt_sync == "reset":
        chex.assert_trees_all_equal(trace, jnp.zeros_like(trace))
    else:
        chex.assert_trees_all_equal(trace, opt_state[0].trace["Dense_2"]["bias"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="learning rate"):
        federated.check_lr(0.0)
    with pytest.raises(ValueError, match="momentum"):
        federated.make_optimizer(1.0)
    with pytest.raises(ValueError, match="protocol"):
        federated.sync_period_of("sometimes", 10)
    with pytest.raises(ValueError, match="sync period"):
        federated.sync_period_of("sync", 0)
    with pytest.raises(ValueError, match="opt_sync"):
        federated.make_step(MODEL, optax.sgd(1.0), batch_size=B, opt_sync="merge")
    with pytest.raises(ValueError, match="num_workers"):
        federated.init(
            jax.random.key(0), MODEL, optax.sgd(1.0), jnp.zeros((1, 32, 32, 1)), 0, N, LR
        )


# --- protocols, aggregation and communication counts on a tiny model ----------
# TINY_K = 3 workers (for the median; not the K above), TINY_N = 12 samples
# each, batches of TINY_B = 4: 3 steps per epoch; 6 features, 3 classes.
TINY_K, TINY_N, TINY_B, D, C = 3, 12, 4, 6, 3
STEPS = 10
# Parameters of one Tiny model, counted by hand: 6x5 + 5 + 5x3 + 3.
PARAMS_PER_MODEL = 6 * 5 + 5 + 5 * 3 + 3


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        z = nn.relu(nn.Dense(5)(x))
        return nn.Dense(C)(z), z


TINY_MODEL = Tiny()
OPT = federated.make_optimizer(0.9)
# Jitted (op by op, each initialiser compiles a program per shape): one
# compilation per `identical`.
TINY_INIT = jax.jit(
    lambda key, identical: federated.init(
        key, TINY_MODEL, OPT, jnp.zeros((1, D)), TINY_K, TINY_N, 0.3, identical=identical
    ),
    static_argnums=1,
)


@pytest.fixture(scope="module")
def tiny_setup():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (TINY_K, TINY_N, D), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, C, (TINY_K, TINY_N), dtype=np.int32))
    state = TINY_INIT(jax.random.key(0), False)
    # One compiled round serves every protocol (the protocol is traced data).
    round_fn = federated.make_round(TINY_MODEL, OPT, batch_size=TINY_B, steps=STEPS)
    return x, y, state, round_fn


def run_tiny(tiny_setup, protocol, active=STEPS):
    """`active` is always passed: a defaulted argument of a jitted function is
    a constant of its trace, so omitting it would compile a second program."""
    x, y, state, round_fn = tiny_setup
    return round_fn(state, x, y, protocol, active)[0]


def assert_same_training(a, b):
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)


def test_dynamic_with_delta_zero_and_b_equal_p_is_periodic(tiny_setup):
    periodic = run_tiny(tiny_setup, 3)  # the existing integer path: sync every 3 steps
    dynamic = run_tiny(tiny_setup, federated.protocol_of("dynamic", check_every=3, delta=0.0))
    assert_same_training(dynamic, periodic)
    assert int(periodic.syncs) == int(dynamic.syncs) == 3  # before steps 3, 6, 9
    assert int(dynamic.models_sent) == int(periodic.models_sent) == 3 * 2 * TINY_K


def test_dynamic_with_delta_inf_is_nosync(tiny_setup):
    nosync = run_tiny(tiny_setup, 0)
    dynamic = run_tiny(
        tiny_setup, federated.protocol_of("dynamic", check_every=1, delta=float("inf"))
    )
    assert_same_training(dynamic, nosync)
    assert int(dynamic.syncs) == int(dynamic.models_sent) == 0
    # ... and the workers really drifted apart (a sync would have changed them).
    assert not np.allclose(
        nosync.params["Dense_0"]["kernel"][0], nosync.params["Dense_0"]["kernel"][1]
    )


def test_dynamic_syncs_exactly_when_the_condition_is_violated(tiny_setup):
    """b = 4, 5 steps: one check, before step 4. A delta just below the drift
    the workers reach after 4 steps (measured on the no-sync path, the same
    up to there) syncs there; one just above does not."""
    x, y, state, round_fn = tiny_setup
    after4 = run_tiny(tiny_setup, 0, 4)
    d4 = float(jnp.max(federated.drift(after4.params, after4.ref)))
    assert d4 > 0
    below = run_tiny(
        tiny_setup, federated.protocol_of("dynamic", check_every=4, delta=0.999 * d4), 5
    )
    above = run_tiny(
        tiny_setup, federated.protocol_of("dynamic", check_every=4, delta=1.001 * d4), 5
    )
    assert (int(below.syncs), int(above.syncs)) == (1, 0)
    # The reference is now the aggregate the workers restarted from.
    mean = federated.average(after4.params)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], below.ref), mean, rtol=1e-6)


def test_counts_and_bytes_by_hand(tiny_setup):
    x, y, state, round_fn = tiny_setup
    periodic = run_tiny(tiny_setup, federated.protocol_of("periodic", sync_period=3))
    batched = jax.tree.map(lambda a: a[None], periodic._replace(step=None))
    comm = sweep.comm_fields(batched._replace(step=periodic.step))[0]
    # 10 steps, period 3: syncs before steps 3, 6 and 9; each TINY_K models up and TINY_K down.
    assert comm["syncs"] == 3 and comm["models_sent"] == 18
    assert comm["bytes_sent"] == PARAMS_PER_MODEL * 4 * 18 == 3816
    # The drift field is max_k ||w_k - r||^2 with r the sync-9 average: numpy.
    flat = lambda tree: np.concatenate(
        [np.asarray(a).reshape(TINY_K, -1) for a in jax.tree.leaves(tree)], axis=1
    )
    want = np.max(np.sum((flat(periodic.params) - flat(periodic.ref)) ** 2, axis=1))
    assert comm["drift"] == pytest.approx(want, rel=1e-5)
    # A second round continues the counts (they live in the state).
    again = round_fn(periodic, x, y, 3, STEPS)[0]  # steps 10..19: syncs before 12, 15, 18
    assert int(again.syncs) == 6 and int(again.models_sent) == 36


def test_weighted_with_equal_sizes_is_mean_and_unequal_is_numpy():
    rng = np.random.default_rng(1)
    tree = {
        "w": jnp.asarray(rng.normal(size=(TINY_K, 4, 2)).astype(np.float32)),
        "b": jnp.asarray(rng.normal(size=(TINY_K, 3)).astype(np.float32)),
    }
    equal = federated.aggregate(tree, "weighted", (500, 500, 500))
    chex.assert_trees_all_close(equal, federated.aggregate(tree, "mean"), rtol=1e-6, atol=1e-7)
    sizes = (100, 300, 600)
    got = federated.aggregate(tree, "weighted", sizes)
    for name, leaf in tree.items():
        want = sum(s * np.asarray(leaf[k], np.float64) for k, s in enumerate(sizes)) / sum(sizes)
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


def test_median_of_three_is_numpys_also_for_the_optimiser_state():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(TINY_K, 4, 2)).astype(np.float32))}
    opt_state = OPT.init(jax.tree.map(lambda a: a[0], params))
    opt_state = jax.tree.map(
        lambda a: jnp.asarray(rng.normal(size=(TINY_K,) + a.shape), a.dtype), opt_state
    )
    new_params, new_opt = federated.sync(params, opt_state, OPT, "average", how="median")
    for k in range(TINY_K):
        np.testing.assert_array_equal(new_params["w"][k], np.median(np.asarray(params["w"]), 0))
        np.testing.assert_array_equal(
            new_opt[0].trace["w"][k], np.median(np.asarray(opt_state[0].trace["w"]), 0)
        )


def test_trigger_decision_edges():
    avg, own = np.array([0.2, 0.3, 0.1]), np.array([0.9, 0.8, 0.95])
    assert federated.trigger_decision(avg, own, 0.0) is False  # never, however bad
    assert federated.trigger_decision(own, avg, float("inf")) is True  # always
    assert federated.trigger_decision(avg, own, 0.5) is True  # 0.2 < 0.5 x 0.883
    assert federated.trigger_decision(avg, own, 0.2) is False  # 0.2 >= 0.2 x 0.883


def test_init_runs_mixes_schemes_per_run():
    """A run's initial weights in a sweep mixing schemes are those of a sweep
    of that scheme alone (bit for bit; one compilation: the scheme is data),
    torch's with nonzero biases, flax's with zero ones."""
    x = jnp.zeros((1, D))
    keys = jax.random.split(jax.random.key(0), 2)
    init = lambda t: federated.init_runs(keys, TINY_MODEL, OPT, x, 2, 8, [0.1, 0.1], torch_inits=t)
    mixed, torch, flax = init([True, False]), init([True, True]), init([False, False])
    assert sorted(mixed.params) == ["Dense_0", "Dense_1"]
    for name in mixed.params:
        for part in ("kernel", "bias"):
            leaf = lambda s: np.asarray(s.params[name][part])
            np.testing.assert_array_equal(leaf(mixed)[0], leaf(torch)[0])
            np.testing.assert_array_equal(leaf(mixed)[1], leaf(flax)[1])
            np.testing.assert_array_equal(leaf(mixed)[:, 0], leaf(mixed)[:, 1])  # identical workers
        assert np.all(np.asarray(mixed.params[name]["bias"])[0] != 0)
        assert np.all(np.asarray(mixed.params[name]["bias"])[1] == 0)
