"""The bench's stand-in for netem and a slow line (runtime/bench/_relay.py): every byte arrives,
in order, one-way delay later, and no faster than the line rate each way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from sdqkd.bench._relay import serve


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(1 << 16):
        w.write(data)
        await w.drain()
    w.close()


def _through_relay(payload: bytes, delay_s: float, rate_bps: float) -> tuple[bytes, float, float]:
    """(what came back, seconds to the first byte, seconds to the last) through relay + echo."""

    async def main() -> tuple[bytes, float, float]:
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = echo.sockets[0].getsockname()[1]
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        relay = asyncio.create_task(serve(f"127.0.0.1:{port}", delay_s, ready, rate_bps=rate_bps))
        r, w = await asyncio.open_connection("127.0.0.1", await ready)
        t0 = time.monotonic()
        w.write(payload)
        got = bytearray(await r.read(1 << 16))
        first = time.monotonic() - t0
        while len(got) < len(payload):
            got += await r.read(1 << 16)
        last = time.monotonic() - t0
        w.close()
        await w.wait_closed()
        await asyncio.sleep(delay_s + 0.2)  # the close travels through relay and echo, which end
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        echo.close()
        await echo.wait_closed()
        return bytes(got), first, last

    return asyncio.run(main())


def test_relay_delays_each_way_and_keeps_order() -> None:
    payload = os.urandom(200_000)
    got, first, _ = _through_relay(payload, 0.05, 0.0)
    assert got == payload
    assert first >= 0.1  # 50 ms each way


def test_relay_carries_no_more_than_its_line_rate() -> None:
    payload = os.urandom(500_000)  # 4 Mbit each way at 16 Mbit/s: >= 0.25 s one way, the echo back overlaps
    got, _, last = _through_relay(payload, 0.0, 16e6)
    assert got == payload
    assert last >= 0.25
