"""The classical channel's frame connection (runtime/node/channel.py) on a real socket pair:
frames arrive whole and in order, and every task waiting for a backed-up socket resumes once the
peer has read (several waiters share one drain; a lost waiter would stall a session for good)."""

from __future__ import annotations

import asyncio
import socket

from sdqkd.node.channel import WRITE_HIGH, FrameConnection, Kind


async def _pair() -> tuple[FrameConnection, FrameConnection]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    return FrameConnection(a, limit=1 << 24), FrameConnection(b, limit=1 << 24)


def test_concurrent_flushes_all_resume_when_the_peer_reads():
    async def main() -> None:
        tx, rx = await _pair()
        payload = bytes(range(256)) * 4096  # 1 MiB per frame: the socket backs up at once
        for n in range(8):
            tx.send(Kind.DATA, n, payload)
        await asyncio.sleep(0.05)  # the write goes out (partly) and the rest waits for the socket
        assert tx._backlog() > WRITE_HIGH
        waiters = [asyncio.create_task(tx.flush()) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)  # nobody reads yet: all three wait
        got = [await asyncio.wait_for(rx.recv(), 10) for _ in range(8)]
        await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert [(f.kind, f.block) for f in got] == [(Kind.DATA, n) for n in range(8)]
        assert all(f.payload == payload for f in got)
        await tx.close()
        await rx.close()

    asyncio.run(main())


def test_reading_pauses_while_frames_wait_and_resumes():
    async def main() -> None:
        tx, rx = await _pair()
        rx.limit = 2 * WRITE_HIGH
        payload = b"k" * (3 * WRITE_HIGH // 2)
        for n in range(6):
            tx.send(Kind.DATA, n, payload)
        first = await asyncio.wait_for(rx.recv(), 10)
        await asyncio.sleep(0.1)
        assert not rx._reading  # more than the limit received and not collected: reading paused
        rest = [await asyncio.wait_for(rx.recv(), 10) for _ in range(5)]
        assert [f.block for f in (first, *rest)] == list(range(6))
        assert all(f.payload == payload for f in rest)
        await tx.close()
        await rx.close()

    asyncio.run(main())


def test_a_frame_over_the_limit_ends_the_connection():
    async def main() -> None:
        tx, rx = await _pair()
        rx.limit = 1024
        tx.send(Kind.DATA, 1, b"x" * 2048)
        try:
            await asyncio.wait_for(rx.recv(), 10)
        except ConnectionError as e:
            assert "outside 5..1024" in str(e)
        else:
            raise AssertionError("an oversized frame was accepted")
        await tx.close()

    asyncio.run(main())
