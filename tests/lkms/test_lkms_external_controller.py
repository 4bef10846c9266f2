"""An external (other vendor's) KMS in a whole in-process network: the topology names it, the
controller treats it as a link of its gateway node with the configured rate and registers the
application there over gNMI; the gateway's LKMS (configured with the peer's URL, CA and
identity) hands SAE a1 keys that the peer's SAE receives through ETSI 020. SAE b1 of the other
node reaches the peer over a relay path B -> A that leaves at A (VIRT link with exit-peer,
installed over gNMI): its keys too arrive at the peer's SAE. On a ring, such a path is moved when
one of its links is disabled, and the keys then take the new path to the peer."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from lkmsnet import Pki
from peer020 import PeerKms as VendorKms

from sdqkd.controller.external import parse_external_peers
from sdqkd.controller.topology import TopologyError, parse
from sdqkd.harness.inprocess import start_network
from sdqkd.lkms.etsi020_client import PeerKms
from sdqkd.lkms.external import ExternalPeer
from sdqkd.lkms.tlsctx import https_client_context
from sdqkd.pki import TlsFiles

TOPO: dict[str, Any] = {
    "nodes": [{"name": "A"}, {"name": "B"}],
    "links": [{"a": "A", "b": "B", "km": 10}],
    "saes": [{"name": "a1", "node": "A"}, {"name": "b1", "node": "B"}],
    "external_peers": [{"name": "vendorx", "node": "A", "saes": ["bx1"], "rate_bps": 5000}],
}


def test_topology_checks_external_peers() -> None:
    bad = dict(TOPO, external_peers=[{"name": "v", "node": "Z", "saes": ["bx1"]},
                                     {"name": "w", "node": "A", "saes": ["a1"], "rate_bps": -1, "colour": 1}])
    with pytest.raises(TopologyError) as e:
        parse(bad)
    msg = str(e.value)
    # docs/topology.md: FILE[:LINE]: place: what, list entries named by their `name`
    assert "external_peers[0] (v).node: unknown node 'Z'" in msg
    assert "external_peers[1] (w).colour: unknown key" in msg and "'a1' is already an SAE of node A" in msg
    topo = parse(TOPO)
    (p,) = parse_external_peers(topo, topo.extra["external_peers"], "t")
    assert (p.node, p.saes, p.rate_bps) == ("A", ("bx1",), 5000.0)


def test_controller_routes_to_the_external_kms(tmp_path: Path, tpki: Pki) -> None:
    asyncio.run(asyncio.wait_for(_run(tmp_path), 180))


def _enc(net: Any, ca: str, node: str, sae_name: str, slave: str) -> list[dict[str, Any]]:
    """ETSI 014 enc_keys of `sae_name` for `slave`, retried while the node has no route yet."""
    sae = TlsFiles(Path(ca), *(Path(net.endpoints[node]["saes"][sae_name][k]) for k in ("cert", "key")))
    with httpx.Client(verify=https_client_context(sae), timeout=20) as c:
        for _ in range(100):  # the agent registers the app asynchronously after the Set
            r = c.post(f"https://{net.endpoints[node]['etsi014']}/api/v1/keys/{slave}/enc_keys", json={"number": 2})
            if r.status_code == 200:
                return r.json()["keys"]  # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(r.text)


RING: dict[str, Any] = {
    "nodes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
    "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}, {"a": "C", "b": "A", "km": 10}],
    "saes": [{"name": "c1", "node": "C"}],
    "external_peers": [{"name": "vendorx", "node": "A", "saes": ["bx1"], "rate_bps": 5000}],
}


def test_a_path_to_the_external_kms_moves_when_its_link_is_disabled(tmp_path: Path, tpki: Pki) -> None:
    asyncio.run(asyncio.wait_for(_run_ring(tmp_path), 180))


async def _run_ring(tmp: Path) -> None:
    vpki = Pki.create(tmp / "vendor")
    vf = vpki.node("kms.vendorx.test")
    net = await start_network(parse(RING), tmp / "net")
    try:
        a_rt, ctl = net.nodes["A"], net.controller
        assert a_rt.lkms is not None and ctl is not None
        ca = str(tmp / "net" / "pki" / "ca.pem")
        vendor = VendorKms("kms.vendorx.test", ["bx1"], str(vf.cert), str(vf.key), str(vf.ca), ca, a_rt.cfg.id)
        url = await vendor.start()
        ext = ctl.external.peers[0]
        await a_rt.lkms.add_external_peer(ExternalPeer("vendorx", PeerKms(url, "kms.vendorx.test", str(vpki.ca_path)),
                                                       ("bx1",), ext.qkdl_id))
        route = await ctl.request_keys("c1", "bx1", 1000)
        assert route.path == ["C", "A", "ext:vendorx"] and route.virtual
        for k in await asyncio.to_thread(_enc, net, ca, "C", "c1", "bx1"):
            assert vendor.take(k["key_ID"]) == base64.b64decode(k["key"])

        # C-A disabled at C: the pair's path moves to C-B-A, B now forwards towards the peer
        ca_link = net.topo.link_between("C", "A")
        assert ca_link is not None
        await ctl._client("C").update_qkd_link(ca_link.id, {"qkdl_enable": False})
        for _ in range(300):
            if ctl.apps[route.app_id].path == ["C", "B", "A", "ext:vendorx"]:
                break
            await asyncio.sleep(0.1)
        assert ctl.apps[route.app_id].path == ["C", "B", "A", "ext:vendorx"], ctl.apps[route.app_id].path
        seen = ctl.nodes["C"].links[ca_link.id]  # what C says of the disabled link (ETSI 015)
        assert (seen["qkdl_status"], seen["skr"], seen["eskr"]) == ("etsi-qkd-node-types:OFF", 0, 0)
        # the link table (net status) says it is disabled, and where; the moved pair's path is up
        row = next(r for r in ctl.link_table() if r["qkdl_id"] == ca_link.id)
        assert (row["up"], row["disabled_at"]) == (False, ["C"])
        assert ctl.links_down(ctl.apps[route.app_id]) == [] and ctl.links_down(route) == ["C-A"]
        assert net.nodes["C"].agent.root["qkd_node"]["qkd_links"]["qkd_link"][(ca_link.id,)]["sdqkd-link"][
            "engine-state"]["paused"] is False
        b_rt = net.nodes["B"]
        assert b_rt.lkms is not None and b_rt.lkms.registry.links[route.qkdl_id].exit_peer == "vendorx"
        for k in await asyncio.to_thread(_enc, net, ca, "C", "c1", "bx1"):
            assert vendor.take(k["key_ID"]) == base64.b64decode(k["key"])
            assert vendor.take(k["key_ID"]) is None
        await vendor.stop()
    finally:
        await net.stop()


async def _run(tmp: Path) -> None:
    vpki = Pki.create(tmp / "vendor")
    vf = vpki.node("kms.vendorx.test")
    net = await start_network(parse(TOPO), tmp / "net")  # with key on A-B: the relay B -> A uses it
    try:
        a_rt = net.nodes["A"]
        assert a_rt.lkms is not None
        ca = str(tmp / "net" / "pki" / "ca.pem")
        vendor = VendorKms("kms.vendorx.test", ["bx1"], str(vf.cert), str(vf.key), str(vf.ca), ca, a_rt.cfg.id)
        url = await vendor.start()
        assert net.controller is not None
        ext = net.controller.external.peers[0]
        await a_rt.lkms.add_external_peer(ExternalPeer("vendorx", PeerKms(url, "kms.vendorx.test", str(vpki.ca_path)),
                                                       ("bx1",), ext.qkdl_id))
        # the controller sees the peer as a link of A with the configured rate, and refuses more
        assert net.controller.router.path("A", "ext:vendorx") == ["A", "ext:vendorx"]
        with pytest.raises(RuntimeError, match="takes 5000 bit/s"):
            await net.controller.request_keys("a1", "bx1", 10_000)
        with pytest.raises(ValueError, match="pairs with SAEs of A only"):
            await net.controller.request_keys("bx1", "b1", 0)  # the peer's SAE as master of a relayed pair
        route = await net.controller.request_keys("a1", "bx1", 1000)
        assert route.qkdl_id == ext.qkdl_id and route.path == ["A", "ext:vendorx"]

        def enc(node: str, sae_name: str) -> dict[str, Any]:
            sae = TlsFiles(Path(ca), *(Path(net.endpoints[node]["saes"][sae_name][k]) for k in ("cert", "key")))
            with httpx.Client(verify=https_client_context(sae), timeout=20) as c:
                for _ in range(100):  # the agent registers the app asynchronously after the Set
                    r = c.post(f"https://{net.endpoints[node]['etsi014']}/api/v1/keys/bx1/enc_keys", json={"number": 2})
                    if r.status_code == 200:
                        return r.json()  # type: ignore[no-any-return]
                    import time

                    time.sleep(0.1)
                raise AssertionError(r.text)

        keys = (await asyncio.to_thread(enc, "A", "a1"))["keys"]
        for k in keys:
            assert vendor.take(k["key_ID"]) == base64.b64decode(k["key"])
        # b1 on B: relayed B -> A over ETSI 020 (pads of the A-B link), then A -> the peer
        route = await net.controller.request_keys("b1", "bx1", 1000)
        assert route.path == ["B", "A", "ext:vendorx"] and route.virtual
        b_rt = net.nodes["B"]
        assert b_rt.lkms is not None and b_rt.lkms.registry.links[route.qkdl_id].exit_peer == "vendorx"
        keys = (await asyncio.to_thread(enc, "B", "b1"))["keys"]
        for k in keys:
            assert vendor.take(k["key_ID"]) == base64.b64decode(k["key"])
            assert vendor.take(k["key_ID"]) is None
        await vendor.stop()
    finally:
        await net.stop()
