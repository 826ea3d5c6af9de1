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

import functools
from typing import Callable, Literal, NamedTuple, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_mi import models

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
      lr: () float32 learning rate. It is state rather than a constant of the
        optimiser so that runs of a sweep can differ in it (`RUN_AXES`).
      step: () int32, local steps taken so far (the same for all workers and,
        in a sweep, for all runs: it is not batched over runs).
    """
    params: chex.ArrayTree
    opt_state: chex.ArrayTree
    data_keys: jax.Array
    perm: jax.Array
    lr: jax.Array
    step: jax.Array


# vmap axes of a FedState over a leading run axis: everything but the shared
# step counter, which keeps epoch boundaries an unbatched `lax.cond`.
RUN_AXES = FedState(params=0, opt_state=0, data_keys=0, perm=0, lr=0, step=None)


def make_optimizer(momentum: float = 0.0) -> optax.GradientTransformation:
    """Mini-batch SGD (optionally with heavy-ball momentum) at unit learning
    rate: `optax.sgd(1.0, momentum)`. The step multiplies its updates by
    `FedState.lr`, which gives bitwise the updates of `optax.sgd(lr, momentum)`."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return optax.sgd(1.0, momentum=momentum or None)


def check_lr(lr: float) -> None:
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")


def init(key: jax.Array, model: nn.Module, optimizer: optax.GradientTransformation,
         sample_x: jax.Array, num_workers: int, num_samples: int, lr: float,
         identical: bool = True, torch_init: jax.Array | bool = False) -> FedState:
    """Initial state of `num_workers` workers.

    Args:
      key: PRNG key; split into a parameter key and a data-order key.
      model: flax module mapping (B, H, W, C) floats to (logits, z).
      optimizer: the single-worker optax transformation.
      sample_x: (B, H, W, C) example input, for shapes only.
      num_workers: K >= 1.
      num_samples: n, the size of each local dataset.
      lr: the SGD learning rate (a float, or a traced scalar under vmap).
      identical: all workers start from the same weights (the study's
        assumption) if True, from independent draws otherwise.
      torch_init: PyTorch's default initialisation (`models.torch_init`)
        instead of flax's; a bool or a traced () bool (both are drawn and one
        is kept, so runs of a sweep may differ in it).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    param_key, data_key = jax.random.split(key)
    param_keys = (jnp.broadcast_to(param_key, (num_workers,)) if identical
                  else jax.random.split(param_key, num_workers))
    def draw(k):
        flax_params = model.init(k, sample_x)["params"]
        torch_params = models.torch_init(k, flax_params)
        return jax.tree.map(lambda t, f: jnp.where(torch_init, t, f), torch_params, flax_params)

    params = jax.vmap(draw)(param_keys)
    return FedState(
        params=params,
        opt_state=jax.vmap(optimizer.init)(params),
        data_keys=jax.random.split(data_key, num_workers),
        perm=jnp.zeros((num_workers, num_samples), jnp.int32),
        lr=jnp.asarray(lr, jnp.float32),
        step=jnp.zeros((), jnp.int32))


def average(params: chex.ArrayTree, axis_name: Optional[str] = None) -> chex.ArrayTree:
    """The weight-wise average over the leading worker axis: one `jnp.mean`.

    Inside `shard_map` with the workers split evenly over the devices of mesh
    axis `axis_name`, the mean of the local workers is then averaged across
    devices (`lax.pmean`, the one all-reduce of federated training)."""
    mean = jax.tree.map(lambda p: jnp.mean(p, axis=0), params)
    return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def broadcast(tree: chex.ArrayTree, num_workers: int) -> chex.ArrayTree:
    """Stack `num_workers` copies of an unstacked pytree (a leading axis)."""
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (num_workers,) + p.shape), tree)


def sync(params: chex.ArrayTree, opt_state: chex.ArrayTree,
         optimizer: optax.GradientTransformation, opt_sync: OptSync = "average",
         axis_name: Optional[str] = None) -> tuple[chex.ArrayTree, chex.ArrayTree]:
    """Send the average back to every worker; treat the optimiser state as
    `opt_sync` says (see the module docstring). `axis_name`: see `average`."""
    num_workers = jax.tree.leaves(params)[0].shape[0]
    new_params = broadcast(average(params, axis_name), num_workers)
    if opt_sync == "average":
        opt_state = broadcast(average(opt_state, axis_name), num_workers)
    elif opt_sync == "reset":
        opt_state = jax.vmap(optimizer.init)(new_params)
    elif opt_sync != "keep":
        raise ValueError(f"opt_sync must be one of {OPT_SYNCS}, got {opt_sync!r}")
    return new_params, opt_state


def scale_images(x_uint8: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1] (DESIGN.md §5: input scaling)."""
    return x_uint8.astype(jnp.float32) / 255.0


