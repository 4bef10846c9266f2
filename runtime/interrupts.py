"""SIGTERM handled as Ctrl-C, so that `kill` (or a time-out) cleans up as an interrupt does.

Under `asyncio.run` Ctrl-C is asyncio's own SIGINT handler, which cancels the main task: the
coroutine's `finally` clauses then run in a live event loop (networks stop, temporary
directories go). A KeyboardInterrupt raised in the middle of the event loop instead leaves the
cleanup to asyncio.run's shutdown, which cancels every task of a running network at once, those
that would stop it among them (a benchmark case left its key stores behind that way, or crashed
at exit with the nodes' threads still running). Outside asyncio.run, Ctrl-C is Python's
KeyboardInterrupt in the main thread, and `with` blocks and `finally` clauses clean up."""

from __future__ import annotations

import signal
from types import FrameType


def as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """A signal handler: what SIGINT's handler would do now (asyncio.run's while it runs)."""
    ctrl_c = signal.getsignal(signal.SIGINT)
    if callable(ctrl_c) and ctrl_c is not as_ctrl_c:
        ctrl_c(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt
