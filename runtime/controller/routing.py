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
        """Node names from src to dst, or None when no path can carry `demand_bps`.

        Dijkstra from both ends at once (links are undirected and their costs the same both
        ways): each step settles the next node of the side whose frontier is smaller, and the
        search stops once the two frontiers' nearest distances add up to no less than the best
        meeting found. On a large network it settles a fraction of the nodes a one-sided search
        does for a far pair."""
        if src not in self._adj or dst not in self._adj:
            return None
        if src == dst:
            return [src]
        dist: tuple[dict[str, float], dict[str, float]] = ({src: 0.0}, {dst: 0.0})
        prev: tuple[dict[str, str], dict[str, str]] = ({}, {})
        heaps: tuple[list[tuple[float, str]], list[tuple[float, str]]] = ([(0.0, src)], [(0.0, dst)])
        best, meet = math.inf, None
        while heaps[0] and heaps[1] and heaps[0][0][0] + heaps[1][0][0] < best:
            side = 0 if len(heaps[0]) <= len(heaps[1]) else 1
            d, u = heapq.heappop(heaps[side])
            mine, theirs = dist[side], dist[1 - side]
            if d > mine[u]:
                continue  # a stale entry: u was reached more cheaply since
            for ls in self._adj[u]:
                w = self._cost(ls, demand_bps)
                if w is None:
                    continue
                v = ls.b if ls.a == u else ls.a
                nd = d + w
                if nd < mine.get(v, math.inf):
                    mine[v] = nd
                    prev[side][v] = u
                    heapq.heappush(heaps[side], (nd, v))
                    if v in theirs and nd + theirs[v] < best:
                        best, meet = nd + theirs[v], v
        if meet is None:
            return None
        out = [meet]
        while out[-1] != src:
            out.append(prev[0][out[-1]])
        out.reverse()
        while out[-1] != dst:
            out.append(prev[1][out[-1]])
        return out

    def _cost(self, ls: LinkState, demand_bps: float) -> float | None:
        """Seconds per bit over this link, or None when it is down or cannot carry the demand."""
        cap = ls.capacity(self.horizon_s) if ls.up else 0.0
        return 1.0 / cap if cap > 0 and cap >= demand_bps else None

    def links_on(self, path: list[str]) -> list[LinkState]:
        """The physical links along a node path (the best one where several join two nodes)."""
        out = []
        for u, v in zip(path, path[1:]):
            cands = [ls for ls in self._adj.get(u, []) if {ls.a, ls.b} == {u, v} and ls.up]
            if not cands:
                raise ValueError(f"no usable link between {u} and {v}")
            out.append(max(cands, key=lambda ls: ls.capacity(self.horizon_s)))
        return out