def make_local_step(model: nn.Module, optimizer: optax.GradientTransformation) -> Callable:
    """The single-worker SGD step `(params, opt_state, x_uint8, y, lr) ->
    (params, opt_state, loss)`, with x (B, H, W, C) uint8, y (B,) int and lr
    a scalar multiplying the unit-rate updates of `optimizer`."""

    def loss_fn(params, x, y):
        logits, _ = model.apply({"params": params}, scale_images(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def local_step(params, opt_state, x, y, lr):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: lr * u, updates)
        return optax.apply_updates(params, updates), opt_state, loss

    return local_step


def epoch_order(data_keys: jax.Array, epoch: jax.Array, num_samples: int) -> jax.Array:
    """(K, n) sample order of `epoch` for each worker, a pure function of
    (data key, epoch), so a resumed run replays the same order."""
    return jax.vmap(lambda k: jax.random.permutation(
        jax.random.fold_in(k, epoch), num_samples).astype(jnp.int32))(data_keys)


def make_group_step(model: nn.Module, optimizer: optax.GradientTransformation,
                     batch_size: int, opt_sync: OptSync,
                     axis_name: Optional[str] = None) -> Callable:
    """`(state, data_x, data_y, group, sync_period) -> (state, losses)`: one
    federated step on local datasets `data_x[group]` of data_x (G, K, n, H,
    W, C) uint8, data_y (G, K, n). Runs of a sweep that share a partition
    share its group, so the data are never copied per run: only each
    step's batch is gathered. `axis_name`: the workers are split over that
    mesh axis (inside `shard_map`); only the sync communicates."""
    if opt_sync not in OPT_SYNCS:
        raise ValueError(f"opt_sync must be one of {OPT_SYNCS}, got {opt_sync!r}")
    local_step = jax.vmap(make_local_step(model, optimizer), in_axes=(0, 0, 0, 0, None))

    def step(state: FedState, data_x, data_y, group, sync_period):
        num_workers, num_samples = data_x.shape[1:3]
        steps_per_epoch = num_samples // batch_size
        epoch, pos = jnp.divmod(state.step, steps_per_epoch)
        perm = jax.lax.cond(
            pos == 0, lambda: epoch_order(state.data_keys, epoch, num_samples),
            lambda: state.perm)
        do_sync = ((sync_period > 0) & (state.step > 0)
                   & (state.step % jnp.maximum(sync_period, 1) == 0))
        params, opt_state = jax.lax.cond(
            do_sync, lambda p, o: sync(p, o, optimizer, opt_sync, axis_name),
            lambda p, o: (p, o), state.params, state.opt_state)
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size, axis=1)
        workers = jnp.arange(num_workers)[:, None]
        xb, yb = data_x[group, workers, idx], data_y[group, workers, idx]
        params, opt_state, losses = local_step(params, opt_state, xb, yb, state.lr)
        return state._replace(params=params, opt_state=opt_state, perm=perm,
                              step=state.step + 1), losses

    return step


