"""The compiled federated round against an independent reference.

The reference is a plain Python loop over steps and workers written here:
its own softmax cross-entropy, its own SGD and heavy-ball momentum updates
from `jax.grad` of that loss, its own mean over the workers at the sync
points, and its own copy of the data order. Nothing in it calls
`fedjax_mi.federated` (the round under test) except to build the optax
state it is compared with. A tiny two-layer flax model keeps it fast; the
LeNet update and a short digits run are checked at the end.

The data order is reproduced from its documented definition (`FedState`):
epoch e of worker k visits its samples in the order
`jax.random.permutation(jax.random.fold_in(data_keys[k], e), n)`, called
here directly, not through `federated.epoch_order`.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_mi import data, federated, models

K, N, B = 3, 12, 4  # workers, samples per worker, batch: 3 steps per epoch
D, H, C = 6, 5, 3  # input features, hidden units (Z), classes
STEPS = 15  # 5 epochs; period 7 syncs before steps 7 and 14
LR = 0.3
MOMENTUM = 0.9
SYNC_PERIODS = (0, 1, 3, 7)  # 0: no-sync
# float32 on both sides. The round runs the same arithmetic as the reference
# in another order (vmapped matmuls, XLA fusion, a jnp.mean over the worker
# axis against the reference's sum / K), which differs in the last bits;
# over 15 steps at lr 0.3 with momentum 0.9 the largest difference measured
# over all cases was 7.2e-7 on parameters (of size up to 1.3), 3.6e-7 on
# momentum buffers and 2.4e-7 on losses. TOL allows ~30x that. A wrong
# schedule, opt_sync, rate or mean moves them by > 1e-3 (checked below).
TOL = dict(rtol=1e-5, atol=1e-5)


class Tiny(nn.Module):
    """Dense(H) + ReLU (the representation Z) + Dense(C): `(logits, z)` like LeNet."""

    @nn.compact
    def __call__(self, x):
        z = nn.relu(nn.Dense(H)(x))
        return nn.Dense(C)(z), z


MODEL = Tiny()


# --- the reference -----------------------------------------------------------


def ref_loss(params, x_uint8, y):
    """Mean softmax cross-entropy of the tiny model, written out: pixels / 255,
    x W0 + b0, ReLU, z W1 + b1, log-softmax with the max subtracted."""
    x = x_uint8.astype(jnp.float32) / 255.0
    z = jnp.maximum(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0.0)
    logits = z @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    shifted = logits - jnp.max(logits, axis=1, keepdims=True)
    log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
    return -jnp.mean(log_probs[jnp.arange(y.shape[0]), y])


REF_GRAD = jax.jit(jax.value_and_grad(ref_loss))


def tree_map(fn, *trees):
    """Map over the two-level {layer: {name: array}} dicts of the tiny model."""
    return {
        layer: {name: fn(*(t[layer][name] for t in trees)) for name in trees[0][layer]}
        for layer in trees[0]
    }


def worker(tree, k):
    return tree_map(lambda a: np.asarray(a[k]), tree)


def stack(trees):
    return tree_map(lambda *leaves: np.stack(leaves), *trees)


def hand_mean(trees):
    """The workers' mean, leaf by leaf: a Python sum over workers over K."""

    def mean(*leaves):
        total = np.zeros_like(leaves[0])
        for leaf in leaves:
            total = total + leaf
        return total / np.float32(len(leaves))

    return tree_map(mean, *trees)


def sample_order(key, epoch):
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), N))


