"""A TCP relay that delays every byte by a fixed one-way time in each direction, order kept:
the stand-in for `tc qdisc ... netem delay` on kernels built without netem (this machine's:
CONFIG_NET_SCH_NETEM is not set). TLS passes through untouched (it is end to end). With a rate,
each direction also carries at most that many bits per second (`tbf`'s part): it reads no faster,
so a sender ahead of it finds its socket full, as behind a slow line.

    python -m sdqkd.bench._relay --target HOST:PORT --delay-ms D [--rate-mbit R]
    (prints the port it listens on)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from sdqkd.argtypes import number

PACE_S = 0.005  # with a rate: how far ahead of the line the relay reads (its queue: 62 kB at 100 Mbit/s)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                rate_bps: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    free_at = loop.time()  # when the simulated line has sent what was read so far
    try:
        while data := await reader.read(1 << 14):
            if rate_bps:
                free_at = max(free_at, loop.time()) + len(data) * 8 / rate_bps
            # the same delay for every chunk keeps them in order; call_at never blocks the read side
            loop.call_at(max(free_at, loop.time()) + delay, writer.write, data)
            # read no faster than the line sends, but sleep only once the line is PACE_S ahead:
            # asyncio's timers wake at whole milliseconds, and a sleep after every 16 KiB (1.3 ms
            # at 100 Mbit/s) then left the line idle ~40 % of the time (59 Mbit/s carried)
            if rate_bps and free_at - loop.time() > PACE_S:
                await asyncio.sleep(free_at - loop.time() - PACE_S)
        await asyncio.sleep(delay)
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(target: str, delay_s: float, ready: asyncio.Future[int] | None = None,
                rate_bps: float = 0.0) -> None:
    host, port = target.rsplit(":", 1)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(host, int(port))
        except OSError:
            w.close()
            return
        await asyncio.gather(_pump(r, tw, delay_s, rate_bps), _pump(tr, w, delay_s, rate_bps),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(bound)
    else:
        print(bound, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdqkd.bench._relay")
    ap.add_argument("--target", required=True)
    ap.add_argument("--delay-ms", type=number(0), required=True, help="one-way delay (RTT = 2x)")
    ap.add_argument("--rate-mbit", type=number(0), default=0.0, help="line rate each way, Mbit/s (0: unlimited)")
    a = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(a.target, a.delay_ms / 1000, rate_bps=a.rate_mbit * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
