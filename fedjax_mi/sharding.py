"""Federated training with the worker axis split over several devices.

`make_sharded_round` is `federated.make_round` under `jax.shard_map`: each
device holds K / D of the workers (their parameters, optimiser states, data
keys and local datasets) and runs their steps with no communication; the
only collective is the `lax.pmean` of `federated.average` at a sync (and,
for dynamic averaging, one integer `pmax` at each of its checks). Plain
`jit(vmap(step))` over worker-sharded inputs instead lets the SPMD
partitioner choose, and it inserts all-gathers into every step
(`benchmarks/sharding_collectives.py` counts them; BUILD_NOTES.md).

Runs of a sweep are independent: `over_runs` splits the run axis of the
sweep's round and measurement over a "runs" mesh (`run_mesh`), each device
running R / D runs with no collective at all (`experiments.sweep --devices`).

Several hosts: call `jax.distributed.initialize()` first on every host; then
`jax.devices()` lists the devices of all hosts and the same mesh and code run
unchanged (README.md, "Several devices").
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from fedjax_mi import federated

WORKERS = "workers"
RUNS = "runs"


def worker_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh named "workers" over the first `num_devices` devices (all by default)."""
    devices = jax.devices()
    num_devices = len(devices) if num_devices is None else num_devices
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices must be in 1..{len(devices)}, got {num_devices}")
    # Auto axes: outside shard_map the SPMD partitioner places values (the
    # baseline of benchmarks/sharding_collectives.py relies on that).
    return jax.make_mesh((num_devices,), (WORKERS,), axis_types=(AxisType.Auto,),
                         devices=devices[:num_devices])


def _state_spec(worker: Optional[str]) -> federated.FedState:
    return federated.FedState(params=P(worker), opt_state=P(worker), data_keys=P(worker),
                              perm=P(worker), lr=P(), step=P(), ref=P(worker), syncs=P(),
                              models_sent=P(), pending=P())


def make_sharded_round(model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                       batch_size: int, steps: int, opt_sync: federated.OptSync = "average",
                       how: str = "mean", weights=None) -> Callable:
    """`federated.make_round` with the K workers split over the mesh's
    "workers" axis (K must be a multiple of its size):
    `(state, train_x, train_y, sync_period, active=steps) -> (state, losses)`,
    the same arguments and results as the single-device round (sync_period
    an int or a `federated.Protocol`). Besides the sync's collective, the
    dynamic protocol's check is a one-integer `pmax` (any worker violating)."""
    if steps < 1:
        raise ValueError(f"steps per round must be >= 1, got {steps}")
    group_step = federated.make_group_step(model, optimizer, batch_size, opt_sync,
                                           axis_name=WORKERS, how=how, weights=weights)
    scanned = federated.scan_round(
        lambda s, x, y, period: group_step(s, x[None], y[None], 0, period),
        steps, lambda s: (s.perm.shape[0],))
    local = jax.shard_map(
        lambda state, x, y, period, active: scanned(state, (x, y, period), active),
        mesh=mesh,
        in_specs=(_state_spec(WORKERS), P(WORKERS), P(WORKERS), P(), P()),
        out_specs=(_state_spec(WORKERS), P(None, WORKERS)),
        # Both branches of the sync `lax.cond` hold per-device values; the
        # pmean'd branch is device-invariant, which the checker cannot unify.
        check_vma=False)

    @jax.jit
    def round_fn(state, train_x, train_y, sync_period, active=steps):
        num_workers, num_devices = train_x.shape[0], mesh.shape[WORKERS]
        if num_workers % num_devices:
            raise ValueError(f"{num_workers} workers do not split evenly over {num_devices} devices")
        # Inputs placed otherwise are moved onto the workers' devices first.
        place = lambda t: jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
            a, NamedSharding(mesh, P(WORKERS) if jnp.ndim(a) else P())), t)
        return local(place(federated.with_protocol_fields(state)), place(train_x), place(train_y),
                     federated.as_protocol(sync_period), jnp.asarray(active, jnp.int32))

    return round_fn


def run_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh named "runs" over the first `num_devices` devices."""
    devices = jax.devices()
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices must be in 1..{len(devices)} (the devices jax sees: "
                         f"{len(devices)}), got {num_devices}")
    return jax.make_mesh((num_devices,), (RUNS,), axis_types=(AxisType.Auto,),
                         devices=devices[:num_devices])


def over_runs(sweep_round: Callable, sweep_measure: Callable, mesh: Mesh
              ) -> tuple[Callable, Callable]:
    """`experiment.programs`' sweep round and measurement with the run axis
    split over the mesh's "runs" axis: each device trains and measures R / D
    of the runs with the same vmapped code and no collective (runs are
    independent; the data groups and test split are replicated). Same
    arguments and results as the one-device programs; R must be a multiple
    of the mesh size."""
    runs, rep = P(RUNS), P()
    # States are batched as federated.RUN_AXES: the step counter is shared.
    states = federated.FedState(params=runs, opt_state=runs, data_keys=runs, perm=runs,
                                lr=runs, step=rep, ref=runs, syncs=runs, models_sent=runs,
                                pending=runs)
    round_fn = jax.jit(jax.shard_map(
        sweep_round, mesh=mesh,
        in_specs=(states, rep, rep, runs, runs, rep),
        out_specs=(states, P(None, RUNS)), check_vma=False))
    measure_fn = jax.jit(jax.shard_map(
        sweep_measure, mesh=mesh,
        in_specs=(runs, runs, rep, rep, runs, rep, rep),
        out_specs=runs, check_vma=False))
    return round_fn, measure_fn


def place_runs(states: federated.FedState, mesh: Mesh) -> federated.FedState:
    """Sweep states (batched as `federated.RUN_AXES`) split over the mesh's
    "runs" axis, the shared step counter replicated: e.g. states restored
    from a checkpoint onto one device."""
    split = lambda t: jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, P(RUNS))), t)
    return states._replace(params=split(states.params), opt_state=split(states.opt_state),
                           data_keys=split(states.data_keys), perm=split(states.perm),
                           lr=split(states.lr), ref=split(states.ref),
                           syncs=split(states.syncs), models_sent=split(states.models_sent),
                           pending=split(states.pending),
                           step=jax.device_put(states.step, NamedSharding(mesh, P())))


def shard_leading(tree, mesh: Mesh, axis: str = WORKERS):
    """Place a pytree on the mesh with every non-scalar leaf split on its
    leading axis over mesh axis `axis` (scalars replicated): the worker axis
    of a state or local datasets, or the run axis of a sweep (vmapped runs are
    independent, so jit needs no collective for them)."""
    return jax.tree.map(
        lambda a: jax.device_put(a, NamedSharding(mesh, P(axis) if jnp.ndim(a) else P())), tree)