def reference_round(params0, data_keys, x, y, sync_period, momentum, opt_sync, steps=STEPS):
    """Per step s: [sync before s if sync_period > 0, s > 0 and s % sync_period
    == 0], then every worker's SGD step on batch s of its epoch order.
    Returns a list of (params, trace, losses) after each step (stacked K)."""
    params = [worker(params0, k) for k in range(K)]
    trace = [tree_map(np.zeros_like, p) for p in params]  # heavy-ball buffers
    orders = {}
    history = []
    for s in range(steps):
        if sync_period > 0 and s > 0 and s % sync_period == 0:
            mean = hand_mean(params)
            params = [tree_map(np.copy, mean) for _ in range(K)]
            if opt_sync == "average":
                mean_trace = hand_mean(trace)
                trace = [tree_map(np.copy, mean_trace) for _ in range(K)]
            elif opt_sync == "reset":
                trace = [tree_map(np.zeros_like, t) for t in trace]
            else:
                assert opt_sync == "keep"
        epoch, pos = divmod(s, N // B)
        losses = []
        for k in range(K):
            if (k, epoch) not in orders:
                orders[k, epoch] = sample_order(data_keys[k], epoch)
            idx = orders[k, epoch][pos * B : (pos + 1) * B]
            loss, grad = REF_GRAD(params[k], x[k][idx], y[k][idx])
            grad = tree_map(np.asarray, grad)
            if momentum:
                # optax.sgd(lr, momentum): trace <- g + momentum * trace; p <- p - lr * trace.
                trace[k] = tree_map(lambda g, t: g + np.float32(momentum) * t, grad, trace[k])
                update = trace[k]
            else:
                update = grad
            params[k] = tree_map(lambda p, u: p - np.float32(LR) * u, params[k], update)
            losses.append(float(loss))
        history.append((stack(params), stack(trace), np.asarray(losses, np.float32)))
    return history


# --- the round under test ----------------------------------------------------


def make_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (K, N, D), dtype=np.uint8)
    y = rng.integers(0, C, (K, N), dtype=np.int32)
    return x, y


def make_params():
    """Independent draws per worker, non-zero biases (unlike flax's init)."""
    rng = np.random.default_rng(1)
    draw = lambda *shape: rng.normal(0.0, 0.7, (K,) + shape).astype(np.float32)
    return {
        "Dense_0": {"kernel": draw(D, H), "bias": draw(H)},
        "Dense_1": {"kernel": draw(H, C), "bias": draw(C)},
    }


X, Y = make_data()
PARAMS0 = make_params()
DATA_KEYS = jax.random.split(jax.random.key(7), K)


def initial_state(opt):
    """The round's input state; the protocol fields filled in as the round fills
    them, so that a state the round returns has the same structure (and the
    second round below runs the same compiled program)."""
    params = tree_map(jnp.asarray, PARAMS0)
    return federated.with_protocol_fields(
        federated.FedState(
            params=params,
            opt_state=jax.vmap(opt.init)(params),
            data_keys=DATA_KEYS,
            perm=jnp.zeros((K, N), jnp.int32),
            lr=jnp.float32(LR),
            step=jnp.int32(0),
        )
    )


def trace_of(opt_state, momentum):
    """The heavy-ball buffer inside optax.sgd's state (chain(trace, scale))."""
    if not momentum:
        assert jax.tree.leaves(opt_state) == []  # plain SGD keeps no state
        return None
    assert isinstance(opt_state[0], optax.TraceState)
    return opt_state[0].trace


# One compiled round of STEPS steps per (momentum, opt_sync); the sync period
# and the number of active steps are traced, so every case reuses it.
_ROUNDS = {}


def round_fn(momentum, opt_sync):
    if (momentum, opt_sync) not in _ROUNDS:
        opt = federated.make_optimizer(momentum)
        _ROUNDS[momentum, opt_sync] = (
            opt,
            federated.make_round(MODEL, opt, batch_size=B, steps=STEPS, opt_sync=opt_sync),
        )
    return _ROUNDS[momentum, opt_sync]


_RESULTS = {}


def compiled_steps(sync_period, momentum, opt_sync):
    """(state, losses) after s = 1..STEPS steps: the round from the initial
    state with only its first s steps active (cached per case)."""
    key = (sync_period, momentum, opt_sync)
    if key not in _RESULTS:
        opt, fn = round_fn(momentum, opt_sync)
        _RESULTS[key] = [fn(initial_state(opt), X, Y, sync_period, s) for s in range(1, STEPS + 1)]
    return _RESULTS[key]


