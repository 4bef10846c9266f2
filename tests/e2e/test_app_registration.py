"""Keys for any pair on the first standard request, on the demo's metro network as processes
(`sdqkd net up`, exactly as the README's first-key block runs it) with third-party clients:
curl, `qkd014-client` (etsi-qkd-014-client) and `qkdsec doctor` from PyPI, an ETSI 004 gRPC
client (direct, and over the three-hop relay), pygnmi subscribed to the registration
notifications; 50 concurrent first requests;
the controller killed and restarted; a node killed and restarted; no key bytes in any log.

Demo network: Quijote - Concepcion - Norte - Distrito, Concepcion - Almagro - Norte; one SAE
per node (sae-quijote, sae-concepcion, sae-norte, sae-distrito, sae-almagro). Each test uses
pairs no earlier test registered, so every request it makes first is a first request, except
ETSI 004 on the one node pair three hops apart (Quijote - Distrito): the README's block
registers it; closing those streams releases it for the PyPI client's first request."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
SEEN_KEYS: list[str] = []  # base64 of every key handed out here: none may appear in a log


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- first-key:[^>]*-->\s*```sh\n(.*?)```\s*<!-- /first-key -->", text, re.S)
    assert m, "README.md lost its first-key block"
    return m.group(1)


class Net:
    def __init__(self, cwd: Path, first_key: dict[str, Any]) -> None:
        self.cwd, self.first_key = cwd, first_key
        self.state = cwd / "net"
        self.eps: dict[str, Any] = json.loads((self.state / "endpoints.json").read_text())

    def sae(self, name: str) -> tuple[str, dict[str, str]]:
        return next((n, e["saes"][name]) for n, e in self.eps.items() if name in e["saes"])

    def client(self, sae: str) -> httpx.Client:
        node, files = self.sae(sae)
        ctx = ssl.create_default_context(cafile=self.eps[node]["ca"])
        ctx.load_cert_chain(files["cert"], files["key"])
        return httpx.Client(verify=ctx, base_url=f"https://{self.eps[node]['etsi014']}", timeout=30)

    def enc(self, master: str, slave: str) -> httpx.Response:
        with self.client(master) as c:
            r = c.get(f"/api/v1/keys/{slave}/enc_keys")
        if r.status_code == 200:
            SEEN_KEYS.extend(k["key"] for k in r.json()["keys"])
        return r

    def dec(self, slave: str, master: str, key_id: str) -> httpx.Response:
        with self.client(slave) as c:
            return c.get(f"/api/v1/keys/{master}/dec_keys", params={"key_ID": key_id})

    def pids(self) -> dict[str, int]:
        return json.loads((self.state / "pids.json").read_text())

    def respawn(self, name: str, args: list[str]) -> None:
        """Start a process of the network again (recorded in pids.json: `net down` stops it)."""
        log = open(self.state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        p = subprocess.Popen([sys.executable, "-m", "sdqkd.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        pids = self.pids()
        pids[name] = p.pid
        (self.state / "pids.json").write_text(json.dumps(pids))

    def gnmi_spec(self, node: str, paths: list[str]) -> dict[str, Any]:
        m = self.eps[node]["management"]
        return {"address": self.eps[node]["gnmi"], "ca": self.eps[node]["ca"], "cert": m["cert"], "key": m["key"],
                "user": m["username"], "password": Path(m["password_file"]).read_text(), "paths": paths}


def until(cond: Any, timeout: float, what: str, step: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(step)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    cwd = tmp_path_factory.mktemp("readme")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=300)
    try:
        assert r.returncode == 0, f"README first-key block failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        first = json.loads(r.stdout[r.stdout.rindex('{"keys"'):])
        SEEN_KEYS.extend(k["key"] for k in first["keys"])
        yield Net(cwd, first)
    finally:
        if (cwd / "net" / "pids.json").exists():
            subprocess.run([sys.executable, "-m", "sdqkd.cli", "net", "down", "--state-dir", str(cwd / "net")],
                           env=ENV, capture_output=True, timeout=60)
        shutil.rmtree(cwd, ignore_errors=True)  # the network's PKI and key stores: nothing left behind


def test_readme_first_key_is_a_relayed_key_the_peer_gets_too(net: Net) -> None:
    (k,) = net.first_key["keys"]
    assert len(base64.b64decode(k["key"])) == 32
    back = net.dec("sae-distrito", "sae-quijote", k["key_ID"])
    assert back.status_code == 200 and back.json()["keys"] == [k]
    def route() -> dict[str, Any] | None:  # (the controller rewrites its status file each second)
        status = json.loads((net.state / "controller-status.json").read_text())
        return next((a for a in status["apps"] if a["master"] == "sae-quijote"), None)

    route = until(route, 10, "the controller's status to show the README's pair")
    # relayed, registered by that first request; the controller picks among the 3- and 4-hop paths
    # by the links' measured key rates and stores, so the hop count is not fixed
    assert route["virtual"] and len(route["path"]) >= 4
    assert route["path"][0] == "Quijote" and route["path"][-1] == "Distrito"


def _qkd014(net: Net, sae: str, *args: str) -> tuple[int, str]:
    node, files = net.sae(sae)
    e = net.eps[node]
    r = subprocess.run([str(BIN / "qkd014-client"), "-H", e["etsi014"], "-c", files["cert"], "-k", files["key"],
                        "-r", e["ca"], *args], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    code = int(re.search(r"Response code : (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    return code, r.stdout


def test_etsi004_over_the_three_hop_relay(net: Net) -> None:
    """ETSI 004 between sae-quijote and sae-distrito, three hops apart: the README's pair (the
    demo network has one SAE per node and a single node pair three hops apart; the first
    OPEN_CONNECT of a relayed pair is shown in test_app_registration_inprocess). Closing its
    streams disconnects it at Quijote, where the README's request registered it, and the
    controller releases it: the next test's request of the pair is a first request again."""
    from sdqkd.apps.keyclient import Etsi004Client, SaeIdentity

    with Etsi004Client(SaeIdentity.from_endpoints(net.eps, "sae-distrito")) as d, \
            Etsi004Client(SaeIdentity.from_endpoints(net.eps, "sae-quijote")) as q:
        # The stream's owner (Distrito) is the relay's far end: it picks keys its source
        # (Quijote) may not hold yet, which Quijote waits for (docs/reliability.md). Refused at
        # once, they starved this stream for its whole timeout (3 of 5 runs of this module).
        ksid = d.open("sae-quijote")
        assert q.open("sae-distrito", ksid) == ksid
        try:
            kd = [d.get_key(ksid)[1] for _ in range(50)]
            kq = [q.get_key(ksid)[1] for _ in range(50)]
        finally:  # released even when this test fails: the next one's first request must stay a first
            d.close_stream(ksid)
            q.close_stream(ksid)
    SEEN_KEYS.extend(base64.b64encode(k).decode() for k in kd)
    assert kd == kq and len(set(kd)) == 50 and all(len(k) == 32 for k in kd)

    def released() -> bool:
        status = json.loads((net.state / "controller-status.json").read_text())
        held = [json.loads((net.state / "nodes" / n / "data" / "applications.json").read_text())
                for n in ("Quijote", "Distrito")]
        return not any({a["master"], a["slave"]} == {"sae-quijote", "sae-distrito"} for a in status["apps"]) \
            and not any(k in h for h in held for k in _ids("sae-quijote", "sae-distrito"))

    until(released, 15, "the README's pair disconnected and released at both ends")


