"""Federated training with the worker axis split over several devices.

`make_sharded_round` is `federated.make_round` under `jax.shard_map`: each
device holds K / D of the workers (their parameters, optimiser states, data
keys and local datasets) and runs their steps with no communication; the
only collective is the `lax.pmean` of `federated.average` at a sync (and,
for dynamic averaging, one integer `pmax` at each of its checks). Plain
`jit(vmap(step))` over worker-sharded inputs instead lets the SPMD
partitioner choose, and it inserts all-gathers into every step
(`benchmarks/sharding_collectives.py` counts them; docs/performance.md, "Several devices").

Runs of a sweep are independent: `over_runs` splits the run axis of the
sweep's round and measurement over a "runs" mesh (`run_mesh`), each device
running R / D runs with no collective at all (`experiments.sweep --devices`).

Several processes (hosts): `init_distributed` first in every process; then
`jax.devices()` lists every process's devices and a mesh spans them. Every
process computes the same host values (same seeds, same data), `put` turns
them into global arrays holding only the process's own shards, and `fetch`
brings a result back whole to every process (docs/performance.md,
"Several hosts").
"""

import functools
import os
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from fedjax_mi import federated

WORKERS = "workers"
RUNS = "runs"


def init_distributed(
    coordinator: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
) -> bool:
    """Join the processes of one program (`jax.distributed.initialize`), before
    any other jax call. With the three arguments given, as they say (e.g.
    "127.0.0.1:12355", 2, 0); with none, from a SLURM job of several tasks
    (jax reads its environment), and else nothing happens (one process).
    CPU collectives go through gloo. Returns whether it initialised.
    Raises ValueError when only some arguments are given."""
    given = [a is not None for a in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("--coordinator, --num_processes and --process_id go together")
    if not any(given) and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    if jax.distributed.is_initialized():  # a second program in the same processes
        return True
    if all(given) and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id must be in 0..{num_processes - 1}, got {process_id}")
    # XLA:CPU's default collectives stay within one process.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def put(value, sharding: NamedSharding) -> jax.Array:
    """`value`, which every process holds in full (the same in each), placed
    with `sharding`: `jax.device_put` in one process; across processes a
    global array built from each process's own shards. A global array
    already spanning the processes (e.g. restored by orbax) is kept."""
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return value
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(
            put(jax.random.key_data(value), sharding), impl=jax.random.key_impl(value)
        )
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (one process: no-op)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` holds in any process (one process: `flag` itself)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def fetch(tree):
    """A pytree of (possibly global) arrays as numpy, whole, in every process."""
    if all(a.is_fully_addressable for a in jax.tree.leaves(tree) if isinstance(a, jax.Array)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def worker_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh named "workers" over the first `num_devices` devices (all by default)."""
    devices = jax.devices()
    num_devices = len(devices) if num_devices is None else num_devices
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices must be in 1..{len(devices)}, got {num_devices}")
    # Auto axes: outside shard_map the SPMD partitioner places values (the
    # baseline of benchmarks/sharding_collectives.py relies on that).
    return jax.make_mesh(
        (num_devices,), (WORKERS,), axis_types=(AxisType.Auto,), devices=devices[:num_devices]
    )


def _state_spec(worker: Optional[str]) -> federated.FedState:
    return federated.FedState(
        params=P(worker),
        opt_state=P(worker),
        data_keys=P(worker),
        perm=P(worker),
        lr=P(),
        step=P(),
        ref=P(worker),
        syncs=P(),
        models_sent=P(),
        pending=P(),
    )


def make_sharded_round(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    batch_size: int,
    steps: int,
    opt_sync: federated.OptSync = "average",
    how: str = "mean",
    weights=None,
) -> Callable:
    """`federated.make_round` with the K workers split over the mesh's
    "workers" axis (K must be a multiple of its size):
    `(state, train_x, train_y, sync_period, active=steps) -> (state, losses)`,
    the same arguments and results as the single-device round (sync_period
    an int or a `federated.Protocol`). Besides the sync's collective, the
    dynamic protocol's check is a one-integer `pmax` (any worker violating)."""
    if steps < 1:
        raise ValueError(f"steps per round must be >= 1, got {steps}")
    group_step = federated.make_group_step(
        model, optimizer, batch_size, opt_sync, axis_name=WORKERS, how=how, weights=weights
    )
    scanned = federated.scan_round(
        lambda s, x, y, period: group_step(s, x[None], y[None], 0, period),
        steps,
        lambda s: (s.perm.shape[0],),
    )
    local = jax.shard_map(
        lambda state, x, y, period, active: scanned(state, (x, y, period), active),
        mesh=mesh,
        in_specs=(_state_spec(WORKERS), P(WORKERS), P(WORKERS), P(), P()),
        out_specs=(_state_spec(WORKERS), P(None, WORKERS)),
        # Both branches of the sync `lax.cond` hold per-device values; the
        # pmean'd branch is device-invariant, which the checker cannot unify.
        check_vma=False,
    )

    @jax.jit
    def round_fn(state, train_x, train_y, sync_period, active=steps):
        num_workers, num_devices = train_x.shape[0], mesh.shape[WORKERS]
        if num_workers % num_devices:
            raise ValueError(
                f"{num_workers} workers do not split evenly over {num_devices} devices"
            )
        # Inputs placed otherwise are moved onto the workers' devices first.
        place = lambda t: jax.tree.map(
            lambda a: jax.lax.with_sharding_constraint(
                a, NamedSharding(mesh, P(WORKERS) if jnp.ndim(a) else P())
            ),
            t,
        )
        return local(
            place(federated.with_protocol_fields(state)),
            place(train_x),
            place(train_y),
            federated.as_protocol(sync_period),
            jnp.asarray(active, jnp.int32),
        )

    return round_fn


def run_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh named "runs" over the first `num_devices` devices."""
    devices = jax.devices()
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices must be in 1..{len(devices)} (the devices jax sees: "
            f"{len(devices)}), got {num_devices}"
        )
    return jax.make_mesh(
        (num_devices,), (RUNS,), axis_types=(AxisType.Auto,), devices=devices[:num_devices]
    )


@functools.lru_cache(maxsize=8)
def over_runs(
    sweep_round: Callable, sweep_measure: Callable, mesh: Mesh
) -> tuple[Callable, Callable]:
    """`sweep.programs`' sweep round and measurement with the run axis
    split over the mesh's "runs" axis: each device trains and measures R / D
    of the runs with the same vmapped code and no collective (runs are
    independent; the data groups and test split are replicated). Same
    arguments and results as the one-device programs; R must be a multiple
    of the mesh size. Built once per (programs, mesh), as `sweep.programs`
    are: later sweeps of the same settings in one process (a resumed one)
    reuse their compilations."""
    runs, rep = P(RUNS), P()
    # States are batched as federated.RUN_AXES: the step counter is shared.
    states = federated.FedState(
        params=runs,
        opt_state=runs,
        data_keys=runs,
        perm=runs,
        lr=runs,
        step=rep,
        ref=runs,
        syncs=runs,
        models_sent=runs,
        pending=runs,
    )
    round_fn = jax.jit(
        jax.shard_map(
            sweep_round,
            mesh=mesh,
            in_specs=(states, rep, rep, runs, runs, rep),
            out_specs=(states, P(None, RUNS)),
            check_vma=False,
        )
    )
    measure_fn = jax.jit(
        jax.shard_map(
            sweep_measure,
            mesh=mesh,
            in_specs=(runs, runs, rep, rep, runs, rep, rep),
            out_specs=runs,
            check_vma=False,
        )
    )
    return round_fn, measure_fn


def place_runs(states: federated.FedState, mesh: Mesh) -> federated.FedState:
    """Sweep states (batched as `federated.RUN_AXES`) split over the mesh's
    "runs" axis, the shared step counter replicated: e.g. states restored
    from a checkpoint onto one device."""
    split = lambda t: jax.tree.map(lambda a: put(a, NamedSharding(mesh, P(RUNS))), t)
    return states._replace(
        params=split(states.params),
        opt_state=split(states.opt_state),
        data_keys=split(states.data_keys),
        perm=split(states.perm),
        lr=split(states.lr),
        ref=split(states.ref),
        syncs=split(states.syncs),
        models_sent=split(states.models_sent),
        pending=split(states.pending),
        step=put(states.step, NamedSharding(mesh, P())),
    )


def shard_leading(tree, mesh: Mesh, axis: str = WORKERS):
    """Place a pytree on the mesh with every non-scalar leaf split on its
    leading axis over mesh axis `axis` (scalars replicated): the worker axis
    of a state or local datasets, or the run axis of a sweep (vmapped runs are
    independent, so jit needs no collective for them)."""
    return jax.tree.map(
        lambda a: put(a, NamedSharding(mesh, P(axis) if jnp.ndim(a) else P())), tree
    )


def replicate(tree, mesh: Mesh):
    """Every leaf whole on every device of the mesh (`put`)."""
    return jax.tree.map(lambda a: put(a, NamedSharding(mesh, P())), tree)
