"""TeraFlowSDN's one-way VIRT links read as one relay path (runtime/restconf/compat_virt.py and
the VIRT part of compat.LinkCompleter), on a 4-node path A-B-C-D: every node, told either
direction, derives the same key association and its part of the one relay direction (from
the lower node ID); a trusted node takes what it cannot tell from the other direction's link."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from sdqkd.restconf.compat import LinkCompleter
from sdqkd.restconf.compat_virt import relay_part, virtual_association
from sdqkd.restconf.errors import RestconfError

# node IDs in order: A is the lowest, so relays go from A; D -> A links are "reversed"
A, B, C, D = (f"{i}0000000-0000-4000-8000-000000000000" for i in range(1, 5))
PATH = [A, B, C, D]
T = "etsi-qkd-node-types:"


def tfs_links(path: list[str]) -> dict[str, list[dict[str, Any]]]:
    """What TFS's service handler tells each node: (source, prev, next) of s->d and d->s."""
    told: dict[str, list[dict[str, Any]]] = {n: [] for n in path}
    for direction in (path, path[::-1]):
        for i, node in enumerate(direction[:-1]):
            told[node].append({"src": direction[0], "prev": direction[i - 1] if i else None,
                               "next": direction[i + 1:]})
    return told


def test_every_node_derives_its_part_of_one_relay_direction():
    want = {A: (None, (B, C, D), D), B: (A, (C, D), D), C: (B, (D,), D), D: (C, (), A)}
    assoc = virtual_association(A, D)
    assert assoc == virtual_association(D, A)
    for node, told in tfs_links(PATH).items():
        for t in told:
            part = relay_part(node, t["src"], t["prev"], t["next"], t["next"][-1], "here")
            assert part.association == assoc and part.ends == (A, D)
            if part.next_hops is None:  # B told D -> A (prev C, next A) cannot tell C .. D from it
                assert (node, t["src"]) == (B, D)
                assert part.prev_hop == want[node][0]
                continue
            assert (part.prev_hop, part.next_hops, part.far) == want[node], (node, t)


@pytest.mark.parametrize("node,source,prev,hops,remote,words", [
    (A, A, None, [], None, "needs virt_next_hop"),
    (A, A, None, [B, B, D], None, "visits a node twice"),
    (A, A, None, [B, D], C, "is not the far end"),
    (A, B, None, [C, D], None, "without virt_prev_hop this node is the source"),
    (C, None, B, [D], None, "qkdl_local/qkdn_id (the source"),
    (A, A, None, [B, A], None, "runs through this node"),
    (A, A, B, [D], None, "names this node itself"),
])
def test_impossible_paths_are_refused(node: str, source: str | None, prev: str | None, hops: list[str],
                                      remote: str | None, words: str):
    with pytest.raises(RestconfError, match=words.replace("(", r"\(")):
        relay_part(node, source, prev, hops, remote, "here")


def _node(me: str, peers: Sequence[str]) -> dict[str, Any]:
    return {"qkd_interfaces": {"qkd_interface": {(str(i),): {"qkdi_id": i, "sdqkd-interface": {
        "peer-node-id": p, "peer-qkdi-id": 1, "classical-endpoint": f"127.0.0.1:{1000 + i}"}}
        for i, p in enumerate(peers, 1)}}}


def _entry(lid: str, src: str, prev: str | None, hops: list[str]) -> dict[str, Any]:
    e: dict[str, Any] = {"qkdl_id": lid, "qkdl_type": f"{T}VIRT", "qkdl_local": {"qkdn_id": src},
                         "qkdl_remote": {"qkdn_id": hops[-1]}, "virt_next_hop": hops}
    if prev:
        e["virt_prev_hop"] = prev
    return e


def test_trusted_node_takes_the_rest_of_the_path_from_the_other_direction():
    """B on A-B-C-D, told D -> A first (prev C, next A): refused until it holds A -> D, then
    completed from it; the far end's address is asked along the path."""
    asked: list[tuple[str, tuple[str, ...]]] = []

    async def locate(node: str, via: Sequence[str]) -> str:
        asked.append((node, tuple(via)))
        return "127.0.0.1:4444"

    async def main() -> None:
        completer = LinkCompleter(B, _node(B, [A, C]), locate)
        backwards = _entry("22222222-0000-4000-8000-000000000000", D, C, [A])
        with pytest.raises(RestconfError, match="cannot tell the path from node " + C):
            await completer.complete(backwards, "here")
        forwards, why = await completer.complete(_entry("11111111-0000-4000-8000-000000000000", A, A, [C, D]),
                                                 "here")
        assert forwards["virt_prev_hop"] == A and forwards["virt_next_hop"] == [C, D]
        assert asked == [(D, (C, D))] and why is not None and "asked along" in why
        done, why = await completer.complete(backwards, "here")
        assert (done["virt_prev_hop"], done["virt_next_hop"]) == (A, [C, D])
        assert done["qkdl_remote"] == {"qkdn_id": D} and why is not None and "from link 1111" in why
        assert done["sdqkd-node-ext:sdqkd-link"] == forwards["sdqkd-node-ext:sdqkd-link"]
        assert len(asked) == 1  # the address came with the other link
        # a hop over no fibre of this node
        with pytest.raises(RestconfError, match=f"the path runs from this node to node {D}, which no interface"):
            await completer.complete(_entry("33333333-0000-4000-8000-000000000000", B, None, [D]), "here")

    asyncio.run(main())
