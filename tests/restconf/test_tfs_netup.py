"""A network started by `sdqkd net up` that ETSI TeraFlowSDN can manage as it is, no node config
edited and nothing restarted (tfsreplay.py: the driver's requests, in order).

- Beside sdqkd's controller: the topology's `settings.restconf` makes every node's RESTCONF plain
  HTTP (all TFS's QKD driver speaks) and gives the network one bearer token, which TFS sends
  through its driver's `headers` setting; TFS's onboarding reads every node, and a request
  without the token is refused. TFS's link writes carry no headers, so they are refused too.
- As the network's SDN controller: `net up --no-controller` with `anonymous: true`; TFS's service
  creates the link and it makes key at both ends."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tfsreplay import ROOT, TfsDevice, apply_rule, service_links, unkeyed

from sdqkd.harness.audit import exposed

TOPO = """nodes: [{name: A}, {name: B}]
links: [{a: A, b: B, km: 10}]
settings: {restconf: {tls: none}}
"""
# TFS's driver sends its `headers` when it reads, not when it creates links: for TFS to make the
# links, the nodes ask no credentials
ANONYMOUS = TOPO.replace("{tls: none}", "{tls: none, anonymous: true}")


def sdqkd(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sdqkd.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def netup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The network's state dir and endpoints.json; `net down` after the module's tests."""
    tmp = tmp_path_factory.mktemp("tfs-netup")
    topo = tmp / "t.yaml"
    topo.write_text(TOPO)
    state = tmp / "state"
    # net up returns once the link makes key: it told each node its peer's classical endpoint over
    # that node's RESTCONF, plain HTTP now
    r = sdqkd("net", "up", str(topo), "--state-dir", str(state), "--timeout", "120")
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        yield state, json.loads((state / "endpoints.json").read_text())
    finally:
        if (state / "pids.json").exists():  # net up that failed stopped what it started
            d = sdqkd("net", "down", "--state-dir", str(state))
            assert d.returncode == 0, d.stderr


def bearer(eps: dict[str, Any]) -> dict[str, str]:
    """The headers an operator gives TFS's driver: `_connect/settings` {"headers": {...}}."""
    return {"Authorization": "Bearer " + Path(eps["A"]["management"]["restconf_token_file"]).read_text()}


def test_tfs_onboards_a_net_up_network_with_its_restconf_token(netup: tuple[Path, dict[str, Any]]):
    state, eps = netup
    assert {eps[n]["restconf_tls"] for n in eps} == {"none"}
    token_file = Path(eps["A"]["management"]["restconf_token_file"])
    token = token_file.read_text()
    assert len(token) == 64 and token_file.stat().st_mode & 0o077 == 0
    devices = {n: TfsDevice(n, eps[n]["restconf"], headers=bearer(eps)) for n in eps}
    try:
        for n, dev in devices.items():
            assert dev.connect()
            dev.onboard()
            assert dev.qkdn_id == eps[n]["id"]
            peer = "B" if n == "A" else "A"
            assert dev.endpoints == [f"{peer}:1"]  # `<peer name>:<peer interface>`, as TFS names it
            assert {"/interface[1]", "__capabilities__", "__node__"} <= set(dev.config_rules)
            # the same token on the strict RFC 8040 dialect: the link the controller made is up
            links = dev.http.get(f"{ROOT}/qkd_links", headers={"Accept": "application/yang-data+json"})
            assert links.status_code == 200, links.text
            rows = links.json()["etsi-qkd-sdn-node:qkd_links"]["qkd_link"]
            assert [(ln["qkdl_type"], ln["qkdl_status"]) for ln in rows] == [("etsi-qkd-node-types:PHYS",
                                                                               "etsi-qkd-node-types:ACTIVE")]
        # TFS's own link write carries no token (headers go with reads): refused, nothing made
        write = devices["A"].create_link("7d0c6f0e-2d5b-4c3e-9a41-0b9d3f8a1e11", eps["A"]["id"], 0, eps["B"]["id"], 0)
        assert write.status_code == 401, write.text
        # without the token, or with another, nothing is answered
        assert httpx.get(f"http://{eps['A']['restconf']}{ROOT}").status_code == 401
        wrong = httpx.get(f"http://{eps['A']['restconf']}{ROOT}", headers={"Authorization": "Bearer " + "0" * 64})
        assert wrong.status_code == 401
    finally:
        for dev in devices.values():
            dev.http.close()
    assert exposed(state, (token,)) == []


def test_tfs_makes_the_links_of_a_net_up_network_without_sdqkd_controller(tmp_path: Path):
    """`net up --no-controller`: the nodes only, with their interfaces; TFS's service handler
    creates the link (one qkdl_id per end) and the link makes key at both ends."""
    with nodes_only(tmp_path) as (state, r):
        assert "no controller" in r.stdout and "RESTCONF http://" in r.stdout and "none asked" in r.stdout
        assert not (state / "controller-status.json").exists()
        assert "controller" not in json.loads((state / "pids.json").read_text())
        st = sdqkd("net", "status", "--state-dir", str(state))
        assert st.returncode == 0 and "started with --no-controller" in st.stdout, st.stdout + st.stderr
        eps = json.loads((state / "endpoints.json").read_text())
        assert "restconf_token_file" not in eps["A"]["management"]  # no token is made: none is asked
        devices = [TfsDevice(n, eps[n]["restconf"]) for n in ("A", "B")]  # as TFS's driver: no credentials
        try:
            for dev in devices:
                assert dev.connect()
                dev.onboard()
            strict = {"Accept": "application/yang-data+json"}
            none = devices[0].http.get(f"{ROOT}/qkd_links", headers=strict)
            assert none.status_code == 404 and "no data at this path" in none.text  # no link before TFS makes one
            # TFS's path for a service A:B -> the '/link' rules of each device, applied as its driver does
            for d, rule in service_links(devices, [(0, "B:1"), (0, "B:1"), (1, "A:1"), (1, "A:1")]):
                resp = apply_rule(devices[d], rule)
                assert resp.status_code in {200, 201, 202, 204}, resp.text
            assoc = {dev.name: [ln["sdqkd-node-ext:sdqkd-link"]["key-association-id"] for ln in dev.http.get(
                f"{ROOT}/qkd_links", headers=strict).json()["etsi-qkd-sdn-node:qkd_links"]["qkd_link"]]
                for dev in devices}
            assert len(assoc["A"]) == 1 and assoc["A"] == assoc["B"]  # both ends: one key association
            assert not unkeyed(devices, assoc["A"][0])
        finally:
            for dev in devices:
                dev.close()


@contextlib.contextmanager
def nodes_only(tmp: Path) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """`sdqkd net up --no-controller` of ANONYMOUS: its state dir and what net up printed; net down after."""
    topo = tmp / "t.yaml"
    topo.write_text(ANONYMOUS)
    state = tmp / "state"
    r = sdqkd("net", "up", str(topo), "--state-dir", str(state), "--no-controller", "--timeout", "60")
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        yield state, r
    finally:
        if (state / "pids.json").exists():  # net up that failed stopped what it started
            d = sdqkd("net", "down", "--state-dir", str(state))
            assert d.returncode == 0, d.stderr
