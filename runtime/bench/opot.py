"""`sdqkd bench opot`: ordered proof of transit per node, packets/s (medians of `--runs` runs).

Each figure times one node's work on `--packets` packets, metadata in wire form (unpack the
28-byte OPoT metadata, unmask with the upstream hop's PRF, add the share, mask for the
downstream hop, pack): the ingress `stamp`, a transit node, the egress `verify` (with the
anti-replay window). The same for plain IETF PoT (no hop masks) shows what ordering costs: two
HMAC-SHA256 per node and packet. Hop keys are random bytes handed out by an in-memory stand-in
for the KMS: the per-packet cost does not depend on where a 256-bit key came from, and the
network path (ETSI 014 enc_keys/dec_keys) is exercised by tests/apps/test_opot.py instead.
One core, pure Python; `chain_pps` is a whole chain of `--nodes` run serially in one process."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

from sdqkd.apps.keyclient import Key
from sdqkd.apps.opot import OpotMeta, OpotNode, masks
from sdqkd.argtypes import integer
from sdqkd.controller.opot import OpotProvisioner


class _MemoryKms:
    """Bench-only stand-in for a pair of KMSs: enc_keys draws random key, dec_keys hands it over once."""

    pool: dict[str, Key] = {}

    def enc_keys(self, slave_sae_id: str, number: int = 1, size: int = 256, **kw: Any) -> list[Key]:
        keys = [Key(str(uuid.uuid4()), os.urandom(size // 8)) for _ in range(number)]
        self.pool.update((k.key_id, k) for k in keys)
        return keys

    def dec_keys(self, master_sae_id: str, key_ids: list[str]) -> list[Key]:
        return [self.pool.pop(k) for k in key_ids]


def _chain(n: int, ordered: bool) -> tuple[list[OpotNode], int]:
    nodes = [OpotNode(f"sae-{i}", _MemoryKms()) for i in range(n)]
    return nodes, OpotProvisioner().provision(nodes, ordered=ordered).profile_id


def _time(fn: Any, items: list[Any]) -> float:
    t = time.perf_counter()
    for it in items:
        fn(it)
    return len(items) / (time.perf_counter() - t)


def _one_run(n: int, packets: int, ordered: bool) -> dict[str, float]:
    nodes, pid = _chain(n, ordered)
    ing, mids, egr = nodes[0], nodes[1:-1], nodes[-1]
    out: dict[str, float] = {}
    unpack = OpotMeta.unpack
    wire: list[bytes] = []
    t = time.perf_counter()
    for _ in range(packets):
        wire.append(ing.stamp(pid).pack())
    out["ingress_pps"] = packets / (time.perf_counter() - t)
    t1 = mids[0]
    out["transit_pps"] = _time(lambda b: t1.transit(unpack(b)).pack(), wire)
    for m in mids:
        wire = [m.transit(unpack(b)).pack() for b in wire]
    ok = 0

    def verify(b: bytes) -> None:
        nonlocal ok
        ok += egr.verify(unpack(b)).ok

    out["egress_pps"] = _time(verify, wire)
    if ok != packets:
        raise RuntimeError(f"only {ok} of {packets} packets verified on a correct chain")

    def whole(_: int) -> None:
        meta = ing.stamp(pid)
        for m in mids:
            meta = m.transit(unpack(meta.pack()))
        egr.verify(unpack(meta.pack()))

    out["chain_pps"] = _time(whole, list(range(packets)))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench opot", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=integer(1), default=5)
    ap.add_argument("--packets", type=integer(1), default=20000)
    ap.add_argument("--nodes", type=integer(3), default=4,
                    help="chain length (ingress + transits + egress), >= 3: a transit node is timed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    fig: dict[str, Any] = {"nodes": args.nodes, "packets": args.packets, "runs": args.runs}
    for label, ordered in (("opot", True), ("pot", False)):
        runs = [_one_run(args.nodes, args.packets, ordered) for _ in range(args.runs)]
        fig[label] = {k: round(statistics.median(r[k] for r in runs)) for k in runs[0]}
    key = os.urandom(32)
    fig["mask_prf_per_s"] = round(statistics.median(
        _time(lambda s: masks(key, 1, s), list(range(1, args.packets + 1))) for _ in range(args.runs)))
    if args.json:
        print(json.dumps(fig))
        return 0
    print(f"OPoT per node, packets/s (median of {args.runs} runs x {args.packets} packets, "
          f"chain of {args.nodes}, metadata in wire form)")
    print(f"{'':<12}{'ingress':>12}{'transit':>12}{'egress':>12}{'whole chain':>14}")
    for label in ("opot", "pot"):
        f = fig[label]
        print(f"{label.upper():<12}{f['ingress_pps']:>12,}{f['transit_pps']:>12,}{f['egress_pps']:>12,}"
              f"{f['chain_pps']:>14,}")
    print(f"mask PRF (HMAC-SHA256 -> 2 field elements): {fig['mask_prf_per_s']:,}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
