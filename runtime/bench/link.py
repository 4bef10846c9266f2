"""`sdqkd bench link`: one engine link between two nodes, against the in-process pipeline.

Cases, each in a child process of its own (clean CPU and memory accounting):
1. `pipeline`: blocks of the link's size run by `pipeline.run_local` (both parties in one
   process, no network): CPU-s per Mbit of final key, the baseline of `sdqkd bench engine`.
2. `rtt0`: a 2-node network in one process (gNMI agents, LKMS stores, the classical channel
   with mutual TLS on loopback), 40 km, `optimized` Cascade, the simulated clock at 1 GHz:
   CPU-s per Mbit of final key (both nodes: the process), key rate, and the fraction of the blocks
   the simulated clock allows that the link completes.
   This machine's speed drifts by up to ~10 % over minutes and a block's CPU varies by up to
   ~20 % from block to block, so `--pairs N` (default 3) runs 1 and 2 alternately N times and
   one pipeline more at the end: each link is set against the mean of the pipelines just before
   and just after it (a drift that is linear over the pair cancels), and the verdict takes the
   median of the N ratios. A pipeline runs one warm-up block first, not counted (the link is
   measured warm too), then 16 blocks. The ratios against the pipeline before alone (the
   estimator up to 2026-12-07) are in the output too (`cpu_vs_pipeline_before_pairs`).
3. `rtt1`, `rtt5`, `rtt20`: the same with the classical channel delayed to that round-trip time:
   in a network namespace with `tc netem delay` on its loopback where the kernel has netem, else
   through a relay process that delays every byte by RTT/2 each way (runtime/bench/_relay.py).
   `--rate-mbit R,...`: `rateR`, the channel through that relay carrying at most R Mbit/s each
   way (no target: how much classical line a link needs, docs/channel.md#bandwidth).
4. `--demo`: the 5-node demo network, each link's rate of stored key beside the analytic
   asymptotic rate of its loss, at 1 GHz (CPU-bound on a small machine) and at a clock slow
   enough for every link to keep up (the finite-key pipeline stays below the asymptotic rate).
5. `channel`: the classical channel alone, CPU per Cascade-sized round trip over mutual TLS, one
   block's exchange at a time and 4 side by side (runtime/bench/_channel.py).
6. `--memory`: peak memory of the 2-node process per block size (linear in block size?).
`--cascade-schedule`: Cascade's schedule in every case, the pipeline included (engine setting
`cascade_schedule`; default the network's, balanced).
Where the CPU goes, per block, in `pipeline` and `rtt*` cases (`cpu_ms_per_block`): the pipeline's
stages (BlockResult.cpu: thread CPU of each step, both parties) and, for a link, its threads by
role (event loop, engine threads, key stores, the rest); the verdict sets each link against its
pipeline (`extra_cpu_ms_per_block_pairs`: the same stages costing more, and the work outside
them; docs/link-cpu.md).
Targets: CPU per Mbit <= 1.2x the pipeline; >= 0.95 of the clock's blocks; rate at RTT 5 ms >=
0.9x and at 20 ms >= 0.7x the zero-latency rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdqkd.argtypes import integer, number, numbers
from sdqkd.bench._proc import cpu_seconds, run_cancellable, run_case, sigterm_interrupts

if TYPE_CHECKING:
    from sdqkd.node.links import EngineLink

PROFILE = "commercial"
# Nothing drains the benches' pools: they may hold this many keys (topology setting max_key_count),
# more than 2 minutes of any link fill (256-bit keys); the default 100,000 fill within ~30 s at 1 GHz
# and a full pool pauses its link.
POOL_KEYS = 10**7


def pair(km: float) -> dict[str, Any]:
    return {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": km}], "saes": [],
            "settings": {"max_key_count": POOL_KEYS}}


def stored_keys(state: Path, node: str) -> dict[bytes, bytes]:
    """Key ID -> material of a node's store (read from its SQLite file after the network stopped)."""
    db = state / "nodes" / node / "data" / "keys.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return {bytes(k): bytes(m) for k, m in c.execute("SELECT kid, material FROM all_keys")}


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PIPELINE_BLOCKS = 16  # ~7 s of CPU: blocks vary by up to ~20 % one from the next on this machine


