"""One run per output folder: an OS lock (`fcntl.flock`) on FOLDER/.lock.

The lock belongs to the open file, so the OS releases it when the process
ends in any way (exit, crash, SIGKILL): a lock file left by a dead process
never blocks. The file holds the holder's process id, for the error message
of a second run. It is never deleted: removing a lock file that another
process has just opened would let two processes lock two different files.
Holding a folder twice in one process is allowed (a sweep holds its folder
and the runs' checkpoint folder is the same one). Not reliable on network
file systems whose flock is local to one machine.
"""

import contextlib
import fcntl
import os
import time
from typing import Iterator

LOCK_NAME = ".lock"

# Folders held by this process: real path -> [open lock file, depth].
_HELD: dict[str, list] = {}


class LockError(Exception):
    """The folder is in use by another process, or cannot hold a lock file;
    the message starts with "--out: " (the flag that names the folder)."""


def _holder(fh) -> str:
    """The process id written in the lock file (the holder writes it just
    after locking, so wait briefly for it)."""
    for _ in range(20):
        fh.seek(0)
        pid = fh.read().strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "unknown"


@contextlib.contextmanager
def hold(folder: str) -> Iterator[None]:
    """Lock `folder` (created if missing) until the block ends; raise
    `LockError` at once, naming the folder and the holder's process id, when
    another process holds it."""
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path = os.path.join(folder, LOCK_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
        fh = open(path, "a+")
    except OSError as e:
        raise LockError(f"--out: cannot write to {folder!r} ({e.strerror or e})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fh)
        fh.close()
        raise LockError(
            f"--out: {folder!r} is in use by another run (process {pid}, lock "
            f"{path}); wait for it to end or choose another --out"
        ) from None
    except OSError as e:
        fh.close()
        raise LockError(f"--out: cannot lock {path} ({e.strerror or e})") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _HELD[key] = [fh, 1]
    try:
        yield
    finally:
        del _HELD[key]
        fh.close()  # releases the lock
