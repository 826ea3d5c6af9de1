"""Pure functions of federated training over a stacked worker axis.

The K workers' parameters and optimiser states are one pytree whose leaves
have a leading axis of size K. A local step is `jax.vmap` of the
single-worker SGD step; averaging is one `jnp.mean` over that axis; a sync
broadcasts the average back. A round of P steps is one `lax.scan` under
`jit`, each step gathering its batch on the device from a per-epoch
permutation drawn from the worker's data key.

Protocols are per-run data of the compiled round (`Protocol`: an int code
and its traced parameters), so one compiled round, and one sweep, mixes them
(docs/protocols.md):
  * "periodic" (alias "sync", the same code), period P: before local step s
    (s > 0, s % P == 0) the workers' parameters are replaced by their
    aggregate. The sync is applied at the start of the next step, so a
    measurement taken after step s still sees the local models that
    produced the average.
  * "nosync": workers never receive the average; it is only formed
    (`average`) for measurement.
  * "dynamic" (Kamp et al., "Efficient decentralized deep learning by dynamic
    model averaging", ECML-PKDD 2018): before step s (s > 0, s % b == 0)
    every worker checks ||w_k - r||^2 <= delta against the reference r (the
    last aggregate, `FedState.ref`); if any violates it, all are synced. A
    traced predicate: no host round-trip.
  * "triggered": synced before the next step when `FedState.pending` is set;
    the host sets it between rounds from the eval-point measurement
    (`trigger_decision`, called by `sweep.run_sweep`).
A plain integer in place of a `Protocol` still means the sync period (0:
nosync), as before.

Communication is counted in the state (`syncs`, `models_sent`): a sync sends
K models up and K down; dynamic checks are local and free (only a violation
costs, as a full sync); a triggered decision costs 2K models at the eval
point (counted by the host) and its sync nothing more.

What happens to the optimiser state at a sync (`opt_sync`):
  * "average" (default): averaged like the parameters. With identical
    initial weights and sync_period 1 this is exactly large-batch SGD (with
    or without momentum) on the K workers' batches together.
  * "reset": re-initialised, as FedAvg clients start each round afresh.
  * "keep": each worker keeps its own (e.g. its momentum buffer).
"""

import functools
import math
from typing import Callable, Literal, NamedTuple, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_mi import models

