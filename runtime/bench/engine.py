"""`sdqkd bench engine`: the QKD engine on this machine, one core, medians of repeated runs.

Cascade Mbit/s at Q = 2 %, n = 1e6 per variant, and each party's CPU per 4e6-bit block when 4
blocks run one after another or side by side (as a link's batch: their state outgrows the
cache); Toeplitz PA Mbit/s of input for 1e6- and 1e7-bit blocks (out_bits = n/2); the
GF(2^128) hash of the tags and the key verification, MB/s per kernel; link simulation speed as
a multiple of real time for a 1 GHz link at 40 km (8 dB), Bob's view, Alice's view and both;
the whole pipeline (both parties in one process) at 40 km with 5 s blocks (~1.4e7 sifted bits):
final-key Mbit/s per second of link time and per second of CPU, and its multiple of real time;
peak memory per block size (one subprocess per size) to show linearity.
Targets: Cascade >= 50 Mbit/s; PA >= 200 Mbit/s; simulation >= 2x real time; pipeline keeps up
in real time and delivers >= 1 Mbit/s of final key.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from sdqkd.argtypes import integer, number, numbers
from sdqkd.engine import _hash, _sift, pa, pipeline, sim
from sdqkd.engine.auth import Authenticator, BufferKeySource
from sdqkd.engine.keyrate import h2

PROFILE, LOSS_DB = "commercial", 8.0  # 40 km at 0.2 dB/km


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up (page faults, lazy imports)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cascade() -> Any | None:
    try:
        from sdqkd.engine import cascade
    except ImportError:
        return None
    return cascade if hasattr(cascade, "reconcile") else None


class _PassThrough:
    """Stand-in reconciler used only when sdqkd.engine.cascade is missing (labelled in output):
    hands Bob Alice's key and charges 1.16 n h(Q) parity bits."""

    class CascadeBob:
        def __init__(self, key: bytes, n_bits: int, qber: float, variant: str = "", seed: int = 0) -> None:
            self.leaked_bits, self.channel_uses, self.corrected = math.ceil(1.16 * n_bits * h2(qber)), 1, b""

        def start(self) -> bytes:
            return b"?"

        def handle(self, reply: bytes) -> None:
            self.corrected = reply

    class CascadeAlice:
        def __init__(self, key: bytes, n_bits: int, qber: float, variant: str = "", seed: int = 0) -> None:
            self.key, self.leaked_bits = key, math.ceil(1.16 * n_bits * h2(qber))

        def handle(self, request: bytes) -> bytes:
            return self.key


