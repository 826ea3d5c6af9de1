"""Checkpoints of a sweep's whole training state, with orbax-checkpoint.

A checkpoint holds the stacked `FedState` of every run (parameters,
optimiser states, data keys, the current epoch order and the step: the data
order position is `step` within `perm`) and a JSON record of which eval point
it follows and the runs' settings. orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed while saving,
or a save that fails (`metrics_io.OutputError`), leaves the previous
checkpoint intact. `restore_latest` restores the newest checkpoint that
reads back, skipping damaged ones. Nothing is unpickled on restore.
"""

import contextlib
import logging as logging_std
import os
import sys
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

from fedjax_mi import federated, metrics_io


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the folder."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


@contextlib.contextmanager
def _quiet_orbax():
    """orbax logs (through absl) each damaged file it meets; the caller
    reports a damaged checkpoint in one line instead."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    with _quiet_orbax():  # it reads each checkpoint's metadata, damaged or not
        return ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False
            ),
        )


def close(mgr: ocp.CheckpointManager) -> None:
    """Close `mgr` on any path; an error while closing after a failed save
    is dropped (the error that stopped the run has been raised already)."""
    with contextlib.suppress(Exception):
        mgr.close()


def _to_saveable(states: federated.FedState) -> federated.FedState:
    # Typed PRNG keys are stored as their raw uint32 data.
    return states._replace(data_keys=jax.random.key_data(states.data_keys))


def save(
    mgr: ocp.CheckpointManager, step: int, states: federated.FedState, meta: dict[str, Any]
) -> None:
    """Save `states` after local step `step` (synchronously, atomically);
    `metrics_io.OutputError` naming the folder if that fails."""
    try:
        mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_saveable(states)), meta=ocp.args.JsonSave(meta)
            ),
        )
        mgr.wait_until_finished()
    except Exception as e:  # orbax/tensorstore wrap the OSError in several types
        raise metrics_io.output_error(
            f"{mgr.directory}/{step}", e, "the previous checkpoints are intact"
        ) from None


class _IgnoreAbandonedReads:
    """sys.unraisablehook without the reports of a failed restore's leftovers.

    When one array of a damaged checkpoint fails to read, orbax's restore
    raises and closes its event loop while tensorstore's other reads are
    still under way: their completion callbacks report "Event loop is
    closed", and orbax's read coroutines, never awaited to the end, report
    their own errors when collected, both through sys.unraisablehook and up
    to seconds later. The restore's error says what matters, so those
    reports are dropped; any other goes to the previous hook."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        ):
            return
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        self.previous(unraisable)


class _DropOrbaxReadErrors(logging_std.Filter):
    """Drops `asyncio` log records that report an orbax read task's error
    nobody retrieved: the same leftovers of a failed restore, reported
    through asyncio's exception handler when the task is collected. They
    are recognised by an orbax frame or coroutine, or by a tensorstore read
    error (its message carries the `tensorstore_spec` of the array it could
    not read; some of those tasks hold no orbax frame)."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        orbax = f"{os.sep}orbax{os.sep}"
        if orbax in record.getMessage():  # "future: <Task ... coro=<...> defined at .../orbax/...>"
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and "tensorstore_spec" in str(exc):
            return False
        tb = exc.__traceback__ if exc is not None else None
        while tb is not None:
            if orbax in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


_DROP_ORBAX_READ_ERRORS = _DropOrbaxReadErrors()


def _ignore_abandoned_reads() -> None:
    """Install the filters of a failed restore's leftover reports (once)."""
    if not isinstance(sys.unraisablehook, _IgnoreAbandonedReads):
        sys.unraisablehook = _IgnoreAbandonedReads(sys.unraisablehook)
    logging_std.getLogger("asyncio").addFilter(_DROP_ORBAX_READ_ERRORS)  # a no-op when present


def _reason(e: Exception) -> str:
    """The exception's type and the start of its first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def restore_step(
    mgr: ocp.CheckpointManager, step: int, template: federated.FedState
) -> tuple[federated.FedState, dict[str, Any]]:
    """(states, meta) of checkpoint `step`; `CheckpointError` if it does not
    read back. `template` gives the shapes and dtypes."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
    _ignore_abandoned_reads()
    try:
        with _quiet_orbax():
            restored = mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
    except Exception as e:  # orbax/tensorstore raise many types for a damaged file
        raise CheckpointError(
            f"checkpoint {mgr.directory}/{step} is unreadable ({_reason(e)})", _reason(e)
        ) from None
    states = restored.state
    states = states._replace(data_keys=jax.random.wrap_key_data(states.data_keys))
    return states, restored.meta


def restore_latest(
    mgr: ocp.CheckpointManager, template: federated.FedState, warn: Callable[[str], None] = print
) -> Optional[tuple[int, federated.FedState, dict[str, Any]]]:
    """(step, states, meta) of the newest checkpoint that reads back, or None
    if there is none. Each damaged newer one is skipped with one `warn` line
    naming it and why; `CheckpointError` (one line) if none reads back.
    `template` gives the shapes and dtypes (the freshly initialised states)."""
    failures = []  # (step, reason) of the damaged ones, newest first
    with _quiet_orbax():
        steps = sorted(mgr.all_steps(read=True), reverse=True)
    for step in steps:
        try:
            states, meta = restore_step(mgr, step, template)
        except CheckpointError as e:
            failures.append((step, e.reason))
            continue
        for bad, reason in failures:
            warn(
                f"warning: skipped the damaged checkpoint {mgr.directory}/{bad} ({reason}); "
                f"using the one at step {step}"
            )
        return step, states, meta
    if failures:
        raise CheckpointError(
            f"no intact checkpoint in {mgr.directory} ("
            + "; ".join(f"step {bad}: {reason}" for bad, reason in failures)
            + ")"
        )
    return None
