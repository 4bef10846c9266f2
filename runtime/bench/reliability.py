"""`sdqkd bench reliability`: keys are never lost or stranded through crashes, and idle
connections cost bounded memory.

- kill probe: two LKMS node processes (`python -m sdqkd.lkms.serve`, mutual TLS, one link,
  one application used in both directions) under continuous ETSI 014 traffic (enc_keys at
  one node, dec_keys of the same key IDs at the other, both directions); each round SIGKILLs
  one node at a random moment and restarts it. Every third round (the first included) first
  stalls the victim with SIGSTOP for longer than the KeySync deadline, so that reservations
  towards it end with an unknown outcome before it is killed: the case that used to leave
  keys at one end only. Checked: every key an SAE got from enc_keys is
  fetched by the peer SAE with the same bytes (mismatches, lost), and after the traffic stops
  both ends' pools hold the same AVAILABLE key IDs with the same bytes (divergence = keys held
  at one end only, target 0) and no reservation of the master side is left.
- idle connections: an LKMS node process and N TLS connections that complete the handshake
  (with a client certificate) and then send nothing; reported are the node's RSS before and
  with them open, how many the server kept open (the ETSI 014 connection cap) and how many it
  closed after its idle timeout.

The tests run the kill probe for a few rounds (tests/lkms/test_lkms_kill.py); this runs it long.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sdqkd import pki
from sdqkd.argtypes import integer
from sdqkd.tls import https_client_context, tls_files

APP_SAES = ("sae-a", "sae-b")
_STALE = re.compile(r"erased (\d+) stale keys")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class LkmsProcess:
    """One `python -m sdqkd.lkms.serve` process, restartable on the same data dir and ports."""

    def __init__(self, work: Path, name: str, cfg: dict[str, Any]) -> None:
        self.name, self.cfg = name, cfg
        self.cfg_path = work / f"{name}.json"
        self.log = work / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.cfg_path.write_text(json.dumps(cfg))  # JSON is YAML

    def start(self) -> None:
        with self.log.open("a") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "sdqkd.lkms.serve", "--config", str(self.cfg_path),
                                          "--log-level", "INFO"], stdout=subprocess.PIPE, stderr=logf, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until READY (or the process dies)
        if not line.startswith("READY "):
            raise RuntimeError(f"LKMS {self.name} did not start: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def keys(self) -> dict[bytes, tuple[int, bytes]]:
        """kid -> (state, material), read from the node's SQLite file (read-only)."""
        con = sqlite3.connect(f"file:{self.cfg['data_dir']}/keys.sqlite?mode=ro", uri=True, timeout=10)
        try:
            return {k: (s, m) for k, s, m in con.execute("SELECT kid, state, material FROM all_keys")}
        finally:
            con.close()


class Pair:
    """Nodes A and B with one PHYS link, SAE sae-a at A and sae-b at B, one application
    (either SAE may be the master of a request), `keys` keys of 256 bits in the pool."""

    def __init__(self, work: Path, keys: int, limits: dict[str, Any] | None = None) -> None:
        ca, ca_path = pki.write_ca(work / "pki")
        self.ca_path = ca_path
        ids = {"A": str(uuid.uuid4()), "B": str(uuid.uuid4())}
        self.sae = {s: pki.write_identity(ca, ca_path, work / "pki", s, server=False) for s in APP_SAES}
        ports = {n: {k: _port() for k in ("etsi014", "etsi004", "keysync")} for n in ids}
        self.url = {n: f"https://127.0.0.1:{ports[n]['etsi014']}/api/v1/keys" for n in ids}
        q = str(uuid.uuid4())
        self.nodes: dict[str, LkmsProcess] = {}
        for n, other, sae in (("A", "B", "sae-a"), ("B", "A", "sae-b")):
            tls = pki.write_identity(ca, ca_path, work / "pki", ids[n], server=True)
            self.nodes[n] = LkmsProcess(work, n, {
                "id": ids[n], "data_dir": str(work / n),
                "tls": {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)},
                **{k: {"listen": f"127.0.0.1:{v}"} for k, v in ports[n].items()},
                "saes": [{"id": sae}], "lkms": limits or {},
                "links": [{"qkdl_id": q, "peer_node_id": ids[other],
                           "peer_kms_address": f"127.0.0.1:{ports[other]['keysync']}"}],
                "apps": [{"app_id": "probe", "master_sae_id": "sae-a", "slave_sae_ids": ["sae-b"],
                          "local_node_id": ids[n], "remote_node_id": ids[other], "backing_qkdl_ids": [q]}],
                "dev_key_feed": [{"qkdl_id": q, "seed": "probe", "blocks": -(-keys // 1024), "block_keys": 1024,
                                  "key_bits": 256}]})

    def client(self, sae: str) -> httpx.Client:
        ctx = https_client_context(tls_files(self.ca_path, self.sae[sae].cert, self.sae[sae].key))
        return httpx.Client(verify=ctx, timeout=6)

    def start(self) -> None:
        for n in self.nodes.values():
            n.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for n in self.nodes.values():
            n.stop(sig)