OptSync = Literal["average", "reset", "keep"]
OPT_SYNCS = ("average", "reset", "keep")
# Protocol codes; "sync" is the old name of "periodic" (flagfiles use it).
NOSYNC, PERIODIC, DYNAMIC, TRIGGERED = 0, 1, 2, 3
PROTOCOL_CODES = {
    "nosync": NOSYNC,
    "periodic": PERIODIC,
    "sync": PERIODIC,
    "dynamic": DYNAMIC,
    "triggered": TRIGGERED,
}
PROTOCOLS = tuple(PROTOCOL_CODES)
AGGREGATES = ("mean", "weighted", "median")


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
      ref: stacked reference model r (each worker's copy of the last
        aggregate; the initial weights' average before any sync), which the
        dynamic protocol's condition measures the drift from.
      syncs: () int32, syncs so far.
      models_sent: () int32, models communicated so far (see the module docstring).
      pending: () bool, the triggered protocol syncs before the next step.
    The last four default to None for states built by hand before they
    existed; the rounds fill them in (`with_protocol_fields`).
    """

    params: chex.ArrayTree
    opt_state: chex.ArrayTree
    data_keys: jax.Array
    perm: jax.Array
    lr: jax.Array
    step: jax.Array
    ref: Optional[chex.ArrayTree] = None
    syncs: Optional[jax.Array] = None
    models_sent: Optional[jax.Array] = None
    pending: Optional[jax.Array] = None


# vmap axes of a FedState over a leading run axis: everything but the shared
# step counter, which keeps epoch boundaries an unbatched `lax.cond`.
RUN_AXES = FedState(
    params=0,
    opt_state=0,
    data_keys=0,
    perm=0,
    lr=0,
    step=None,
    ref=0,
    syncs=0,
    models_sent=0,
    pending=0,
)


class Protocol(NamedTuple):
    """A run's protocol as traced data (each field () or, in a sweep, (R,)).

    Attributes:
      code: int32, one of NOSYNC, PERIODIC, DYNAMIC, TRIGGERED.
      period: int32, P of periodic (else unused).
      check_every: int32, b of dynamic: local steps between condition checks.
      delta: float32, the dynamic condition's bound on ||w_k - r||^2 (inf: never).
    """

    code: jax.Array
    period: jax.Array
    check_every: jax.Array
    delta: jax.Array


def protocol_of(
    protocol: str,
    sync_period: Optional[int] = None,
    check_every: Optional[int] = None,
    delta: Optional[float] = None,
) -> Protocol:
    """The `Protocol` data of a named protocol (numpy scalars; stack them for a sweep)."""
    code = PROTOCOL_CODES.get(protocol)
    if code is None:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    period = sync_period_of(protocol, sync_period or 0) if code in (NOSYNC, PERIODIC) else 0
    if code == DYNAMIC:
        if check_every is None or check_every < 1:
            raise ValueError(f"check_every must be >= 1 for protocol 'dynamic', got {check_every}")
        if delta is None or not delta >= 0:
            raise ValueError(f"delta must be >= 0 for protocol 'dynamic', got {delta}")
    return Protocol(
        np.int32(code),
        np.int32(period),
        np.int32(check_every or 0),
        np.float32(float("inf") if delta is None else delta),
    )


def as_protocol(protocol) -> Protocol:
    """A `Protocol` as is; a (traced) integer as the sync period it used to be (0: nosync)."""
    if isinstance(protocol, Protocol):
        return Protocol(
            *(
                jnp.asarray(v, t)
                for v, t in zip(protocol, (jnp.int32, jnp.int32, jnp.int32, jnp.float32))
            )
        )
    period = jnp.asarray(protocol, jnp.int32)
    return Protocol(
        jnp.where(period > 0, PERIODIC, NOSYNC).astype(jnp.int32),
        period,
        jnp.zeros_like(period),
        jnp.full(period.shape, jnp.inf, jnp.float32),
    )


def with_protocol_fields(state: FedState) -> FedState:
    """`state` with the reference model (the workers' average), zero counters
    and no pending sync where they are None; unchanged otherwise. For
    unbatched states built by hand (`init` fills them itself)."""
    if state.ref is None:
        num_workers = jax.tree.leaves(state.params)[0].shape[0]
        state = state._replace(ref=broadcast(average(state.params), num_workers))
    zero = jnp.zeros((), jnp.int32)
    return state._replace(
        syncs=zero if state.syncs is None else state.syncs,
        models_sent=zero if state.models_sent is None else state.models_sent,
        pending=jnp.zeros((), bool) if state.pending is None else state.pending,
    )


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


def init(
    key: jax.Array,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    sample_x: jax.Array,
    num_workers: int,
    num_samples: int,
    lr: float,
    identical: bool = True,
    torch_init: jax.Array | bool = False,
) -> FedState:
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

    def draw(k):
        flax_params = model.init(k, sample_x)["params"]
        torch_params = models.torch_init(k, flax_params)
        return jax.tree.map(lambda t, f: jnp.where(torch_init, t, f), torch_params, flax_params)

    if identical:  # one draw, copied: the same weights as K draws from one key, cheaper to compile
        params = broadcast(draw(param_key), num_workers)
    else:
        params = jax.vmap(draw)(jax.random.split(param_key, num_workers))
    return FedState(
        params=params,
        opt_state=jax.vmap(optimizer.init)(params),
        data_keys=jax.random.split(data_key, num_workers),
        perm=jnp.zeros((num_workers, num_samples), jnp.int32),
        lr=jnp.asarray(lr, jnp.float32),
        step=jnp.zeros((), jnp.int32),
        # Identical workers are their own average (exactly; a mean of K
        # copies need not round back to the copy).
        ref=params if identical else broadcast(average(params), num_workers),
        syncs=jnp.zeros((), jnp.int32),
        models_sent=jnp.zeros((), jnp.int32),
        pending=jnp.zeros((), bool),
    )


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


def aggregate(
    tree: chex.ArrayTree,
    how: str = "mean",
    weights: Optional[tuple[float, ...]] = None,
    axis_name: Optional[str] = None,
) -> chex.ArrayTree:
    """Aggregate over the leading worker axis (K) of every leaf.

    how: "mean" (`average`); "weighted": sum_k w_k x_k / sum_k w_k with
    `weights` (K,) (e.g. local dataset sizes; all K workers' weights, also
    inside `shard_map`); "median": coordinate-wise median (for K >= 3; the
    mean of the two middle values for even K). `axis_name`: the workers are
    split over that mesh axis (see `average`).

    >>> w = {"b": jnp.array([[1.0, 0.0], [2.0, 4.0], [6.0, 2.0]])}  # K = 3 workers
    >>> aggregate(w)["b"].tolist(), aggregate(w, "median")["b"].tolist()
    ([3.0, 2.0], [2.0, 2.0])
    >>> aggregate(w, "weighted", weights=(2, 1, 1))["b"].tolist()  # (2x + y + z) / 4
    [2.5, 1.5]
    """
    if how == "mean":
        return average(tree, axis_name)
    if how == "weighted":
        if weights is None:
            raise ValueError("aggregate 'weighted' needs the workers' weights")
        w = jnp.asarray(weights, jnp.float32)
        total = jnp.sum(w)

        def weighted(x):
            local = x.shape[0]
            w_local = (
                w
                if axis_name is None
                else jax.lax.dynamic_slice_in_dim(w, jax.lax.axis_index(axis_name) * local, local)
            )
            part = jnp.tensordot(w_local.astype(x.dtype), x, axes=1)
            return (part if axis_name is None else jax.lax.psum(part, axis_name)) / total

        return jax.tree.map(weighted, tree)
    if how == "median":
        gather = (
            (lambda x: x)
            if axis_name is None
            else (lambda x: jax.lax.all_gather(x, axis_name, axis=0, tiled=True))
        )
        return jax.tree.map(lambda x: jnp.median(gather(x), axis=0), tree)
    raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")


def sync(
    params: chex.ArrayTree,
    opt_state: chex.ArrayTree,
    optimizer: optax.GradientTransformation,
    opt_sync: OptSync = "average",
    axis_name: Optional[str] = None,
    how: str = "mean",
    weights: Optional[tuple[float, ...]] = None,
) -> tuple[chex.ArrayTree, chex.ArrayTree]:
    """Send the aggregate (`aggregate(how, weights)`, the average by default)
    back to every worker; treat the optimiser state as `opt_sync` says (see
    the module docstring; "average" aggregates it the same way).
    `axis_name`: see `average`."""
    num_workers = jax.tree.leaves(params)[0].shape[0]
    new_params = broadcast(aggregate(params, how, weights, axis_name), num_workers)
    if opt_sync == "average":
        opt_state = broadcast(aggregate(opt_state, how, weights, axis_name), num_workers)
    elif opt_sync == "reset":
        opt_state = jax.vmap(optimizer.init)(new_params)
    elif opt_sync != "keep":
        raise ValueError(f"opt_sync must be one of {OPT_SYNCS}, got {opt_sync!r}")
    return new_params, opt_state


def scale_images(x_uint8: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1] (docs/design.md §1; `--input_scale=symmetric` gives [-1, 1])."""
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
    return jax.vmap(
        lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), num_samples).astype(
            jnp.int32
        )
    )(data_keys)