def _noisy_keys(seed: int, noise_seed: bytes, n: int, qber: float) -> tuple[bytes, bytes]:
    """Alice's random key of n bits (n a multiple of 8) and Bob's: hers with Bernoulli(qber) errors."""
    alice = random.Random(seed).randbytes(n // 8)
    noise = _sift.bernoulli(noise_seed, n, qber)
    return alice, (int.from_bytes(alice, "big") ^ int.from_bytes(noise, "big")).to_bytes(n // 8, "big")


def bench_cascade(repeat: int) -> dict[str, Any]:
    cascade = _cascade()
    if cascade is None:
        return {"available": False}
    n, qber = 1_000_000, 0.02
    out: dict[str, Any] = {"available": True, "n_bits": n, "qber": qber}
    alice, bob = _noisy_keys(1, b"cascade-bench-01", n, qber)
    for variant in getattr(cascade, "VARIANTS", ("original", "optimized")):
        if hasattr(cascade, "bench"):  # the Cascade module's own timing loop
            d = cascade.bench(n_bits=n, qber=qber, variant=variant, runs=repeat)
            out[variant] = {
                "mbps": d["mbit_s"],
                "efficiency": d["efficiency"],
                "channel_uses": d["channel_uses"],
                "frame_errors": d["frame_errors"],
            }
            continue
        res = cascade.reconcile(alice, bob, n, qber, variant=variant, seed=1)
        t = _median_time(functools.partial(cascade.reconcile, alice, bob, n, qber, variant=variant, seed=1), repeat)
        out[variant] = {
            "mbps": n / t / 1e6,
            "efficiency": float(res.efficiency),
            "channel_uses": int(res.channel_uses),
            "frame_errors": int(res.corrected != alice),
        }
    return out


SIDE_BY_SIDE = 4  # a link's batch: its blocks' Cascade rounds interleave (runtime/node/session.py)


def bench_cascade_side_by_side(repeat: int) -> dict[str, Any]:
    """CPU per block of each party's Cascade for SIDE_BY_SIDE blocks of the link's default size
    (4e6 bits, Q = 2 %, balanced), one block after another as the pipeline runs them and
    interleaved round by round as a link's batch does: the cost of their state not fitting in
    the cache together (docs/link-cpu.md). Alternated, `repeat` times each; medians."""
    cascade = _cascade()
    if cascade is None or not hasattr(cascade, "CascadeBob"):
        return {"available": False}
    n, qber = 4_000_000, 0.02
    runs: dict[str, list[tuple[float, float]]] = {"one_after_another": [], "side_by_side": []}
    errors = 0
    for r in range(repeat):
        modes = ("one_after_another", "side_by_side") if r % 2 == 0 else ("side_by_side", "one_after_another")
        for mode in modes:
            pairs, keys = [], []
            for b in range(SIDE_BY_SIDE):
                seed = 1000 * r + b
                alice, bob = _noisy_keys(seed, seed.to_bytes(16, "big"), n, qber)
                pairs.append((cascade.CascadeAlice(alice, n, qber, seed=seed),
                              cascade.CascadeBob(bob, n, qber, seed=seed, schedule="balanced")))
                keys.append(alice)
            runs[mode].append(_cascade_cpu(pairs, mode == "side_by_side"))
            errors += sum(bob.corrected != key for (_, bob), key in zip(pairs, keys, strict=True))
    out: dict[str, Any] = {"available": True, "n_bits": n, "qber": qber, "blocks": SIDE_BY_SIDE, "schedule": "balanced",
                           "frame_errors": errors}
    for mode, cpu in runs.items():
        out[f"{mode}_ms"] = {party: statistics.median(c[i] for c in cpu) * 1e3 / SIDE_BY_SIDE
                             for i, party in enumerate(("alice", "bob"))}
    return out


def _cascade_cpu(pairs: list[tuple[Any, Any]], interleaved: bool) -> tuple[float, float]:
    """Thread CPU of Alice's and Bob's steps over every pair's whole Cascade."""
    clock = time.thread_time
    cpu = [0.0, 0.0]
    msgs = [bob.start() for _, bob in pairs]
    live = list(range(len(pairs)))
    while live:
        for i in live if interleaved else live[:1]:
            alice, bob = pairs[i]
            t0 = clock()
            reply = alice.handle(msgs[i])
            t1 = clock()
            msgs[i] = bob.handle(reply)
            cpu[0] += t1 - t0
            cpu[1] += clock() - t1
        live = [i for i in live if msgs[i] is not None]
    return cpu[0], cpu[1]


def bench_pa(repeat: int) -> dict[str, Any]:
    out = {}
    for n in (10**6, 10**7):
        m = n // 2
        rng = random.Random(n)
        key, seed = rng.randbytes(n // 8), rng.randbytes((pa.seed_bits(n, m) + 7) // 8)
        t = _median_time(functools.partial(pa.toeplitz, key, n, m, seed), repeat)
        out[f"{n:.0e}"] = {"n_bits": n, "out_bits": m, "ms": t * 1e3, "mbps": n / t / 1e6}
    return out


def bench_sim(repeat: int) -> dict[str, Any]:
    link = sim.link_params(PROFILE, LOSS_DB)
    n = int(link.profile.clock_hz)  # one second of link time
    bob = sim.bob_view(link, 1, n)
    t_bob = _median_time(lambda: sim.bob_view(link, 1, n), repeat)
    t_alice = _median_time(lambda: sim.alice_view(link, 1, n, bob.n_det, bob.rice_k, bob.slot_code), repeat)
    return {
        "link_seconds": 1.0,
        "detections": bob.n_det,
        "bob_x_realtime": 1 / t_bob,
        "alice_x_realtime": 1 / t_alice,
        "both_x_realtime": 1 / (t_bob + t_alice),
        "mdet_per_s": bob.n_det / t_bob / 1e6,
    }


def bench_hash(repeat: int) -> dict[str, Any]:
    """The GF(2^128) polynomial hash under every Wegman-Carter tag and the key verification
    (a 4e6-bit block's messages hash ~25 MB at the two ends), per kernel this CPU has."""
    rng = random.Random(3)
    key, data = rng.randbytes(16), rng.randbytes(10**7)
    out = {}
    try:
        for portable in (False, True):
            name = _hash.kernel(portable)
            if name not in out:  # without pclmul both are the portable kernel
                t = _median_time(functools.partial(_hash.poly_hash, key, data), repeat)
                out[name] = {"mbytes": len(data) / 1e6, "ms": t * 1e3, "mbyte_per_s": len(data) / t / 1e6}
    finally:
        _hash.kernel(False)
    return out


def _one_block(
    seconds: float, seed: int, reconciler: Any
) -> tuple[pipeline.BlockResult, pipeline.BlockResult]:
    cfg = pipeline.BlockConfig(PROFILE, LOSS_DB, int(seconds * 1e9), seed=seed)
    secret = random.Random(seed).randbytes(1 << 22)
    a = Authenticator(BufferKeySource(secret), "alice", b"bench")
    b = Authenticator(BufferKeySource(secret), "bob", b"bench")
    return pipeline.run_local(cfg, a, b, reconciler=reconciler)


def bench_pipeline(repeat: int, seconds: float) -> dict[str, Any]:
    cascade = _cascade()
    reconciler = cascade or _PassThrough
    runs = []
    for i in range(max(repeat, 1)):
        t = time.perf_counter()
        alice, bob = _one_block(seconds, 100 + i, reconciler)
        runs.append((time.perf_counter() - t, alice, bob))
    wall = statistics.median(r[0] for r in runs)
    alice = runs[0][1]
    stages: dict[str, float] = {}
    for _, a, b in runs:
        for who in (a, b):
            for k, v in who.timings.items():
                stages[f"{who.role}.{k}"] = stages.get(f"{who.role}.{k}", 0.0) + v / len(runs)
    ok = all(a.status == b.status == "ok" and a.key == b.key for _, a, b in runs)
    return {
        "reconciler": "cascade" if cascade else "pass-through stand-in (sdqkd.engine.cascade missing)",
        "block_link_seconds": seconds,
        "status_ok": ok,
        "sifted_bits": alice.sifted_bits,
        "final_bits": statistics.median(r[1].key_bits for r in runs),
        "qber": alice.qber,
        "leak_ec_bits": alice.leak_ec,
        "auth_bits": alice.auth_bits,
        "wall_s": wall,
        "x_realtime": seconds / wall,
        "final_mbps_link_time": statistics.median(r[1].key_bits for r in runs) / seconds / 1e6,
        "final_mbps_cpu": statistics.median(r[1].key_bits for r in runs) / wall / 1e6,
        "stage_seconds": {k: round(v, 4) for k, v in sorted(stages.items())},
    }


def _peak_rss_mb(reset: bool = False) -> float:
    """Peak resident set (VmHWM) of this process; reset clears it (Linux >= 4.0).  ru_maxrss
    is no use here: a child inherits the parent's peak across fork and exec."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(seconds: float) -> None:
    """Subprocess body: one block, then its peak RSS above what the imports alone took."""
    cascade = _cascade()
    base = _peak_rss_mb(reset=True)
    alice, _ = _one_block(seconds, 7, cascade or _PassThrough)
    peak = _peak_rss_mb()
    print(json.dumps({"sifted_bits": alice.sifted_bits, "peak_mb": peak, "block_mb": peak - base}))


def bench_memory(sizes: list[float]) -> list[dict[str, Any]]:
    rows = []
    for seconds in sizes:
        out = subprocess.run(
            [sys.executable, "-P", "-m", "sdqkd.bench.engine", "--memory-child", str(seconds)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ},
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["link_seconds"] = seconds
        row["bytes_per_sifted_bit"] = row["block_mb"] * 2**20 / max(row["sifted_bits"], 1)
        rows.append(row)
    return rows


def _targets(res: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    casc = res["cascade"]
    if casc.get("available"):
        for k, v in casc.items():
            if isinstance(v, dict) and "mbps" in v:
                t[f"cascade_{k}_mbps>=50"] = {"value": round(v["mbps"], 1), "met": v["mbps"] >= 50}
    for k, v in res["pa"].items():
        t[f"pa_{k}_mbps>=200"] = {"value": round(v["mbps"], 1), "met": v["mbps"] >= 200}
    s = res["sim"]["both_x_realtime"]
    t["sim_both_views_x_realtime>=2"] = {"value": round(s, 2), "met": s >= 2}
    p = res["pipeline"]
    t["pipeline_x_realtime>=1"] = {"value": round(p["x_realtime"], 2), "met": p["x_realtime"] >= 1}
    t["final_key_mbps>=1"] = {
        "value": round(p["final_mbps_link_time"], 3),
        "met": p["final_mbps_link_time"] >= 1,
    }
    return t


def _table(res: dict[str, Any]) -> str:
    lines = ["QKD engine benchmark (medians; one core)"]
    c = res["cascade"]
    if not c.get("available"):
        lines.append("  cascade                 unavailable (sdqkd.engine.cascade missing)")
    for k, v in c.items():
        if isinstance(v, dict) and "mbps" in v:
            lines.append(
                f"  cascade {k:<15} {v['mbps']:8.1f} Mbit/s  f={v.get('efficiency', float('nan')):.3f}"
            )
    sbs = res["cascade_side_by_side"]
    if sbs.get("available"):
        one, side = sbs["one_after_another_ms"], sbs["side_by_side_ms"]
        lines.append(
            f"  cascade {sbs['blocks']} side by side  Alice {one['alice']:.1f} -> {side['alice']:.1f}, "
            f"Bob {one['bob']:.1f} -> {side['bob']:.1f} ms per {sbs['n_bits'] / 1e6:g}e6-bit block "
            "(one after another -> interleaved, as a link's batch)"
        )
    for k, v in res["pa"].items():
        lines.append(f"  toeplitz PA n={k:<9} {v['mbps']:8.1f} Mbit/s  ({v['ms']:.1f} ms, out n/2)")
    for k, v in res["hash"].items():
        lines.append(f"  GF(2^128) hash {k:<9} {v['mbyte_per_s']:8.1f} MB/s  ({v['ms']:.1f} ms per {v['mbytes']:.0f} MB)")
    s = res["sim"]
    lines.append(
        f"  link sim 40 km, 1 GHz   {s['both_x_realtime']:8.2f} x real time both views "
        f"(Bob {s['bob_x_realtime']:.2f}x, Alice {s['alice_x_realtime']:.2f}x, {s['mdet_per_s']:.1f} Mdet/s)"
    )
    p = res["pipeline"]
    lines.append(
        f"  pipeline 40 km          {p['x_realtime']:8.2f} x real time, final key {p['final_mbps_link_time']:.3f} "
        f"Mbit/s of link time, {p['final_mbps_cpu']:.3f} Mbit/s of CPU [{p['reconciler']}]"
    )
    for row in res["memory"]:
        lines.append(
            f"  memory {row['link_seconds']:>5.2f} s block      {row['block_mb']:8.1f} MB over imports "
            f"({row['sifted_bits']:.3g} sifted bits, {row['bytes_per_sifted_bit']:.1f} B/bit)"
        )
    lines.append(
        "  targets: "
        + ", ".join(
            f"{k} {'met' if v['met'] else 'MISSED'} ({v['value']})" for k, v in res["targets"].items()
        )
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench engine", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=integer(1), default=5, help="timed repetitions per figure (median)")
    ap.add_argument(
        "--block-seconds",
        type=number(0, strict=True),
        default=5.0,
        help="link time per pipeline block (5 s: ~1.4e7 sifted bits)",
    )
    ap.add_argument("--memory-sizes", type=numbers(0, strict=True), default="0.5,1,2,4", help="block lengths (s) for the memory rows")
    ap.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child is not None:
        _memory_child(args.memory_child)
        return 0
    res: dict[str, Any] = {
        "cascade": bench_cascade(args.repeat),
        "cascade_side_by_side": bench_cascade_side_by_side(args.repeat),
        "pa": bench_pa(args.repeat),
        "hash": bench_hash(args.repeat),
        "sim": bench_sim(args.repeat),
        "pipeline": bench_pipeline(max(1, (args.repeat + 1) // 2), args.block_seconds),
        "memory": bench_memory(args.memory_sizes),
    }
    res["targets"] = _targets(res)
    print(json.dumps(res) if args.json else _table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
