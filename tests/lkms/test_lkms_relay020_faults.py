"""The relay over ETSI 020 under faults (A -- B -- C, virtual link A..C): pads are consumed only
when both ends of a hop agree (a refused or lost hop never leaves the two ends with different
pools), an ack that never comes is resolved with void, a trusted node killed mid-transfer is
reconciled after its restart, and in the end both ends of every link hold the same keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lkmsnet import LoopThread, Net, Pki

from sdqkd.lkms.core import Limits
from sdqkd.lkms.node import Lkms
from sdqkd.lkms.relay import RelayError
from sdqkd.lkms.store_api import KeyState


def make_net(lt: LoopThread, tpki: Pki, tmp: Path, **limits: Any) -> Net:
    net = Net(lt, tpki, tmp, {"A": ["a"], "B": [], "C": ["c"]},
              limits=Limits(relay_target_keys=0, ack_timeout_s=1.0, rpc_timeout_s=2.0, **limits))
    net.phys("A", "B")
    net.phys("B", "C")
    net.feed("A", "B", 300)
    net.feed("B", "C", 300)
    v = net.virt(["A", "B", "C"])
    net.links[frozenset(("A", "C"))] = v
    net.app("appv", ("a", "A"), [("c", "C")], v)
    return net


@pytest.fixture
def net(lt: LoopThread, tpki: Pki, tmp_path: Path) -> Iterator[Net]:
    n = make_net(lt, tpki, tmp_path)
    yield n
    n.close()


def relay(net: Net, n: int) -> list[str]:
    a = net.nodes["A"]
    return net.run(a.relay.relay_batch(a.registry.links[net.links[frozenset(("A", "C"))]], n))  # type: ignore[no-any-return]


def agree(net: Net) -> None:
    ab, bc, v = (net.links[frozenset(p)] for p in (("A", "B"), ("B", "C"), ("A", "C")))
    assert net.states("A", ab) == net.states("B", ab)
    assert net.states("B", bc) == net.states("C", bc)
    assert net.states("A", v) == net.states("C", v)


def exchange(net: Net) -> None:
    r = net.client("a").post(net.url("A") + "/c/enc_keys", json={"number": 3})
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    r2 = net.client("c").post(net.url("C") + "/a/dec_keys", json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert r2.status_code == 200 and r2.json()["keys"] == keys


def test_async_relay_keys_equal_at_both_ends(lt: LoopThread, tpki: Pki, tmp_path: Path) -> None:
    net = make_net(lt, tpki, tmp_path, relay_020_mode="async")
    try:
        assert len(relay(net, 20)) == 20
        agree(net)
        exchange(net)
        agree(net)
    finally:
        net.close()


def test_refused_hop_puts_the_pads_back(net: Net) -> None:
    """The defect of the KeySync relay: pads were erased before the send, so a refused (or lost)
    hop left the sender short of keys its peer still had. Here the refusal puts them back."""
    ab, v = net.links[frozenset(("A", "B"))], net.links[frozenset(("A", "C"))]
    before = net.states("A", ab)
    net.run(net.nodes["B"].remove_link(v, erase=False))  # B no longer relays for this link
    with pytest.raises(Exception, match="refused|not relayed"):
        relay(net, 4)
    assert net.states("A", ab) == before == net.states("B", ab)  # nothing consumed, nothing lost
    assert not net.states("A", v) and not net.states("C", v)


def test_lost_acks_are_resolved_by_void(lt: LoopThread, tpki: Pki, tmp_path: Path) -> None:
    net = make_net(lt, tpki, tmp_path, relay_020_mode="async")
    try:
        c = net.nodes["C"]

        async def lost(*_: Any) -> None:  # fault injection: C's acks never leave C
            return None

        c.kms020.send_acks = lost  # type: ignore[method-assign]
        with pytest.raises(RelayError):  # nothing confirmed: the source voided the keys along the path ...
            relay(net, 5)
        v = net.links[frozenset(("A", "C"))]
        assert not net.states("C", v)  # ... and the far end erased its copies
        agree(net)
    finally:
        net.close()


def test_trusted_node_killed_mid_transfer_is_reconciled(net: Net, tmp_path: Path) -> None:
    ab, v = net.links[frozenset(("A", "B"))], net.links[frozenset(("A", "C"))]
    assert len(relay(net, 2)) == 2  # the path works (and A knows where B serves ETSI 020)
    b = net.nodes["B"]
    addrs = dict(b.addresses)
    net.run(b.stop())  # B dies: A's hop gets no answer at all
    with pytest.raises(Exception, match="outcome unknown"):
        relay(net, 6)
    states = net.states("A", ab)
    reserved = [k for k, s in states.items() if s == KeyState.RESERVED_OUT]
    assert len(reserved) == 7  # 6 pads and a MAC key: set aside, not erased, while the outcome is unknown
    # B comes back on the same addresses with its store; the agent installs its links again.
    nb = Lkms(b.node_id, tmp_path / "B", b.tls, saes=[], etsi014_listen=addrs["etsi014"],
              etsi004_listen=addrs["etsi004"], keysync_listen=addrs["keysync"], etsi020_listen=addrs["etsi020"],
              limits=b.limits)
    net.nodes["B"] = nb
    net.run(nb.start())
    a, c = net.nodes["A"], net.nodes["C"]
    bc = net.links[frozenset(("B", "C"))]
    net.run(nb.set_link(ab, a.node_id, a.addresses["keysync"]))
    net.run(nb.set_link(bc, c.node_id, c.addresses["keysync"]))
    net.run(nb.set_link(v, c.node_id, c.addresses["keysync"], kind="VIRT", prev_hop=a.node_id, next_hops=[c.node_id]))

    async def settled() -> None:
        while any(s == KeyState.RESERVED_OUT for s in (await a.store.key_states(ab)).values()):
            await asyncio.sleep(0.05)

    net.run(settled(), timeout=30)
    agree(net)  # the resent request went through: pads gone at both ends, the keys at A and C
    assert len(net.states("A", v)) == 8
    exchange(net)
    agree(net)


def test_replayed_relay_body_delivers_nothing_twice(net: Net) -> None:
    from test_lkms_relay import _forged, _post

    ab, v = net.links[frozenset(("A", "B"))], net.links[frozenset(("A", "C"))]
    a = net.nodes["A"]
    ids = net.ids
    pads = net.run(a.store.take_next(ab, 2, from_back=a.core.from_back(a.registry.links[ab])))
    body = _forged(net, v, ab, [ids["A"], ids["B"], ids["C"]], pads, good_mac=True)
    first = _post(net, "B", "A", body)
    assert first == (200, {"status": "success"})
    stored = net.states("C", v)
    assert len(stored) == 1
    for _ in range(3):
        assert _post(net, "B", "A", body) == first
    assert net.states("C", v) == stored
    key_id = body["keys"][0]["key_id"]
    assert list(stored) == [key_id]


def test_a_repeated_void_at_the_far_end_answers_voided_again(net: Net) -> None:
    """A key the far end voided stays voided for a retried void; it answered `failed` ("delivered,
    the source keeps it"), so a source retrying a void whose answer it lost kept a key the far
    end had erased."""
    from sdqkd.lkms.etsi020_schema import VoidContainer

    v = net.links[frozenset(("A", "C"))]
    ids = relay(net, 3)
    c = net.nodes["C"]
    virt = c.registry.links[v]
    req = VoidContainer(tuple(ids), "a", ("c",), None, {})

    def void(keys: list[str]) -> dict[str, list[str]]:
        acks = net.run(c.relay._void_here(virt, keys, req))
        return {a.ack_status: sorted(a.key_ids) for a in acks}

    assert void(ids[1:]) == {"voided": sorted(ids[1:])}
    assert void(ids[1:]) == {"voided": sorted(ids[1:])}  # the same answer again
    assert void(ids) == {"voided": sorted(ids)}  # ids[0] voided now, the others again
    net.run(net.nodes["A"].store.take_keys(v, ids))  # the source drops them, as its void would
    agree(net)