def drift(params: chex.ArrayTree, ref: chex.ArrayTree) -> jax.Array:
    """(K,) squared Euclidean distance ||w_k - r_k||^2 of each worker's
    parameters (all leaves together) from its reference copy, float32."""
    sq = [
        jnp.sum(
            jnp.square(p.astype(jnp.float32) - r.astype(jnp.float32)), axis=tuple(range(1, p.ndim))
        )
        for p, r in zip(jax.tree.leaves(params), jax.tree.leaves(ref))
    ]
    return sum(sq)


def make_group_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    opt_sync: OptSync,
    axis_name: Optional[str] = None,
    how: str = "mean",
    weights: Optional[tuple[float, ...]] = None,
) -> Callable:
    """`(state, data_x, data_y, group, protocol) -> (state, losses)`: one
    federated step on local datasets `data_x[group]` of data_x (G, K, n, H,
    W, C) uint8, data_y (G, K, n). Runs of a sweep that share a partition
    share its group, so the data are never copied per run: only each
    step's batch is gathered. `protocol`: a `Protocol` or a sync period (0:
    nosync). `how`, `weights`: the aggregation of a sync (`aggregate`).
    `axis_name`: the workers are split over that mesh axis (inside
    `shard_map`); only the sync (and the dynamic check's one-bit any)
    communicates."""
    if opt_sync not in OPT_SYNCS:
        raise ValueError(f"opt_sync must be one of {OPT_SYNCS}, got {opt_sync!r}")
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    local_step = jax.vmap(make_local_step(model, optimizer), in_axes=(0, 0, 0, 0, None))

    def step(state: FedState, data_x, data_y, group, protocol):
        proto = as_protocol(protocol)
        num_workers, num_samples = data_x.shape[1:3]
        total_workers = num_workers if axis_name is None else jax.lax.psum(num_workers, axis_name)
        steps_per_epoch = num_samples // batch_size
        epoch, pos = jnp.divmod(state.step, steps_per_epoch)
        perm = jax.lax.cond(
            pos == 0, lambda: epoch_order(state.data_keys, epoch, num_samples), lambda: state.perm
        )
        sync_period = jnp.where(proto.code == PERIODIC, proto.period, 0)
        do_sync = (
            (sync_period > 0) & (state.step > 0) & (state.step % jnp.maximum(sync_period, 1) == 0)
        )

        # Dynamic: each worker's local condition; any violation syncs all.
        # Only computed at a check (unbatched, the cond skips it otherwise,
        # and with it the cross-device any; in a sweep it becomes a select).
        def violated():
            bad = jnp.max(drift(state.params, state.ref)) > proto.delta
            if axis_name is not None:
                bad = jax.lax.pmax(bad.astype(jnp.int32), axis_name) > 0
            return bad

        check = (
            (proto.code == DYNAMIC)
            & (state.step > 0)
            & (state.step % jnp.maximum(proto.check_every, 1) == 0)
        )
        dynamic = jax.lax.cond(check, violated, lambda: jnp.zeros((), bool))
        triggered = (proto.code == TRIGGERED) & state.pending
        do_sync = do_sync | dynamic | triggered
        params, opt_state = jax.lax.cond(
            do_sync,
            lambda p, o: sync(p, o, optimizer, opt_sync, axis_name, how, weights),
            lambda p, o: (p, o),
            state.params,
            state.opt_state,
        )
        ref = jax.tree.map(lambda new, old: jnp.where(do_sync, new, old), params, state.ref)
        # A triggered sync's models were sent for its decision (host-counted).
        sent = jnp.where(do_sync & (proto.code != TRIGGERED), 2 * total_workers, 0)
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size, axis=1)
        workers = jnp.arange(num_workers)[:, None]
        xb, yb = data_x[group, workers, idx], data_y[group, workers, idx]
        params, opt_state, losses = local_step(params, opt_state, xb, yb, state.lr)
        return state._replace(
            params=params,
            opt_state=opt_state,
            perm=perm,
            step=state.step + 1,
            ref=ref,
            syncs=state.syncs + do_sync.astype(jnp.int32),
            models_sent=state.models_sent + sent.astype(jnp.int32),
            pending=state.pending & ~do_sync,
        ), losses

    return step


