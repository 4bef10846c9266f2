"""A topology's `external_peers` through the build that `sdqkd net up` and `sdqkd net export` use
(runtime/harness/build.py), and through `net up` itself: the controller (built from network.json)
and every node (`applications.sae_nodes`) know the peer's SAEs, the peer's CA path (relative to
the topology file) is copied where network.json can name it, and our SAEs' keys reach an
independent ETSI 020 KMS (peer020.py) at the gateway and over a relay path to it.

Before: network.json left `external_peers` out (the controller's POST /apps answered `unknown
SAE 'bx1'`) and `sae_nodes` held our own SAEs only (ETSI 014 at the gateway answered `unknown
SAE 'bx1': no SAE of that ID in this network`)."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from lkmsnet import LoopThread, Pki
from peer020 import PeerKms as VendorKms

from sdqkd.controller import service
from sdqkd.controller.topology import load, node_id
from sdqkd.deploy import export
from sdqkd.deploy.plan import ExportOptions
from sdqkd.harness.network import prepare
from sdqkd.harness.northbound import api_and_headers

IDENTITY = "kms.vendorx.test"


def _topology(d: Path, url: str, vendor_ca: Path) -> Path:
    """Nodes A - B - G, sae-a on A, sae-g on G, the vendor's KMS behind G; its CA beside the file."""
    d.mkdir(parents=True)
    (d / "pki").mkdir()
    shutil.copy(vendor_ca, d / "pki" / "vendorx-ca.pem")
    f = d / "t.yaml"
    f.write_text(yaml.safe_dump({
        "nodes": [{"name": "A"}, {"name": "B"}, {"name": "G"}],
        "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "G", "km": 10}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-g", "node": "G"}],
        "external_peers": [{"name": "vendorx", "node": "G", "saes": ["bx1", "bx2"], "url": url,
                            "identity": IDENTITY, "ca": "pki/vendorx-ca.pem", "mode": "sync"}],
    }))
    return f


def _knows_the_peer(network_json: Path) -> None:
    """The controller built from this network.json knows the peer; every node config names its SAEs."""
    ctl = service.build(network_json)
    (peer,) = ctl.external.peers
    assert (peer.name, peer.node, peer.saes) == ("vendorx", "G", ("bx1", "bx2"))
    link = ctl.router.links[peer.qkdl_id]  # a link of the routing graph from its gateway
    assert (link.a, link.b) == ("G", "ext:vendorx")
    desc = json.loads(network_json.read_text())
    for nd in desc["nodes"].values():
        cfg = yaml.safe_load((network_json.parent / nd["config"]).read_text())
        assert cfg["applications"]["sae_nodes"]["bx1"] == peer.kms_id


def test_net_up_and_export_builds_carry_the_external_peer(tmp_path: Path, tpki: Pki) -> None:
    topo_file = _topology(tmp_path / "topo", "https://127.0.0.1:47999", tpki.ca_path)
    # net up's build, from another working directory than the topology's
    state = tmp_path / "state"
    prepare(load(topo_file), state)
    _knows_the_peer(state / "network.json")
    # net export's bundle, moved away from the topology file (a controller host has no copy of it)
    export(topo_file, "bundle", tmp_path / "out", ExportOptions(hosts={"A": "10.0.0.1", "B": "10.0.0.2", "G": "10.0.0.3"}))
    shutil.rmtree(tmp_path / "topo")
    moved = tmp_path / "elsewhere"
    (tmp_path / "out").rename(moved)
    _knows_the_peer(moved / "controller" / "network.json")
    desc = json.loads((moved / "controller" / "network.json").read_text())
    assert desc["topology_data"]["external_peers"][0]["ca"] == "etsi020/vendorx-ca.pem"
    assert (moved / "controller" / "etsi020" / "vendorx-ca.pem").read_bytes() == tpki.ca_path.read_bytes()
    assert (moved / "nodes" / "G" / "etsi020" / "vendorx-ca.pem").is_file()
    # a controller whose copy is missing says which file, before it starts
    (moved / "controller" / "etsi020" / "vendorx-ca.pem").unlink()
    problem = service.config_problem(str(tmp_path / "cs"), str(moved / "controller" / "network.json"))
    assert problem is not None and "topology_data.external_peers[0].ca: no such file" in problem


def _ctx(ca: str, files: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(files["cert"], files["key"])
    return ctx


def _enc(ep: dict[str, Any], sae: str, slave: str) -> list[dict[str, Any]]:
    """ETSI 014 enc_keys of our SAE for the peer's; a first request registers the pair."""
    with httpx.Client(verify=_ctx(ep["ca"], ep["saes"][sae]), timeout=20) as c:
        for _ in range(20):
            r = c.post(f"https://{ep['etsi014']}/api/v1/keys/{slave}/enc_keys", json={"number": 2})
            if r.status_code != 503:  # (being set up: the controller installs the pair meanwhile)
                break
            time.sleep(0.2)
    assert r.status_code == 200, r.text
    keys: list[dict[str, Any]] = r.json()["keys"]
    return keys


def test_net_up_serves_keys_to_an_external_kms(tmp_path: Path, tpki: Pki, lt: LoopThread) -> None:
    vendor_ca = tpki.ca_path  # the vendor's own PKI (not the network's)
    vf = tpki.node(IDENTITY)
    # it trusts our CA once net up has made it (loaded into its contexts below)
    vendor = VendorKms(IDENTITY, ["bx1", "bx2"], str(vf.cert), str(vf.key), str(vendor_ca), str(vendor_ca),
                       node_id("G"))
    url = lt.run(vendor.start())
    topo_file = _topology(tmp_path / "topo", url, vendor_ca)
    state = tmp_path / "state"
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "net", "up", str(topo_file), "--state-dir", str(state),
                        "--timeout", "60"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        ours = str(state / "pki" / "ca.pem")
        for ctx in (vendor.server_ctx, vendor.client_ctx):
            ctx.load_verify_locations(ours)
        eps = json.loads((state / "endpoints.json").read_text())
        api, auth = api_and_headers(state)
        # the controller: the peer's SAE with an SAE of the gateway
        got = httpx.post(f"http://{api}/apps", headers=auth, json={"master": "sae-g", "slave": "bx1"})
        assert got.status_code == 200, got.text
        assert got.json()["path"] == ["G", "ext:vendorx"]
        for k in _enc(eps["G"], "sae-g", "bx1"):
            assert vendor.take(k["key_ID"]) == base64.b64decode(k["key"])
        # ETSI 014 at the gateway, a pair no one registered: its first request does
        for k in _enc(eps["G"], "sae-g", "bx2"):
            assert vendor.take(k["key_ID"]) == base64.b64decode(k["key"])
        # relayed A -> B -> G, then to the peer (registered by the first request at A)
        for k in _enc(eps["A"], "sae-a", "bx1"):
            assert vendor.take(k["key_ID"]) == base64.b64decode(k["key"])
        st = httpx.get(f"http://{api}/status", headers=auth).json()
        paths = {(a["master"], a["slave"]): a["path"] for a in st["apps"]}
        assert paths[("sae-a", "bx1")] == ["A", "B", "G", "ext:vendorx"]
    finally:
        subprocess.run([sys.executable, "-m", "sdqkd.cli", "net", "down", "--state-dir", str(state)],
                       capture_output=True, timeout=60)
        lt.run(vendor.stop())