CASES = [(p, 0.0, "average") for p in SYNC_PERIODS] + [
    (p, MOMENTUM, s) for p in SYNC_PERIODS for s in federated.OPT_SYNCS
]


@pytest.mark.parametrize("sync_period,momentum,opt_sync", CASES)
def test_round_equals_reference_at_every_step(sync_period, momentum, opt_sync):
    expected = reference_round(PARAMS0, DATA_KEYS, X, Y, sync_period, momentum, opt_sync)
    ref_losses = np.stack([e[2] for e in expected])  # (STEPS, K)
    for s, (params, trace, _) in enumerate(expected):
        state, losses = compiled_steps(sync_period, momentum, opt_sync)[s]
        msg = f"after step {s}"
        assert int(state.step) == s + 1
        chex.assert_trees_all_close(state.params, params, **TOL, custom_message=msg)
        got_trace = trace_of(state.opt_state, momentum)
        if momentum:
            chex.assert_trees_all_close(got_trace, trace, **TOL, custom_message=msg)
        # Losses of the active steps; inactive iterations report zeros.
        chex.assert_trees_all_close(
            np.asarray(losses[: s + 1]), ref_losses[: s + 1], **TOL, custom_message=msg
        )
        assert not np.any(np.asarray(losses[s + 1 :]))
    # Two rounds in a row (7 then 8 steps, the second starting mid-epoch and
    # at a period-7 sync) continue where the first stopped.
    opt, fn = round_fn(momentum, opt_sync)
    state, first = fn(initial_state(opt), X, Y, sync_period, 7)
    state, second = fn(state, X, Y, sync_period, STEPS - 7)
    chex.assert_trees_all_close(state.params, expected[-1][0], **TOL)
    if momentum:
        chex.assert_trees_all_close(trace_of(state.opt_state, momentum), expected[-1][1], **TOL)
    chex.assert_trees_all_close(np.concatenate([first[:7], second[: STEPS - 7]]), ref_losses, **TOL)


def max_abs_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def reference_final(sync_period, momentum, opt_sync):
    return reference_round(PARAMS0, DATA_KEYS, X, Y, sync_period, momentum, opt_sync)[-1]


@pytest.mark.parametrize("sync_period", [1, 3, 7])
def test_opt_sync_variants_differ(sync_period):
    """In this setting (momentum 0.9, independent initial weights) averaging,
    resetting and keeping the buffers at a sync give different workers, so the
    comparisons above tell them apart. The margin 1e-3 is 100x the tolerance."""
    final = {s: reference_final(sync_period, MOMENTUM, s) for s in federated.OPT_SYNCS}
    for a, b in [("average", "reset"), ("average", "keep"), ("reset", "keep")]:
        assert max_abs_diff(final[a][0], final[b][0]) > 1e-3, (a, b)
        assert max_abs_diff(final[a][1], final[b][1]) > 1e-3, (a, b)


def test_sync_periods_differ():
    """Periods 1, 3, 7 and no-sync end in different places (by far more than
    the tolerance), so a round that got the schedule wrong cannot pass."""
    final = {p: reference_final(p, MOMENTUM, "average")[0] for p in SYNC_PERIODS}
    for i, a in enumerate(SYNC_PERIODS):
        for b in SYNC_PERIODS[i + 1 :]:
            assert max_abs_diff(final[a], final[b]) > 1e-3, (a, b)


def test_workers_move_by_far_more_than_the_tolerance():
    """The learning rate and the gradients matter at the scale of TOL: after
    one step each worker moved by > 1e-2, and over the 15 steps the loss fell."""
    ((params, _, losses),) = reference_round(PARAMS0, DATA_KEYS, X, Y, 0, 0.0, "average", steps=1)
    assert max_abs_diff(params, PARAMS0) > 1e-2
    later = reference_round(PARAMS0, DATA_KEYS, X, Y, 0, 0.0, "average")
    assert np.mean(later[-1][2]) < np.mean(losses)


