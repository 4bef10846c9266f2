"""A benchmark stopped with SIGTERM cleans up (runtime/bench/_proc.py): `sdqkd bench link`'s case
in a child process holds two nodes' key stores in a temporary directory; SIGTERM to the bench
reaches that child, which stops its network and removes the directory, and no process is left."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from procwatch import processes_with, signal_when

from sdqkd.bench._proc import run_cancellable, sigterm_interrupts


def test_sigterm_stops_the_link_bench_and_its_case_without_leaving_key_stores(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    bench = subprocess.Popen([sys.executable, "-m", "sdqkd.cli", "bench", "link", "--pairs", "1", "--rtt", "",
                              "--seconds", "120"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # once the rtt0 case runs, and 2 s later its network is up and storing keys
    err = signal_when(bench, lambda: bool(list(tmp.glob("sdqkd-bench-link-*/nodes/*/data/keys.sqlite"))), after_s=2)
    assert bench.returncode == 130, err[-2000:]
    assert "interrupted" in err
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    assert left == [], err[-2000:]  # no key store, certificate or state left behind
    assert processes_with(str(tmp), "environ") == [], err[-2000:]


async def _network_case(stopped: list[str], second_signal: bool) -> None:
    """A case whose cleanup needs another task of its network still running (as net.stop() does)."""

    async def node() -> str:
        await asyncio.sleep(0.3)
        return "stopped"

    task = asyncio.create_task(node())
    # from another thread, as a signal comes: it finds the event loop waiting in select()
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        await asyncio.sleep(30)
    finally:
        if second_signal:
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()  # the parent's, after a Ctrl-C
            await asyncio.sleep(0.15)
        stopped.append(await task)


def test_a_case_child_stops_its_network_in_a_live_event_loop_and_ignores_a_second_signal() -> None:
    """Raised in the middle of the event loop, KeyboardInterrupt left the cleanup to asyncio.run's
    shutdown, which cancelled the network's tasks together with the one stopping it."""
    stopped: list[str] = []
    with sigterm_interrupts(once=True):
        inside = signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            run_cancellable(_network_case(stopped, second_signal=True))
        assert signal.getsignal(signal.SIGTERM) is inside  # restored for the rest of the child
    assert stopped == ["stopped"]


def test_sigterm_does_what_ctrl_c_does_under_asyncio_run() -> None:
    """In a benchmark's own process: asyncio.run's SIGINT handler cancels the main task."""
    stopped: list[str] = []
    with sigterm_interrupts(), pytest.raises(KeyboardInterrupt):
        asyncio.run(_network_case(stopped, second_signal=False))
    assert stopped == ["stopped"]
