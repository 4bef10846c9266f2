"""An exported bundle run for real across "hosts": every node started from its own bundle
directory in a network namespace of its own, with the command its container runs
(`sdqkd node --config .../node.yaml`), the controller from its own directory in its own
namespace; an application pair across a relay gets the same keys at both ends through ETSI 014,
reached from the host as from another machine. Then SIGTERM: every node exits 0 with its key
store consistent, and its JSON log lines parse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from deployutil import keys_agree

from sdqkd import netns
from sdqkd.deploy import export
from sdqkd.deploy.plan import ExportOptions

WHY = netns.available()
NAMES = ["A", "B", "C"]
TOPO = {"nodes": [{"name": n} for n in NAMES],
        "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}]}
PREFIX = "10.78.0"  # not the harness's 10.77.0: both may run at once


def sdqkd_command() -> list[str]:
    """The `sdqkd` entry point of this environment (what the container's ENTRYPOINT is)."""
    exe = Path(sys.executable).parent / "sdqkd"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sdqkd.cli"]


def _wait(cond, timeout: float, what: str, procs: dict[str, subprocess.Popen[bytes]], logs: Path):  # noqa: ANN001, ANN202
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        for name, p in procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited {p.returncode}: {(logs / f'{name}.log').read_text()[-3000:]}")
        if time.monotonic() > end:
            tails = {n: (logs / f"{n}.log").read_text()[-1500:] for n in procs}
            raise AssertionError(f"timed out waiting for {what}: {tails}")
        time.sleep(0.3)


def _producing(status: Path) -> bool:
    try:
        st = json.loads(status.read_text())
    except (OSError, ValueError):
        return False
    return bool(st.get("provisioned")) and all(r["up"] and r.get("stored_keys", 0) > 0 for r in st["links"])


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_exported_bundle_runs_one_namespace_per_node(tmp_path: Path):
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        ns = netns.create([*NAMES, "controller"], tmp_path / "netns.json", tag="x17", prefix=PREFIX)
        topo = tmp_path / "topo.yaml"
        topo.write_text(yaml.safe_dump(TOPO))
        out = tmp_path / "bundle"
        export(topo, "bundle", out, ExportOptions(hosts={n: ns[n]["ip"] for n in NAMES}, log_format="json"))
        # each node dir moves to "its host" on its own: copy it away from the rest of the bundle
        hosts = tmp_path / "hosts"
        for n in NAMES:
            shutil.copytree(out / "nodes" / n, hosts / n / "sdqkd")
        shutil.copytree(out / "controller", hosts / "controller" / "sdqkd")
        for n in NAMES:
            procs[n] = subprocess.Popen(
                ["ip", "netns", "exec", ns[n]["netns"], *sdqkd_command(), "node", "--config",
                 str(hosts / n / "sdqkd" / "node.yaml")],
                stdout=(logs / f"{n}.log").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        state = hosts / "controller" / "state"
        procs["controller"] = subprocess.Popen(
            ["ip", "netns", "exec", ns["controller"]["netns"], *sdqkd_command(), "controller", "--config",
             str(hosts / "controller" / "sdqkd" / "network.json"), "--state-dir", str(state), "--api",
             "127.0.0.1:8080", "--log-format", "json"],
            stdout=(logs / "controller.log").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait(lambda: _producing(state / "controller-status.json"), 240, "every link to produce key", procs, logs)

        # the controller's API is on its namespace's loopback only: ask it from inside
        token = (hosts / "controller" / "sdqkd" / "northbound-token").read_text().strip()
        ask = subprocess.run(["ip", "netns", "exec", ns["controller"]["netns"], sys.executable, "-c",
                              "import httpx,sys; r = httpx.post('http://127.0.0.1:8080/apps', "
                              "json={'master': 'sae-a', 'slave': 'sae-c'}, timeout=30, "
                              "headers={'Authorization': 'Bearer ' + sys.argv[1]}); print(r.text)", token],
                             capture_output=True, text=True, timeout=60)
        route = json.loads(ask.stdout)
        assert route["path"] == ["A", "B", "C"] and route["virtual"], ask.stdout + ask.stderr

        eps = json.loads((out / "endpoints.json").read_text())
        assert eps["A"]["etsi014"] == f"{ns['A']['ip']}:8443"  # reached from the host, as from another machine
        keys_agree(out, eps, ("A", "sae-a"), ("C", "sae-c"))

        # SIGTERM, as a container engine stops a container: clean exit, store consistent
        for n in NAMES:
            procs[n].send_signal(signal.SIGTERM)
        for n in NAMES:
            assert procs[n].wait(30) == 0, (logs / f"{n}.log").read_text()[-3000:]
            data = hosts / n / "sdqkd" / "data"
            wal = data / "keys.sqlite-wal"
            assert not wal.exists() or wal.stat().st_size == 0  # checkpointed at close
            db = sqlite3.connect(data / "keys.sqlite")
            try:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                assert db.execute("SELECT COUNT(*) FROM all_keys").fetchone()[0] > 0
            finally:
                db.close()
            records = [json.loads(line) for line in (logs / f"{n}.log").read_text().splitlines() if line.strip()]
            assert {"time", "level", "logger", "message"} <= set(records[0])
            assert any("gNMI on 0.0.0.0:57400" in r["message"] for r in records)
        ctl_log = [json.loads(line) for line in (logs / "controller.log").read_text().splitlines() if line.strip()]
        assert any("links provisioned" in r["message"] for r in ctl_log)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        netns.destroy(tmp_path / "netns.json")
