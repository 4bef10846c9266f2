"""A worker process of the in-process harness: hosts a share of a network's nodes (agent, LKMS,
engine links) in its own event loop, so that a large in-process network uses every core instead
of one interpreter's GIL. Nodes in different workers talk over loopback gRPC and mutual TLS,
exactly as nodes in one loop do.

    python -m sdqkd.harness.worker CONFIGS.pickle

CONFIGS.pickle holds the list of NodeConfig this worker runs (written by the harness, same user).
The worker prints one JSON line `{"ready": {name: addresses}}` once every node listens (or
`{"error": "..."}`), then runs until its stdin reaches end of file (the harness closes it, or the
harness died), stops its nodes and exits. It ignores SIGINT: a Ctrl-C reaches the harness, which
stops it that way."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import TextIO

from sdqkd.engine import memory
from sdqkd.node.config import NodeConfig


async def serve(configs: list[NodeConfig], out: TextIO) -> None:
    from sdqkd.node.runtime import NodeRuntime

    nodes = [NodeRuntime(cfg) for cfg in configs]
    loop = asyncio.get_running_loop()
    eof = loop.create_future()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096) and not eof.done():
            eof.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        try:
            await asyncio.gather(*(n.start() for n in nodes))
        except Exception as e:  # noqa: BLE001 - reported to the harness, which raises it
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), file=out, flush=True)
            return
        print(json.dumps({"ready": {n.cfg.name: n.addresses for n in nodes}}), file=out, flush=True)
        await eof
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)


def main(argv: list[str]) -> int:
    configs = pickle.loads(Path(argv[0]).read_bytes())  # noqa: S301 - our own file, written by the harness
    out, sys.stdout = sys.stdout, sys.stderr  # stdout carries the ready line only: nobody reads it later
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the harness's to handle; it closes our stdin
    memory.keep_freed_memory()  # before any thread allocates (sdqkd.engine.memory)
    asyncio.run(serve(configs, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
