"""`sdqkd bench node`: what one node process costs, for sizing containers and pods
(runtime/deploy/sizing.py takes its figures from here). A network of processes (`sdqkd net up`)
on this machine: one node without links, and a line A-B-C whose ends have one link and whose
middle has two, all at the engine's default settings unless `--clock-scale` /
`--block-bits` say otherwise. Once every link produces key, each process is sampled once a
second for `--seconds`: resident memory (VmRSS; VmHWM = its peak) and CPU (utime + stime from
/proc/PID/stat, as a fraction of one core). Also the CPU one `sdqkd health` probe costs."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sdqkd.argtypes import number
from sdqkd.bench._proc import process_cpu_seconds


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def sample(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    cpu0 = {n: process_cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    rss: dict[str, list[int]] = {n: [] for n in pids}
    while time.monotonic() - t0 < seconds:
        for n, p in pids.items():
            rss[n].append(_status(p)["VmRSS"])
        time.sleep(1.0)
    wall = time.monotonic() - t0
    out = {}
    for n, p in pids.items():
        out[n] = {"rss_mib": round(statistics.median(rss[n]) / 2**20, 1),
                  "peak_rss_mib": round(_status(p)["VmHWM"] / 2**20, 1),
                  "cpu_cores": round((process_cpu_seconds(p) - cpu0[n]) / wall, 3)}
    return out


def measure(topology: dict[str, Any], seconds: float) -> dict[str, dict[str, float]]:
    from sdqkd.harness import network

    with tempfile.TemporaryDirectory(prefix="sdqkd-bench-node-") as tmp:
        state = Path(tmp) / "net"
        network.up(topology, state, timeout=300)
        try:
            pids = json.loads((state / "pids.json").read_text())
            figures = sample(pids, seconds)
            figures["health-probe"] = {"cpu_seconds": probe_cost(state / "nodes" / topology["nodes"][0]["name"])}
            return figures
        finally:
            network.down(state)


def probe_cost(node_dir: Path) -> float:
    """CPU seconds (user + system) of one `sdqkd health` run against a running node."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "health", "--config", str(node_dir / "node.yaml")],
                       capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"sdqkd health failed: {r.stdout}{r.stderr}")
    return round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench node", description=__doc__)
    ap.add_argument("--seconds", type=number(0, strict=True), default=20.0)
    ap.add_argument("--clock-scale", type=number(0, strict=True), default=None)
    ap.add_argument("--block-bits", type=number(0, strict=True), default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = {k: v for k, v in (("clock_scale", args.clock_scale), ("block_sifted_bits", args.block_bits))
                if v is not None}
    lone = {"nodes": [{"name": "solo"}], "links": [], "saes": [], "settings": settings}
    line = {"nodes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
            "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 15}], "saes": [],
            "settings": settings}
    nets = {"no links": measure(lone, args.seconds), "line A-B-C": measure(line, args.seconds)}
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({**nets, "load": load, "settings": settings}))
        return 0
    print(f"{'network':12} {'process':14} {'RSS MiB':>8} {'peak MiB':>9} {'CPU cores':>9}")
    for net, figures in nets.items():
        for proc, f in figures.items():
            if "rss_mib" in f:
                print(f"{net:12} {proc:14} {f['rss_mib']:8.1f} {f['peak_rss_mib']:9.1f} {f['cpu_cores']:9.3f}")
        print(f"{net:12} health probe: {figures['health-probe']['cpu_seconds']:.3f} CPU s per run")
    print(f"1-min load average: {load:.2f}")
    return 0
