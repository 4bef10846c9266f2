"""Key relay over a virtual link A..C through trusted node B (real nodes, mutual TLS)."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid

import pytest
from lkmsnet import LONG_BLOB, Net

from generated.proto.sdqkd import etsi004_pb2 as pb
from generated.proto.sdqkd import kms_pb2
from runtime.lkms.keys import LinkKey
from runtime.lkms.relay import relay_tag


def settle(net: Net) -> None:
    """Wait until the relay source has filled the virtual pool and both ends agree."""
    v = net.links[frozenset(("A", "C"))]

    async def wait() -> None:
        a, c = net.nodes["A"], net.nodes["C"]
        while True:
            sa, sc = a.store.pool_stats(v), c.store.pool_stats(v)
            if sa and sc and sa.available_keys >= a.limits.relay_target_keys and sa == sc:
                return
            await asyncio.sleep(0.01)

    net.run(wait(), timeout=20)


def test_relayed_keys_via_014_and_004(net3: Net, caplog: pytest.LogCaptureFixture) -> None:
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            delivered = _exchange(net3)
    finally:
        root.setLevel(old)
    text = "\n".join(r.getMessage() + " " + repr(r.args) for r in caplog.records)
    assert caplog.records and not LONG_BLOB.search(text)
    for raw in delivered:
        assert raw.hex() not in text and base64.b64encode(raw).decode() not in text


def _exchange(net3: Net) -> list[bytes]:
    """Keys over the virtual link both ways with ETSI 014 and with ETSI 004; the key bytes."""
    a, c = net3.client("a"), net3.client("c")
    r = a.post(net3.url("A") + "/c/enc_keys", json={"number": 40, "size": 512})  # more than the fill level
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    r2 = c.post(net3.url("C") + "/a/dec_keys", json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert r2.status_code == 200 and r2.json()["keys"] == keys
    # The far end may be the master too.
    settle(net3)
    r = c.get(net3.url("C") + "/a/enc_keys")
    assert r.status_code == 200
    r2 = a.get(net3.url("A") + "/c/dec_keys", params={"key_ID": r.json()["keys"][0]["key_ID"]})
    assert r2.json() == r.json()
    # ETSI 004 over the virtual link.
    ka, kc = net3.kd("A", "a"), net3.kd("C", "c")
    o = ka.OpenConnect(pb.OpenConnectRequest(source="a", destination="c"))
    assert o.status == pb.Status.PEER_NOT_CONNECTED
    assert kc.OpenConnect(pb.OpenConnectRequest(source="c", destination="a", key_stream_id=o.key_stream_id)
                          ).status == pb.Status.SUCCESSFUL
    ga = ka.GetKey(pb.GetKeyRequest(key_stream_id=o.key_stream_id))
    gc = kc.GetKey(pb.GetKeyRequest(key_stream_id=o.key_stream_id))
    assert ga.status == gc.status == pb.Status.SUCCESSFUL and ga.key_buffer == gc.key_buffer
    ka.Close(pb.CloseRequest(key_stream_id=o.key_stream_id))
    return [base64.b64decode(k["key"]) for k in keys + r.json()["keys"]] + [ga.key_buffer]


def test_pools_stay_consistent_and_pads_are_used_once(net3: Net) -> None:
    settle(net3)
    ab, bc = net3.links[frozenset(("A", "B"))], net3.links[frozenset(("B", "C"))]
    v = net3.links[frozenset(("A", "C"))]
    assert net3.states("A", ab) == net3.states("B", ab)
    assert net3.states("B", bc) == net3.states("C", bc)
    assert net3.states("A", v) == net3.states("C", v)
    # Two hop keys per relayed key and hop, erased at both ends; none of them is in the virtual pool.
    added = net3.nodes["A"].store.pool_stats(v).added_keys  # type: ignore[union-attr]
    for q, x, y in ((ab, "A", "B"), (bc, "B", "C")):
        sx, sy = net3.nodes[x].store.pool_stats(q), net3.nodes[y].store.pool_stats(q)
        assert sx is not None and sy is not None
        assert sx.added_keys - sx.available_keys == 2 * added == sy.added_keys - sy.available_keys
    assert not set(net3.states("A", v)) & (set(net3.states("A", ab)) | set(net3.states("B", bc)))
    assert net3.nodes["B"].store.pool_stats(v) is None  # the trusted node holds no virtual pool


def _forged(net: Net, virt: str, hop: str, path: list[str], pads: list[LinkKey], good_mac: bool,
            index: int = 0) -> kms_pb2.RelayRequest:
    req = kms_pb2.RelayRequest(relay_id=str(uuid.uuid4()), virt_qkdl_id=virt, key_id=str(uuid.uuid4()), size=256,
                               hop_qkdl_id=hop, hop_key_id=pads[0].key_id, ciphertext=bytes(32),
                               mac_key_id=pads[1].key_id, path=path, hop_index=index)
    req.mac = relay_tag(pads[1].material if good_mac else bytes(32), req)
    return req


def test_relay_authentication_and_path_checks(net3: Net) -> None:
    settle(net3)
    ab, v = net3.links[frozenset(("A", "B"))], net3.links[frozenset(("A", "C"))]
    ids = net3.ids
    path = [ids["A"], ids["B"], ids["C"]]
    a = net3.nodes["A"]
    # Act as node A with two keys A really shares with B (taken out of A's pool, as A would).
    pads = net3.run(a.store.take_next(ab, 2, from_back=a.core.from_back(a.registry.links[ab])))
    to_b = net3.keysync("B", as_node="A")
    r = to_b.Relay(_forged(net3, v, ab, path, pads, good_mac=False))
    assert (r.ok, r.reason) == (False, "authentication failed")
    # The pads were consumed by that attempt: they cannot be replayed.
    r = to_b.Relay(_forged(net3, v, ab, path, pads, good_mac=True))
    assert (r.ok, r.reason) == (False, "hop keys not available")
    # Another node cannot pose as A, and a path the virtual link does not follow is refused.
    pads2 = net3.run(a.store.take_next(ab, 2, from_back=True))
    r = net3.keysync("B", as_node="C").Relay(_forged(net3, v, ab, path, pads2, good_mac=True))
    assert (r.ok, r.reason) == (False, "caller is not the previous hop")
    r = to_b.Relay(_forged(net3, v, ab, [ids["A"], ids["B"], ids["A"]], pads2, good_mac=True))
    assert not r.ok and "match" in r.reason
    # The refused requests touched nothing: these pads are still at B; drop them there too.
    assert net3.run(net3.nodes["B"].store.take_keys(ab, [p.key_id for p in pads2])) is not None
    assert net3.states("A", ab) == net3.states("B", ab)