def make_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    opt_sync: OptSync = "average",
    how: str = "mean",
    weights: Optional[tuple[float, ...]] = None,
) -> Callable:
    """One federated step for all workers: `(state, train_x, train_y,
    sync_period) -> (state, losses)` with train_x (K, n, H, W, C) uint8,
    train_y (K, n) int, sync_period a () int (0: never) or a `Protocol`,
    losses (K,).

    The last incomplete batch of an epoch is dropped: an epoch is
    n // batch_size steps.
    """
    step = make_group_step(model, optimizer, batch_size, opt_sync, how=how, weights=weights)
    return lambda state, x, y, sync_period: step(
        with_protocol_fields(state), x[None], y[None], 0, sync_period
    )


def scan_round(step: Callable, steps: int, num_workers: Callable, unroll: int = 1) -> Callable:
    """Scan `step(state, *args)` `steps` times, the first `active` of them for
    real; `unroll` steps per loop body (`lax.scan`'s unroll)."""

    def round_fn(state, args, active):
        def body(s, i):
            return jax.lax.cond(
                i < active,
                lambda: step(s, *args),
                lambda: (s, jnp.zeros(num_workers(s), jnp.float32)),
            )

        return jax.lax.scan(body, state, jnp.arange(steps), unroll=unroll)

    return round_fn


def make_round(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    steps: int,
    opt_sync: OptSync = "average",
    how: str = "mean",
    weights: Optional[tuple[float, ...]] = None,
) -> Callable:
    """A jitted round of up to `steps` federated steps as one `lax.scan`:
    `(state, train_x, train_y, sync_period, active=steps) -> (state, losses)`;
    sync_period an int (0: nosync) or a `Protocol`; `how`, `weights`: the
    sync's aggregation (`aggregate`).

    Only the first `active` (a traced int <= steps) scan iterations take a
    step; the rest pass the state through (an unbatched `lax.cond`, so they
    cost nothing), which lets a shorter last round reuse the compilation.
    losses is (steps, K), zero for inactive iterations. The data are
    arguments (device arrays), not constants, so one compilation serves every
    round and every protocol.
    """
    if steps < 1:
        raise ValueError(f"steps per round must be >= 1, got {steps}")
    scanned = scan_round(
        make_step(
            model, optimizer, batch_size=batch_size, opt_sync=opt_sync, how=how, weights=weights
        ),
        steps,
        lambda s: (s.perm.shape[0],),
    )

    @jax.jit
    def round_fn(state, train_x, train_y, sync_period, active=steps):
        return scanned(
            with_protocol_fields(state), (train_x, train_y, as_protocol(sync_period)), active
        )

    return round_fn


