"""LKMS nodes as separate OS processes (`python -m sdqkd.lkms.serve`): a key exchange, and a
node killed with SIGKILL between reservation and delivery leaves both stores consistent."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from lkmsnet import Pki

from sdqkd.lkms.tlsctx import https_client_context

ROOT = Path(__file__).resolve().parents[2]


def wait_until(cond: Any, what: str, limit: float = 30.0) -> None:
    """Poll `cond` (a safety net against hangs, not a timing assertion)."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, tmp: Path, name: str, cfg: dict[str, Any]) -> None:
        self.name, self.cfg = name, cfg
        self.cfg_path = tmp / f"{name}.yaml"
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, **extra: Any) -> None:
        self.cfg_path.write_text(yaml.safe_dump({**self.cfg, **extra}))
        with self.log.open("a") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sdqkd.lkms.serve", "--config", str(self.cfg_path), "--log-level", "DEBUG"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=logf, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until READY (or the process dies)
        assert line.startswith("READY "), f"{self.name} did not start: {self.log.read_text()[-2000:]}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.cfg['data_dir']}/keys.sqlite?mode=ro", uri=True)

    def keys(self) -> dict[str, int]:
        with self.db() as c:
            return {str(uuid.UUID(bytes=k)): s for k, s in c.execute("SELECT kid, state FROM all_keys")}


@pytest.fixture
def two_processes(tmp_path: Path, tpki: Pki) -> Any:
    ids = {"A": str(uuid.uuid4()), "B": str(uuid.uuid4())}
    q = str(uuid.uuid4())
    ports = {n: {k: _port() for k in ("etsi014", "etsi004", "keysync")} for n in ids}
    peer = {"A": "B", "B": "A"}
    saes = {"A": "pa1", "B": "pb1"}
    nodes = {}
    for n, nid in ids.items():
        tls = tpki.node(nid)
        p = peer[n]
        nodes[n] = Node(tmp_path, n, {
            "id": nid, "name": n, "data_dir": str(tmp_path / n),
            "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
            **{k: {"listen": f"127.0.0.1:{v}"} for k, v in ports[n].items()},
            "saes": [{"id": saes[n]}],
            "links": [{"qkdl_id": q, "peer_node_id": ids[p], "peer_kms_address": f"127.0.0.1:{ports[p]['keysync']}"}],
            "apps": [{"app_id": "papp", "master_sae_id": "pa1", "slave_sae_ids": ["pb1"], "local_node_id": nid,
                      "remote_node_id": ids[p], "backing_qkdl_ids": [q]}],
            "dev_key_feed": [{"qkdl_id": q, "seed": "s1", "blocks": 2, "block_keys": 256, "key_bits": 256}],
        })
    for n in nodes.values():
        n.start()
    try:
        yield nodes, ports
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)


def test_separate_processes_and_sigkill_between_reserve_and_delivery(two_processes: Any, tpki: Pki) -> None:
    nodes, ports = two_processes
    A, B = nodes["A"], nodes["B"]
    ca = httpx.Client(verify=https_client_context(tpki.sae("pa1")), timeout=20)
    cb = httpx.Client(verify=https_client_context(tpki.sae("pb1")), timeout=20)
    url_a = f"https://127.0.0.1:{ports['A']['etsi014']}/api/v1/keys"
    url_b = f"https://127.0.0.1:{ports['B']['etsi014']}/api/v1/keys"

    def exchange() -> None:
        r = ca.post(url_a + "/pb1/enc_keys", json={"number": 3})
        assert r.status_code == 200, r.text
        r2 = cb.post(url_b + "/pa1/dec_keys", json={"key_IDs": [{"key_ID": k["key_ID"]} for k in r.json()["keys"]]})
        assert r2.status_code == 200 and r2.json() == r.json()

    exchange()

    # Restart A with the fault point armed; the request hangs after the peer reserved.
    A.stop()
    A.start(fault="pause_after_reserve")
    outcome: list[object] = []

    def hanging() -> None:
        try:
            outcome.append(ca.post(url_a + "/pb1/enc_keys", json={"number": 2}).status_code)
        except httpx.HTTPError as e:
            outcome.append(e)

    t = threading.Thread(target=hanging)
    t.start()
    pat = re.compile(r"paused after Reserve txn (\S+) keys (\S+)")
    wait_until(lambda: pat.search(A.log.read_text()), "the fault point")
    m = pat.search(A.log.read_text())
    assert m is not None
    kids = m.group(2).split(",")
    assert {B.keys()[k] for k in kids} == {2}  # RESERVED_IN at the peer
    A.stop(signal.SIGKILL)
    t.join(20)
    assert outcome and not isinstance(outcome[0], int)  # the SAE never got those keys

    A.start()  # recovery erases A's reserved copies and sends Release to B
    wait_until(lambda: not set(kids) & set(B.keys()), "the Release to reach B")
    assert not set(kids) & set(A.keys())
    r = cb.get(url_b + "/pa1/dec_keys", params={"key_ID": kids[0]})
    assert r.status_code == 400
    exchange()  # business as usual

    for n in (A, B):
        n.stop()
    ka, kb = A.keys(), B.keys()
    assert ka == kb and set(ka.values()) == {0}
    ca.close()
    cb.close()
    assert os.path.exists(A.cfg["data_dir"])


