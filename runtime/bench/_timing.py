"""What the latency benches share: timing an async call, percentiles, the p50/p99 summary, and
starting a bench target process that prints its ports on its first line."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


def percentile(xs: list[float], q: float) -> float:
    """The sample at rank q (0..1) of xs, sorted (the largest for q close to 1)."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def latencies_us(fn: Callable[[], Awaitable[Any]], n: int, warm: int = 200) -> list[float]:
    """n timed calls of fn, in microseconds, after `warm` untimed ones."""
    for _ in range(warm):
        await fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def summary_us(xs: list[float]) -> dict[str, float]:
    return {"p50_us": round(statistics.median(xs), 1), "p99_us": round(percentile(xs, 0.99), 1)}


def spawn_target(module: str, *args: str, python: str = sys.executable) -> tuple[subprocess.Popen[str], list[str]]:
    """`python -m module args` (a bench target); the words of its first line (its ports...)."""
    proc = subprocess.Popen([python, "-P", "-m", module, *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split() if proc.stdout else []
    if not line:
        proc.kill()
        raise RuntimeError(f"bench target {module} {args} did not start")
    return proc, line
