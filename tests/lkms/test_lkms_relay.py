"""Key relay over a virtual link A..C through trusted node B, hop by hop as ETSI GS QKD 020
ext_keys (real nodes, mutual TLS)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import pytest
from lkmsnet import LONG_BLOB, Net, RenderedLogs

from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb
from sdqkd.lkms.etsi020_client import Etsi020Client, PeerKms
from sdqkd.lkms.etsi020_schema import ext_key_container
from sdqkd.lkms.keys import LinkKey
from sdqkd.lkms.relay import hop_tag


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


def test_relayed_keys_via_014_and_004(net3: Net) -> None:
    with RenderedLogs() as logs:
        delivered = _exchange(net3)
    text = logs.text
    assert logs.lines and not LONG_BLOB.search(text)
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
    # One pad per relayed key and one MAC key per request, erased at both ends of each hop; none
    # of them is in the virtual pool.
    added = net3.nodes["A"].store.pool_stats(v).added_keys  # type: ignore[union-attr]
    for q, x, y in ((ab, "A", "B"), (bc, "B", "C")):
        sx, sy = net3.nodes[x].store.pool_stats(q), net3.nodes[y].store.pool_stats(q)
        assert sx is not None and sy is not None
        used = sx.added_keys - sx.available_keys
        assert used == sy.added_keys - sy.available_keys and added < used <= 2 * added
    assert not set(net3.states("A", v)) & (set(net3.states("A", ab)) | set(net3.states("B", bc)))
    assert net3.nodes["B"].store.pool_stats(v) is None  # the trusted node holds no virtual pool


def _forged(net: Net, virt: str, hop: str, path: list[str], pads: list[LinkKey], good_mac: bool,
            relay_id: str | None = None, index: int = 0) -> dict[str, Any]:
    h: dict[str, Any] = {"relay_id": relay_id or str(uuid.uuid4()), "virt_qkdl_id": virt, "path": path,
                         "hop_index": index, "hop_qkdl_id": hop, "pad_key_ids": [[pads[0].key_id]],
                         "mac_key_ids": [pads[1].key_id]}
    body = ext_key_container([(str(uuid.uuid4()), bytes(32))], "a", ["c"], None, {"sdqkd_hop": h})
    h["tag"] = hop_tag(pads[1].material if good_mac else bytes(32), body)
    return body


def _post(net: Net, to: str, as_node: str, body: dict[str, Any]) -> tuple[int, Any]:
    files = net.pki.node(net.ids[as_node])

    async def go() -> tuple[int, Any]:
        c = Etsi020Client(net.ids[as_node], str(files.cert), str(files.key), str(files.ca))
        try:
            peer = PeerKms(f"https://{net.nodes[to].addresses['etsi020']}", net.ids[to])
            return await c.post(peer, "ext_keys", body)
        finally:
            await c.close()

    return net.run(go())  # type: ignore[no-any-return]


def _detail(body: Any, key: str) -> Any:
    for d in body.get("details", []):
        if key in d:
            return d[key]
    return None


def test_relay_authentication_and_path_checks(net3: Net) -> None:
    settle(net3)
    ab, v = net3.links[frozenset(("A", "B"))], net3.links[frozenset(("A", "C"))]
    ids = net3.ids
    path = [ids["A"], ids["B"], ids["C"]]
    a = net3.nodes["A"]
    # Act as node A with two keys A really shares with B (taken out of A's pool, as A would).
    pads = net3.run(a.store.take_next(ab, 2, from_back=a.core.from_back(a.registry.links[ab])))
    forged = _forged(net3, v, ab, path, pads, good_mac=False)
    st, r = _post(net3, "B", "A", forged)
    assert st == 400 and _detail(r, "sdqkd_authentication_failed") and _detail(r, "sdqkd_hop_pads") == "consumed"
    # The same body again gets the same answer (nothing is processed twice) ...
    assert _post(net3, "B", "A", forged) == (st, r)
    # ... and the pads were consumed by that attempt: a correctly tagged request cannot reuse them.
    st, r = _post(net3, "B", "A", _forged(net3, v, ab, path, pads, good_mac=True))
    assert st == 400 and r["message"] == "insufficient key material"
    assert _detail(r, "sdqkd_hop_pads") == "untouched"
    assert sorted(_detail(r, "sdqkd_unknown_pad_ids")) == sorted(p.key_id for p in pads)
    # Another node cannot pose as A, and a path the virtual link does not follow is refused.
    pads2 = net3.run(a.store.take_next(ab, 2, from_back=True))
    st, r = _post(net3, "B", "C", _forged(net3, v, ab, path, pads2, good_mac=True))
    assert st == 400 and _detail(r, "invalid_routing") == "caller is not the previous hop"
    st, r = _post(net3, "B", "A", _forged(net3, v, ab, [ids["A"], ids["B"], ids["A"]], pads2, good_mac=True))
    assert st == 400 and "match" in _detail(r, "invalid_routing")
    # The refused requests touched nothing: these pads are still at B; drop them there too.
    assert net3.run(net3.nodes["B"].store.take_keys(ab, [p.key_id for p in pads2])) is not None
    assert net3.states("A", ab) == net3.states("B", ab)


def test_a_node_finds_another_nodes_keysync_along_a_path(net3: Net) -> None:
    """KeySync Describe with node_id/via (locate.py): A has no fibre to C and asks B, which knows
    C from its physical link; a node nobody on the path knows is named in the refusal."""
    from sdqkd.lkms.locate import LocateError

    a, b, c = (net3.nodes[n] for n in "ABC")
    assert net3.run(a.locate(c.node_id, [b.node_id, c.node_id])) == c.addresses["keysync"]
    assert net3.run(a.locate(b.node_id, [])) == b.addresses["keysync"]  # a neighbour: no question
    stranger = str(uuid.uuid4())
    with pytest.raises(LocateError, match=f"node {b.node_id} has no fibre to node {stranger}"):
        net3.run(a.locate(stranger, [b.node_id, stranger]))
    with pytest.raises(LocateError, match=f"node {a.node_id} has no fibre to node {c.node_id} and no path"):
        net3.run(a.locate(c.node_id, []))
