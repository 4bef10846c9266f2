"""`sdqkd bench net`: scale of the network side. (1) A 100-node, 150-link topology brought up
in-process on this machine (engines at a reduced clock, small blocks) until every link has put
key in both stores; (2) key-relay path computation on a 10,000-node graph.
Targets: all links producing key within 30 s with the optimised Cascade; path computation <= 50 ms.

The nodes are shared out over one worker process per core (each its own event loop; the
controller in this one). A first block costs its simulation, sifting and privacy amplification
(~0.05 s of CPU for both ends of a 5e5-bit block, about half of it the simulated link, which was
two thirds of ~0.1 s before its C loop was reworked) and its Cascade messages: ~1,300-1,700 round
trips for the optimised protocol, tens of us of CPU each (both ends) on the engines' framed TLS
channel (runtime/node/channel.py; ~0.2 ms each when it was a gRPC stream)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sdqkd.argtypes import integer, number


def scale_topology(n: int, m: int, seed: int = 1) -> dict[str, Any]:
    """A connected random metro-like graph: a ring plus random chords, 5-25 km links."""
    rnd = random.Random(seed)
    nodes = [{"name": f"n{i:03d}"} for i in range(n)]
    pairs = {(i, (i + 1) % n) for i in range(n)}
    while len(pairs) < m:
        a, b = rnd.sample(range(n), 2)
        if (a, b) not in pairs and (b, a) not in pairs:
            pairs.add((a, b))
    links = [{"a": f"n{a:03d}", "b": f"n{b:03d}", "km": round(rnd.uniform(5, 25), 1)} for a, b in sorted(pairs)]
    return {"nodes": nodes, "links": links, "saes": []}


def path_bench(n: int, runs: int) -> dict[str, float]:
    from sdqkd.controller.routing import LinkState, Router

    rnd = random.Random(7)
    r = Router()
    for i in range(1, n):
        r.add(LinkState(f"t{i}", f"n{i}", f"n{rnd.randrange(i)}", eskr=rnd.uniform(1e3, 1e6)))
    for i in range(n // 2):
        a, b = rnd.sample(range(n), 2)
        r.add(LinkState(f"c{i}", f"n{a}", f"n{b}", eskr=rnd.uniform(1e3, 1e6)))
    times = []
    for _ in range(runs):
        a, b = rnd.sample(range(n), 2)
        t = time.perf_counter()
        p = r.path(f"n{a}", f"n{b}")
        times.append((time.perf_counter() - t) * 1e3)
        assert p is not None
    return {"nodes": n, "edges": len(r.links), "median_ms": round(statistics.median(times), 2),
            "max_ms": round(max(times), 2)}


async def scale_up(n: int, m: int, clock_scale: float, block_bits: float, timeout: float,
                   workers: int = 0, cascade: str = "original") -> dict[str, Any]:
    from sdqkd.harness.inprocess import start_network

    with tempfile.TemporaryDirectory(prefix="sdqkd-bench-net-") as state:
        t0 = time.perf_counter()
        net = await start_network(scale_topology(n, m), Path(state), wait_keys=False, workers=workers,
                                  engine={"clock_scale": clock_scale, "block_sifted_bits": block_bits,
                                          "cascade_variant": cascade})
        t_started = time.perf_counter() - t0
        t_all: float | None = None
        try:
            try:
                await net.wait_all_links(timeout)
                t_all = round(time.perf_counter() - t0, 1)
            except TimeoutError:
                pass  # reported below as how far it got
            rows = net.controller.link_table() if net.controller else []
        finally:
            await net.stop()
    return {"nodes": n, "links": m, "workers": workers, "cascade": cascade, "clock_scale": clock_scale,
            "block_sifted_bits": block_bits,
            "started_s": round(t_started, 1), "all_links_producing_s": t_all, "waited_s": timeout,
            "links_with_key": sum(1 for r in rows if r["stored_keys"] > 0)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench net")
    ap.add_argument("--nodes", type=integer(2), default=100)
    ap.add_argument("--links", type=integer(1), default=150)
    ap.add_argument("--clock-scale", type=number(0, strict=True), default=0.001, help="engine clock as a fraction of 1 GHz")
    ap.add_argument("--block-bits", type=number(0, strict=True), default=5e5,
                    help="sifted bits per key block (below ~3e5 the finite-key bounds leave no key)")
    ap.add_argument("--timeout", type=number(0, strict=True), default=120)
    ap.add_argument("--workers", type=integer(0), default=os.cpu_count() or 1,
                    help="worker processes sharing the nodes (0: all in this process's event loop)")
    from sdqkd.node.provisioning import CASCADE_VARIANTS

    ap.add_argument("--cascade", choices=CASCADE_VARIANTS, default="optimized",
                    help="Cascade variant of every link (round trips per block: ~80 original, ~1500 optimized)")
    ap.add_argument("--graph-nodes", type=integer(2), default=10_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-scale", action="store_true", help="only the path computation figure")
    a = ap.parse_args(argv)
    res: dict[str, Any] = {"path_computation": path_bench(a.graph_nodes, 50)}
    if not a.skip_scale:
        res["scale"] = asyncio.run(scale_up(a.nodes, a.links, a.clock_scale, a.block_bits, a.timeout,
                                            workers=a.workers, cascade=a.cascade))
    ok = res["path_computation"]["max_ms"] <= 50 and (  # every pair, not only the median
        a.skip_scale or (res["scale"]["all_links_producing_s"] or 1e9) <= 30)
    res["ok"] = ok
    if a.json:
        print(json.dumps(res))
    else:
        pc = res["path_computation"]
        print(f"path computation, {pc['nodes']} nodes / {pc['edges']} links: median {pc['median_ms']} ms "
              f"(max {pc['max_ms']} ms)   target: every pair <= 50 ms")
        if "scale" in res:
            print(f"scale: {json.dumps(res['scale'])}   target: all links producing within 30 s")
    return 0 if ok else 1
