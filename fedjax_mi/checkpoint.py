"""Checkpoints of a sweep's whole training state, with orbax-checkpoint.

A checkpoint holds the stacked `FedState` of every run (parameters,
optimiser states, data keys, the current epoch order and the step: the data
order position is `step` within `perm`) and a JSON record of which eval point
it follows and the runs' settings. orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed while saving
leaves the previous checkpoint intact. Nothing is unpickled on restore.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from fedjax_mi import federated


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the folder."""


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False))


def _to_saveable(states: federated.FedState) -> federated.FedState:
    # Typed PRNG keys are stored as their raw uint32 data.
    return states._replace(data_keys=jax.random.key_data(states.data_keys))


def save(mgr: ocp.CheckpointManager, step: int, states: federated.FedState,
         meta: dict[str, Any]) -> None:
    """Save `states` after local step `step` (synchronously, atomically)."""
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(states)),
                                           meta=ocp.args.JsonSave(meta)))
    mgr.wait_until_finished()


def restore_latest(mgr: ocp.CheckpointManager, template: federated.FedState
                   ) -> Optional[tuple[int, federated.FedState, dict[str, Any]]]:
    """(step, states, meta) of the newest complete checkpoint, or None if
    there is none. `template` gives the shapes and dtypes (the freshly
    initialised states)."""
    step = mgr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many types for a damaged file
        raise CheckpointError(f"checkpoint {mgr.directory}/{step} is unreadable "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    states = restored.state
    states = states._replace(data_keys=jax.random.wrap_key_data(states.data_keys))
    return step, states, restored.meta
