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
