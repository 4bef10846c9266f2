"""A benchmark stopped by SIGTERM or Ctrl-C cleans up as after an error: its temporary
directories (key stores, certificates) go, and a case it runs in a child process gets SIGTERM in
turn and time to stop its network and remove its own, instead of SIGKILL mid-run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

TICKS = os.sysconf("SC_CLK_TCK")
GRACE_S = 60.0  # a child's time to stop its network after SIGTERM (a node stops within ~5 s)


@contextlib.contextmanager
def sigterm_interrupts(once: bool = False) -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does: `with` blocks
    and `finally` clauses (asyncio.run cancels its tasks, whose own run) clean up on the way out.
    `once` (a case's child): the first SIGTERM or SIGINT interrupts, later ones are ignored, so
    that Ctrl-C (which reaches the whole process group) followed by the parent's SIGTERM does
    not cut the cleanup itself short."""
    signals = (signal.SIGTERM, signal.SIGINT) if once else (signal.SIGTERM,)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if once:
            for sig in signals:
                signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    old = [signal.signal(sig, interrupt) for sig in signals]
    try:
        yield
    finally:
        for sig, handler in zip(signals, old, strict=True):
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
