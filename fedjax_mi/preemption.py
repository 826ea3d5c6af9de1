"""Stop a run cleanly on SIGTERM or SIGINT (how clusters preempt a job, and Ctrl-C).

While `stop_on_signals` is active, the first SIGTERM or SIGINT only sets a
flag; the training loop reads it after each eval point (a compiled round of
`eval_period` steps and its measurement cannot be cut short), saves a
checkpoint there and raises `Preempted`. A second signal has its default
effect and ends the process at once (the last checkpoint and the metrics,
written atomically, stay intact).
"""

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped early at an eval point after a signal; its checkpoint
    and metrics up to that point are saved, and `--resume` continues it."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum = signum
        self.step = step


class StopRequest:
    """Truthy once a stop signal arrived; `signum` says which."""

    def __init__(self):
        self.signum: Optional[int] = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn the first SIGTERM/SIGINT into a `StopRequest`; restore the
    previous handlers on exit. Outside the main thread (where Python cannot
    set handlers) the request never fires and signals act as usual."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        request.signum = signum
        for s in SIGNALS:  # a second signal stops at once
            signal.signal(s, signal.SIG_DFL)
        # os.write, not print: the handler may run in the middle of a print.
        with contextlib.suppress(OSError):
            os.write(
                2,
                f"{request.name} received: finishing the current eval point, then "
                f"saving a checkpoint (send it again to stop at once)\n".encode(),
            )

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
