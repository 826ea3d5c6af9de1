"""Pure functions of federated training over a stacked worker axis.

The K workers' parameters and optimiser states are one pytree whose leaves
have a leading axis of size K. A local step is `jax.vmap` of the
single-worker SGD step; averaging is one `jnp.mean` over that axis; a sync
broadcasts the average back. A round of P steps is one `lax.scan` under
`jit`, each step gathering its batch on the device from a per-epoch
permutation drawn from the worker's data key.

Protocols: `sync_period` is a traced integer, so the sync and no-sync
protocols share one compiled round:
  * sync_period > 0 ("sync"): before local step s (s > 0, s % sync_period
    == 0) the workers' parameters are replaced by their average. The sync is
    applied at the start of the next step, so a measurement taken after step
    s still sees the local models that produced the average.
  * sync_period == 0 ("nosync"): workers never receive the average; it is
    only formed (`average`) for measurement.

What happens to the optimiser state at a sync (`opt_sync`):
  * "average" (default): averaged like the parameters. With identical
    initial weights and sync_period 1 this is exactly large-batch SGD (with
    or without momentum) on the K workers' batches together.
  * "reset": re-initialised, as FedAvg clients start each round afresh.
  * "keep": each worker keeps its own (e.g. its momentum buffer).
"""

from typing import Callable, Literal, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

OptSync = Literal["average", "reset", "keep"]
OPT_SYNCS = ("average", "reset", "keep")
PROTOCOLS = ("sync", "nosync")


class FedState(NamedTuple):
    """Training state of K workers; every leaf but `step` has leading axis K.

    Attributes:
      params: stacked model parameters.
      opt_state: stacked optax state.
      data_keys: (K,) PRNG keys; the order of epoch e of worker k is
        `permutation(fold_in(data_keys[k], e), n)`.
      perm: (K, n) int32, the current epoch's sample order.
      step: () int32, local steps taken so far (the same for all workers).
    """
    params: chex.ArrayTree
    opt_state: chex.ArrayTree
    data_keys: jax.Array
    perm: jax.Array
    step: jax.Array


def make_optimizer(lr: float, momentum: float = 0.0) -> optax.GradientTransformation:
    """Mini-batch SGD (with optional heavy-ball momentum), as in the study."""
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return optax.sgd(lr, momentum=momentum or None)


def init(key: jax.Array, model: nn.Module, optimizer: optax.GradientTransformation,
         sample_x: jax.Array, num_workers: int, num_samples: int,
         identical: bool = True) -> FedState:
    """Initial state of `num_workers` workers.

    Args:
      key: PRNG key; split into a parameter key and a data-order key.
      model: flax module mapping (B, H, W, C) floats to (logits, z).
      optimizer: the single-worker optax transformation.
      sample_x: (B, H, W, C) example input, for shapes only.
      num_workers: K >= 1.
      num_samples: n, the size of each local dataset.
      identical: all workers start from the same weights (the study's
        assumption) if True, from independent draws otherwise.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    param_key, data_key = jax.random.split(key)
    param_keys = (jnp.broadcast_to(param_key, (num_workers,)) if identical
                  else jax.random.split(param_key, num_workers))
    params = jax.vmap(lambda k: model.init(k, sample_x)["params"])(param_keys)
    return FedState(
        params=params,
        opt_state=jax.vmap(optimizer.init)(params),
        data_keys=jax.random.split(data_key, num_workers),
        perm=jnp.zeros((num_workers, num_samples), jnp.int32),
        step=jnp.zeros((), jnp.int32))


def average(params: chex.ArrayTree) -> chex.ArrayTree:
    """The weight-wise average over the leading worker axis: one `jnp.mean`."""
    return jax.tree.map(lambda p: jnp.mean(p, axis=0), params)


def broadcast(tree: chex.ArrayTree, num_workers: int) -> chex.ArrayTree:
    """Stack `num_workers` copies of an unstacked pytree (a leading axis)."""
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (num_workers,) + p.shape), tree)


def sync(params: chex.ArrayTree, opt_state: chex.ArrayTree,
         optimizer: optax.GradientTransformation,
         opt_sync: OptSync = "average") -> tuple[chex.ArrayTree, chex.ArrayTree]:
    """Send the average back to every worker; treat the optimiser state as
    `opt_sync` says (see the module docstring)."""
    num_workers = jax.tree.leaves(params)[0].shape[0]
    new_params = broadcast(average(params), num_workers)
    if opt_sync == "average":
        opt_state = broadcast(average(opt_state), num_workers)
    elif opt_sync == "reset":
        opt_state = jax.vmap(optimizer.init)(new_params)
    elif opt_sync != "keep":
        raise ValueError(f"opt_sync must be one of {OPT_SYNCS}, got {opt_sync!r}")
    return new_params, opt_state


def scale_images(x_uint8: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1] (DESIGN.md §5: input scaling)."""
    return x_uint8.astype(jnp.float32) / 255.0