def pipeline_case(km: float, block_bits: float, cascade: str, blocks: int, schedule: str) -> dict[str, Any]:
    """`blocks` blocks by run_local after one warm-up block (imports, first allocations), not counted."""
    from sdqkd.engine import pipeline
    from sdqkd.engine.auth import Authenticator, BufferKeySource

    loss = km * 0.2
    n = pipeline.pulses_for(PROFILE, loss, block_bits)

    def block(i: int) -> tuple[pipeline.BlockResult, pipeline.BlockResult]:
        cfg = pipeline.BlockConfig(PROFILE, loss, n, seed=1000 + i, cascade_variant=cascade,
                                   cascade_schedule=schedule)
        secret = os.urandom(8192)
        return pipeline.run_local(cfg, Authenticator(BufferKeySource(secret), "alice", b"bench"),
                                  Authenticator(BufferKeySource(secret), "bob", b"bench"))

    block(999)
    bits = 0
    stages: dict[str, float] = {}
    faults0 = _minor_faults()
    cpu0 = time.process_time()
    for i in range(blocks):
        a, b = block(i)
        bits += a.key_bits if a.status == "ok" and a.key == b.key else 0
        _add(stages, a.cpu, b.cpu)
    cpu = time.process_time() - cpu0
    faults = _minor_faults() - faults0
    return {"case": "pipeline", "blocks": blocks, "block_link_s": n / 1e9, "final_bits_per_block": bits / blocks,
            "cpu_s_per_mbit": cpu / (bits / 1e6) if bits else None,
            "cpu_ms_per_block": {"total": _ms(cpu, blocks), "stages": {k: _ms(v, blocks) for k, v in stages.items()}},
            "page_faults_per_block": round(faults / blocks)}


