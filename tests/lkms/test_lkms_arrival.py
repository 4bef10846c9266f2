"""The two ends of a pool store the same key moments apart (a link's transmitter before its
receiver, a relay's far end before its source). A key the picking end chose that is not yet
stored at the other end is waited for (`Limits.arrival_grace_s`), not refused: a refusal made the
picking end erase its copy while the other end stored one that could never be used, and a relay
source that counts its own copies then stopped refilling the far end (an ETSI 004 stream over
the README's three-hop relay starved for its whole timeout)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from lkmsnet import LoopThread, Net, Pki

from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb
from sdqkd.lkms.core import Limits
from sdqkd.lkms.store_api import KeyState

S = pb.Status
T = TypeVar("T")
LATE_S = 0.3  # the other end stores the block this long after the picking end
LIMITS = Limits(arrival_grace_s=3.0)  # (default 1 s) ample against LATE_S on a loaded machine
GRACE_LONG_S = 20.0


def _pair(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory, limits: Limits) -> Net:
    """A -- B with an empty pool; app a1 -> b1."""
    net = Net(lt, tpki, tmp_path_factory.mktemp("arrival"), {"A": ["a1"], "B": ["b1"]}, limits=limits)
    q = net.phys("A", "B")
    net.app("app1", ("a1", "A"), [("b1", "B")], q)
    return net


@pytest.fixture
def net(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = _pair(lt, tpki, tmp_path_factory, LIMITS)
    yield net
    net.close()


@pytest.fixture
def patient(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """The pair with a grace far longer than any answer takes: a refusal that waited shows."""
    net = _pair(lt, tpki, tmp_path_factory, Limits(arrival_grace_s=GRACE_LONG_S))
    yield net
    net.close()


def block_at(net: Net, node: str, material: bytes, block_id: str) -> list[str]:
    q = net.links[frozenset(("A", "B"))]
    return list(net.run(net.nodes[node].add_block(q, material, 256, block_id)))


def while_b_stores_late(net: Net, call: Callable[[], T], nkeys: int = 4) -> tuple[T, list[str]]:
    """A block stored at A, `call` made, the same block stored at B LATE_S later: call's result
    and the block's key IDs."""
    material, bid = os.urandom(nkeys * 32), str(uuid.uuid4())
    ids = block_at(net, "A", material, bid)
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(call)
        time.sleep(LATE_S)
        assert not fut.done()  # it waits for B's copy
        assert block_at(net, "B", material, bid) == ids
        return fut.result(timeout=30), ids


def pools(net: Net) -> tuple[dict[str, Any], dict[str, Any]]:
    q = net.links[frozenset(("A", "B"))]
    return net.states("A", q), net.states("B", q)