def make_local_step(model: nn.Module, optimizer: optax.GradientTransformation) -> Callable:
    """The single-worker SGD step `(params, opt_state, x_uint8, y) ->
    (params, opt_state, loss)`, with x (B, H, W, C) uint8 and y (B,) int."""

    def loss_fn(params, x, y):
        logits, _ = model.apply({"params": params}, scale_images(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def local_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return local_step


def epoch_order(data_keys: jax.Array, epoch: jax.Array, num_samples: int) -> jax.Array:
    """(K, n) sample order of `epoch` for each worker, a pure function of
    (data key, epoch), so a resumed run replays the same order."""
    return jax.vmap(lambda k: jax.random.permutation(
        jax.random.fold_in(k, epoch), num_samples).astype(jnp.int32))(data_keys)


def make_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
              batch_size: int, opt_sync: OptSync = "average") -> Callable:
    """One federated step for all workers: `(state, train_x, train_y,
    sync_period) -> (state, losses)` with train_x (K, n, H, W, C) uint8,
    train_y (K, n) int, sync_period a () int (0: never), losses (K,).

    The last incomplete batch of an epoch is dropped: an epoch is
    n // batch_size steps.
    """
    if opt_sync not in OPT_SYNCS:
        raise ValueError(f"opt_sync must be one of {OPT_SYNCS}, got {opt_sync!r}")
    local_step = jax.vmap(make_local_step(model, optimizer))

    def step(state: FedState, train_x, train_y, sync_period):
        num_samples = train_x.shape[1]
        steps_per_epoch = num_samples // batch_size
        epoch, pos = jnp.divmod(state.step, steps_per_epoch)
        perm = jax.lax.cond(
            pos == 0, lambda: epoch_order(state.data_keys, epoch, num_samples),
            lambda: state.perm)
        do_sync = ((sync_period > 0) & (state.step > 0)
                   & (state.step % jnp.maximum(sync_period, 1) == 0))
        params, opt_state = jax.lax.cond(
            do_sync, lambda p, o: sync(p, o, optimizer, opt_sync),
            lambda p, o: (p, o), state.params, state.opt_state)
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size, axis=1)
        xb, yb = jax.vmap(lambda x, y, i: (x[i], y[i]))(train_x, train_y, idx)
        params, opt_state, losses = local_step(params, opt_state, xb, yb)
        return FedState(params, opt_state, state.data_keys, perm, state.step + 1), losses

    return step


def make_round(model: nn.Module, optimizer: optax.GradientTransformation, *,
               batch_size: int, steps: int, opt_sync: OptSync = "average") -> Callable:
    """A jitted round of up to `steps` federated steps as one `lax.scan`:
    `(state, train_x, train_y, sync_period, active=steps) -> (state, losses)`.

    Only the first `active` (a traced int <= steps) scan iterations take a
    step; the rest pass the state through (an unbatched `lax.cond`, so they
    cost nothing), which lets a shorter last round reuse the compilation.
    losses is (steps, K), zero for inactive iterations. The data are
    arguments (device arrays), not constants, so one compilation serves every
    round and every protocol.
    """
    if steps < 1:
        raise ValueError(f"steps per round must be >= 1, got {steps}")
    step = make_step(model, optimizer, batch_size=batch_size, opt_sync=opt_sync)

    @jax.jit
    def round_fn(state, train_x, train_y, sync_period, active=steps):
        sync_period = jnp.asarray(sync_period, jnp.int32)
        num_workers = train_x.shape[0]

        def body(s, i):
            return jax.lax.cond(
                i < active, lambda: step(s, train_x, train_y, sync_period),
                lambda: (s, jnp.zeros((num_workers,), jnp.float32)))

        return jax.lax.scan(body, state, jnp.arange(steps))

    return round_fn


def sync_period_of(protocol: str, sync_period: int) -> int:
    """The traced sync period of a protocol: `sync_period` for "sync", 0 for
    "nosync"."""
    if protocol == "nosync":
        return 0
    if protocol != "sync":
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if sync_period < 1:
        raise ValueError(f"sync period must be >= 1 for protocol 'sync', got {sync_period}")
    return sync_period
