"""A node killed with SIGKILL in a running network: the controller marks its links down on the
surviving ends, moves the relayed application to the other path, keys still match at both
ends; the node restarted from its config comes back and its links are provisioned again."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sdqkd.harness import network
from sdqkd.harness.northbound import post_app

TOPO = {"nodes": [{"name": n} for n in "ABCD"],
        "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10},
                  {"a": "A", "b": "D", "km": 12}, {"a": "D", "b": "C", "km": 12}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}]}


def status(state: Path) -> dict:
    return json.loads((state / "controller-status.json").read_text())


def until(cond, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError("condition not reached in time")


def ctx(ca: str, f: dict) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=ca)
    c.load_cert_chain(f["cert"], f["key"])
    return c


def keys_match(eps: dict) -> None:
    a, c = eps["A"], eps["C"]
    with httpx.Client(verify=ctx(a["ca"], a["saes"]["sae-a"])) as ha, \
            httpx.Client(verify=ctx(c["ca"], c["saes"]["sae-c"])) as hc:
        for _ in range(200):
            r = ha.get(f"https://{a['etsi014']}/api/v1/keys/sae-c/enc_keys")
            if r.status_code == 200:
                break
            time.sleep(0.3)
        assert r.status_code == 200, r.text
        k = r.json()["keys"][0]
        back = hc.get(f"https://{c['etsi014']}/api/v1/keys/sae-a/dec_keys", params={"key_ID": k["key_ID"]})
        assert back.status_code == 200, back.text
        assert base64.b64decode(back.json()["keys"][0]["key"]) == base64.b64decode(k["key"])


def test_sigkill_a_relay_node_then_bring_it_back(tmp_path: Path):
    state = tmp_path / "net"
    eps = network.up(TOPO, state, timeout=120)
    try:
        route = post_app(state, "sae-a", "sae-c", 100)
        middle = route["path"][1]
        other = "D" if middle == "B" else "B"
        keys_match(eps)

        pids = json.loads((state / "pids.json").read_text())
        os.kill(pids[f"node-{middle}"], signal.SIGKILL)
        st = until(lambda: (s := status(state)) and not s["nodes"][middle] and s)
        until(lambda: [a["path"][1] for a in status(state)["apps"]] == [other])
        st = status(state)
        assert all(not r["up"] for r in st["links"] if middle in r["link"].split("-"))
        keys_match(eps)  # served over the new path; both ends agree

        desc = json.loads((state / "network.json").read_text())
        log = open(state / "logs" / f"node-{middle}-restart.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "sdqkd.cli", "node", "--config",
                                 desc["nodes"][middle]["config"]], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        # as the README's recovery recipe does: pids.json is not told about this process
        until(lambda: status(state)["nodes"][middle], 60)
        until(lambda: all(r["up"] for r in status(state)["links"]), 90)
        stopped = network.down(state)
        # `net down` found the node restarted by hand (ready.json pid + its command line) and stopped it
        assert f"node-{middle} (restarted by hand, pid {proc.pid})" in stopped
        assert proc.wait(10) is not None
    finally:
        if (state / "pids.json").exists():
            network.down(state)