def settled(net: Net, timeout: float = 10.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both pools once no transaction is under way (equal, or as they are at the timeout)."""
    end = time.monotonic() + timeout
    while True:
        a, b = pools(net)
        if (a == b and KeyState.RESERVED_OUT not in a.values()) or time.monotonic() > end:
            return a, b
        time.sleep(0.05)


def test_etsi014_reserve_waits_for_the_slave_ends_copy(net: Net) -> None:
    r, ids = while_b_stores_late(net, lambda: net.client("a1").get(net.url("A") + "/b1/enc_keys",
                                                                   params={"number": 2}))
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert {k["key_ID"] for k in keys} <= set(ids)
    back = net.client("b1").post(net.url("B") + "/a1/dec_keys", json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert back.status_code == 200 and back.json()["keys"] == keys
    a, b = pools(net)
    assert a == b and len(a) == 2  # the two keys not delivered, at both ends: nothing erased at one end only


def test_etsi014_reserve_refused_for_busy_and_unknown_keys_waits_for_the_unknown(net: Net) -> None:
    """One key busy at B (reserved there for another transaction), four more stored at B late:
    A's Reserve of all five is refused for the busy one, but only after B has waited for the
    other four, so A keeps them (the master erases the keys named unknown, whatever else it is
    told; before, this mixed refusal was answered at once and A lost four keys B then stored)."""
    q = net.links[frozenset(("A", "B"))]
    material, bid = os.urandom(32), str(uuid.uuid4())
    (busy,) = block_at(net, "A", material, bid)
    assert block_at(net, "B", material, bid) == [busy]
    (got,) = net.run(net.nodes["B"].store.reserve_out(q, "other-txn", [1], 256, False))
    assert got is not None and [k.key_id for k in got] == [busy]
    r, late = while_b_stores_late(net, lambda: net.client("a1").get(net.url("A") + "/b1/enc_keys",
                                                                    params={"number": 5}))
    assert r.status_code == 503, r.text  # 4 keys left once the busy one is set aside
    a, b = settled(net)
    assert {k: a[k] for k in late} == {k: b[k] for k in late} == dict.fromkeys(late, KeyState.AVAILABLE)
    assert (a[busy], b[busy]) == (KeyState.AVAILABLE, KeyState.RESERVED_OUT)


def erased_at_b(net: Net, nkeys: int) -> list[str]:
    """A block stored at both ends, then its keys erased at B only (as reconciliation or a crash
    recovery may leave them): B held them and never will again."""
    q = net.links[frozenset(("A", "B"))]
    material, bid = os.urandom(nkeys * 32), str(uuid.uuid4())
    ids = block_at(net, "A", material, bid)
    assert block_at(net, "B", material, bid) == ids
    assert net.run(net.nodes["B"].store.erase_available(q, ids)) == nkeys
    return ids


def test_a_key_the_slave_held_and_lost_is_refused_without_the_grace(patient: Net) -> None:
    net = patient
    ids = erased_at_b(net, 2)
    t0 = time.monotonic()
    r = net.client("a1").get(net.url("A") + "/b1/enc_keys", params={"number": 1})
    assert r.status_code == 503, r.text
    assert time.monotonic() - t0 < GRACE_LONG_S / 2  # answered at once, not after the grace
    a, b = pools(net)
    assert a == b == {}  # A erased the keys B refused: the pools agree
    assert not set(ids) & set(a)


def test_a_refusal_for_lost_keys_waits_for_the_late_ones_and_names_only_the_lost(patient: Net) -> None:
    """One key B lost, one key B stores late: B waits for the late one, then refuses naming only
    the lost one, so A keeps the late key (a refusal naming both would make A erase it)."""
    net = patient
    lost = erased_at_b(net, 1)
    r, late = while_b_stores_late(net, lambda: net.client("a1").get(net.url("A") + "/b1/enc_keys",
                                                                    params={"number": 2}), nkeys=1)
    assert r.status_code == 503, r.text  # one key left once the lost one is erased
    a, b = settled(net)
    assert a == b == dict.fromkeys(late, KeyState.AVAILABLE)
    assert not set(lost) & set(a)


def test_etsi004_assignment_waits_for_the_peers_copy(net: Net) -> None:
    ka, kb = net.kd("A", "a1"), net.kd("B", "b1")
    r = ka.OpenConnect(pb.OpenConnectRequest(source="a1", destination="b1", qos=pb.QoS(timeout=5000)))
    ksid = r.key_stream_id
    assert kb.OpenConnect(pb.OpenConnectRequest(source="b1", destination="a1", key_stream_id=ksid)).status == S.SUCCESSFUL
    got, _ids = while_b_stores_late(net, lambda: ka.GetKey(pb.GetKeyRequest(key_stream_id=ksid)))
    assert got.status == S.SUCCESSFUL and got.index == 0
    peer = kb.GetKey(pb.GetKeyRequest(key_stream_id=ksid))
    assert peer.status == S.SUCCESSFUL and peer.key_buffer == got.key_buffer
    # chunks assigned ahead (in the background) are taken at both ends, the rest is at both
    a, b = settled(net)
    assert a == b and set(a.values()) == {KeyState.AVAILABLE}
    ka.Close(pb.CloseRequest(key_stream_id=ksid))


def test_a_key_that_never_arrives_is_still_refused(net: Net) -> None:
    """Only at A: the grace passes, B refuses the key as unknown, A erases it (it can never be
    used) and has nothing else to give."""
    block_at(net, "A", os.urandom(32), str(uuid.uuid4()))
    t0 = time.monotonic()
    r = net.client("a1").get(net.url("A") + "/b1/enc_keys")
    assert r.status_code == 503, r.text
    assert time.monotonic() - t0 >= net.nodes["B"].limits.arrival_grace_s
    a, b = pools(net)
    assert a == b == {}


@pytest.fixture
def chain(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """A -- B -- C, virtual link A..C; the A-B pool empty, B-C fed."""
    net = Net(lt, tpki, tmp_path_factory.mktemp("arrival3"), {"A": ["a"], "B": [], "C": ["c"]}, limits=LIMITS)
    net.phys("A", "B")
    net.phys("B", "C")
    net.feed("B", "C", 400)
    v = net.virt(["A", "B", "C"])
    net.links[frozenset(("A", "C"))] = v
    yield net
    net.close()


def test_relay_hop_waits_for_its_pads_at_the_receiver(chain: Net) -> None:
    """The relay source's pads are a block A stored just before B: the hop waits for B's copy
    instead of refusing, and both pools of the hop stay equal."""
    ab, v = chain.links[frozenset(("A", "B"))], chain.links[frozenset(("A", "C"))]
    material, bid = os.urandom(200 * 32), str(uuid.uuid4())
    ids = chain.run(chain.nodes["A"].add_block(ab, material, 256, bid))  # wakes the source's filler
    time.sleep(LATE_S)
    assert chain.run(chain.nodes["B"].add_block(ab, material, 256, bid)) == ids
    target = chain.nodes["A"].limits.relay_target_keys
    end = time.monotonic() + 20
    while True:
        va, vc = chain.states("A", v), chain.states("C", v)
        hop_a, hop_b = chain.states("A", ab), chain.states("B", ab)
        if (len(va) >= target and va == vc and hop_a == hop_b) or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert len(va) >= target and va == vc  # relayed, over pads that were B's too
    assert hop_a == hop_b and len(hop_a) < 200  # pads used at both ends, none left at B alone