def _minor_faults() -> int:
    """Page faults of this process so far that read nothing from disk: fresh pages (each one zeroed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _add(into: dict[str, float], *parts: dict[str, float]) -> dict[str, float]:
    for part in parts:
        for k, v in part.items():
            into[k] = into.get(k, 0.0) + v
    return into


def _ms(seconds: float, blocks: float) -> float:
    return round(seconds * 1e3 / blocks, 1) if blocks else 0.0


THREAD_ROLES = ("event_loop", "engine", "key_store", "other")


def thread_role(tid: int, name: str, main_tid: int) -> str:
    """A thread's role in a node process: the event loop (the main thread), the engine threads
    (links.py's pool), the key stores' threads (store.py), or the rest (gRPC's core, helpers)."""
    if tid == main_tid:
        return "event_loop"
    if name.startswith("engine"):
        return "engine"
    if name.startswith("keystore"):
        return "key_store"
    return "other"


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by role (Linux /proc; the names come from
    `threading`: Python 3.11 leaves OS thread names alone). A thread that ended takes its CPU
    with it: compare snapshots of long-lived threads only."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = dict.fromkeys(THREAD_ROLES, 0.0)
    for task in Path("/proc/self/task").iterdir():
        try:
            cpu = cpu_seconds(task / "stat")
        except OSError:
            continue  # ended meanwhile
        tid = int(task.name)
        out[thread_role(tid, names.get(tid, ""), os.getpid())] += cpu
    return out


def _breakdown(links: list[EngineLink]) -> tuple[dict[str, float], dict[str, float]]:
    """Threads' CPU by role and the pipeline stages' CPU (both ends' blocks that ended), so far."""
    return thread_cpu(), _add({}, *(link.stats.stage_cpu_s for link in links))


async def link_case(km: float, block_bits: float, cascade: str, seconds: float, warmup: float,
                    relay_delay_ms: float = 0.0, clock_scale: float = 1.0, until_blocks: int = 0,
                    relay_rate_mbit: float = 0.0, *, schedule: str) -> dict[str, Any]:
    """A running 2-node network; figures over `seconds` after `warmup` (first keys, windows open).
    With a relay delay or rate, the channel goes through runtime/bench/_relay.py."""
    from sdqkd.harness.inprocess import start_network

    relay: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory(prefix="sdqkd-bench-link-") as tmp:
        state = Path(tmp)
        net = await start_network(pair(km), state, wait_keys=True, timeout=120,
                                  engine={"clock_scale": clock_scale, "block_sifted_bits": block_bits,
                                          "cascade_variant": cascade, "cascade_schedule": schedule})
        try:
            alice = next(iter(net.nodes["A"].links.values()))
            bob = next(iter(net.nodes["B"].links.values()))
            if relay_delay_ms > 0 or relay_rate_mbit > 0:  # the channel through the relay, afresh
                relay = subprocess.Popen([sys.executable, "-m", "sdqkd.bench._relay", "--target",
                                          alice.p.peer_address, "--delay-ms", str(relay_delay_ms),
                                          "--rate-mbit", str(relay_rate_mbit)],
                                         stdout=subprocess.PIPE, text=True)
                assert relay.stdout is not None
                alice.p.peer_address = f"127.0.0.1:{relay.stdout.readline().strip()}"
                if alice.session is not None:
                    alice.session.conn.abort()
            await asyncio.sleep(warmup)
            s0 = await _after_blocks_end(bob)
            t0, st0 = _breakdown([alice, bob])
            faults0 = _minor_faults()
            dropped0 = alice.stats.blocks_aborted + bob.stats.blocks_aborted
            in_flight = []
            end = s0[0] + seconds
            # until_blocks: measure until that many blocks ended (`seconds` is then the time limit)
            while time.monotonic() < end and not (until_blocks and bob.stats.blocks_ok - s0[3] >= until_blocks):
                await asyncio.sleep(0.1)
                in_flight.append(bob.session.in_flight if bob.session else 0)
            s1 = await _after_blocks_end(bob)
            t1, st1 = _breakdown([alice, bob])
            faults = _minor_faults() - faults0
            dropped = alice.stats.blocks_aborted + bob.stats.blocks_aborted - dropped0
            cfg = alice.block_config("x", 1)  # a full-size block (a session starts with a small one)
            sess = bob.session
            rtt, trips = (sess.rtt_s, sess.round_trips) if sess else (0.0, 0.0)
            held = sess.detects_held if sess else 0
        finally:
            await net.stop()
            if relay is not None:
                relay.terminate()
                relay.wait()
        equal = stored_keys(state, "A") == stored_keys(state, "B")
    wall, cpu, bits, blocks = (b - a for a, b in zip(s0, s1, strict=True))
    d = cfg.duration_s / clock_scale
    return {"case": f"rtt{2 * relay_delay_ms:g}", "seconds": round(wall, 1), "final_bits": bits,
            "rate_bps": bits / wall, "cpu_s_per_mbit": cpu / (bits / 1e6) if bits else None,
            "blocks": blocks, "clock_blocks": wall / d, "of_clock": blocks / (wall / d),
            "cpu_ms_per_block": {"total": _ms(cpu, blocks),
                                 "threads": {k: _ms(t1[k] - t0[k], blocks) for k in THREAD_ROLES},
                                 "stages": {k: _ms(v - st0.get(k, 0.0), blocks) for k, v in st1.items()}},
            "page_faults_per_block": round(faults / blocks) if blocks else None,
            "max_in_flight": max(in_flight, default=0), "rtt_ms": round(rtt * 1e3, 2),
            "round_trips_per_block": round(trips), "detects_held": held, "stores_equal": equal, "peak_rss_mb": round(_peak_rss_mb(), 1),
            "blocks_without_key": dropped}


async def _after_blocks_end(link: EngineLink) -> tuple[float, float, int, int]:
    """(wall, CPU, secret bits, blocks) of the process just after a batch of blocks ended, at the
    receiving end (Bob), whose blocks end last (once Alice stored hers). Blocks end in batches
    (session.py: BATCH_BLOCKS after a lone block 0): a window cut anywhere would count the CPU of a
    batch under way but not its key (30 s holds 4 to 5 batches of 4e6-bit blocks: +-20 % between
    runs); cut where the session's count of ended blocks completes a batch, each window holds
    whole batches, however far apart a batch's blocks end (at RTT 1 ms: over ~0.6 s). A link that
    stops producing gives its figures after 120 s."""
    from sdqkd.node.session import BATCH_BLOCKS

    deadline = time.monotonic() + 120

    def ended() -> tuple[str, int] | None:
        s = link.session
        return (s.sid, s.ended) if s is not None else None

    first = ended()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        now = ended()
        if now is not None and now != first and now[1] >= 1 and (now[1] - 1) % BATCH_BLOCKS == 0:
            break
    return time.monotonic(), time.process_time(), link.stats.secret_bits, link.stats.blocks_ok


async def demo_case(seconds: float, warmup: float, workers: int, clock_scale: float = 1.0) -> dict[str, Any]:
    """The 5-node demo network (in-process, nodes shared out over worker processes): each link's
    rate of stored key beside the analytic asymptotic rate for its loss at the clock it runs (at
    1 GHz, 2 cores cannot post-process what the short links detect; at a slower clock every link
    keeps up and the ratio is the finite-key pipeline's share of the asymptotic rate). Its pools
    may hold POOL_KEYS keys, as the link cases'."""
    from sdqkd.demo import DEFAULT_TOPOLOGY
    from sdqkd.engine import keyrate, profiles
    from sdqkd.harness.inprocess import start_network

    with tempfile.TemporaryDirectory(prefix="sdqkd-bench-demo-") as tmp:
        topology = {**DEFAULT_TOPOLOGY, "settings": {**DEFAULT_TOPOLOGY.get("settings", {}), "max_key_count": POOL_KEYS}}
        net = await start_network(topology, Path(tmp), wait_keys=True, timeout=120, workers=workers,
                                  engine={"clock_scale": clock_scale})
        try:
            assert net.controller is not None
            await asyncio.sleep(warmup)
            # per link, the times its stored key grew: two rates, over the whole window (cut
            # mid-batch: +-1 batch of keys) and from its first growth to its last (whole batches;
            # right for a link that produces steadily, too high for one that catches up in bursts,
            # as CPU-bound links do)
            steps: dict[str, list[tuple[float, int]]] = {}
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                now = time.monotonic()
                for r in net.controller.link_table():
                    seen = steps.setdefault(r["link"], [])
                    if not seen or r["stored_keys"] != seen[-1][1]:
                        seen.append((now, r["stored_keys"]))
                await asyncio.sleep(0.1)
            rows, t1 = net.controller.link_table(), time.monotonic()
        finally:
            await net.stop()
    clock = profiles.get(PROFILE).clock_hz * clock_scale
    links = []
    for r in rows:
        start, *seen = steps.get(r["link"], [(t0, r["stored_keys"])])  # start: where the window began
        window = (r["stored_keys"] - start[1]) * 256 / (t1 - t0)
        batches = (seen[-1][1] - seen[0][1]) * 256 / (seen[-1][0] - seen[0][0]) if len(seen) > 2 else None
        model = keyrate.asymptotic(PROFILE, float(r["db"])) * clock
        links.append({"link": r["link"], "km": r["km"], "db": r["db"], "rate_bps": round(window),
                      "batch_rate_bps": round(batches) if batches is not None else None,
                      "model_asymptotic_bps": round(model), "of_model": round(window / model, 3) if model else None,
                      "batch_rate_of_model": round(batches / model, 3) if model and batches is not None else None,
                      "growths": len(seen)})
    return {"case": f"demo{clock_scale:g}", "seconds": seconds, "workers": workers, "clock_hz": clock,
            "links": links}


def child(args: argparse.Namespace, case: dict[str, Any], netns: str | None = None) -> dict[str, Any]:
    """Runs one case in a child process (inside `netns` if given); its JSON result."""
    cmd = [sys.executable, "-m", "sdqkd.bench.link", "--child", json.dumps(case),
           "--km", str(args.km), "--block-bits", str(args.block_bits), "--cascade", args.cascade,
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--cascade-schedule", args.cascade_schedule]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    r = run_case(cmd, timeout=600)
    if r.returncode != 0:
        return {"case": case["name"], "error": r.stderr.strip()[-800:]}
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def delayed(args: argparse.Namespace, name: str, rtt_ms: float, extra: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """One case with the channel delayed to `rtt_ms`: netem in a namespace, else the relay."""
    ns = netem_namespace(f"sdqkdlat{os.getpid()}", rtt_ms / 2)
    try:
        case = {"name": name, "delay": "netem" if ns else "relay", "rtt_ms": rtt_ms,
                "relay_ms": 0.0 if ns else rtt_ms / 2, **(extra or {})}
        return child(args, case, ns)
    finally:
        if ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def netem_namespace(name: str, delay_ms: float) -> str | None:
    """A namespace whose loopback delays by delay_ms, or None where namespaces/netem are missing."""
    def ip(*a: str) -> bool:
        return subprocess.run(list(a), capture_output=True).returncode == 0

    if not ip("ip", "netns", "add", name):
        return None
    if ip("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up") and ip(
            "ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", f"{delay_ms}ms"):
        return name
    ip("ip", "netns", "del", name)
    return None


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    case = json.loads(args.child)
    if case["name"] == "pipeline":
        return pipeline_case(args.km, args.block_bits, args.cascade, case.get("blocks", PIPELINE_BLOCKS),
                             args.cascade_schedule)
    if case["name"] == "channel":
        from sdqkd.bench._channel import channel_case

        return channel_case()
    if case["name"] == "demo":
        # a slow link's batch of 4 blocks takes up to ~40 s at a tenth of the clock: a longer window
        return run_cancellable(demo_case(max(args.seconds, 90.0), args.warmup, int(case.get("workers", 2)),
                                         float(case.get("clock_scale", 1.0))))
    rtt_ms = float(case.get("rtt_ms", 0.0))
    # a new session first runs a few blocks at the full latency (~600-2,800 round trips of optimized Cascade, by schedule)
    warmup = float(case.get("warmup", args.warmup + 2.5 * rtt_ms))
    res = run_cancellable(link_case(args.km, case.get("block_bits", args.block_bits), args.cascade, args.seconds,
                                    warmup, relay_delay_ms=case.get("relay_ms", 0.0),
                                    until_blocks=int(case.get("until_blocks", 0)),
                                    relay_rate_mbit=float(case.get("rate_mbit", 0.0)), schedule=args.cascade_schedule))
    res["case"] = case["name"]
    res["delay"] = case.get("delay", "none")
    if case.get("rate_mbit"):
        res["rate_mbit"] = case["rate_mbit"]
    return res


def parser() -> argparse.ArgumentParser:
    from sdqkd.engine.pipeline import CASCADE_SCHEDULES
    from sdqkd.node.links import DEFAULT_BLOCK_BITS, DEFAULT_SCHEDULE

    ap = argparse.ArgumentParser(prog="sdqkd bench link")
    ap.add_argument("--km", type=number(0), default=40.0)
    ap.add_argument("--block-bits", type=number(0, strict=True), default=DEFAULT_BLOCK_BITS,
                    help="sifted bits per block (the network default)")
    ap.add_argument("--cascade", choices=("original", "optimized"), default="optimized")
    ap.add_argument("--cascade-schedule", choices=CASCADE_SCHEDULES, default=DEFAULT_SCHEDULE,
                    help="Bob's order of bisections, in the pipeline and the links alike (engine setting "
                         "cascade_schedule)")
    ap.add_argument("--seconds", type=number(0, strict=True), default=30.0, help="measured time per case")
    ap.add_argument("--warmup", type=number(0), default=15.0, help="time before measuring (first keys, windows open)")
    ap.add_argument("--pairs", type=integer(1), default=3, help="pipeline / rtt0 pairs run alternately (median ratio)")
    ap.add_argument("--rtt", type=numbers(0, strict=True), default="1,5,20",
                    help="round-trip times in ms to measure besides 0")
    ap.add_argument("--rate-mbit", type=numbers(0, strict=True), default="",
                    help="classical line rates (Mbit/s each way, RTT 0) to measure, e.g. 100,20: the channel "
                         "through the relay at that rate")
    ap.add_argument("--demo", action="store_true",
                    help="also the 5-node demo network's per-link rates, at 1 GHz and at --demo-clock-scale")
    ap.add_argument("--demo-clock-scale", type=number(0, strict=True), default=0.1,
                    help="the demo's second clock, slow enough for 2 cores to keep up with every link")
    ap.add_argument("--memory", type=numbers(0, strict=True), default="",
                    help="block sizes (sifted bits) for peak memory, e.g. 5e5,1e6,2e6")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.child:
        from sdqkd.engine import memory

        memory.keep_freed_memory()  # first, as a node process does; the pipeline's case too, on equal terms
        print(json.dumps(run_child(a)))
        return 0
    load = os.getloadavg()
    res: dict[str, Any] = {"loadavg_before": [round(x, 2) for x in load], "cases": []}
    for _ in range(a.pairs):  # alternately, a pipeline on either side of each link (module doc)
        res["cases"].append(child(a, {"name": "pipeline"}))
        res["cases"].append(child(a, {"name": "rtt0"}))
    res["cases"].append(child(a, {"name": "pipeline"}))
    res["cases"].append(child(a, {"name": "channel"}))
    for rtt in a.rtt:
        res["cases"].append(delayed(a, f"rtt{rtt:g}", rtt))
    for rate in a.rate_mbit:
        res["cases"].append(child(a, {"name": f"rate{rate:g}", "rate_mbit": rate, "delay": "relay"}))
    if a.demo:
        for scale in (1.0, a.demo_clock_scale):
            res["cases"].append(child(a, {"name": "demo", "workers": os.cpu_count() or 2, "clock_scale": scale}))
    for bits in a.memory:
        res["cases"].append(child(a, {"name": f"memory{bits:g}", "block_bits": bits}))
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res.update(_verdict(res["cases"]))
    print(json.dumps(res, indent=None if a.json else 1))
    return 0 if res["ok"] else 1


def extra_cpu(pipe: dict[str, Any], link: dict[str, Any]) -> dict[str, float]:
    """Where a link's CPU per block exceeds its pipeline's: the same stages (Cascade apart) costing
    more, and the work outside them (the channel, sessions, key stores, telemetry; less the
    pipeline's own unstaged rest, its message loop: a few ms)."""
    p, k = pipe["cpu_ms_per_block"], link["cpu_ms_per_block"]
    ps, ks = p["stages"], k["stages"]
    cascade = ks.get("cascade", 0.0) - ps.get("cascade", 0.0)
    stages = sum(ks.values()) - sum(ps.values()) - cascade
    total = k["total"] - p["total"]
    return {"total": round(total, 1), "stages_but_cascade": round(stages, 1), "cascade": round(cascade, 1),
            "outside_stages": round(total - stages - cascade, 1)}


def _mean_of(pipes: list[dict[str, Any]]) -> dict[str, Any]:
    """The pipelines on either side of a link as one: CPU per Mbit and per block, stage by stage,
    the mean of those that measured (the one before alone when there is none after)."""
    ok = [p for p in pipes if p.get("cpu_s_per_mbit")]
    out: dict[str, Any] = {"case": "pipeline"}
    if not ok:
        return out
    out["cpu_s_per_mbit"] = statistics.fmean(p["cpu_s_per_mbit"] for p in ok)
    if all("cpu_ms_per_block" in p for p in ok):
        costs = [p["cpu_ms_per_block"] for p in ok]
        names = sorted({k for c in costs for k in c["stages"]})
        out["cpu_ms_per_block"] = {"total": statistics.fmean(c["total"] for c in costs),
                                   "stages": {k: statistics.fmean(c["stages"].get(k, 0.0) for c in costs)
                                              for k in names}}
    return out


def _verdict(cases: list[dict[str, Any]]) -> dict[str, Any]:
    by = {c["case"]: c for c in cases}
    pipes = [c for c in cases if c["case"] == "pipeline"]
    zeros = [c for c in cases if c["case"] == "rtt0"]
    bases = [_mean_of(pipes[i:i + 2]) for i in range(min(len(zeros), len(pipes)))]  # before and after
    out: dict[str, Any] = {}
    ratios = [z["cpu_s_per_mbit"] / b["cpu_s_per_mbit"] for b, z in zip(bases, zeros, strict=False)
              if b.get("cpu_s_per_mbit") and z.get("cpu_s_per_mbit")]
    if ratios:
        out["cpu_vs_pipeline"] = round(statistics.median(ratios), 2)
        out["cpu_vs_pipeline_pairs"] = [round(r, 3) for r in ratios]
        out["cpu_vs_pipeline_before_pairs"] = [
            round(z["cpu_s_per_mbit"] / b["cpu_s_per_mbit"], 3) for b, z in zip(pipes, zeros, strict=False)
            if b.get("cpu_s_per_mbit") and z.get("cpu_s_per_mbit")]
    extra = [extra_cpu(b, z) for b, z in zip(bases, zeros, strict=False)
             if "cpu_ms_per_block" in b and "cpu_ms_per_block" in z]
    if extra:
        out["extra_cpu_ms_per_block_pairs"] = extra
    clock = [z["of_clock"] for z in zeros if z.get("of_clock") is not None]
    if clock:
        out["of_clock"] = round(min(clock), 3)  # every run must keep up
    rates = [z["rate_bps"] for z in zeros if z.get("rate_bps")]
    zero = {"rate_bps": statistics.median(rates)} if rates else {}
    for name in ["rtt1", "rtt5", "rtt20", *(n for n in by if n.startswith("rate"))]:
        c = by.get(name, {})
        if c.get("rate_bps") and zero.get("rate_bps"):
            out[f"{name}_vs_rtt0"] = round(c["rate_bps"] / zero["rate_bps"], 3)
    out["ok"] = bool(out.get("cpu_vs_pipeline", 9) <= 1.2 and out.get("of_clock", 0) >= 0.95
                     and out.get("rtt5_vs_rtt0", 1) >= 0.9 and out.get("rtt20_vs_rtt0", 1) >= 0.7
                     and all(c.get("stores_equal", True) for c in cases))
    return out


if __name__ == "__main__":
    with sigterm_interrupts(once=True):  # a case's child: SIGTERM from `child` above removes its state too
        sys.exit(main(sys.argv[1:]))
