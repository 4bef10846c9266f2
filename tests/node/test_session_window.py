"""How many blocks a link session keeps in flight before one has ended (runtime/node/session.py):
the schedule's typical Cascade round trips x the fastest reply seen, over the block duration."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from sdqkd.engine import pipeline
from sdqkd.node import session
from sdqkd.node.links import LinkParams


def wanted(variant: str, schedule: str, rtt_s: float) -> int:
    p = LinkParams("L", "bob", "127.0.0.1:1", "commercial", 8.0, variant, schedule)
    cfg = pipeline.BlockConfig("commercial", 8.0, pipeline.pulses_for("commercial", 8.0, 4e6), seed=1)
    link = SimpleNamespace(p=p, bootstrap=b"\1" * 32, block_config=lambda sid, n: cfg)

    async def main() -> int:
        s = session.Session(link, None, "s", 8)  # type: ignore[arg-type]  # only the window is asked
        s._rtt_seen = rtt_s
        return s._wanted_in_flight()

    return asyncio.run(main())


@pytest.mark.parametrize(("variant", "schedule", "trips"), [
    ("optimized", "balanced", 700), ("optimized", "serial", 2400), ("optimized", "parallel", 1400),
    ("original", "balanced", 100), ("original", "serial", 100)])
def test_first_window_follows_the_schedules_round_trips(variant: str, schedule: str, trips: int) -> None:
    d = pipeline.BlockConfig("commercial", 8.0, pipeline.pulses_for("commercial", 8.0, 4e6), seed=1).duration_s
    assert wanted(variant, schedule, 0.02) == session.CPU_BLOCKS + math.ceil(trips * 0.02 / d)
    assert wanted(variant, schedule, math.inf) == session.CPU_BLOCKS  # no reply seen yet
