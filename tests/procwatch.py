"""Signals to a process under test at the moment it is in a given state, and the processes a
run left behind: the interruption tests (benchmarks, examples, `net up`) share these."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def signal_when(p: subprocess.Popen[str], ready: Callable[[], bool], sig: int = signal.SIGTERM,
                after_s: float = 0.0, wait_s: float = 120.0, stop_s: float = 90.0) -> str:
    """Wait (at most `wait_s`) until `ready()` while `p` still runs, `after_s` more, send `sig`,
    and return what `p` wrote on stderr (on stdout if stderr is not piped) once it has ended; `p`
    is killed if it overstays."""
    try:
        deadline = time.monotonic() + wait_s
        while not ready():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "never ready for the signal"
            time.sleep(0.1)
        time.sleep(after_s)
        p.send_signal(sig)
        out, err = p.communicate(timeout=stop_s)
        return err if err is not None else out
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def processes_with(text: str, where: str = "cmdline") -> list[int]:
    """PIDs (other than ours) whose /proc/PID/`where` (cmdline, environ) contains `text`."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / where).read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found
