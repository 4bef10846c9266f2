"""The most used Python gNMI client, pygnmi from PyPI, unmodified, against the target.
(pygnmi prefers JSON over JSON_IETF when both are offered and waits for sync_response.)"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("pygnmi_driver.py")
LINKS = "/qkd_node/qkd_links/qkd_link"


def run(target, *ops) -> list:
    spec = {"target": {"address": target.address, "ca": target.ca, "cert": target.cert, "key": target.key,
                       "user": target.user, "password": target.password, "insecure": target.insecure},
            "ops": [list(o) for o in ops]}
    r = subprocess.run([sys.executable, str(DRIVER), json.dumps(spec)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node_id(target) -> str:
    (res,) = run(target, ("get", {"path": ["/qkd_node/qkdn_id"]}))
    return res["notification"][0]["update"][0]["val"]


def test_capabilities(target):
    (caps,) = run(target, ("capabilities", {}))
    names = {m["name"] for m in caps["supported_models"]}
    assert {"etsi-qkd-sdn-node", "etsi-qkd-node-types"} <= names
    assert caps["gnmi_version"] == "0.10.0"
    assert {"json", "json_ietf"} <= set(caps["supported_encodings"])


def test_get_set_delete_round_trip(target, node_id):
    lid = str(uuid.uuid4())
    link = {"qkdl_id": lid, "qkdl_enable": True, "qkdl_local": {"qkdn_id": node_id},
            "qkdl_remote": {"qkdn_id": str(uuid.uuid4())}, "qkdl_type": "etsi-qkd-node-types:PHYS"}
    p = f"{LINKS}[qkdl_id={lid}]"
    s1, g1, g2, s2, g3 = run(
        target,
        ("set", {"update": [[p, link]], "encoding": "json_ietf"}),
        ("get", {"path": [f"{p}/qkdl_enable"]}),  # pygnmi's default encoding: JSON
        ("get", {"path": [p], "encoding": "json_ietf", "datatype": "config"}),
        ("set", {"delete": [p]}),
        ("get", {"path": [p]}),
    )
    assert "error" not in s1 and s1["response"][0]["op"] == "UPDATE"
    assert g1["notification"][0]["update"][0]["val"] is True
    entry = g2["notification"][0]["update"][0]["val"]
    assert entry["qkdl_id"] == lid and entry["qkdl_remote"] == link["qkdl_remote"]
    assert "error" not in s2
    assert g3.get("code") == "NOT_FOUND", g3


def test_bad_set_reports_error(target):
    (res,) = run(target, ("set", {"update": [["/qkd_node/no_such", {"x": 1}]], "encoding": "json_ietf"}))
    assert res.get("code") == "INVALID_ARGUMENT" and "no_such" in res["error"], res


def test_subscribe_once_and_stream(target, node_id):
    lid = str(uuid.uuid4())
    p = f"{LINKS}[qkdl_id={lid}]"
    link = {"qkdl_id": lid, "qkdl_enable": True, "qkdl_local": {"qkdn_id": node_id},
            "qkdl_remote": {"qkdn_id": str(uuid.uuid4())}, "qkdl_type": "etsi-qkd-node-types:PHYS"}
    once, stream, _ = run(
        target,
        ("subscribe_once", {"subscription": [{"path": "/qkd_node/qkdn_id"}], "mode": "once", "encoding": "json"}),
        ("subscribe_stream", {"subscription": [{"path": p, "mode": "on_change"}], "mode": "stream",
                              "encoding": "json_ietf", "take": 2, "trigger": [[p, link]]}),
        ("set", {"delete": [p]}),
    )
    assert any(m.get("update", {}).get("update", [{}])[0].get("val") == node_id for m in once if "update" in m)
    assert stream[0].get("sync_response") is True
    vals = {u["path"]: u["val"] for u in stream[1]["update"]["update"]}
    assert any(k.endswith("qkdl_enable") and v is True for k, v in vals.items())