def make_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
              batch_size: int, opt_sync: OptSync = "average") -> Callable:
    """One federated step for all workers: `(state, train_x, train_y,
    sync_period) -> (state, losses)` with train_x (K, n, H, W, C) uint8,
    train_y (K, n) int, sync_period a () int (0: never), losses (K,).

    The last incomplete batch of an epoch is dropped: an epoch is
    n // batch_size steps.
    """
    step = make_group_step(model, optimizer, batch_size, opt_sync)
    return lambda state, x, y, sync_period: step(state, x[None], y[None], 0, sync_period)


def scan_round(step: Callable, steps: int, num_workers: Callable) -> Callable:
    """Scan `step(state, *args)` `steps` times, the first `active` of them for real."""

    def round_fn(state, args, active):
        def body(s, i):
            return jax.lax.cond(
                i < active, lambda: step(s, *args),
                lambda: (s, jnp.zeros(num_workers(s), jnp.float32)))

        return jax.lax.scan(body, state, jnp.arange(steps))

    return round_fn


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
    scanned = scan_round(make_step(model, optimizer, batch_size=batch_size, opt_sync=opt_sync),
                          steps, lambda s: (s.perm.shape[0],))

    @jax.jit
    def round_fn(state, train_x, train_y, sync_period, active=steps):
        return scanned(state, (train_x, train_y, jnp.asarray(sync_period, jnp.int32)), active)

    return round_fn


def make_sweep_round(model: nn.Module, optimizer: optax.GradientTransformation, *,
                     batch_size: int, steps: int, opt_sync: OptSync = "average") -> Callable:
    """`make_round` for R runs at once, vmapped over a leading run axis:
    `(states, data_x, data_y, groups, sync_periods, active=steps) ->
    (states, losses)`, with states batched as `RUN_AXES` (the step counter
    is shared), data_x (G, K, n, H, W, C) uint8 and data_y (G, K, n) the
    distinct partitions, groups (R,) int which partition each run trains on,
    sync_periods (R,) int (0: no-sync), losses (steps, R, K)."""
    if steps < 1:
        raise ValueError(f"steps per round must be >= 1, got {steps}")
    step = jax.vmap(make_group_step(model, optimizer, batch_size, opt_sync),
                    in_axes=(RUN_AXES, None, None, 0, 0), out_axes=(RUN_AXES, 0))
    scanned = scan_round(step, steps, lambda s: s.perm.shape[:2])

    @jax.jit
    def round_fn(states, data_x, data_y, groups, sync_periods, active=steps):
        return scanned(states, (data_x, data_y, jnp.asarray(groups, jnp.int32),
                                jnp.asarray(sync_periods, jnp.int32)), active)

    return round_fn


@functools.partial(jax.jit, static_argnames=("model", "optimizer", "num_workers", "num_samples",
                                             "identical"))
def init_runs(keys: jax.Array, model: nn.Module, optimizer: optax.GradientTransformation,
              sample_x: jax.Array, num_workers: int, num_samples: int, lrs: jax.Array,
              identical: bool = True, torch_inits: Optional[jax.Array] = None) -> FedState:
    """Initial states of R runs (keys (R,), lrs (R,), torch_inits (R,) bool,
    default all False: flax's initialisation), batched as `RUN_AXES`.

    Jitted: run op by op, flax's initialisers compile one small program per
    kernel shape (12.6 s for 4 runs on the 2-core CPU against 7.8 s jitted)."""
    torch_inits = (jnp.zeros(keys.shape, bool) if torch_inits is None
                   else jnp.asarray(torch_inits, bool))
    return jax.vmap(lambda k, lr, t: init(k, model, optimizer, sample_x, num_workers,
                                          num_samples, lr, identical, t),
                    out_axes=RUN_AXES)(keys, jnp.asarray(lrs, jnp.float32), torch_inits)


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