def test_sigkill_with_assigned_stream_window_loses_and_duplicates_nothing(two_processes: Any, tpki: Pki) -> None:
    """ETSI 004: the owner assigns a window of chunks ahead (reserve, AssignStream: the peer
    takes them) and makes them deliverable *before* erasing its reserved copies. Killed in
    between, it must not get any of them back after the restart: they were (or may have been)
    delivered. Both stores stay equal."""
    import grpc

    from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb
    from sdqkd.generated.proto.sdqkd import etsi004_pb2_grpc as pg
    from sdqkd.lkms.tlsctx import grpc_channel_credentials

    nodes, ports = two_processes
    A, B = nodes["A"], nodes["B"]
    A.stop()
    A.start(fault="pause_before_stream_commit")
    cha = grpc.secure_channel(f"127.0.0.1:{ports['A']['etsi004']}", grpc_channel_credentials(tpki.sae("pa1")))
    chb = grpc.secure_channel(f"127.0.0.1:{ports['B']['etsi004']}", grpc_channel_credentials(tpki.sae("pb1")))
    ka, kb = pg.KeyDeliveryStub(cha), pg.KeyDeliveryStub(chb)
    o = ka.OpenConnect(pb.OpenConnectRequest(source="pa1", destination="pb1", qos=pb.QoS(timeout=2000)))
    assert o.status == pb.PEER_NOT_CONNECTED
    ksid = o.key_stream_id
    assert kb.OpenConnect(pb.OpenConnectRequest(source="pb1", destination="pa1", key_stream_id=ksid)
                          ).status == pb.SUCCESSFUL
    first = ka.GetKey.future(pb.GetKeyRequest(key_stream_id=ksid))  # assigns a window, then pauses
    pat = re.compile(r"paused before stream commit txn (\S+) keys (\S+)")
    wait_until(lambda: pat.search(A.log.read_text()), "the fault point")
    m = pat.search(A.log.read_text())
    assert m is not None
    kids = m.group(2).split(",")
    assert len(kids) > 1
    # The window is deliverable meanwhile, the same bytes at both ends.
    r0 = ka.GetKey(pb.GetKeyRequest(key_stream_id=ksid))
    b0 = kb.GetKey(pb.GetKeyRequest(key_stream_id=ksid, index=0))
    assert (r0.status, r0.index, b0.status) == (pb.SUCCESSFUL, 0, pb.SUCCESSFUL) and r0.key_buffer == b0.key_buffer
    assert {A.keys()[k] for k in kids} == {1}  # still RESERVED_OUT at the owner
    assert not set(kids) & set(B.keys())  # taken at the peer
    A.stop(signal.SIGKILL)
    with pytest.raises(grpc.RpcError):
        first.result(20)
    cha.close()
    chb.close()

    A.start()  # recovery erases the reserved copies: nothing of the window comes back
    assert not set(kids) & set(A.keys())
    assert not set(kids) & set(B.keys())
    for n in (A, B):
        n.stop()
    ka_keys, kb_keys = A.keys(), B.keys()
    assert ka_keys == kb_keys and set(ka_keys.values()) == {0}


def pool(node: Node, qkdl_id: str) -> dict[str, int]:
    with node.db() as c:
        return {str(uuid.UUID(bytes=k)): s for k, s in c.execute(
            "SELECT kid, state FROM all_keys JOIN pools USING(pid) WHERE qkdl_id=?", (qkdl_id,))}


