"""The metrics file: JSON lines, one record per (eval point, model, dataset).

Written by atomic replacement (write a temporary file in the same folder,
fsync, `os.replace`), so a run killed at any moment leaves either the
previous complete file or the new complete file, never a partial line.
A write that fails (a full disk, a folder made read-only) leaves the previous
file as it was and raises `OutputError` naming the path.
"""

import contextlib
import json
import os
from typing import Any, Iterable

FIELDS = ("step", "epoch", "model", "dataset", "mi_xz", "mi_zy", "acc")


class OutputError(OSError):
    """A result file or checkpoint could not be written; the message names
    the path and the OS error. What was there before is intact."""


def output_error(path: str, cause: BaseException, intact: str) -> OutputError:
    """One line: the path, the cause (its OS message) and what is intact;
    `errno` is the cause's."""
    reason = (
        getattr(cause, "strerror", None)
        or f"{type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}"
    )
    error = OutputError(f"cannot write {path} ({reason}); {intact}")
    error.errno = getattr(cause, "errno", None)
    return error


def write_atomic(path: str, text: str) -> None:
    """Replace `path` by `text` atomically; `OutputError` if that fails."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise output_error(
            path, e, f"the previous {os.path.basename(path)}, if any, is intact"
        ) from None


def write_records(path: str, records: Iterable[dict[str, Any]]) -> None:
    """Write all records as JSON lines, atomically."""
    write_atomic(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def read_records(path: str) -> list[dict[str, Any]]:
    """Read a metrics file; raises ValueError naming the line that does not parse.

    >>> import tempfile
    >>> record = dict(step=0, epoch=0.0, model="average", dataset="test", mi_xz=None,
    ...               mi_zy=None, acc=0.5)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "metrics.jsonl")
    ...     write_records(path, [record, {**record, "step": 4}])
    ...     text, records = open(path).read(), read_records(path)
    >>> print(text, end="")
    {"step": 0, "epoch": 0.0, "model": "average", "dataset": "test", "mi_xz": null, "mi_zy": null, "acc": 0.5}
    {"step": 4, "epoch": 0.0, "model": "average", "dataset": "test", "mi_xz": null, "mi_zy": null, "acc": 0.5}
    >>> records == [record, {**record, "step": 4}]
    True
    """
    records = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
            missing = [f for f in FIELDS if f not in record]
            if missing:
                raise ValueError(f"{path}:{number}: record lacks fields {missing}")
            records.append(record)
    return records
