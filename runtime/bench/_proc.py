"""A benchmark stopped by SIGTERM or Ctrl-C cleans up as after an error: its temporary
directories (key stores, certificates) go, and a case it runs in a child process gets SIGTERM in
turn and time to stop its network and remove its own, instead of SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from sdqkd.interrupts import as_ctrl_c

T = TypeVar("T")
TICKS = os.sysconf("SC_CLK_TCK")
GRACE_S = 60.0  # a child's time to stop its network after SIGTERM (a node stops within ~5 s)


@contextlib.contextmanager
def sigterm_interrupts(once: bool = False) -> Iterator[None]:
    """Inside, SIGTERM does what Ctrl-C does (sdqkd/interrupts.py).
    `once` (a case's child): the first SIGTERM or SIGINT interrupts, later ones are ignored, so
    that Ctrl-C (which reaches the whole process group) followed by the parent's SIGTERM does
    not cut the cleanup itself short; its event loops run under `run_cancellable`."""
    signals = (signal.SIGTERM, signal.SIGINT) if once else (signal.SIGTERM,)

    def interrupt_once(signum: int, frame: FrameType | None) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    old = [signal.signal(sig, interrupt_once if once else as_ctrl_c) for sig in signals]
    try:
        yield
    finally:
        for sig, handler in zip(signals, old, strict=True):
            signal.signal(sig, handler)


def run_cancellable(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` in which the first SIGTERM or SIGINT cancels `coro`, whose `finally`
    clauses then run in the live event loop, and raises KeyboardInterrupt once it has unwound;
    later signals are ignored while it cleans up (a case's child, see sigterm_interrupts)."""
    sigs = (signal.SIGTERM, signal.SIGINT)
    saved = [signal.getsignal(sig) for sig in sigs]

    async def main() -> T:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        hit = False

        def stop() -> None:
            nonlocal hit
            if not hit:
                hit = True
                task.cancel()

        for sig in sigs:
            loop.add_signal_handler(sig, stop)
        try:
            return await coro
        except asyncio.CancelledError:
            if hit:
                raise KeyboardInterrupt from None
            raise

    try:
        return asyncio.run(main())
    finally:  # closing the loop reset both signals to their defaults
        for sig, handler in zip(sigs, saved, strict=True):
            signal.signal(sig, handler)


def run_case(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)`, except that a child
    cut short (its timeout, or this process interrupted) gets SIGTERM and GRACE_S to clean up
    before SIGKILL (subprocess.run kills at once)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except BaseException:
            p.terminate()
            try:
                p.communicate(timeout=GRACE_S)
            except BaseException:
                p.kill()
                p.communicate()
                raise
            raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def cpu_seconds(stat: Path) -> float:
    """utime + stime (fields 14 and 15) of a /proc stat file: a process's (/proc/PID/stat) or one
    of its threads' (/proc/PID/task/TID/stat), in seconds (ticks of 1/SC_CLK_TCK)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds so far of process `pid`, all its threads."""
    return cpu_seconds(Path(f"/proc/{pid}/stat"))
