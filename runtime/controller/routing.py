"""Key-relay path computation. A relayed key costs one key of every physical link it crosses,
so a hop is as good as the key it can give: its effective secret key rate left after what
applications already take (eskr - expected_consumption) plus its stored key spread over a
horizon. Path cost = sum over hops of 1 / that rate (seconds per bit): it prefers rich links
and, among equals, fewer hops. Links down, or unable to carry the demanded rate, are skipped."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass


@dataclass
class LinkState:
    id: str
    a: str
    b: str
    up: bool = True
    eskr: float = 0.0  # bits/s the link produces for applications
    consumption: float = 0.0  # bits/s already promised (expected_consumption)
    stored_bits: float = 0.0  # key waiting in the pools of both ends (the smaller)

    def capacity(self, horizon_s: float) -> float:
        return max(0.0, self.eskr - self.consumption) + self.stored_bits / horizon_s


class Router:
    def __init__(self, horizon_s: float = 60.0):
        self.horizon_s = horizon_s
        self.links: dict[str, LinkState] = {}
        self._adj: dict[str, list[LinkState]] = {}

    def add(self, link: LinkState) -> None:
        self.links[link.id] = link
        self._adj.setdefault(link.a, []).append(link)
        self._adj.setdefault(link.b, []).append(link)

    def update(self, link_id: str, **fields: float | bool) -> None:
        ls = self.links[link_id]
        for k, v in fields.items():
            if not hasattr(ls, k):
                raise ValueError(f"LinkState has no field {k!r}")
            setattr(ls, k, v)

    def path(self, src: str, dst: str, demand_bps: float = 0.0) -> list[str] | None:
        """Node names from src to dst, or None when no path can carry `demand_bps`."""
        if src not in self._adj or dst not in self._adj:
            return None
        if src == dst:
            return [src]
        dist = {src: 0.0}
        prev: dict[str, str] = {}
        heap = [(0.0, 0, src)]
        while heap:
            d, hops, u = heapq.heappop(heap)
            if u == dst:
                break
            if d > dist.get(u, math.inf):
                continue
            for ls in self._adj[u]:
                if not ls.up:
                    continue
                cap = ls.capacity(self.horizon_s)
                if cap <= 0 or cap < demand_bps:
                    continue
                v = ls.b if ls.a == u else ls.a
                nd = d + 1.0 / cap
                if nd < dist.get(v, math.inf):
                    dist[v] = nd
                    prev[v] = u
                    heapq.heappush(heap, (nd, hops + 1, v))
        if dst not in prev:
            return None
        out = [dst]
        while out[-1] != src:
            out.append(prev[out[-1]])
        return out[::-1]

    def links_on(self, path: list[str]) -> list[LinkState]:
        """The physical links along a node path (the best one where several join two nodes)."""
        out = []
        for u, v in zip(path, path[1:]):
            cands = [ls for ls in self._adj.get(u, []) if {ls.a, ls.b} == {u, v} and ls.up]
            if not cands:
                raise ValueError(f"no usable link between {u} and {v}")
            out.append(max(cands, key=lambda ls: ls.capacity(self.horizon_s)))
        return out
