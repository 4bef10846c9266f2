"""Test helper: real LKMS nodes on loopback inside the test process (an asyncio loop in a
background thread), a PKI, and real clients (httpx over mutual TLS, sync gRPC)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from sdqkd import pki
from sdqkd.generated.proto.sdqkd import etsi004_pb2_grpc, kms_pb2_grpc
from sdqkd.lkms.core import Limits
from sdqkd.lkms.node import Lkms
from sdqkd.lkms.tlsctx import grpc_channel_credentials, https_client_context

# Anything in a log that looks like 16+ bytes of hex or base64 (UUIDs are split by dashes).
LONG_BLOB = re.compile(r"[0-9a-fA-F]{32,}|[A-Za-z0-9+/]{40,}={0,2}")


class RenderedLogs(logging.Handler):
    """Every record at DEBUG and above, from every logger, rendered as it is emitted, in the
    emitting thread (its message and the repr of its args), as a real handler renders it. Records
    kept and rendered later, on the test's thread, can name objects the network's threads are
    still using (a third-party logger's args): one such deferred render crashed the interpreter
    once in CI (SIGSEGV in `LogRecord.getMessage`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.args!r}")

    def __enter__(self) -> RenderedLogs:
        root = logging.getLogger()
        self._level = root.level
        root.setLevel(logging.DEBUG)
        root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def wait_until(cond: Any, what: str, limit: float = 30.0) -> None:
    """Poll `cond` (a safety net against hangs, not a timing assertion)."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._t = threading.Thread(target=self.loop.run_forever, name="lkms-test-loop", daemon=True)
        self._t.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            self.loop.call_soon_threadsafe(self._dump)
            time.sleep(0.5)
            raise

    def _dump(self) -> None:
        """On a hang, show where every task of the loop waits (pytest captures it)."""
        import traceback

        for t in asyncio.all_tasks(self.loop):
            print("TASK", t.get_name(), t.get_coro())
            try:
                for f in t.get_stack():
                    print("   ", f.f_code.co_filename, f.f_lineno, f.f_code.co_name)
            except Exception as e:
                print("    (no stack:", type(e).__name__, ")")
        for tid, frame in sys._current_frames().items():
            print("THREAD", tid)
            traceback.print_stack(frame, file=sys.stdout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._t.join(5)


@dataclass
class Pki:
    dir: Path
    ca: pki.Ca
    ca_path: Path

    @classmethod
    def create(cls, d: Path) -> Pki:
        ca, path = pki.write_ca(d)
        return cls(d, ca, path)

    def node(self, node_id: str) -> pki.TlsFiles:
        return pki.write_identity(self.ca, self.ca_path, self.dir / "nodes", node_id, server=True)

    def sae(self, sae_id: str) -> pki.TlsFiles:
        f = self.dir / "saes" / f"{sae_id}.pem"
        if f.exists():
            return pki.TlsFiles(self.ca_path, f, f.with_suffix(".key"))
        return pki.write_identity(self.ca, self.ca_path, self.dir / "saes", sae_id, server=False)


class Net:
    """Named nodes with their SAEs; `phys`/`virt` install links, `app` registers apps, `feed`
    puts identical key blocks into both ends of a physical link (as the engine would)."""

    def __init__(self, lt: LoopThread, p: Pki, tmp: Path, saes: dict[str, list[str]], tls: bool = True,
                 limits: Limits | None = None) -> None:
        self.lt, self.pki, self.tmp, self.tls = lt, p, tmp, tls
        self.ids = {name: str(uuid.uuid4()) for name in saes}
        self.nodes = {name: Lkms(self.ids[name], tmp / name, p.node(self.ids[name]) if tls else None,
                                 saes=s, limits=limits or Limits()) for name, s in saes.items()}
        self.links: dict[frozenset[str], str] = {}
        self._clients: dict[str, httpx.Client] = {}
        self._channels: list[grpc.Channel] = []
        for n in self.nodes.values():
            lt.run(n.start())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return self.lt.run(coro, timeout)

    def restart(self, name: str, provision: bool = True) -> Lkms:
        """Stop node `name` and start a new `Lkms` on the same data dir and KeySync address, as a
        process restart would: its registry starts empty; `provision` re-installs its links and
        apps the way the controller does when the node comes back."""
        old = self.nodes[name]
        self.lt.run(old.stop())
        new = Lkms(old.node_id, old.data_dir, old.tls, saes=old.registry.local_saes, limits=old.limits,
                   keysync_listen=old.addresses["keysync"], etsi014_listen=old.addresses["etsi014"],
                   etsi020_listen=old.addresses["etsi020"])
        self.nodes[name] = new
        self.lt.run(new.start())
        if provision:
            self.provision(name, old)
        return new

    def provision(self, name: str, old: Lkms) -> None:
        """Install on node `name` the links and apps `old` had (the controller re-provisioning)."""
        new = self.nodes[name]
        for link in old.registry.links.values():
            self.run(new.set_link(link.qkdl_id, link.peer_node_id, link.peer_kms_address, link.kind,
                                  link.prev_hop, link.next_hops, exit_peer=link.exit_peer))
        for app in old.registry.apps.values():
            new.register_app(app.app_id, app.master_sae_id, app.slave_sae_ids, app.local_node_id,
                             app.remote_node_id, app.backing_qkdl_ids)

    def phys(self, a: str, b: str) -> str:
        q = str(uuid.uuid4())
        na, nb = self.nodes[a], self.nodes[b]
        self.run(na.set_link(q, nb.node_id, nb.addresses["keysync"]))
        self.run(nb.set_link(q, na.node_id, na.addresses["keysync"]))
        self.links[frozenset((a, b))] = q
        return q

    def virt(self, path: list[str], exit_peer: str | None = None) -> str:
        """A virtual link along `path`; `exit_peer`: it leaves for that external KMS of the last node."""
        q = str(uuid.uuid4())
        src, dst = self.nodes[path[0]], self.nodes[path[-1]]
        for i, name in enumerate(path):
            n = self.nodes[name]
            far = dst if i < len(path) - 1 else src
            prev = self.ids[path[i - 1]] if i > 0 else None
            nxt = [self.ids[x] for x in path[i + 1:]]
            self.run(n.set_link(q, far.node_id, far.addresses["keysync"], kind="VIRT", prev_hop=prev, next_hops=nxt,
                                exit_peer=exit_peer))
        return q

    def app(self, app_id: str, master: tuple[str, str], slaves: list[tuple[str, str]], qkdl: str) -> None:
        """master/slaves as (sae, node name); registered on both end nodes."""
        mnode, snode = master[1], slaves[0][1]
        for name in {mnode, snode}:
            local, remote = (mnode, snode) if name == mnode else (snode, mnode)
            self.nodes[name].register_app(app_id, master[0], [s for s, _ in slaves], self.ids[local],
                                          self.ids[remote], [qkdl])

    def feed(self, a: str, b: str, nkeys: int, key_bits: int = 256) -> list[str]:
        q = self.links[frozenset((a, b))]
        mat = os.urandom(nkeys * key_bits // 8)
        bid = str(uuid.uuid4())
        ids = self.run(self.nodes[a].add_block(q, mat, key_bits, bid))
        assert self.run(self.nodes[b].add_block(q, mat, key_bits, bid)) == ids
        return ids

    def url(self, node: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.nodes[node].addresses['etsi014']}/api/v1/keys"

    def client(self, sae: str) -> httpx.Client:
        c = self._clients.get(sae)
        if c is None:
            if self.tls:
                c = httpx.Client(verify=https_client_context(self.pki.sae(sae)), timeout=20)
            else:
                c = httpx.Client(headers={"X-SAE-ID": sae}, timeout=20)
            self._clients[sae] = c
        return c

    def kd(self, node: str, sae: str) -> etsi004_pb2_grpc.KeyDeliveryStub:
        addr = self.nodes[node].addresses["etsi004"]
        ch = (grpc.secure_channel(addr, grpc_channel_credentials(self.pki.sae(sae))) if self.tls
              else grpc.insecure_channel(addr))
        self._channels.append(ch)
        return etsi004_pb2_grpc.KeyDeliveryStub(ch)

    def keysync(self, node: str, as_node: str) -> kms_pb2_grpc.KeySyncStub:
        """A KeySync client to `node` authenticated as node `as_node` (for adversarial tests)."""
        addr = self.nodes[node].addresses["keysync"]
        ch = grpc.secure_channel(addr, grpc_channel_credentials(self.pki.node(self.ids[as_node])))
        self._channels.append(ch)
        return kms_pb2_grpc.KeySyncStub(ch)

    def states(self, node: str, qkdl: str) -> dict[str, Any]:
        return self.run(self.nodes[node].store.key_states(qkdl))

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        for ch in self._channels:
            ch.close()
        for n in self.nodes.values():
            self.lt.run(n.stop())


def net_ab(lt: LoopThread, p: Pki, tmp: Path, limits: Limits | None = None, keys: int = 2000) -> Net:
    """A -- B, SAE a1 (and a2) at A, b1, b2, b3 at B; app1: a1 -> b1, app2 multicast a1 -> b2, b3;
    app3: a2 -> b1 (another pair, same link). `keys` keys of 256 bits fed."""
    net = Net(lt, p, tmp, {"A": ["a1", "a2"], "B": ["b1", "b2", "b3"]}, limits=limits)
    q = net.phys("A", "B")
    net.app("app1", ("a1", "A"), [("b1", "B")], q)
    net.app("app2", ("a1", "A"), [("b2", "B"), ("b3", "B")], q)
    net.app("app3", ("a2", "A"), [("b1", "B")], q)
    net.feed("A", "B", keys)
    return net
