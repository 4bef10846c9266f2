"""The classical channel alone (`sdqkd bench link`'s `channel` case): CPU per request-reply round
trip of Cascade-sized frames between two FrameConnections over mutual TLS on loopback TCP, both
ends in this process and one event loop, as in the link cases. `blocks` exchanges run side by side
(the blocks of a batch in Cascade together), so their frames can share TLS records and system calls.
A 4e6-bit block of `optimized` Cascade has ~600-700 round trips (balanced): this per-trip figure times
those is the channel's share of a block's CPU, without the engine's noise."""

from __future__ import annotations

import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sdqkd import pki
from sdqkd.node.channel import Frame, FrameConnection, Kind, client_context, server_context
from sdqkd.node.tls_bio import handshake


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


async def _tls_pair(tmp: Path) -> tuple[FrameConnection, FrameConnection]:
    ca, ca_path = pki.write_ca(tmp)
    srv = pki.write_identity(ca, ca_path, tmp, "node-a", server=True)
    cli = pki.write_identity(ca, ca_path, tmp, "node-b", server=True)
    a, b = _loopback_pair()
    ta, tb = await asyncio.gather(handshake(a, server_context(srv), server_side=True),
                                  handshake(b, client_context(cli), server_side=False))
    return FrameConnection(a, limit=1 << 20, tls=ta), FrameConnection(b, limit=1 << 20, tls=tb)


async def _trips(alice: FrameConnection, bob: FrameConnection, blocks: int, trips: int, size: int) -> float:
    """CPU-us per round trip: Bob asks, Alice answers, `blocks` exchanges at once, `trips` in all."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    payload, left = b"\x5a" * size, [trips]

    def on_alice(f: Frame) -> None:
        alice.send(Kind.DATA, f.block, payload)

    def on_bob(f: Frame) -> None:
        left[0] -= 1
        if left[0] >= blocks:  # the last `blocks` replies ask nothing more
            bob.send(Kind.DATA, f.block, payload)
        elif left[0] <= 0 and not done.done():
            done.set_result(None)

    def on_error(e: BaseException) -> None:  # after the count, the end of the connection
        if not done.done():
            done.set_exception(e)

    alice.deliver(on_alice, on_error)
    bob.deliver(on_bob, on_error)
    cpu = time.process_time()
    for n in range(blocks):
        bob.send(Kind.DATA, n, payload)
    await asyncio.wait_for(done, 60 + trips / 1000)  # a lost frame would stall the exchange
    return (time.process_time() - cpu) / trips * 1e6


async def _case(blocks: int, trips: int, size: int, repeats: int) -> float:
    runs = []
    with tempfile.TemporaryDirectory(prefix="sdqkd-bench-channel-") as tmp:
        for _ in range(repeats):
            alice, bob = await _tls_pair(Path(tmp))
            try:
                runs.append(await _trips(alice, bob, blocks, trips, size))
            finally:
                alice.abort()
                bob.abort()
    return statistics.median(runs)


def channel_case(trips: int = 20_000, size: int = 300, repeats: int = 5) -> dict[str, Any]:
    """Median CPU-us per round trip (both ends) for one exchange at a time and for 4 side by side."""
    lone = asyncio.run(_case(1, trips, size, repeats))
    batch = asyncio.run(_case(4, trips, size, repeats))
    return {"case": "channel", "frame_bytes": size, "trips": trips, "repeats": repeats,
            "cpu_us_per_trip_1_block": round(lone, 1), "cpu_us_per_trip_4_blocks": round(batch, 1)}