def make_sweep_round(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    steps: int,
    opt_sync: OptSync = "average",
    unroll: int = 1,
    how: str = "mean",
    weights: Optional[tuple[float, ...]] = None,
) -> Callable:
    """`make_round` for R runs at once, vmapped over a leading run axis:
    `(states, data_x, data_y, groups, sync_periods, active=steps) ->
    (states, losses)`, with states batched as `RUN_AXES` (the step counter
    is shared), data_x (G, K, n, H, W, C) uint8 and data_y (G, K, n) the
    distinct partitions, groups (R,) int which partition each run trains on,
    sync_periods (R,) int (0: no-sync) or a `Protocol` of (R,) fields,
    losses (steps, R, K). `unroll`: steps per scan body (fewer loop
    iterations; `benchmarks/suite.py` times it)."""
    if steps < 1:
        raise ValueError(f"steps per round must be >= 1, got {steps}")
    step = jax.vmap(
        make_group_step(model, optimizer, batch_size, opt_sync, how=how, weights=weights),
        in_axes=(RUN_AXES, None, None, 0, 0),
        out_axes=(RUN_AXES, 0),
    )
    scanned = scan_round(step, steps, lambda s: s.perm.shape[:2], unroll)

    @jax.jit
    def round_fn(states, data_x, data_y, groups, sync_periods, active=steps):
        return scanned(
            states,
            (data_x, data_y, jnp.asarray(groups, jnp.int32), as_protocol(sync_periods)),
            active,
        )

    return round_fn


@functools.partial(
    jax.jit, static_argnames=("model", "optimizer", "num_workers", "num_samples", "identical")
)
def init_runs(
    keys: jax.Array,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    sample_x: jax.Array,
    num_workers: int,
    num_samples: int,
    lrs: jax.Array,
    identical: bool = True,
    torch_inits: Optional[jax.Array] = None,
) -> FedState:
    """Initial states of R runs (keys (R,), lrs (R,), torch_inits (R,) bool,
    default all False: flax's initialisation), batched as `RUN_AXES`.

    Jitted: run op by op, flax's initialisers compile one small program per
    kernel shape (12.6 s for 4 runs on the 2-core CPU against 7.8 s jitted).
    Identical workers take one draw, copied (`init`): 5.1 s instead of 9.2 s
    for the first call of 4 runs x 2 workers (docs/performance.md,
    "Compilation cache")."""
    torch_inits = (
        jnp.zeros(keys.shape, bool) if torch_inits is None else jnp.asarray(torch_inits, bool)
    )
    return jax.vmap(
        lambda k, lr, t: init(
            k, model, optimizer, sample_x, num_workers, num_samples, lr, identical, t
        ),
        out_axes=RUN_AXES,
    )(keys, jnp.asarray(lrs, jnp.float32), torch_inits)


def sync_period_of(protocol: str, sync_period: int) -> int:
    """The traced sync period of a protocol: `sync_period` for "periodic" (or
    its alias "sync"), 0 for "nosync".

    >>> sync_period_of("sync", 4), sync_period_of("nosync", 4)
    (4, 0)
    """
    if protocol == "nosync":
        return 0
    if protocol not in ("sync", "periodic"):
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if sync_period < 1:
        raise ValueError(f"sync period must be >= 1 for protocol {protocol!r}, got {sync_period}")
    return sync_period


def trigger_decision(avg_quality, own_quality, ratio: float) -> bool:
    """The triggered protocol's rule at an eval point: sync before the next
    step when the average's quality, averaged over the K local datasets,
    falls below `ratio` x the local models' own (worker d on local dataset
    d), averaged likewise. avg_quality, own_quality: (K,). ratio 0 never
    syncs, ratio inf always (also where a quality is not finite).

    >>> trigger_decision([0.5, 0.7], [0.8, 0.8], ratio=0.9)  # 0.6 < 0.9 x 0.8
    True
    >>> trigger_decision([0.5, 0.7], [0.8, 0.8], ratio=0.5)  # 0.6 >= 0.5 x 0.8
    False
    >>> trigger_decision([float("nan")] * 2, [0.8, 0.8], ratio=float("inf"))
    True
    """
    if ratio == 0:
        return False
    if math.isinf(ratio):
        return True
    avg, own = float(np.mean(avg_quality)), float(np.mean(own_quality))
    return bool(avg < ratio * own)