@dataclass
class KillReport:
    rounds: int
    enc_requests: int = 0
    delivered_keys: int = 0  # keys SAEs got from enc_keys
    checked_keys: int = 0  # of those, fetched by the peer SAE and compared byte for byte
    mismatches: int = 0
    lost: int = 0  # delivered at the master, "not found" at the slave
    answer_lost: int = 0  # dec_keys served by a node killed before its answer left (not a loss of the system)
    pool_keys: int = 0  # AVAILABLE keys compared between the ends after recovery
    divergence: int = 0  # AVAILABLE keys held at one end only (or with other bytes)
    reserved_out_left: int = 0
    converge_s: float = 0.0
    stale_erased: int = 0  # keys reconciliation erased (held at one end only after a crash)
    uncertain: int = 0  # enc_keys answered 503 because the Reserve towards a stopped node timed out
    notes: list[str] = field(default_factory=list)


class _Traffic:
    """enc_keys at one node, dec_keys of the same IDs at the other, both directions, until
    stopped; keys whose dec_keys could not be done yet (node down) are retried."""

    def __init__(self, pair: Pair, report: KillReport) -> None:
        self.pair, self.r = pair, report
        self.clients = {s: pair.client(s) for s in APP_SAES}
        # (slave node, master sae, {id: key}, a dec_keys for them may have been served unseen)
        self.pending: list[tuple[str, str, dict[str, str], bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="probe-traffic", daemon=True)

    def _run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            master_node, slave_node = ("A", "B") if turn % 2 else ("B", "A")
            master, slave = ("sae-a", "sae-b") if master_node == "A" else ("sae-b", "sae-a")
            try:
                r = self.clients[master].post(f"{self.pair.url[master_node]}/{slave}/enc_keys", json={"number": 4})
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            self.r.enc_requests += 1
            if r.status_code == 200:
                got = {k["key_ID"]: k["key"] for k in r.json()["keys"]}
                self.r.delivered_keys += len(got)
                self.pending.append((slave_node, master, got, False))
            self.drain_once()

    def drain_once(self) -> None:
        left = []
        for slave_node, master, got, unseen in self.pending:
            slave = "sae-b" if master == "sae-a" else "sae-a"
            try:
                r = self.clients[slave].post(f"{self.pair.url[slave_node]}/{master}/dec_keys",
                                             json={"key_IDs": [{"key_ID": k} for k in got]})
            except httpx.ConnectError:  # never reached the node
                left.append((slave_node, master, got, unseen))
                continue
            except httpx.HTTPError:  # the node may have served it and died before answering
                left.append((slave_node, master, got, True))
                continue
            if r.status_code == 200:
                back = {k["key_ID"]: k["key"] for k in r.json()["keys"]}
                self.r.checked_keys += len(got)
                self.r.mismatches += sum(1 for k, v in got.items() if back.get(k) != v)
            elif r.status_code == 400 and unseen:
                self.r.answer_lost += len(got)  # handed out by a node killed before it answered
            elif r.status_code == 400:
                self.r.lost += len(got)
                self.r.notes.append(f"dec_keys at {slave_node}: {r.text[:120]}")
            else:
                left.append((slave_node, master, got, unseen))
        self.pending = left

    def finish(self, limit: float) -> None:
        self.stop.set()
        self.thread.join(30)
        end = time.monotonic() + limit
        while self.pending and time.monotonic() < end:
            self.drain_once()
            if self.pending:
                time.sleep(0.2)
        if self.pending:
            self.r.notes.append(f"{sum(len(p[2]) for p in self.pending)} delivered keys never fetched")
        for c in self.clients.values():
            c.close()


def _pool_diff(pair: Pair) -> tuple[int, int, int]:
    """(AVAILABLE keys at A, keys at one end only or with other bytes, RESERVED_OUT keys)."""
    ka, kb = pair.nodes["A"].keys(), pair.nodes["B"].keys()
    av_a = {k: m for k, (s, m) in ka.items() if s == 0}
    av_b = {k: m for k, (s, m) in kb.items() if s == 0}
    diff = len(set(av_a.items()) ^ set(av_b.items()))
    out = sum(1 for s, _ in ka.values() if s == 1) + sum(1 for s, _ in kb.values() if s == 1)
    return len(av_a), diff, out


def _reserve_towards(pair: Pair, stalled: str, report: KillReport) -> None:
    """enc_keys at the other node while `stalled` is stopped: its Reserve towards the stalled
    node cannot be answered, so the master erases its copies without knowing whether the peer
    reserved them (it never will: it is killed next). Without reconciliation these keys would
    stay AVAILABLE at the stalled node only."""
    master_node = "B" if stalled == "A" else "A"
    master, slave = ("sae-a", "sae-b") if master_node == "A" else ("sae-b", "sae-a")
    with pair.client(master) as c:
        try:
            r = c.post(f"{pair.url[master_node]}/{slave}/enc_keys", json={"number": 4})
            report.uncertain += r.status_code == 503
        except httpx.HTTPError:
            pass


def kill_probe(work: Path, rounds: int, *, keys: int = 4096, seed: int = 18, converge_limit: float = 60.0,
               gap: tuple[float, float] = (0.3, 1.2)) -> KillReport:
    """Run `rounds` SIGKILL-and-restart rounds under traffic; see the module docstring."""
    rng = random.Random(seed)
    rpc_timeout = 2.0
    pair = Pair(work, keys, limits={"reconcile_grace_s": 1.0, "reconcile_min_gap_s": 0.5,
                                    "reconcile_interval_s": 5.0, "rpc_timeout_s": rpc_timeout})
    report = KillReport(rounds)
    pair.start()
    traffic = _Traffic(pair, report)
    try:
        traffic.thread.start()
        for i in range(rounds):
            time.sleep(rng.uniform(*gap))
            victim = pair.nodes[rng.choice("AB")]
            if i % 3 == 0 and victim.proc is not None:
                victim.proc.send_signal(signal.SIGSTOP)  # calls towards it time out: outcome unknown
                _reserve_towards(pair, victim.name, report)  # at least one such call for certain
            victim.stop(signal.SIGKILL)
            victim.start()
        time.sleep(1.0)
        traffic.finish(limit=30.0)
        t0 = time.monotonic()
        while True:
            report.pool_keys, report.divergence, report.reserved_out_left = _pool_diff(pair)
            if (report.divergence == 0 and report.reserved_out_left == 0) or time.monotonic() - t0 > converge_limit:
                break
            time.sleep(0.25)
        report.converge_s = round(time.monotonic() - t0, 2)
        report.stale_erased = sum(int(m.group(1)) for n in pair.nodes.values()
                                  for m in _STALE.finditer(n.log.read_text()))
    finally:
        traffic.stop.set()
        pair.stop(signal.SIGKILL)
    return report


def idle_connections(work: Path, count: int, *, cap: int | None = None, idle_s: float | None = None,
                     hold_s: float = 3.0) -> dict[str, Any]:
    """Open `count` TLS connections (handshake with a client certificate, then silence) to an
    LKMS node's ETSI 014 port; report the node's RSS and how many the server closed."""
    limits: dict[str, Any] = {}
    if cap is not None:
        limits["etsi014_max_connections"] = cap
    if idle_s is not None:
        limits["etsi014_idle_timeout_s"] = idle_s
    pair = Pair(work, 1024, limits=limits)
    node = pair.nodes["A"]
    node.start()
    assert node.proc is not None
    pid = node.proc.pid
    host, port = pair.url["A"].split("/")[2].split(":")
    ctx = https_client_context(tls_files(pair.ca_path, pair.sae["sae-a"].cert, pair.sae["sae-a"].key))
    socks: list[ssl.SSLSocket] = []
    refused = 0
    try:
        time.sleep(0.5)
        base = _rss_kib(pid)
        for _ in range(count):
            try:
                s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=host)
                socks.append(s)
            except OSError:
                refused += 1
        time.sleep(hold_s)
        peak = _rss_kib(pid)
        open_ = 0
        for s in socks:  # a connection the server closed reads EOF at once
            s.setblocking(False)
            try:
                open_ += 0 if s.recv(1) == b"" else 1
            except (ssl.SSLWantReadError, BlockingIOError):
                open_ += 1
            except OSError:
                pass
        return {"connections": count, "handshakes_completed": len(socks), "refused": refused,
                "still_open": open_, "rss_base_mb": round(base / 1024, 1), "rss_with_mb": round(peak / 1024, 1),
                "rss_per_conn_kb": round((peak - base) / max(1, open_), 1)}
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        node.stop(signal.SIGKILL)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench reliability")
    ap.add_argument("--rounds", type=integer(1), default=30, help="SIGKILL rounds of the kill probe")
    ap.add_argument("--keys", type=integer(0), default=0,
                    help="keys fed to the pool (default 1,024 per round: the traffic takes ~210 per round "
                         "on this machine, and the final comparison needs keys left)")
    ap.add_argument("--connections", type=integer(1), default=2000, help="idle TLS connections to ETSI 014")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sdqkd-rel-") as d:
        rep = kill_probe(Path(d) / "kill", args.rounds, keys=args.keys or max(4096, 1024 * args.rounds))
        out["kill"] = asdict(rep)
    with tempfile.TemporaryDirectory(prefix="sdqkd-idle-") as d:
        out["idle_capped"] = idle_connections(Path(d) / "capped", args.connections)
    with tempfile.TemporaryDirectory(prefix="sdqkd-idle-") as d:
        out["idle_uncapped"] = idle_connections(Path(d) / "uncapped", args.connections, cap=100_000, idle_s=3600)
    out["load"] = Path("/proc/loadavg").read_text().split()[:3]
    k = out["kill"]
    # the same verdict with or without --json: scripts that ask for JSON check the exit code too
    ok = k["divergence"] == 0 and k["lost"] == 0 and k["mismatches"] == 0 and bool(k["pool_keys"])
    if args.json:
        print(json.dumps(out))
        return 0 if ok else 1
    print(f"kill probe: {k['rounds']} SIGKILL rounds, {k['enc_requests']} enc_keys requests, "
          f"{k['delivered_keys']} keys delivered, {k['checked_keys']} checked at the peer SAE: "
          f"{k['mismatches']} mismatches, {k['lost']} lost ({k['answer_lost']} served by a node killed "
          "before it could answer)")
    print(f"  pools after recovery: {k['pool_keys']} AVAILABLE keys compared, divergence {k['divergence']}, "
          f"RESERVED_OUT left {k['reserved_out_left']}, converged in {k['converge_s']} s; "
          f"{k['stale_erased']} stale keys erased by reconciliation "
          f"({k['uncertain']} reservations with an unknown outcome forced by the SIGSTOP rounds)")
    if not k["pool_keys"]:
        print("  the traffic drained the pools: nothing was left to compare (feed more with --keys)")
    for note in k["notes"][:5]:
        print("  note:", note)
    for name in ("idle_capped", "idle_uncapped"):
        i = out[name]
        print(f"{name}: {i['connections']} idle TLS connections: {i['handshakes_completed']} handshakes, "
              f"{i['still_open']} kept open; node RSS {i['rss_base_mb']} -> {i['rss_with_mb']} MB")
    print("load average:", " ".join(out["load"]))
    return 0 if ok else 1
