"""What a link says while its key pool is full (runtime/node/links.py): paused and ACTIVE, at
the end that waits for room and at the end that only watches its pool, and again when a new
session starts on a paused link, whatever status was written while no session was up (the
controller's PENDING after a node's restart: it stayed, and the link showed "coming up")."""

from __future__ import annotations

import asyncio
from typing import Any

from sdqkd.node.links import EngineLink, LinkParams, LinkStats


class Pool:
    """A key pool that is full until `room()`."""

    def __init__(self) -> None:
        self.full = True
        self._changed = asyncio.Event()

    def room_keys(self, qkdl_id: str) -> int:
        return 0 if self.full else 1_000

    async def wait_for_room(self, qkdl_id: str, keys: int = 1) -> None:
        while self.full:
            self._changed.clear()
            await self._changed.wait()

    def room(self) -> None:
        self.full = False
        self._changed.set()


def _link(pool: Pool, seen: list[tuple[str, bool]]) -> EngineLink:
    async def on_key(*_: Any) -> None:
        return None

    def on_stats(_p: LinkParams, s: LinkStats, _r: Any) -> None:
        seen.append((s.status, s.paused))

    return EngineLink(LinkParams("l1", "bob", "", "commercial", 8.0, "optimized"), b"secret", None, on_key,
                      on_stats, pool)


def test_a_full_pool_pauses_and_a_new_session_says_active_again() -> None:
    async def main() -> None:
        pool, seen = Pool(), []
        link = _link(pool, seen)
        await link.store("s:0", b"k" * 32)  # the block that filled it: the pool is watched
        await asyncio.sleep(0)
        assert seen == [("ACTIVE", True)] and link.stats.paused
        link.stats.status = "ACTIVE"  # in memory; the tree says PENDING (written by a manager)
        link.session = object()  # type: ignore[assignment]  # as _session_body sets it first
        link._check_room(session_start=True)  # a session starts: the state is published again
        link.session = None
        assert seen[-1] == ("ACTIVE", True) and len(seen) == 2
        waiter = asyncio.create_task(link.wait_room("l1"))  # a session's block waits too
        await asyncio.sleep(0)
        assert len(seen) == 2  # one pause, said once
        pool.room()
        await waiter
        await asyncio.sleep(0)
        assert seen[-1] == ("ACTIVE", False) and not link.stats.paused
        await link.stop()

    asyncio.run(main())


def test_a_link_with_room_says_nothing() -> None:
    async def main() -> None:
        pool, seen = Pool(), []
        pool.room()
        link = _link(pool, seen)
        await link.store("s:0", b"k" * 32)
        await link.wait_room("l1")
        link._check_room(session_start=True)
        assert seen == [] and not link.stats.paused
        await link.stop()

    asyncio.run(main())


def test_a_paused_link_keeps_its_rate_through_a_lost_session_and_a_restart() -> None:
    """A paused link runs no block that would measure its rate: blocks discarded with a lost
    session do not halve it (a failed block does), and the link made again (disabled and enabled)
    starts from it, so the controller and `net status` show what the link gives when it runs."""
    from sdqkd.engine import pipeline

    def block(status: str) -> pipeline.BlockResult:
        return pipeline.BlockResult("bob", status=status, duration_s=0.01, reason="r")

    async def main() -> None:
        pool, seen = Pool(), []
        pool.room()
        link = _link(pool, seen)
        link.report(block("ok"), 256_000, 0.01)
        rate = link.stats.skr
        assert rate > 0 and seen[-1] == ("ACTIVE", False)
        link.report(block("discarded"), 0, 0.01, lost=True)
        assert link.stats.skr == rate and link.stats.status == "ACTIVE" and link.stats.blocks_aborted == 1
        await link.stop()
        again = _link(pool, seen)
        assert again.stats.skr == rate
        again.report(block("aborted"), 0, 0.01)  # a block that failed: a rate signal
        assert again.stats.skr == rate / 2 and again.stats.status == "PASSIVE"
        await again.stop()
        assert _link(pool, seen).stats.skr == rate / 2

    asyncio.run(main())
