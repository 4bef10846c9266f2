"""A TCP relay that delays every byte by a fixed one-way time in each direction, order kept:
the stand-in for `tc qdisc ... netem delay` on kernels built without netem (this machine's:
CONFIG_NET_SCH_NETEM is not set). TLS passes through untouched (it is end to end).

    python -m sdqkd.bench._relay --target HOST:PORT --delay-ms D    (prints the port it listens on)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(1 << 16):
            # the same delay for every chunk keeps them in order; call_at never blocks the read side
            loop.call_at(loop.time() + delay, writer.write, data)
        await asyncio.sleep(delay)
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(target: str, delay_s: float, ready: asyncio.Future[int] | None = None) -> None:
    host, port = target.rsplit(":", 1)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(host, int(port))
        except OSError:
            w.close()
            return
        await asyncio.gather(_pump(r, tw, delay_s), _pump(tr, w, delay_s), return_exceptions=True)

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
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay (RTT = 2x)")
    a = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(a.target, a.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
