"""The classical channel's frame connection (runtime/node/channel.py) on a real socket pair:
frames arrive whole and in order (big ones, read into a buffer of their own, among small ones,
plain and over TLS, however the bytes are cut), and every task waiting for a backed-up socket
resumes once the peer has read (several waiters share one drain; a lost waiter would stall a
session for good)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from sdqkd import pki
from sdqkd.node.channel import (
    BIG_FRAME,
    HEADER,
    WRITE_CHUNK,
    WRITE_HIGH,
    Frame,
    FrameConnection,
    Kind,
    client_context,
    server_context,
)
from sdqkd.node.tls_bio import handshake


async def _pair() -> tuple[FrameConnection, FrameConnection]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    return FrameConnection(a, limit=1 << 24), FrameConnection(b, limit=1 << 24)


async def _raw_peer() -> tuple[socket.socket, FrameConnection]:
    """A blocking socket that writes raw bytes, and the FrameConnection reading them."""
    a, b = socket.socketpair()
    b.setblocking(False)
    return a, FrameConnection(b, limit=1 << 24)


async def _tls_pair(tmp: Path) -> tuple[FrameConnection, FrameConnection]:
    ca, ca_path = pki.write_ca(tmp)
    srv = pki.write_identity(ca, ca_path, tmp, "node-a", server=True)
    cli = pki.write_identity(ca, ca_path, tmp, "node-b", server=True)
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    ta, tb = await asyncio.gather(handshake(a, server_context(srv), server_side=True),
                                  handshake(b, client_context(cli), server_side=False))
    return FrameConnection(a, limit=1 << 24, tls=ta), FrameConnection(b, limit=1 << 24, tls=tb)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_big_and_small_frames_arrive_whole_and_in_order(tmp_path: Path, tls: bool) -> None:
    # big payloads leave WRITE_CHUNK at a time: whole chunks, a rest that is big, a rest that is
    # small and goes out with the small frames after it
    sizes = [0, 7, BIG_FRAME - 1, BIG_FRAME, 3, 5 * BIG_FRAME + 11, 1, 2_000_000, BIG_FRAME + 1, 40,
             3 * WRITE_CHUNK, WRITE_CHUNK + 100, 2, WRITE_CHUNK + BIG_FRAME, 9]

    async def main() -> None:
        tx, rx = await (_tls_pair(tmp_path) if tls else _pair())
        sent = [os.urandom(n) for n in sizes]
        for i, payload in enumerate(sent):
            tx.send(Kind.DATA, i, payload)
        got = [await asyncio.wait_for(rx.recv(), 20) for _ in sent]
        assert [(f.kind, f.block) for f in got] == [(Kind.DATA, i) for i in range(len(sent))]
        assert [f.payload for f in got] == sent
        # never a view of the read buffer (a big frame read on its own is the bytearray it filled)
        assert all(type(f.payload) in (bytes, bytearray) for f in got)
        rx.send(Kind.STORED, 9)  # the other way still works after big frames
        assert (await asyncio.wait_for(tx.recv(), 10)).kind == Kind.STORED
        await tx.close()
        await rx.close()

    asyncio.run(main())


def test_a_big_frame_cut_anywhere_is_put_back_together() -> None:
    async def main() -> None:
        a, rx = await _raw_peer()
        big, small = os.urandom(3 * BIG_FRAME + 5), b"after"
        wire = (HEADER.pack(5 + len(big), Kind.DATA, 4) + big + HEADER.pack(5 + len(small), Kind.DATA, 5) + small)
        cuts = [0, 3, 9, 20, BIG_FRAME, 2 * BIG_FRAME + 1, len(wire) - 7, len(wire) - 2, len(wire)]
        reader = asyncio.create_task(rx.recv())
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            a.sendall(wire[lo:hi])
            await asyncio.sleep(0.02)  # each piece is read on its own
        first = await asyncio.wait_for(reader, 10)
        second = await asyncio.wait_for(rx.recv(), 10)
        assert (first.block, first.payload) == (4, big)
        assert (second.block, second.payload) == (5, small)
        a.close()
        await rx.close()

    asyncio.run(main())


def test_a_big_frame_cut_short_by_the_peer_ends_the_connection() -> None:
    async def main() -> None:
        a, rx = await _raw_peer()
        big = os.urandom(2 * BIG_FRAME)
        a.sendall(HEADER.pack(5 + len(big), Kind.DATA, 1) + big[:BIG_FRAME])
        a.close()
        with pytest.raises(ConnectionError, match="closed by the peer"):
            await asyncio.wait_for(rx.recv(), 10)
        assert rx.frames_received == 0

    asyncio.run(main())


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


def test_deliver_hands_frames_over_in_order_then_reports_the_end() -> None:
    async def main() -> None:
        tx, rx = await _pair()
        tx.send(Kind.DATA, 0, b"queued before deliver")
        assert (await asyncio.wait_for(rx.recv(), 10)).block == 0  # recv before deliver still works
        got: list[tuple[int, bytes]] = []
        ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        rx.deliver(lambda f: got.append((f.block, f.payload)), ended.set_result)
        sent = [(i, os.urandom(i * 4099 % (3 * BIG_FRAME))) for i in range(1, 60)]
        for i, payload in sent:
            tx.send(Kind.DATA, i, payload)
        await asyncio.sleep(0.2)
        assert got == sent
        tx.abort()  # the peer goes away: the handler's owner hears of it once
        exc = await asyncio.wait_for(ended, 10)
        assert isinstance(exc, ConnectionError) and "closed by the peer" in str(exc)
        await rx.close()

    asyncio.run(main())


def test_a_handler_that_raises_stops_delivery_and_reports_its_error() -> None:
    async def main() -> None:
        tx, rx = await _pair()
        seen: list[int] = []
        errors: list[BaseException] = []

        def handler(f: Frame) -> None:
            seen.append(f.block)
            if f.block == 3:
                raise ValueError("bad frame 3")

        rx.deliver(handler, errors.append)
        for i in range(6):
            tx.send(Kind.DATA, i)
        await asyncio.sleep(0.2)
        assert seen == [0, 1, 2, 3]  # nothing after the failing frame
        assert len(errors) == 1 and str(errors[0]) == "bad frame 3"
        await tx.close()
        await rx.close()
        await asyncio.sleep(0.05)
        assert len(errors) == 1  # closing afterwards reports nothing more

    asyncio.run(main())


def test_deliver_keeps_reading_while_both_ends_are_far_behind_with_sending() -> None:
    """Each end floods the other with bulk frames and the far end answers each with one: had
    either stopped reading while its own sending was far behind, both would wait for good."""

    async def main() -> None:
        a, b = await _pair()
        bulk = os.urandom(2 << 20)
        got: list[int] = []
        done = asyncio.get_running_loop().create_future()

        def on_reply(f: Frame) -> None:
            got.append(f.block)
            if len(got) == 20:
                done.set_result(None)

        a.deliver(on_reply, lambda e: None)
        b.deliver(lambda f: b.send(Kind.DATA, f.block, bulk), lambda e: None)
        for i in range(20):
            a.send(Kind.DATA, i, bulk)  # 40 MiB: far more than the sockets hold
        await asyncio.wait_for(done, 20)
        assert got == list(range(20))
        await a.close()
        await b.close()

    asyncio.run(main())


def test_deliver_hands_over_frames_read_together_with_the_last_recv() -> None:
    async def main() -> None:
        tx, rx = await _pair()
        for i in range(3):
            tx.send(Kind.DATA, i)  # one write: the three frames are read at once
        assert (await asyncio.wait_for(rx.recv(), 10)).block == 0
        got: list[int] = []
        rx.deliver(lambda f: got.append(f.block), lambda e: None)
        await asyncio.sleep(0.1)  # nothing more arrives on the socket
        assert got == [1, 2]
        await tx.close()
        await rx.close()

    asyncio.run(main())
