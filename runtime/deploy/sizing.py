"""Resource requests and limits of exported pods, from our own measurements (`sdqkd bench node`).

Memory: a node without links, plus per link the memory of key blocks in flight, which grows
linearly with the block size (~65 bytes per sifted bit: a link simulates and sifts a batch of 4
blocks at once). CPU: an engine link is paced by its simulated clock but on a busy host it takes
what it gets, so the request is the measured use of a link at the default engine settings; no CPU
limit is set (throttling a link stalls its Cascade round trips and costs more than it saves). The
memory limit leaves room for the peak (VmHWM) the bench saw.
"""

from __future__ import annotations

import math
from typing import Any

# `sdqkd bench node` on the dev machine (2 cores, load average 1.2, 2026-12-05), default engine
# settings (4e6 sifted bits per block): a node without links 81 MiB; one link 332-382 MiB
# (peaks 406), two links 506 MiB (peak 600); CPU 0.19-0.28 cores for one link, 0.45 for two;
# the controller 75 MiB, ~0.005 cores; one `sdqkd health` probe 0.28 CPU seconds (0.36 on the
# host of 2026-12-08; probes every 15 s and 60 s: ~0.03 cores). On 2026-12-08 one link took
# 208-211 MiB: the figures below stay the larger, earlier ones. The limit's 1.5x covers a link
# at RTT 20 ms (`sdqkd bench link`: ~570 MiB per end with 41 blocks in flight).
BASE_RSS_MIB = 80.0  # a node with no links
LINK_RSS_MIB_PER_MBIT = 65.0  # per link, per 1e6 sifted bits of block size (median)
LINK_PEAK_FACTOR = 1.3  # peak / median of what the links add
LINK_CPU_CORES = 0.3  # per link at the default clock (more if the host has it to give)
IDLE_CPU_CORES = 0.05  # idle node plus its health probes
CONTROLLER_RSS_MIB = 80.0
CONTROLLER_CPU_CORES = 0.02

def _mib(x: float) -> str:
    return f"{max(16, math.ceil(x / 16) * 16)}Mi"


def _cpu(cores: float) -> str:
    return f"{max(10, math.ceil(cores * 100) * 10)}m"


def node_resources(links: int, block_sifted_bits: float) -> dict[str, Any]:
    rss = BASE_RSS_MIB + links * LINK_RSS_MIB_PER_MBIT * block_sifted_bits / 1e6
    peak = BASE_RSS_MIB + (rss - BASE_RSS_MIB) * LINK_PEAK_FACTOR
    return {"requests": {"memory": _mib(rss), "cpu": _cpu(IDLE_CPU_CORES + links * LINK_CPU_CORES)},
            "limits": {"memory": _mib(max(peak, rss) * 1.5)}}


def controller_resources(nodes: int) -> dict[str, Any]:
    return {"requests": {"memory": _mib(CONTROLLER_RSS_MIB), "cpu": _cpu(CONTROLLER_CPU_CORES)},
            "limits": {"memory": _mib(CONTROLLER_RSS_MIB * 2)}}
