"""Run one LKMS as a process: `python -m sdqkd.lkms.serve --config FILE.yaml`.

A stand-in until `sdqkd node` runs agent + LKMS + engine together. The config uses the node
config's keys (id, data_dir, etsi014/etsi004 {listen}, tls {ca, cert, key}, saes [{id}]) plus:

    keysync: {listen: "127.0.0.1:7004"}      # inter-LKMS gRPC (mutual TLS)
    etsi020: {listen: "127.0.0.1:7020"}      # ETSI GS QKD 020 between KMSs (mutual TLS 1.3)
    lkms: {max_key_count: 100000, ...}       # sdqkd.lkms.core.Limits fields
    links: [{qkdl_id, peer_node_id, peer_kms_address, kind, prev_hop, next_hops, exit_peer}]
    apps:  [{app_id, master_sae_id, slave_sae_ids, local_node_id, remote_node_id, backing_qkdl_ids}]
    dev_key_feed: [{qkdl_id, seed, blocks, block_keys, key_bits}]   # no engine: both ends derive
        the same blocks from the same seed (development and tests only; never for real keys)
    fault: pause_after_reserve | pause_before_stream_commit | pause_before_020_reply   # fault injection for crash tests

When all servers listen it prints one line `READY {"etsi014": ..., "etsi004": ..., "keysync": ..., "etsi020": ...}`
on stdout. SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from sdqkd.lkms.core import Limits
from sdqkd.lkms.node import Lkms
from sdqkd.pki import TlsFiles


def dev_block(seed: str, qkdl_id: str, index: int, nbytes: int) -> bytes:
    """Deterministic pseudo-random block for the development feed (SHAKE-256)."""
    return hashlib.shake_256(f"{seed}/{qkdl_id}/{index}".encode()).digest(nbytes)


def build(cfg: dict[str, Any]) -> Lkms:
    tls = TlsFiles.from_config(cfg["tls"]) if cfg.get("tls") else None
    return Lkms(str(cfg["id"]), Path(cfg["data_dir"]), tls,
                saes=[s["id"] for s in cfg.get("saes", [])],
                etsi014_listen=cfg.get("etsi014", {}).get("listen", "127.0.0.1:0"),
                etsi004_listen=cfg.get("etsi004", {}).get("listen", "127.0.0.1:0"),
                keysync_listen=cfg.get("keysync", {}).get("listen", "127.0.0.1:0"),
                etsi020_listen=cfg.get("etsi020", {}).get("listen", "127.0.0.1:0"),
                limits=Limits.from_dict(cfg.get("lkms")), fault=cfg.get("fault"))


async def configure(lkms: Lkms, cfg: dict[str, Any]) -> None:
    for ln in cfg.get("links", []):
        await lkms.set_link(ln["qkdl_id"], ln["peer_node_id"], ln["peer_kms_address"], ln.get("kind", "PHYS"),
                            ln.get("prev_hop"), ln.get("next_hops", []), exit_peer=ln.get("exit_peer"))
    for a in cfg.get("apps", []):
        lkms.register_app(a["app_id"], a["master_sae_id"], a["slave_sae_ids"], a["local_node_id"],
                          a["remote_node_id"], a["backing_qkdl_ids"])
    for f in cfg.get("dev_key_feed", []):
        bits = int(f.get("key_bits", 256))
        nbytes = int(f.get("block_keys", 1024)) * bits // 8
        for i in range(int(f["blocks"])):
            # Repeated block IDs are ignored by the store, so a restart never re-adds keys.
            await lkms.add_block(f["qkdl_id"], dev_block(str(f["seed"]), f["qkdl_id"], i, nbytes), bits,
                                 f"dev-{f['seed']}-{i}")


async def run(cfg: dict[str, Any]) -> None:
    lkms = build(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await lkms.start()
    try:
        await configure(lkms, cfg)
        print("READY " + json.dumps(lkms.addresses), flush=True)
        await stop.wait()
    finally:
        await lkms.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdqkd.lkms.serve")
    ap.add_argument("--config", required=True)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = yaml.safe_load(Path(args.config).read_text())
    asyncio.run(run(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
