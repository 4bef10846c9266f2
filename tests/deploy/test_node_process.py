"""The node as a container runs it, without a container: binds every interface with TLS (and
refuses to without TLS), answers `sdqkd health`, logs JSON lines to stdout, and on SIGTERM
exits 0 with its key store consistent; started again from the same config it has its keys."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sdqkd.deploy import export
from sdqkd.deploy.plan import ExportOptions
from sdqkd.harness import network

SDQKD = [sys.executable, "-m", "sdqkd.cli"]


def _bundle_node(tmp: Path, **changes: object) -> Path:
    """One node's bundle directory, its ports made ephemeral (tests run beside each other)."""
    tmp.mkdir(exist_ok=True)
    topo = tmp / "topo.yaml"
    topo.write_text("nodes: [{name: solo, host: 127.0.0.1}]\nsaes: [{name: app, node: solo}]\n")
    export(topo, "bundle", tmp / "b", ExportOptions(hosts={}, log_format="json"))
    cfg_path = tmp / "b" / "nodes" / "solo" / "node.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    for svc in ("gnmi", "etsi014", "etsi004", "peer"):
        cfg[svc]["listen"] = "0.0.0.0:0"
    cfg.update(changes)
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def _start(cfg: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    proc = subprocess.Popen([*SDQKD, "node", "--config", str(cfg)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ready = cfg.parent / "data" / "ready.json"
    end = time.monotonic() + 60
    while not (ready.exists() and json.loads(ready.read_text())["pid"] == proc.pid):  # not a previous run's
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < end, log.read_text()[-2000:]
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


def test_node_binds_all_interfaces_with_tls_answers_health_and_logs_json(tmp_path: Path):
    cfg = _bundle_node(tmp_path)
    log = tmp_path / "node.log"
    proc, ready = _start(cfg, log)
    try:
        port = int(ready["etsi014"].rpartition(":")[2])
        ip = _non_loopback_ip()
        ca = cfg.parent / "tls" / "ca.pem"
        for host in ["127.0.0.1", *([ip] if ip else [])]:  # bound on every interface, TLS on each
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.check_hostname = False  # the certificate names the advertised host, not this probe's
            with socket.create_connection((host, port), 10) as raw, ctx.wrap_socket(raw) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        health = subprocess.run([*SDQKD, "health", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # JSON lines only
    assert any(r["message"].startswith("sdqkd node solo: gNMI on 0.0.0.0:") for r in records)
    assert all(r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR") and r["time"] for r in records)
    password = (cfg.parent / yaml.safe_load(cfg.read_text())["users"]["sdqkd"]["password_file"]).read_text()
    assert password not in log.read_text()
    down = subprocess.run([*SDQKD, "health", "--config", str(cfg), "--timeout", "2"], capture_output=True, text=True,
                          timeout=60)
    assert down.returncode == 1 and "not healthy" in down.stderr


def test_node_without_tls_refuses_to_bind_beyond_loopback(tmp_path: Path):
    cfg = _bundle_node(tmp_path, tls=None)
    r = subprocess.run([*SDQKD, "node", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "gnmi.listen: 0.0.0.0:0 is not a loopback address; without `tls` a node serves loopback only" in r.stderr
    bad_log = _bundle_node(tmp_path / "x", log={"format": "xml"})
    r = subprocess.run([*SDQKD, "node", "--config", str(bad_log)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "node.yaml:21: log.format: must be one of 'text' or 'json', got 'xml'" in r.stderr


def _keys(db_path: Path) -> set[bytes]:
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {row[0] for row in db.execute("SELECT kid FROM all_keys")}
    finally:
        db.close()


def test_sigterm_stops_a_producing_node_cleanly_and_its_keys_survive(tmp_path: Path):
    topo = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 5}], "saes": []}
    state = tmp_path / "net"
    network.up(topo, state, timeout=120)
    try:
        pid = json.loads((state / "pids.json").read_text())["node-A"]
        time.sleep(2.0)  # blocks keep arriving: the stop lands among them
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)  # the harness started it: our child
        assert os.waitstatus_to_exitcode(status) == 0
        data = state / "nodes" / "A" / "data"
        wal = data / "keys.sqlite-wal"
        assert not wal.exists() or wal.stat().st_size == 0
        before = _keys(data / "keys.sqlite")
        assert before
        proc, _ = _start(state / "nodes" / "A" / "node.yaml", tmp_path / "restart.log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert before <= _keys(data / "keys.sqlite")  # nothing lost across the restart
    finally:
        network.down(state)


def test_controller_api_stays_on_loopback(tmp_path: Path):
    """The northbound API has no authentication: `sdqkd controller` refuses to serve it elsewhere."""
    r = subprocess.run([*SDQKD, "controller", "--state-dir", str(tmp_path), "--api", "0.0.0.0:8080"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "serves loopback addresses only" in r.stderr


def test_the_health_probe_reads_the_config_without_loading_the_lkms():
    """Kubernetes runs `sdqkd health` every 15 s per pod (runtime/deploy/kubernetes.py): reading the
    config must not import the key store and delivery stack (the applications settings once
    pulled it in: 0.41 CPU s per probe, 0.36 without)."""
    code = ("import sys, sdqkd.node.health; "
            "print(sorted(m for m in sys.modules if m.startswith(('sdqkd.lkms', 'sdqkd.engine.cascade'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
