"""`sdqkd node --config FILE`: one SD-QKD node process (agent + LKMS + engine links)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from .config import ConfigError, NodeConfig, load_config

__all__ = ["ConfigError", "NodeConfig", "load_config", "main", "serve"]


async def serve(cfg: NodeConfig, stop: asyncio.Event) -> None:
    from .runtime import NodeRuntime

    node = NodeRuntime(cfg)
    try:
        addrs = await node.start()
        print(f"sdqkd node {cfg.name}: gNMI on {addrs['gnmi']}, ETSI 014 on {addrs['etsi014']}, "
              f"ETSI 004 on {addrs['etsi004']}, peer on {addrs['peer']}", flush=True)
        await stop.wait()
    finally:
        await node.stop()


def main(config: str) -> int:
    try:
        cfg = load_config(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    from runtime.lkms.store_api import StoreError

    try:
        asyncio.run(run())
    except (OSError, StoreError) as e:  # e.g. "data directory is read-only: DIR": no traceback
        print(f"{config}: {e}", file=sys.stderr)
        return 1
    return 0
