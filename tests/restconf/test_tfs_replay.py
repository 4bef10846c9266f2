"""ETSI TeraFlowSDN managing a 3-node sdqkd network over RESTCONF, replayed from its QKD driver's
behaviour (tfsreplay.py): onboarding of every device, the direct-link services QKD1-QKD2 and
QKD2-QKD3 (one qkdl_id per end of each fibre, interface IDs 0 as TFS computes them) ending with
key in both ends' pools, the virtual-link service QKD1-QKD3 (its PHYS duplicates refused and
counted, its two one-way VIRT links read as one relay path through QKD2, ending with equal keys
at both ends over ETSI 014), what cannot be honoured refused and counted, and hostile input
that is refused whole."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tfsreplay import ROOT, TfsDevice, apply_rule, service_links, unkeyed

from sdqkd.harness.inprocess import InProcessNetwork, start_network
from sdqkd.lkms.registry import app_id_for, sae_uri

TOPO = {"nodes": [{"name": n} for n in ("QKD1", "QKD2", "QKD3")],
        "links": [{"a": "QKD1", "b": "QKD2", "km": 10}, {"a": "QKD2", "b": "QKD3", "km": 15}],
        "saes": [{"name": "sae-1", "node": "QKD1"}, {"name": "sae-3", "node": "QKD3"}],
        # as TFS's driver needs it: plain HTTP, no credentials (its link writes carry none)
        "settings": {"restconf": {"tls": "none", "anonymous": True}}}
ENGINE = {"clock_scale": 0.01, "block_sifted_bits": 5e5, "cascade_variant": "original"}
STRICT = {"Accept": "application/yang-data+json"}
OK = {200, 201, 202, 204}  # Tools2.HTTP_OK_CODES


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNetwork]:
    """Three nodes, no sdqkd controller (TFS is the controller), RESTCONF as plain HTTP on loopback."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state = Path(tmp_path_factory.mktemp("tfs-net"))
    network = asyncio.run_coroutine_threadsafe(start_network(
        TOPO, state, engine=ENGINE, controller=False, timeout=60), loop).result(120)
    yield network
    asyncio.run_coroutine_threadsafe(network.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def devices(net: InProcessNetwork) -> Iterator[list[TfsDevice]]:
    devs = [TfsDevice(n, net.addresses[n]["restconf"]) for n in ("QKD1", "QKD2", "QKD3")]
    yield devs
    for d in devs:
        d.close()


def strict_get(dev: TfsDevice, path: str) -> Any:
    r = dev.http.get(path, headers=STRICT)
    assert r.status_code == 200, r.text
    return r.json()


def figures(dev: TfsDevice) -> dict[str, Any]:
    return strict_get(dev, f"{ROOT}/sdqkd-node-ext:sdqkd-restconf")["sdqkd-node-ext:sdqkd-restconf"]


def link_of(dev: TfsDevice, lid: str) -> dict[str, Any]:
    return strict_get(dev, f"{ROOT}/qkd_links/qkd_link={lid}")["etsi-qkd-sdn-node:qkd_link"][0]


def test_onboarding(net: InProcessNetwork, devices: list[TfsDevice]):
    for dev in devices:
        assert dev.connect() == [("qkd_node", {})]  # the unwrapped node: no `qkd_node` member
        dev.onboard()
        assert dev.qkdn_id == net.endpoints[dev.name]["id"]  # qkdn_id at the top of the node answer
        assert "qkd_interfaces" not in dev.config_rules["__node__"]
        assert dev.config_rules["__capabilities__"]["link_stats_support"] is True
    # endpoints named by qkdi_att_point (device = the peer, port = its interface), as TFS's topology expects
    assert devices[0].endpoints == ["QKD2:1"]
    assert devices[1].endpoints == ["QKD1:1", "QKD3:1"]
    assert devices[2].endpoints == ["QKD2:2"]


def test_direct_link_services_produce_key(devices: list[TfsDevice]):
    if "__node__" not in devices[0].config_rules:
        pytest.skip("needs test_onboarding")
    refused_before = [int(figures(d)["refused-compat-requests"]) for d in devices]
    created: list[tuple[int, str]] = []
    # path endpoints as TFS's path computation hands them over: (ingress, egress) per device
    for path in ([(0, "QKD2:1"), (0, "QKD2:1"), (1, "QKD1:1"), (1, "QKD1:1")],
                 [(1, "QKD3:1"), (1, "QKD3:1"), (2, "QKD2:2"), (2, "QKD2:2")]):
        for d, rule in service_links(devices, path):
            assert rule["src_interface_id"] == 0  # TFS's interface lookup misses: it sends 0
            r = apply_rule(devices[d], rule)
            assert r.status_code in OK, r.text
            created.append((d, rule["uuid"]))
    assert [int(figures(d)["refused-compat-requests"]) for d in devices] == refused_before
    # each fibre: two qkdl_ids, one key association, complementary roles
    ends = {}
    for d, lid in created:
        link = link_of(devices[d], lid)
        ext = link["sdqkd-node-ext:sdqkd-link"]
        assert "compat request: interface" in ext["derived-from"]
        ends.setdefault(ext["key-association-id"], []).append((d, lid, link["phys_qkd_role"]))
    assert len(ends) == 2 and all(len(v) == 2 for v in ends.values())
    for pair in ends.values():
        assert {r for _d, _l, r in pair} == {"etsi-qkd-node-types:TRANSMITTER", "etsi-qkd-node-types:RECEIVER"}
    # key flows on both TFS-created links: both ends' pools of each association fill
    deadline = time.monotonic() + 90
    pending = {(d, assoc) for assoc, pair in ends.items() for d, _l, _r in pair}
    while pending and time.monotonic() < deadline:
        for d, assoc in sorted(pending):
            r = devices[d].http.get(f"{ROOT}/sdqkd-node-ext:sdqkd-key-store/pool={assoc}/stored-keys", headers=STRICT)
            if r.status_code == 200 and int(r.json()["sdqkd-node-ext:stored-keys"]) > 0:
                pending.discard((d, assoc))
        time.sleep(0.5)
    assert not pending, f"no key yet at {pending}"
    for pair in ends.values():
        for d, lid, _r in pair:
            link = link_of(devices[d], lid)
            assert link["qkdl_status"] == "etsi-qkd-node-types:ACTIVE"
            assert int(link["sdqkd-node-ext:sdqkd-link"]["engine-state"]["blocks-ok"]) > 0


def test_virtual_link_service_relays_keys_end_to_end(net: InProcessNetwork, devices: list[TfsDevice]):
    """TFS's virtual-link service QKD1-QKD3 through the trusted node QKD2: its PHYS duplicates
    are refused (the fibres carry the direct services' links), its two one-way VIRT links are
    read as one relay path (one key association, relayed from the lower node ID, QKD2 forwarding),
    and an application backed by them gets equal keys at both ends over ETSI 014."""
    if "__node__" not in devices[0].config_rules:
        pytest.skip("needs test_onboarding")
    refused_before = sum(int(figures(d)["refused-compat-requests"]) for d in devices)
    rules = service_links(devices, [(0, "QKD2:1"), (0, "QKD2:1"), (1, "QKD1:1"), (1, "QKD3:1"),
                                    (2, "QKD2:2"), (2, "QKD2:2")])
    statuses = []
    for d, rule in rules:
        r = apply_rule(devices[d], rule)
        statuses.append((d, "virt_next_hops" in rule, r.status_code, r.text))
    phys = [s for s in statuses if not s[1]]
    virt = [s for s in statuses if s[1]]
    # the fibres already carry the direct services' links: TFS's fresh PHYS IDs for them are refused
    assert len(phys) == 4 and all(s[2] == 400 and "already carries link" in s[3] for s in phys), phys
    assert len(virt) == 4 and all(s[2] in OK for s in virt), virt
    assert sum(int(figures(d)["refused-compat-requests"]) for d in devices) == refused_before + 4
    # TFS gives QKD1 and QKD2 the link QKD1->QKD3, QKD2 and QKD3 the link QKD3->QKD1
    src_dst = next(r["uuid"] for d, r in rules if "virt_next_hops" in r and d == 0)
    dst_src = next(r["uuid"] for d, r in rules if "virt_next_hops" in r and d == 2)
    one, two, three = (d.qkdn_id for d in devices)
    low, high = sorted((one, three))
    entries = {(0, src_dst): link_of(devices[0], src_dst), (1, src_dst): link_of(devices[1], src_dst),
               (1, dst_src): link_of(devices[1], dst_src), (2, dst_src): link_of(devices[2], dst_src)}
    assoc = {e["sdqkd-node-ext:sdqkd-link"]["key-association-id"] for e in entries.values()}
    assert len(assoc) == 1, entries  # every node of the path, told either direction, names it alike
    (association,) = assoc
    for (d, _lid), e in entries.items():
        assert e["qkdl_type"] == "etsi-qkd-node-types:VIRT" and e["qkdl_local"]["qkdn_id"] == devices[d].qkdn_id
        assert "compat VIRT request" in e["sdqkd-node-ext:sdqkd-link"]["derived-from"]
    # this node's part of the one relay direction, from the lower node ID
    src_end = entries[(0, src_dst)] if low == one else entries[(2, dst_src)]
    far_end = entries[(2, dst_src)] if low == one else entries[(0, src_dst)]
    assert "virt_prev_hop" not in src_end and src_end["virt_next_hop"] == [two, high]
    assert far_end["virt_prev_hop"] == two and "virt_next_hop" not in far_end
    assert far_end["qkdl_remote"]["qkdn_id"] == low and src_end["qkdl_remote"]["qkdn_id"] == high
    for lid in (src_dst, dst_src):
        middle = entries[(1, lid)]
        assert middle["virt_prev_hop"] == low and middle["virt_next_hop"] == [high]
    # the far ends found each other's KeySync address through QKD2 (TFS does not name them)
    assert f"asked along [{two!r}, {(three if low == one else one)!r}]" in src_end["sdqkd-node-ext:sdqkd-link"][
        "derived-from"].replace('"', "'")
    assert src_end["sdqkd-node-ext:sdqkd-link"]["classical-endpoint"] == net.addresses[
        "QKD3" if low == one else "QKD1"]["peer"]
    # the relay fills both ends' pools of the association
    _wait_pools(devices, [0, 2], association)
    # an application on it (TFS keeps its internal apps to itself: an operator installs them)
    master, slave = "sae-1", "sae-3"
    app_id = app_id_for(master, [slave])
    for d, backing, remote in ((0, src_dst, three), (2, dst_src, one)):
        app = {"app_id": app_id, "app_type": "etsi-qkd-node-types:CLIENT", "server_app_id": sae_uri(master),
               "client_app_id": [sae_uri(slave)], "backing_qkdl_id": [backing],
               "local_qkdn_id": devices[d].qkdn_id, "remote_qkdn_id": remote}
        r = devices[d].http.post(f"{ROOT}/qkd_applications", json={"etsi-qkd-sdn-node:qkd_app": [app]},
                                 headers={**STRICT, "Content-Type": "application/yang-data+json"})
        assert r.status_code == 201, r.text
    enc = _sae_request(net, "QKD1", master, "GET", f"/api/v1/keys/{slave}/enc_keys", params={"number": 3, "size": 256})
    assert enc.status_code == 200, enc.text
    keys = enc.json()["keys"]
    dec = _sae_request(net, "QKD3", slave, "POST", f"/api/v1/keys/{master}/dec_keys",
                       json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert dec.status_code == 200, dec.text
    assert {k["key_ID"]: k["key"] for k in dec.json()["keys"]} == {k["key_ID"]: k["key"] for k in keys}
    assert len({k["key"] for k in keys}) == 3
    # QKD2 holds one LKMS link for both TFS links: it stays until the last of them goes
    trusted = net.nodes["QKD2"].require_lkms().registry.links
    assert trusted[association].kind == "VIRT" and trusted[association].prev_hop == low
    for gone, left in ((dst_src, True), (src_dst, False)):
        r = devices[1].http.delete(f"{ROOT}/qkd_links/qkd_link={gone}", headers=STRICT)
        assert r.status_code == 204, r.text
        assert (association in trusted) is left


def test_virtual_link_tfs_cannot_honour_is_refused(net: InProcessNetwork, devices: list[TfsDevice]):
    """VIRT links a node cannot run are refused whole, with a message naming the reason, and
    counted: a far end no node of the path knows, a second path between the same two ends, a
    hop over no fibre of the node, a trusted node that cannot tell the rest of the path."""
    one, two, three = (d.qkdn_id for d in devices)
    stranger = str(uuid.UUID(int=2**128 - 1))  # above every node ID: QKD2 would relay towards it
    cases = [
        (0, dict(src=one, dst=stranger, virt_next_hops=[two, stranger]),
         f"the key-relay endpoint of node {stranger} is unknown: node {two} has no fibre to node {stranger}"),
        (0, dict(src=one, dst=three, virt_next_hops=[two, stranger, three]), "by another path"),
        (0, dict(src=one, dst=three, virt_next_hops=[three]), f"the path runs from this node to node {three}, which no interface"),
        (1, dict(src=stranger, dst=one, virt_prev_hop=three, virt_next_hops=[one]),
         f"cannot tell the path from node {three} on to the link's source {stranger}"),
    ]
    for d, link, words in cases:
        dev = devices[d]
        before, tree = _count(dev), strict_get(dev, f"{ROOT}/qkd_links")
        r = dev.create_link(str(uuid.uuid4()), link.pop("src"), 0, link.pop("dst"), 0, **link)
        assert r.status_code == 400 and words in r.text, r.text
        assert _count(dev) == before + 1 and words in figures(dev)["last-refusal"]
        assert strict_get(dev, f"{ROOT}/qkd_links") == tree  # nothing stored


def _wait_pools(devices: list[TfsDevice], which: list[int], association: str, timeout: float = 90) -> None:
    missing = unkeyed([devices[d] for d in which], association, timeout)
    assert not missing, f"no relayed key yet at {missing}"


def _sae_request(net: InProcessNetwork, node: str, sae: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """An ETSI 014 request of SAE `sae` (its own certificate) to its node."""
    e = net.endpoints[node]
    files = e["saes"][sae]
    ctx = ssl.create_default_context(cafile=e["ca"])
    ctx.load_cert_chain(files["cert"], files["key"])
    with httpx.Client(verify=ctx, base_url=f"https://{e['etsi014']}", timeout=30) as c:
        return c.request(method, path, **kw)


def _count(dev: TfsDevice) -> int:
    return int(figures(dev)["refused-compat-requests"])


def test_nothing_tfs_sends_crashes_or_half_applies(net: InProcessNetwork, devices: list[TfsDevice]):
    dev = devices[0]
    me = net.endpoints["QKD1"]["id"]
    good = {"qkdl_id": str(uuid.uuid4()), "qkdl_type": "etsi-qkd-node-types:VIRT",
            "qkdl_local": {"qkdn_id": me, "qkdi_id": None}, "qkdl_remote": {"qkdn_id": None, "qkdi_id": None},
            "virt_prev_hop": None, "virt_next_hop": [net.endpoints["QKD2"]["id"]], "virt_bandwidth": None}
    bad_id = dict(good, qkdl_id="not-a-uuid")
    hostile: list[tuple[str, str, Any]] = [
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": {"qkd_link": [good, bad_id]}}),  # second entry bad: none stored
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": {"qkd_link": [{"qkdl_id": None}]}}),
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": "x"}),
        ("POST", f"{ROOT}/qkd_links/", []),
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": {"qkd_link": [dict(good, qkdl_type="etsi-qkd-node-types:PHYS",
                                                                        virt_next_hop=None,
                                                                        qkdl_remote={"qkdn_id": str(uuid.uuid4())})]}}),
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": {"qkd_link": [dict(good, virt_next_hop=[me])]}}),
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": {"qkd_link": [dict(good, qkdl_type="etsi-qkd-node-types:PHYS",
                                                                        qkdl_local={"qkdn_id": 7})]}}),
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": {"qkd_link": [dict(good, qkdl_type="etsi-qkd-node-types:PHYS",
                                                                        qkdl_local=7)]}}),
        ("POST", f"{ROOT}/qkd_applications/", {"qkd_applications": {"qkd_app": [{"app_id": str(uuid.uuid4())}]}}),
        ("PUT", f"{ROOT}/qkdn_id", {"qkdn_id": str(uuid.uuid4())}),
        ("PATCH", f"{ROOT}/qkd_links/qkd_link={uuid.uuid4()}/", {"qkdl_enable": False}),
        ("DELETE", f"{ROOT}/", None),
        ("POST", f"{ROOT}/qkd_links/qkd_link=../../", {"x": 1}),
        ("POST", f"{ROOT}/nonsense/", {"x": 1}),
        ("POST", f"{ROOT}/qkd_links/", {"qkd_links": {"qkd_link": [{"a": {"b": {"c": [None] * 10}}}]}}),
    ]
    before_tree = strict_get(dev, f"{ROOT}?content=config")
    count = _count(dev)
    for method, path, body in hostile:
        r = dev.http.request(method, path, json=body) if body is not None else dev.http.request(method, path)
        assert 400 <= r.status_code < 500, (method, path, body, r.status_code, r.text)
        assert "ietf-restconf:errors" in r.json()
        count += 1
        assert _count(dev) == count, (method, path)
    raw = dev.http.post(f"{ROOT}/qkd_links/", content=b"{\"qkd_links\": ", headers={"Content-Type": "application/json"})
    assert raw.status_code == 400
    huge = dev.http.post(f"{ROOT}/qkd_links/", content=json.dumps({"x": "y" * (5 * 1024 * 1024)}).encode(),
                         headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    assert strict_get(dev, f"{ROOT}?content=config") == before_tree  # nothing half-applied
    assert dev.http.get(f"{ROOT}/qkdn_capabilities/").status_code == 200  # still serving
    last = figures(dev)["last-refusal"]
    assert last.startswith("POST") and ("413" in last or "400" in last)


def test_freeconf_style_patches(devices: list[TfsDevice]):
    """The edits TFS's mock-node README shows: PATCH at the module root and at the node."""
    dev = devices[2]
    r = dev.http.patch("/restconf/data/etsi-qkd-sdn-node:", json={"qkd_node": {"qkdn_location_id": "new-loc"}})
    assert r.status_code == 204, r.text
    assert dev.http.get("/restconf/data/etsi-qkd-sdn-node:").json()["qkd_node"]["qkdn_location_id"] == "new-loc"
    r = dev.http.patch(ROOT, json={"qkdn_location_id": "new-loc-2"})
    assert r.status_code == 204, r.text
    assert dev.http.get(f"{ROOT}/qkdn_location_id").json() == {"qkdn_location_id": "new-loc-2"}


def test_strict_clients_still_get_rfc8040(devices: list[TfsDevice]):
    r = devices[1].http.get(f"{ROOT}/qkd_interfaces", headers=STRICT)
    ifaces = r.json()["etsi-qkd-sdn-node:qkd_interfaces"]["qkd_interface"]
    assert {i["qkdi_id"] for i in ifaces} == {1, 2}
    assert ifaces[0]["sdqkd-node-ext:sdqkd-interface"]["peer-node-id"]
    with httpx.Client() as c:
        bad = c.get(str(devices[1].http.base_url) + f"{ROOT}/qkd_interfaces/", headers=STRICT)
        assert bad.status_code == 400  # a trailing slash is the compatibility dialect's only


def test_fibre_already_provisioned_by_sdqkd_controller(tmp_path: Path):
    """On a network sdqkd's own controller provisions, a TFS link on an already used fibre is
    refused (no second engine session on it) and counted."""
    pair = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 5}],
            "settings": TOPO["settings"]}

    def tfs(network: InProcessNetwork) -> None:  # blocking HTTP: off the nodes' event loop
        dev = TfsDevice("A", network.addresses["A"]["restconf"])
        try:
            dev.onboard()
            before = _count(dev)
            r = dev.create_link(str(uuid.uuid4()), dev.qkdn_id, 0, network.endpoints["B"]["id"], 0)
            assert r.status_code == 400 and "already carries link" in r.text, r.text
            assert _count(dev) == before + 1
        finally:
            dev.close()

    async def main() -> None:
        network = await start_network(pair, tmp_path, engine=ENGINE, timeout=60)
        try:
            await asyncio.to_thread(tfs, network)
        finally:
            await network.stop()

    asyncio.run(main())
