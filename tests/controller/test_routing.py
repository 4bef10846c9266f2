"""Key-relay path computation: key-rate and key-store aware, skips down links, honours demand."""

from __future__ import annotations

import random

from sdqkd.controller.routing import LinkState, Router


def diamond() -> Router:
    r = Router(horizon_s=60)
    r.add(LinkState("ab", "A", "B", eskr=10_000))
    r.add(LinkState("bd", "B", "D", eskr=10_000))
    r.add(LinkState("ac", "A", "C", eskr=1_000_000))
    r.add(LinkState("cd", "C", "D", eskr=1_000_000))
    return r


def test_prefers_the_richer_path():
    assert diamond().path("A", "D") == ["A", "C", "D"]


def test_stored_key_and_consumption_count():
    r = diamond()
    r.update("ac", consumption=999_990)  # almost all promised to applications
    assert r.path("A", "D") == ["A", "B", "D"]
    r.update("ac", stored_bits=600_000_000)  # but a full store makes up for it
    assert r.path("A", "D") == ["A", "C", "D"]


def test_down_links_and_demand():
    r = diamond()
    r.update("cd", up=False)
    assert r.path("A", "D") == ["A", "B", "D"]
    assert r.path("A", "D", demand_bps=50_000) is None
    assert r.path("A", "Z") is None
    assert [ls.id for ls in r.links_on(["A", "B", "D"])] == ["ab", "bd"]


def test_ten_thousand_node_graph():
    rnd = random.Random(7)
    r = Router()
    n = 10_000
    for i in range(1, n):  # a random tree keeps it connected, plus extra chords
        r.add(LinkState(f"t{i}", f"n{i}", f"n{rnd.randrange(i)}", eskr=rnd.uniform(1e3, 1e6)))
    for i in range(n // 2):
        a, b = rnd.sample(range(n), 2)
        r.add(LinkState(f"c{i}", f"n{a}", f"n{b}", eskr=rnd.uniform(1e3, 1e6)))
    p = r.path("n0", "n9999")
    assert p[0] == "n0" and p[-1] == "n9999" and len(r.links_on(p)) == len(p) - 1


def _one_sided(r: Router, src: str, dst: str, demand: float) -> float | None:
    """The cheapest path's cost by a plain one-sided Dijkstra, to check the router's against."""
    import heapq
    import math

    dist, heap = {src: 0.0}, [(0.0, src)]
    while heap:
        d, u = heapq.heappop(heap)
        if u == dst:
            return d
        if d > dist[u]:
            continue
        for ls in r._adj[u]:
            cap = ls.capacity(r.horizon_s) if ls.up else 0.0
            if cap > 0 and cap >= demand:
                v = ls.b if ls.a == u else ls.a
                if d + 1 / cap < dist.get(v, math.inf):
                    dist[v] = d + 1 / cap
                    heapq.heappush(heap, (d + 1 / cap, v))
    return None


def _hop_cost(r: Router, u: str, v: str, demand: float) -> float:
    caps = [ls.capacity(r.horizon_s) for ls in r._adj[u] if {ls.a, ls.b} == {u, v} and ls.up]
    usable = [c for c in caps if c > 0 and c >= demand]
    assert usable, f"the path crosses {u}-{v}, which cannot carry {demand} bit/s"
    return 1 / max(usable)


def test_searching_from_both_ends_finds_the_cheapest_path():
    """Random networks with parallel links, links down, links without capacity, links of no cost
    (an external peer's, eskr infinite) and demands that cut some links: the path found costs what
    a one-sided search's best costs, and every hop can carry the demand."""
    import math

    for seed in range(300):
        rnd = random.Random(seed)
        n = rnd.randrange(2, 40)
        r = Router(horizon_s=60)
        for i in range(rnd.randrange(n // 2, 3 * n)):
            a, b = rnd.sample(range(n), 2)
            eskr = rnd.choice([0.0, math.inf, rnd.uniform(1e3, 1e6), 1e4])
            r.add(LinkState(f"l{i}", f"n{a}", f"n{b}", up=rnd.random() > 0.15, eskr=eskr,
                            stored_bits=rnd.choice([0.0, rnd.uniform(0, 1e7)])))
        nodes = sorted(r._adj)
        for _ in range(10):
            src, dst = rnd.choice(nodes), rnd.choice(nodes)
            demand = rnd.choice([0.0, 5e3, 2e5])
            want, got = _one_sided(r, src, dst, demand), r.path(src, dst, demand)
            if want is None:
                assert got is None, (seed, src, dst, demand, got)
                continue
            assert got is not None and got[0] == src and got[-1] == dst, (seed, src, dst, got)
            assert len(set(got)) == len(got), f"the path visits a node twice: {got}"
            cost = sum(_hop_cost(r, u, v, demand) for u, v in zip(got, got[1:]))
            assert math.isclose(cost, want, rel_tol=1e-9, abs_tol=1e-15), (seed, src, dst, demand, cost, want)
