"""`sdqkd node --config FILE`: one SD-QKD node process (gNMI and RESTCONF agent + LKMS +
engine links).

Life cycle: the config is checked whole (exit 2 naming every problem); the node binds every
address its config names (any interface, given TLS) and prints one start line naming them (a
JSON record with `log: {format: json}`); SIGTERM or SIGINT stops it cleanly: engine links
stop, servers close, the key store's last transaction commits and its WAL is checkpointed,
exit 0. Logs go to stdout."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from sdqkd.engine import memory
from sdqkd.logsetup import configure

from .config import ConfigError, NodeConfig, load_config

__all__ = ["ConfigError", "NodeConfig", "load_config", "main", "serve"]


async def serve(cfg: NodeConfig, stop: asyncio.Event) -> None:
    from .runtime import NodeRuntime

    node = NodeRuntime(cfg)
    try:
        addrs = await node.start()
        line = (f"sdqkd node {cfg.name}: gNMI on {addrs['gnmi']}, ETSI 014 on {addrs['etsi014']}, "
                f"ETSI 004 on {addrs['etsi004']}, peer on {addrs['peer']}, RESTCONF on {addrs['restconf']}")
        if cfg.log_format == "json":
            logging.getLogger("sdqkd.node").info(line)
        else:
            print(line, flush=True)
        await stop.wait()
    finally:
        await node.stop()


def main(config: str, log_format: str | None = None) -> int:
    try:
        cfg = load_config(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if log_format is not None:  # the command line wins over the config
        cfg.log_format = log_format
    configure(cfg.log_format, cfg.log_level)
    memory.keep_freed_memory()  # before any thread allocates (sdqkd.engine.memory)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    from sdqkd.lkms.store_api import StoreError

    try:
        asyncio.run(run())
    except (OSError, StoreError) as e:  # e.g. "data directory is read-only: DIR": no traceback
        print(f"{config}: {e}", file=sys.stderr)
        return 1
    return 0