def test_trusted_node_sigkilled_mid_relay_both_ends_agree(tmp_path: Path, tpki: Pki) -> None:
    """A -- B -- C as processes, relay over ETSI 020. B is SIGKILLed after it forwarded a batch
    to C but before answering A; A's hop is uncertain, its pads stay reserved. B restarts; A
    resends, B finds the pads gone (consumed before the kill), A erases its copies and voids the
    batch along the path, so C keeps nothing A does not have. Then keys flow again, equal at A and C."""
    names = ["A", "B", "C"]
    ids = {n: str(uuid.uuid4()) for n in names}
    ports = {n: {k: _port() for k in ("etsi014", "etsi004", "keysync", "etsi020")} for n in names}
    ab, bc, v = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    saes = {"A": [{"id": "ra"}], "B": [], "C": [{"id": "rc"}]}

    def ks(n: str) -> str:
        return f"127.0.0.1:{ports[n]['keysync']}"

    links = {
        "A": [{"qkdl_id": ab, "peer_node_id": ids["B"], "peer_kms_address": ks("B")},
              {"qkdl_id": v, "peer_node_id": ids["C"], "peer_kms_address": ks("C"), "kind": "VIRT",
               "next_hops": [ids["B"], ids["C"]]}],
        "B": [{"qkdl_id": ab, "peer_node_id": ids["A"], "peer_kms_address": ks("A")},
              {"qkdl_id": bc, "peer_node_id": ids["C"], "peer_kms_address": ks("C")},
              {"qkdl_id": v, "peer_node_id": ids["C"], "peer_kms_address": ks("C"), "kind": "VIRT",
               "prev_hop": ids["A"], "next_hops": [ids["C"]]}],
        "C": [{"qkdl_id": bc, "peer_node_id": ids["B"], "peer_kms_address": ks("B")},
              {"qkdl_id": v, "peer_node_id": ids["A"], "peer_kms_address": ks("A"), "kind": "VIRT",
               "prev_hop": ids["B"]}],
    }
    feeds = {"A": [ab], "B": [ab, bc], "C": [bc]}
    apps = {n: [{"app_id": "rapp", "master_sae_id": "ra", "slave_sae_ids": ["rc"], "local_node_id": ids[n],
                 "remote_node_id": ids["C" if n == "A" else "A"], "backing_qkdl_ids": [v]}] for n in ("A", "C")}
    nodes = {}
    for n in names:
        tls = tpki.node(ids[n])
        nodes[n] = Node(tmp_path, n, {
            "id": ids[n], "name": n, "data_dir": str(tmp_path / n),
            "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
            **{k: {"listen": f"127.0.0.1:{p}"} for k, p in ports[n].items()},
            "saes": saes[n], "links": links[n], "apps": apps.get(n, []),
            "lkms": {"relay_target_keys": 8, "rpc_timeout_s": 2.0},
            "dev_key_feed": [{"qkdl_id": q, "seed": q, "blocks": 1, "block_keys": 512, "key_bits": 256}
                             for q in feeds[n]]})
    A, B, C = nodes["A"], nodes["B"], nodes["C"]
    try:
        B.start(fault="pause_before_020_reply")
        C.start()
        A.start()  # A's filler relays at once; B forwards the batch to C, then hangs
        wait_until(lambda: "paused before answering relay" in B.log.read_text(), "the fault point")
        B.stop(signal.SIGKILL)
        wait_until(lambda: 1 in pool(A, ab).values(), "A's pads reserved (the hop's outcome unknown)", limit=60)
        B.start()

        def agree() -> bool:
            if any(1 in pool(n, q).values() for n in (A, B) for q in (ab, bc)):
                return False  # reconciliation still under way
            return (pool(A, ab) == pool(B, ab) and pool(B, bc) == pool(C, bc) and pool(A, v) == pool(C, v)
                    and len(pool(A, v)) > 0)

        try:
            wait_until(agree, "A, B and C to agree", limit=90)
        except AssertionError:
            for q, x, y in ((ab, A, B), (bc, B, C), (v, A, C)):
                px, py = pool(x, q), pool(y, q)
                print(q[:8], x.name, y.name, len(px), len(py), {k: (px.get(k), py.get(k)) for k in set(px) ^ set(py)},
                      {k: s for k, s in px.items() if s}, {k: s for k, s in py.items() if s})
            raise
        ca = httpx.Client(verify=https_client_context(tpki.sae("ra")), timeout=20)
        cc = httpx.Client(verify=https_client_context(tpki.sae("rc")), timeout=20)
        r = ca.post(f"https://127.0.0.1:{ports['A']['etsi014']}/api/v1/keys/rc/enc_keys", json={"number": 4})
        assert r.status_code == 200, r.text
        r2 = cc.post(f"https://127.0.0.1:{ports['C']['etsi014']}/api/v1/keys/ra/dec_keys",
                     json={"key_IDs": [{"key_ID": k["key_ID"]} for k in r.json()["keys"]]})
        assert r2.status_code == 200 and r2.json() == r.json()
        ca.close()
        cc.close()
    finally:
        for n in nodes.values():
            n.stop(signal.SIGKILL)
