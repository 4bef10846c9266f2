"""The whole system as processes: `sdqkd net up` on a 3-node line, an application pair with no
direct link, ETSI 014 at both ends with a real HTTPS client (httpx, client certificates),
`sdqkd net down` leaves nothing running; and `sdqkd demo` itself."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from procwatch import processes_with, signal_when

from sdqkd.harness.audit import exposed
from sdqkd.harness.northbound import api_and_headers

TOPO = "nodes: [{name: A}, {name: B}, {name: C}]\nlinks: [{a: A, b: B, km: 10}, {a: B, b: C, km: 15}]\n" \
       "saes: [{name: sae-a, node: A}, {name: sae-c, node: C}]\n"


def sdqkd(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sdqkd.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _ctx(ca: str, files: dict[str, str]):
    import ssl

    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(files["cert"], files["key"])
    return ctx


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_net_up_relay_keys_match_and_down(tmp_path: Path):
    topo = tmp_path / "t.yaml"
    topo.write_text(TOPO)
    state = tmp_path / "state"
    r = sdqkd("net", "up", str(topo), "--state-dir", str(state), "--timeout", "120")
    assert r.returncode == 0, r.stderr[-3000:]
    # progress per step and per link, then where the controller is and what to do next
    assert "nodes listening: A, B, C" in r.stderr
    assert "link A-B (10 km, 2.0 dB): producing key" in r.stderr and "link B-C (15 km, 3.0 dB)" in r.stderr
    assert "controller API  http://127.0.0.1:" in r.stdout and f"sdqkd net down --state-dir {state}" in r.stdout
    pids = json.loads((state / "pids.json").read_text())
    try:
        eps = json.loads((state / "endpoints.json").read_text())
        assert set(eps) == {"A", "B", "C"} and set(eps["A"]) >= {"id", "gnmi", "etsi014", "etsi004", "restconf",
                                                                   "ca", "saes"}
        # B's RESTCONF (mutual TLS, the controller's identity): one interface per fibre, each with its peer
        mgmt = eps["B"]["management"]
        with httpx.Client(verify=_ctx(eps["B"]["ca"], mgmt),
                          auth=(mgmt["username"], Path(mgmt["password_file"]).read_text())) as hb:
            got = hb.get(f"https://{eps['B']['restconf']}/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_interfaces",
                         headers={"Accept": "application/yang-data+json"})
            assert got.status_code == 200, got.text
            ifaces = got.json()["etsi-qkd-sdn-node:qkd_interfaces"]["qkd_interface"]
            assert [(i["qkdi_id"], i["qkdi_att_point"]["device"]) for i in ifaces] == [(1, "A"), (2, "C")]
            assert all(i["sdqkd-node-ext:sdqkd-interface"]["classical-endpoint"] for i in ifaces)
        api, auth = api_and_headers(state)
        assert httpx.post(f"http://{api}/apps", json={"master": "sae-a", "slave": "sae-c"}).status_code == 401
        for rate in ("1e400", "1e12", "-1", "true"):  # JSON numbers Python reads as inf, too big, ...
            bad = httpx.post(f"http://{api}/apps", headers={**auth, "Content-Type": "application/json"},
                             content=f'{{"master": "sae-a", "slave": "sae-c", "rate": {rate}}}')
            assert bad.status_code == 400 and bad.json()["message"].startswith("bad request: rate:"), (rate, bad.text)
        route = httpx.post(f"http://{api}/apps", headers=auth,
                           json={"master": "sae-a", "slave": "sae-c", "rate": 1000}).json()
        assert route["path"] == ["A", "B", "C"] and route["virtual"]
        a, c = eps["A"], eps["C"]
        with httpx.Client(verify=_ctx(a["ca"], a["saes"]["sae-a"])) as ha:
            for _ in range(100):
                resp = ha.post(f"https://{a['etsi014']}/api/v1/keys/sae-c/enc_keys", json={"number": 2, "size": 256})
                if resp.status_code != 503:
                    break
                time.sleep(0.3)
            assert resp.status_code == 200, resp.text
            keys = resp.json()["keys"]
        with httpx.Client(verify=_ctx(a["ca"], a["saes"]["sae-a"])) as wrong:  # sae-a at C's KME: names both nodes
            lost = wrong.get(f"https://{c['etsi014']}/api/v1/keys/sae-c/status")
            assert lost.status_code == 401 and lost.json()["message"] == (
                f"unauthorized: certificate of SAE 'sae-a', which is attached to node A ({a['id']}), "
                f"not this node (C ({c['id']}))")
        with httpx.Client(verify=_ctx(c["ca"], c["saes"]["sae-c"])) as hc:
            back = hc.post(f"https://{c['etsi014']}/api/v1/keys/sae-a/dec_keys",
                           json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}).json()["keys"]
            assert [(k["key_ID"], base64.b64decode(k["key"])) for k in back] == \
                   [(k["key_ID"], base64.b64decode(k["key"])) for k in keys]
            again = hc.post(f"https://{c['etsi014']}/api/v1/keys/sae-a/dec_keys",
                            json={"key_IDs": [{"key_ID": keys[0]["key_ID"]}]})
            assert again.status_code == 400  # delivered once, then gone
        # nothing secret under the state dir is readable by other users (key stores included)
        password = Path(json.loads((state / "network.json").read_text())["controller"]["password_file"]).read_text()
        assert list((state / "nodes" / "A" / "data").glob("keys.sqlite*"))
        assert exposed(state, (password,)) == []
    finally:
        d = sdqkd("net", "down", "--state-dir", str(state))
        assert d.returncode == 0, d.stderr
    time.sleep(0.5)
    assert not any(_alive(p) for p in pids.values())


def test_topology_errors_stop_before_anything_starts(tmp_path: Path):
    topo = tmp_path / "bad.yaml"
    topo.write_text("nodes: [{name: A}, {name: A}]\nlinks: [{a: A, b: Z, km: -1}]\n")
    r = sdqkd("net", "up", str(topo), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2
    assert "duplicate node name 'A'" in r.stderr and "unknown node 'Z'" in r.stderr
    assert not (tmp_path / "s" / "pids.json").exists()


def test_port_in_use_is_refused_before_start(tmp_path: Path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    topo = tmp_path / "t.yaml"
    topo.write_text(TOPO + f"settings: {{base_port: {port}}}\n")
    r = sdqkd("net", "up", str(topo), "--state-dir", str(tmp_path / "s"))
    s.close()
    assert r.returncode == 2 and f"port {port}" in r.stderr and "in use" in r.stderr


@pytest.mark.slow
def test_demo_runs_and_keys_match(tmp_path: Path):
    keep = tmp_path / "kept"
    r = sdqkd("demo", "--seconds", "60", "--keep", str(keep), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "the two ends hold the same key" in r.stdout
    assert "Quijote - Concepcion" in r.stdout and "leaves nothing running" in r.stdout
    assert "first request registered sae-quijote <-> sae-distrito" in r.stdout
    assert "CPU-bound" in r.stdout and "what to try next" in r.stdout  # the story ends with a pointer
    assert f"state kept in {keep}" in r.stdout and (keep / "pki").is_dir() and not (keep / "pids.json").exists()
    # the kept state of a stopped network reads as such, never as live
    st = sdqkd("net", "status", "--state-dir", str(keep))
    assert st.returncode == 0 and "stopped: last status from" in st.stdout and "Quijote-Concepcion" in st.stdout
    pl = sdqkd("plot", "topology", "--state-dir", str(keep), "--out", str(tmp_path / "t.png"))
    assert pl.returncode == 0 and "(last seen rates)" in pl.stdout, pl.stderr


def test_demo_interrupted_removes_its_state(tmp_path: Path):
    import signal

    env = dict(os.environ, TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "sdqkd.cli", "demo"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert p.stdout is not None
        head = p.stdout.readline()
        assert "sdqkd demo" in head
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("sdqkd-demo-*/pids.json")):  # processes started
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and "interrupted" in out and "removed its state directory" in out, out
    assert not list(tmp_path.glob("sdqkd-demo-*"))


def test_net_up_killed_while_it_starts_stops_what_it_started(tmp_path: Path):
    """SIGTERM (`kill`, a time-out) while `net up` waits for the links does what Ctrl-C does: the
    nodes and the controller it started are stopped (they kept running before)."""
    import signal

    state = tmp_path / "lab"
    p = subprocess.Popen([sys.executable, "-m", "sdqkd.cli", "net", "up", "--state-dir", str(state)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = signal_when(p, (state / "pids.json").exists)  # its processes run
    left = processes_with(str(state))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert p.returncode == 130, out[-2000:]
    assert left == [], out[-2000:]