def _ids(a: str, b: str) -> set[str]:
    from sdqkd.lkms.registry import app_id_for

    return {app_id_for(a, [b]), app_id_for(b, [a])}


def test_pypi_etsi014_client_direct_and_relayed_first_requests(net: Net) -> None:
    from sdqkd.lkms.registry import app_id_for

    # direct (Almagro - Norte, 9 km): the first request of the pair, through the unmodified PyPI client
    code, out = _qkd014(net, "sae-almagro", "get_key", "sae-norte")
    assert code == 200, out
    key_id, key = re.search(r"Key id : (\S+)\nKey : (\S+)", out).groups()  # type: ignore[union-attr]
    SEEN_KEYS.append(key)
    code, back = _qkd014(net, "sae-norte", "get_key_with_id", key_id, "sae-almagro")
    assert code == 200 and f"Key : {key}\n" in back
    # relayed (Distrito -> Quijote, 3 hops): the README's node pair, released by the previous test
    distrito = net.state / "nodes" / "Distrito" / "data" / "applications.json"
    assert not _ids("sae-quijote", "sae-distrito") & set(json.loads(distrito.read_text()))
    code, out = _qkd014(net, "sae-distrito", "get_status", "sae-quijote")
    assert code == 200 and "master_SAE_ID : sae-distrito" in out, out
    code, out = _qkd014(net, "sae-distrito", "get_key", "sae-quijote")
    assert code == 200, out
    key_id, key = re.search(r"Key id : (\S+)\nKey : (\S+)", out).groups()  # type: ignore[union-attr]
    SEEN_KEYS.append(key)
    saved = json.loads(distrito.read_text())  # registered at Distrito by that first request
    assert saved[app_id_for("sae-distrito", ["sae-quijote"])]["origin"] == "request"
    back = net.dec("sae-quijote", "sae-distrito", key_id)
    assert back.status_code == 200 and back.json()["keys"][0]["key"] == key