# --- the update itself, on LeNet ---------------------------------------------

LENET = models.LeNet(num_classes=10)


def lenet_loss(params, x_uint8, y):
    """Hand-written mean softmax cross-entropy of LeNet's logits (pixels / 255)."""
    logits, _ = LENET.apply({"params": params}, x_uint8.astype(jnp.float32) / 255.0)
    shifted = logits - jnp.max(logits, axis=1, keepdims=True)
    log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
    return -jnp.mean(log_probs[jnp.arange(y.shape[0]), y])


_LENET_PARAMS = []


def lenet_params():
    """LeNet's initial parameters (one jitted init per module, shared)."""
    if not _LENET_PARAMS:
        _LENET_PARAMS.append(
            jax.jit(LENET.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))["params"]
        )
    return _LENET_PARAMS[0]


def test_one_lenet_step_is_params_minus_lr_grad():
    """make_local_step is p - lr * grad(loss)(p) on LeNet, and it reports the
    loss at p. (Momentum's first step is the same update, the buffer
    starting at zero; later momentum steps are checked on the tiny model.)"""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, 8, dtype=np.int32))
    # Non-zero biases, so that their gradients and updates are exercised.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p + 0.1 if path[-1].key == "bias" else p, lenet_params()
    )
    lr = 0.05
    loss, grad = jax.jit(jax.value_and_grad(lenet_loss))(params, x, y)
    expected = jax.tree.map(lambda p, g: p - lr * g, params, grad)
    opt = federated.make_optimizer(0.0)
    step = jax.jit(federated.make_local_step(LENET, opt))
    new_params, _, step_loss = step(params, opt.init(params), x, y, lr)
    # The same float32 forward pass, differently fused: ~1e-7 relative.
    chex.assert_trees_all_close(new_params, expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(step_loss, loss, rtol=1e-5)
    # The update is 100x the tolerance, so a wrong rate or sign cannot pass.
    assert max_abs_diff(expected, params) > 1e-4


# The digits run below is deterministic (fixed seeds and data); on this CPU
# it measured a batch loss of 2.29 over the first 5 steps and 0.33 over the
# last 5, and test accuracy 0.916 (chance 0.10). The bars leave wide room for
# float reassociation on other machines and still fail if nothing is learnt.
DIGITS_STEPS, DIGITS_K, DIGITS_N = 60, 2, 320


@pytest.mark.slow  # a LeNet round of its own shapes to compile, and real data
def test_short_digits_run_learns():
    """Two workers, iid digits, 60 steps of SGD with momentum 0.9, synced every
    step: the mean batch loss of the last 5 steps is under half that of the
    first 5, and the average's test accuracy is at least 0.5 above chance."""
    fed = data.federate(data.load_dataset("digits"), DIGITS_K, "iid", seed=0, per_worker=DIGITS_N)
    opt = federated.make_optimizer(MOMENTUM)
    params = federated.broadcast(lenet_params(), DIGITS_K)
    state = federated.FedState(
        params=params,
        opt_state=jax.vmap(opt.init)(params),
        data_keys=jax.random.split(jax.random.key(1), DIGITS_K),
        perm=jnp.zeros((DIGITS_K, DIGITS_N), jnp.int32),
        lr=jnp.float32(0.05),
        step=jnp.int32(0),
    )
    round_fn = federated.make_round(LENET, opt, batch_size=32, steps=DIGITS_STEPS)
    state, losses = round_fn(state, fed.train_x, fed.train_y, 1)
    losses = np.asarray(losses).mean(axis=1)
    logits, _ = jax.jit(LENET.apply)(
        {"params": federated.average(state.params)}, fed.test_x / np.float32(255.0)
    )
    accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == fed.test_y))
    assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses
    assert accuracy >= 0.6, accuracy
