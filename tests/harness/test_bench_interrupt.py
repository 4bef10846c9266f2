"""A benchmark stopped with SIGTERM cleans up (runtime/bench/_proc.py): `sdqkd bench link`'s case
in a child process holds two nodes' key stores in a temporary directory; SIGTERM to the bench
reaches that child, which stops its network and removes the directory, and no process is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment names `marker` (the bench and its children share our TMPDIR)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def test_sigterm_stops_the_link_bench_and_its_case_without_leaving_key_stores(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    bench = subprocess.Popen([sys.executable, "-m", "sdqkd.cli", "bench", "link", "--pairs", "1", "--rtt", "",
                              "--seconds", "120"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp.glob("sdqkd-bench-link-*/nodes/*/data/keys.sqlite")):  # the rtt0 case runs
            assert bench.poll() is None, bench.communicate()
            assert time.monotonic() < deadline, "the link case never started"
            time.sleep(0.2)
        time.sleep(2)  # its network is up and storing keys
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=90)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    assert bench.returncode == 130, err[-2000:]
    assert "interrupted" in err
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    assert left == [], err[-2000:]  # no key store, certificate or state left behind
    assert _processes_with(str(tmp)) == [], err[-2000:]