def _curl(net: Net, sae: str, path: str) -> dict[str, Any]:
    """curl with the SAE's certificate from endpoints.json, as the README's block calls it."""
    node, files = net.sae(sae)
    e = net.eps[node]
    r = subprocess.run(["curl", "-sS", "--fail-with-body", "--cacert", e["ca"], "--cert", files["cert"],
                        "--key", files["key"], f"https://{e['etsi014']}{path}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    body: dict[str, Any] = json.loads(r.stdout)
    return body


def test_curl_direct_pair_first_request(net: Net) -> None:
    # Almagro - Concepcion share a fibre link; no earlier request named this pair
    (k,) = _curl(net, "sae-almagro", "/api/v1/keys/sae-concepcion/enc_keys")["keys"]
    SEEN_KEYS.append(k["key"])
    back = _curl(net, "sae-concepcion", f"/api/v1/keys/sae-almagro/dec_keys?key_ID={k['key_ID']}")
    assert back["keys"] == [k]

    def route() -> dict[str, Any] | None:
        status = json.loads((net.state / "controller-status.json").read_text())
        return next((a for a in status["apps"] if (a["master"], a["slave"]) == ("sae-almagro", "sae-concepcion")),
                    None)

    r = until(route, 10, "the controller's status to show the pair")
    assert r["path"] == ["Almagro", "Concepcion"] and not r["virtual"]


def test_qkdsec_doctor_fails_only_the_single_kme_round_trip(net: Net) -> None:
    node, files = net.sae("sae-concepcion")
    e = net.eps[node]
    r = subprocess.run([str(BIN / "qkdsec"), "doctor", f"https://{e['etsi014']}", "--slave-sae-id", "sae-quijote",
                        "--cert", files["cert"], "--key", files["key"], "--ca-cert", e["ca"], "--format", "json"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    report = json.loads(r.stdout)
    results = {p["name"]: p["status"].lower() for p in report["results"]}
    assert results["reachability"] == "pass" and results["status_fields"] == "pass", r.stdout
    assert results["enc_keys_get"] == "pass" and results["enc_keys_post"] == "pass", r.stdout
    failed = {n for n, s in results.items() if s == "fail"}
    # its round trip calls dec_keys with the master's own certificate (one certificate playing
    # both SAEs): our KME rightly refuses to hand sae-quijote's key to sae-concepcion
    assert failed <= {"dec_keys_roundtrip"}, r.stdout


class Notifications:
    """pygnmi (its own interpreter) subscribed at one node; lines read on a thread."""

    def __init__(self, net: Net, node: str, paths: list[str]) -> None:
        spec = net.gnmi_spec(node, paths)
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).with_name("pygnmi_notify.py")), json.dumps(spec)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        out = self.p.stdout
        assert out is not None
        threading.Thread(target=lambda: [self.lines.put(x) for x in out], daemon=True).start()
        assert self.lines.get(timeout=60).strip() == "SYNC"

    def next(self, timeout: float = 30) -> tuple[str, dict[str, Any]]:
        (upd,) = json.loads(self.lines.get(timeout=timeout))["update"]["update"]
        return upd["path"], next(v for k, v in upd["val"].items() if k.endswith("qkd_application"))

    def close(self) -> None:
        self.p.kill()
        self.p.wait(10)


def test_etsi004_open_connect_registers_and_close_disconnects(net: Net) -> None:
    from sdqkd.apps.keyclient import Etsi004Client, SaeIdentity
    from sdqkd.lkms.registry import app_id_for

    notes = Notifications(net, "Norte", ["/sdqkdn_application_new", "/sdqkdn_application_disconnected"])
    try:
        with Etsi004Client(SaeIdentity.from_endpoints(net.eps, "sae-norte")) as n, \
                Etsi004Client(SaeIdentity.from_endpoints(net.eps, "sae-distrito")) as d:
            ksid = n.open("sae-distrito")  # first request of the pair (Norte - Distrito, direct)
            assert d.open("sae-norte", ksid) == ksid
            got = [(n.get_key(ksid, i)[1], d.get_key(ksid, i)[1]) for i in range(3)]
            assert all(a == b and len(a) == 32 for a, b in got) and len({a for a, _ in got}) == 3
            SEEN_KEYS.extend(base64.b64encode(a).decode() for a, _ in got)
            n.close_stream(ksid)
            d.close_stream(ksid)
        path, app = notes.next()
        assert path == "sdqkdn_application_new" and app["server_app_id"] == "urn:sdqkd:sae:sae-norte"
        path, app = notes.next()
        assert path == "sdqkdn_application_disconnected"
        assert app == {"app_id": app_id_for("sae-norte", ["sae-distrito"])}
    finally:
        notes.close()


def test_pygnmi_sees_sdqkdn_application_new(net: Net) -> None:
    notes = Notifications(net, "Concepcion", ["/sdqkdn_application_new"])
    try:
        r = net.enc("sae-concepcion", "sae-norte")  # new pair, direct link
        assert r.status_code == 200, r.text
        path, app = notes.next()
    finally:
        notes.close()
    assert path == "sdqkdn_application_new"
    assert app["server_app_id"] == "urn:sdqkd:sae:sae-concepcion"
    assert app["client_app_id"] == ["urn:sdqkd:sae:sae-norte"]
    assert app["local_qkdn_id"] == net.eps["Concepcion"]["id"]
    assert app["app_type"].endswith("CLIENT")


def test_fifty_concurrent_first_requests_register_one_app(net: Net) -> None:
    node, files = net.sae("sae-almagro")
    e = net.eps[node]
    ctx = ssl.create_default_context(cafile=e["ca"])
    ctx.load_cert_chain(files["cert"], files["key"])

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(verify=ctx, base_url=f"https://{e['etsi014']}", timeout=60, limits=limits) as c:
            return list(await asyncio.gather(*(c.get("/api/v1/keys/sae-quijote/enc_keys") for _ in range(50))))

    resps = asyncio.run(burst())
    codes = [r.status_code for r in resps]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1, codes
    assert all(r.headers.get("Retry-After") and r.json()["message"] for r in resps if r.status_code == 503)
    ids = [k["key_ID"] for r in resps if r.status_code == 200 for k in r.json()["keys"]]
    SEEN_KEYS.extend(k["key"] for r in resps if r.status_code == 200 for k in r.json()["keys"])
    assert len(ids) == len(set(ids)) == codes.count(200)
    saved = json.loads((net.state / "nodes" / "Almagro" / "data" / "applications.json").read_text())
    mine = [a for a, rec in saved.items() if rec["entry"]["server_app_id"].endswith(":sae-almagro")
            and rec["entry"]["client_app_id"] == ["urn:sdqkd:sae:sae-quijote"]]
    assert len(mine) == 1
    time.sleep(1.5)  # the controller rewrites its status file each second
    status = json.loads((net.state / "controller-status.json").read_text())
    assert sum(1 for a in status["apps"] if (a["master"], a["slave"]) == ("sae-almagro", "sae-quijote")) == 1


def test_controller_killed_then_restarted(net: Net) -> None:
    pid = net.pids()["controller"]
    os.killpg(pid, signal.SIGKILL)
    until(lambda: net.enc("sae-concepcion", "sae-distrito").status_code == 503, 15, "new pair refused")
    r = net.enc("sae-concepcion", "sae-distrito")  # a new pair (2 hops): needs the controller
    assert r.status_code == 503 and "controller" in r.json()["message"] and int(r.headers["Retry-After"]) >= 1
    assert net.enc("sae-almagro", "sae-norte").status_code == 200  # provisioned before: still served
    net.respawn("controller", ["controller", "--state-dir", str(net.state)])
    until(lambda: net.enc("sae-concepcion", "sae-distrito").status_code == 200, 60, "new pair served again",
          step=1.0)


def test_node_restart_keeps_registrations(net: Net) -> None:
    before = json.loads((net.state / "nodes" / "Almagro" / "data" / "applications.json").read_text())
    os.killpg(net.pids()["node-Almagro"], signal.SIGKILL)
    time.sleep(0.5)
    ready = net.state / "nodes" / "Almagro" / "data" / "ready.json"
    ready.unlink(missing_ok=True)
    net.respawn("node-Almagro", ["node", "--config", str(net.state / "nodes" / "Almagro" / "node.yaml")])
    until(ready.exists, 60, "node Almagro listening again")
    after = json.loads((net.state / "nodes" / "Almagro" / "data" / "applications.json").read_text())
    assert set(after) >= set(before)
    codes: list[int] = []

    def served() -> bool:
        r = net.enc("sae-almagro", "sae-norte")
        codes.append(r.status_code)
        assert r.status_code == 200 or (r.status_code == 503 and r.headers.get("Retry-After")), r.text
        return r.status_code == 200

    until(served, 90, "registered pair served after the node restart", step=1.0)
    assert 400 not in codes


def test_no_key_bytes_in_any_log(net: Net) -> None:
    logs = "".join(p.read_text(errors="replace") for p in (net.state / "logs").glob("*.log"))
    assert SEEN_KEYS and logs
    for k in SEEN_KEYS:
        raw = base64.b64decode(k)
        assert k not in logs and raw.hex() not in logs
