"""`Lkms`: the local key management system of one node, and the API the agent and the engine
call. It runs three servers on one asyncio loop:

- ETSI GS QKD 014 REST over HTTPS (etsi014.py) for SAEs,
- ETSI GS QKD 004 `KeyDelivery` over gRPC (etsi004.py, streams.py) for SAEs,
- inter-LKMS `KeySync` over gRPC with mutual TLS (keysync.py) for peer nodes: key-ID
  reservation before hand-out and ETSI 004 stream agreement (what ETSI 020 does not cover),
- ETSI GS QKD 020 over HTTPS with mutual TLS 1.3 (etsi020.py) on its own port: the relay
  along virtual links (relay.py) and key transfer with other vendors' KMSs (external.py),
over one durable key store (store.py).

Registration API (the agent calls these from its ETSI 015 hooks; all idempotent; they may be
called before or after `await lkms.start()`):

    await lkms.set_link(qkdl_id, peer_node_id, peer_kms_address, kind="PHYS"|"VIRT",
                        prev_hop=None, next_hops=(), up=True)
        A key association link, on both of its end nodes (and, for VIRT, on every node of the
        path). PHYS: the peer is the node at the other end. VIRT: `peer_node_id` and
        `peer_kms_address` name the far end of the virtual link; `prev_hop` is the adjacent
        node towards the source (None at the source) and `next_hops` *all* nodes after this one
        along the path, adjacent first, far end last (empty at the far end). The source keeps
        the VIRT pool filled by relaying. Addresses are "host:port" of the peer's KeySync server.
    lkms.set_etsi020_peer(node_id, address)   "host:port" of a peer node's ETSI 020 server (the
        relay reaches the next hop there)
    await lkms.locate(node_id, via) -> "host:port"   another node's KeySync server, known from
        a neighbour (the `directory` given at construction: the node's interfaces) or asked
        along `via`, the path to it (locate.py); LocateError naming who did not know
    await lkms.add_external_peer(ExternalPeer(...))   another vendor's KMS (external.py)
    await lkms.set_link_status(qkdl_id, up)       link up/down (down: no new deliveries)
    await lkms.remove_link(qkdl_id, erase=True)  forget it (and erase its pool)
    lkms.register_app(app_id, master_sae_id, slave_sae_ids, local_node_id, remote_node_id,
                      backing_qkdl_ids)
        An ETSI 015 qkd_app (server_app_id -> master, client_app_id -> slaves), registered on
        both nodes. Keys for (master, slave) - either direction - come from the first backing
        link that is up here (most available key first).
    lkms.unregister_app(app_id)
    lkms.app_stats(app_id) -> {"app_status", "creation_time", "consumed_bits", "consumed_keys",
                               "statistics": [{"start_time", "end_time", "consumed_bits"}]}
    lkms.add_local_sae(sae_id) / remove_local_sae(sae_id)   SAEs attached here (config `saes`)

Engine API:
    await lkms.add_block(qkdl_id, material, key_size_bits, block_id) -> list[str]
        Call on BOTH ends with identical material: cut into keys, IDs = uuid5 of
        (qkdl_id, block_id, index). A repeated block_id is ignored.
    lkms.has_room(qkdl_id) -> bool;  lkms.room_keys(qkdl_id) -> int;
    await lkms.wait_for_room(qkdl_id, keys=1)
        Back-pressure: pause key production while the pool holds max_key_count AVAILABLE keys
        (room_keys: how many more it takes; the engine keeps no more of a block than that).
        While the engine waits, the pool is reconciled with the peer (reconcile.py): keys only
        this end still holds are freed, so drift never halts a link.
        add_block itself never refuses material (refusing at one end only would desynchronise
        the pair); the engine must honour the flag.

State for the agent: lkms.key_store_stats() (the sdqkd-key-store tree), lkms.addresses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from sdqkd.generated.proto.sdqkd import etsi004_pb2_grpc, kms_pb2_grpc
from sdqkd.lkms.connlimit import serve_capped
from sdqkd.lkms.core import Core, Limits, Registrar
from sdqkd.lkms.dispenser import Dispensers
from sdqkd.lkms.etsi004 import KeyDeliveryService, h2_handlers
from sdqkd.lkms.etsi014 import Etsi014
from sdqkd.lkms.etsi020 import Etsi020Server, Kms020
from sdqkd.lkms.etsi020_client import Etsi020Client
from sdqkd.lkms.external import ExternalPeer, ExternalPeers
from sdqkd.lkms.keysync import KeySyncService
from sdqkd.lkms.locate import Directory, LocateError
from sdqkd.lkms.outbox import OutboxSender
from sdqkd.lkms.peers import PeerClients
from sdqkd.lkms.reconcile import Reconciler
from sdqkd.lkms.registry import PHYS, VIRT, App, Link, Registry
from sdqkd.lkms.relay import Relay
from sdqkd.lkms.store import SqliteKeyStore
from sdqkd.lkms.store_api import KeyStore
from sdqkd.lkms.streams import StreamManager
from sdqkd.lkms.tlsctx import (
    etsi020_server_context,
    grpc_h2_server_context,
    grpc_server_credentials,
    https_server_context,
)
from sdqkd.logfmt import link_label
from sdqkd.pki import TlsFiles

KEYSYNC_MAX_MESSAGE = 4 * 1024 * 1024
log = logging.getLogger(__name__)


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Lkms:
    def __init__(self, node_id: str, data_dir: Path | str, tls: TlsFiles | None, *,
                 saes: Iterable[str] = (), etsi014_listen: str = "127.0.0.1:0",
                 etsi004_listen: str = "127.0.0.1:0", keysync_listen: str = "127.0.0.1:0",
                 etsi020_listen: str = "127.0.0.1:0", limits: Limits | None = None, store: KeyStore | None = None,
                 fault: str | None = None, peer_servicers: Iterable[Any] = (),
                 names: dict[str, str] | None = None, directory: Directory | None = None) -> None:
        self.node_id = node_id
        self.directory = directory  # neighbour node ID -> its KeySync address (locate.py)
        self.names = names or {}  # node ID -> name, for logs and messages only
        self.data_dir = Path(data_dir)
        self.tls = tls
        self.limits = limits or Limits()
        self.store: KeyStore = store or SqliteKeyStore(self.data_dir / "keys.sqlite", self.limits.max_key_count)
        self.registry = Registry(node_id, saes)
        self.peers = PeerClients(tls)
        self._listen = {"etsi014": etsi014_listen, "etsi004": etsi004_listen, "keysync": keysync_listen,
                        "etsi020": etsi020_listen}
        self._etsi020_peers: dict[str, str] = {}
        self._external: list[ExternalPeer] = []
        self._fault = fault
        # other node-to-node services (the engine's classical channel) share the KeySync port
        self._peer_servicers = list(peer_servicers)
        self.addresses: dict[str, str] = {}
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._up: dict[str, Callable[[], Awaitable[None]]] = {}  # what start() reached -> its closer
        self._room: dict[str, asyncio.Event] = {}
        self._changes: dict[str, int] = {}  # qkdl_id -> changes to its pool so far
        self._full_asked: dict[str, tuple[float, int, int]] = {}  # qkdl_id -> (when, changes, asks since a change)
        self.registrar: Registrar | None = None  # the node's ETSI 015 registration workflow, if any

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """All or nothing: a start that fails or is cancelled part way closes what it had started
        (servers, tasks, the store) before it raises, as stop() would."""
        if self._started:
            return
        self._up = {}
        try:
            await self._start_parts()
        except BaseException:
            await self._close_parts()
            raise
        self._started = True
        log.info("LKMS %s up: %s", self.names.get(self.node_id, self.node_id), self.addresses)

    async def _start_parts(self) -> None:
        up = self._up
        up["peers"] = self.peers.close
        await self.store.open()
        up["store"] = self.store.close
        self.core = core = Core(self.node_id, self.registry, self.store, self.peers, self.limits,
                                tls=self.tls is not None, fault=self._fault)
        core.registrar = self.registrar
        core.directory = self.directory
        core.names = self.names
        self.store.on_change(self._on_change)
        tls = self.tls
        self.kms020 = Kms020(self.node_id, Etsi020Client(
            self.node_id, str(tls.cert) if tls else None, str(tls.key) if tls else None, str(tls.ca) if tls else None,
            timeout=self.limits.rpc_timeout_s), tls is not None,
            is_peer_node=lambda n: any(ln.peer_node_id == n for ln in self.registry.links.values()))
        up["kms020_client"] = self.kms020.client.close
        for nid, addr in self._etsi020_peers.items():
            self.kms020.set_node(nid, addr)
            self.kms020.pinned.add(nid)
        self.relay = Relay(core, self.kms020)
        self.external = ExternalPeers(core, self.kms020)
        self.relay.external = self.external
        self.streams = StreamManager(core)
        self.dispensers = Dispensers(core, self.relay)
        self.dispensers.external = self.external
        self.outbox = OutboxSender(core)
        self.reconciler = Reconciler(core)
        up.update(relay=self.relay.close, external=self.external.close, reconciler=self.reconciler.close,
                  outbox=self.outbox.close, dispensers=self.dispensers.close, streams=self.streams.close)
        core.on_uncertain(self.reconciler.request)
        await self._start_020()
        await self.external.resume()
        await self.relay.resume()
        for peer in self._external:
            await self._add_external(peer)

        await self._start_014()

        self._g004: grpc.aio.Server | None = None
        self._h004: Any = None  # h2grpc.GrpcServer
        await self._start_004()
        # KeySync's largest message (a Reconcile page of 4,096 key IDs, a 64 KiB 004 chunk's IDs) is
        # far below 4 MiB; gRPC parses a message before the servicer can check the caller's CN, so
        # the limit is what bounds an unauthorised caller (key blocks travel on the engine channel)
        self._gsync = grpc.aio.server(options=[("grpc.max_receive_message_length", KEYSYNC_MAX_MESSAGE),
                                               ("grpc.max_send_message_length", KEYSYNC_MAX_MESSAGE)])
        up["gsync"] = functools.partial(self._gsync.stop, 0.5)  # even if never started: see _start_004
        kms_pb2_grpc.add_KeySyncServicer_to_server(KeySyncService(core, self.streams, self.reconciler), self._gsync)
        for add in self._peer_servicers:
            add(self._gsync)
        self.addresses["keysync"] = self._add_port(self._gsync, self._listen["keysync"])
        await self._gsync.start()

        self.streams.start()
        self.outbox.start()
        self.reconciler.start()
        up["tasks"] = self._cancel_tasks
        self._tasks.append(asyncio.get_running_loop().create_task(self._expire_loop()))
        for link in self.registry.links.values():
            if link.is_endpoint:
                await self.store.ensure_pool(link.qkdl_id, link.kind)
            self.relay.start(link)
        self.reconciler.request_all()

    # What stop() closes, in this order; _up maps each part start() reached to its closer.
    _STOP_ORDER = ("tasks", "relay", "external", "reconciler", "server020", "outbox", "dispensers", "streams",
                   "g004", "h004", "gsync", "web014", "web", "web020", "kms020_client", "peers", "store")

    async def _close_parts(self) -> None:
        up, self._up = self._up, {}
        for name in self._STOP_ORDER:
            close = up.pop(name, None)
            if close is not None:
                await close()
        assert not up, f"parts with no place in the stop order: {sorted(up)}"

    async def _cancel_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _start_014(self) -> None:
        """The ETSI 014 HTTPS server: aiohttp's handler behind connlimit.py (connection cap, TLS
        handshake timeout, first request head deadline); aiohttp's keep-alive timer closes
        connections idle between requests for etsi014_idle_timeout_s."""
        lim = self.limits
        self._web = web.AppRunner(Etsi014(self.core, self.dispensers).app(), access_log=None,
                                  handle_signals=False, shutdown_timeout=1.0,
                                  keepalive_timeout=lim.etsi014_idle_timeout_s)
        await self._web.setup()
        self._up["web"] = self._web.cleanup
        host, port = _split(self._listen["etsi014"])
        assert self._web.server is not None
        self._web014, self.etsi014_connections = await serve_capped(
            self._web.server, host, port, ssl_context=https_server_context(self.tls) if self.tls else None,
            max_connections=lim.etsi014_max_connections, handshake_timeout_s=lim.etsi014_handshake_timeout_s,
            first_head_s=lim.etsi014_idle_timeout_s)
        self._up["web014"] = self._close_web014
        self.addresses["etsi014"] = f"{host}:{self._web014.sockets[0].getsockname()[1]}"

    async def _start_020(self) -> None:
        self._ctx020 = etsi020_server_context(self.tls) if self.tls else None
        self._server020 = Etsi020Server(self.kms020, self.relay, self.external)
        self._up["server020"] = self._server020.close
        self._web020 = web.AppRunner(self._server020.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._web020.setup()
        self._up["web020"] = self._web020.cleanup
        host, port = _split(self._listen["etsi020"])
        site = web.TCPSite(self._web020, host, port, ssl_context=self._ctx020, backlog=512)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]  # aiohttp exposes no public getter
        self.addresses["etsi020"] = f"{host}:{sock.getsockname()[1]}"
        self.kms020.base_url = f"{'https' if self.tls else 'http'}://{self.addresses['etsi020']}"
        self.core.etsi020_address = self.addresses["etsi020"]

    async def _add_external(self, peer: ExternalPeer) -> None:
        if self._ctx020 is not None and peer.kms.ca:
            self._ctx020.load_verify_locations(cafile=peer.kms.ca)  # their client certificates
        await self.external.add(peer)

    async def _close_web014(self) -> None:
        self._web014.close()  # no new connections; the runner's cleanup (next in the order) closes the open ones

    def set_etsi020_peer(self, node_id: str, address: str) -> None:
        """Where a peer node's ETSI 020 server listens ("host:port")."""
        self._etsi020_peers[node_id] = address
        if self._started:
            self.kms020.set_node(node_id, address)
            self.kms020.pinned.add(node_id)

    async def add_external_peer(self, peer: ExternalPeer) -> None:
        """Another vendor's KMS as the next hop for its SAEs (an EXT link, see external.py)."""
        self._external = [p for p in self._external if p.name != peer.name] + [peer]
        if self._started:
            await self._add_external(peer)

    async def _start_004(self) -> None:
        """The ETSI 004 server: h2grpc's (default) or grpcio's (Limits.etsi004_server)."""
        kind = self.limits.etsi004_server
        if kind not in ("h2", "grpcio"):
            raise ValueError(f"etsi004_server must be h2 or grpcio, not {kind!r}")
        if kind == "h2":
            try:
                from sdqkd.lkms import h2grpc
            except ImportError:  # the h2 package is missing: still serve, more slowly
                log.warning("ETSI 004: the h2 package is not installed; using the grpcio server")
                kind = "grpcio"
        if kind == "h2":
            host, port = _split(self._listen["etsi004"])
            self._h004 = h2grpc.GrpcServer(h2_handlers(self.streams),
                                           grpc_h2_server_context(self.tls) if self.tls else None)
            self.addresses["etsi004"] = f"{host}:{await self._h004.start(host, port)}"
            self._up["h004"] = functools.partial(self._h004.stop, 0.5)
        else:
            self._g004 = grpc.aio.server()
            # stopped even if it never starts (its port taken): a grpc.aio server left to the garbage
            # collector unstopped is torn down by grpc's C core on whatever thread collects it
            self._up["g004"] = functools.partial(self._g004.stop, 0.5)
            etsi004_pb2_grpc.add_KeyDeliveryServicer_to_server(KeyDeliveryService(self.streams, self.core.tls),
                                                               self._g004)
            self.addresses["etsi004"] = self._add_port(self._g004, self._listen["etsi004"])
            # started at once: a grpcio server bound but never started keeps its port until collected
            await self._g004.start()

    def _add_port(self, server: grpc.aio.Server, listen: str) -> str:
        host, port = _split(listen)
        addr = f"{host}:{port}"
        try:  # grpcio raises RuntimeError for a port it cannot bind (older releases returned 0)
            bound = (server.add_secure_port(addr, grpc_server_credentials(self.tls)) if self.tls
                     else server.add_insecure_port(addr))
        except RuntimeError as e:
            raise OSError(f"cannot listen on {addr}: {e}") from None
        if bound == 0:
            raise OSError(f"cannot listen on {addr}")
        return f"{host}:{bound}"

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._close_parts()
        log.info("LKMS %s stopped", self.names.get(self.node_id, self.node_id))

    async def __aenter__(self) -> Lkms:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.limits.unconfirmed_ttl_s / 4))
            n = await self.store.expire(time.time() - self.limits.unconfirmed_ttl_s)
            if n:
                log.warning("erased %d reserved keys whose reservation was never confirmed", n)

    def _on_change(self, qkdl_ids: set[str]) -> None:
        if self._started:
            self.core.notify(qkdl_ids)
        for q in qkdl_ids:
            self._changes[q] = self._changes.get(q, 0) + 1
            ev = self._room.get(q)
            if ev is not None:  # its waiters look again: each waits for room of its own size
                ev.set()

    # --- links ---------------------------------------------------------------------------
    async def locate(self, target: str, via: Sequence[str]) -> str:
        """host:port of node `target`'s KeySync server, known or asked along `via` (the path
        to it, target last); LocateError naming the node that did not know it."""
        if not self._started:
            raise LocateError("the LKMS is not running")
        return await self.core.locate(target, via)

    async def set_link(self, qkdl_id: str, peer_node_id: str, peer_kms_address: str, kind: str = PHYS,
                       prev_hop: str | None = None, next_hops: Sequence[str] = (), up: bool = True,
                       exit_peer: str | None = None) -> None:
        if kind not in (PHYS, VIRT):
            raise ValueError("kind must be PHYS or VIRT")
        if exit_peer is not None and (kind != VIRT or not exit_peer):
            raise ValueError("exit_peer: the name of an external KMS, on a virtual link only")
        if kind == VIRT and next_hops and next_hops[-1] != peer_node_id:
            raise ValueError("next_hops must end with the far end of the virtual link (peer_node_id)")
        old = self.registry.links.get(qkdl_id)
        link = Link(qkdl_id, peer_node_id, peer_kms_address, kind, prev_hop, tuple(next_hops), up, exit_peer)
        if old is not None and old.peer_kms_address != peer_kms_address and self._started:
            self.dispensers.drop_link(qkdl_id)
        self.registry.links[qkdl_id] = link
        if link.is_endpoint and self._started:  # before start(), start() creates the pool
            await self.store.ensure_pool(qkdl_id, kind)
        if self._started:
            self.relay.stop(qkdl_id)
            self.relay.start(link)
            self.core.outbox_wakeup.set()  # messages owed over this link may have been waiting for it
            self.reconciler.request(qkdl_id)  # either end may have restarted: agree on the pool again
        log.info("%s link %s set, %s", kind, self._label(qkdl_id, peer_node_id), "up" if up else "down")

    async def set_link_status(self, qkdl_id: str, up: bool) -> None:
        link = self.registry.links.get(qkdl_id)
        if link is None:
            raise KeyError(qkdl_id)
        link.up = up
        if self._started:
            self.core.notify({qkdl_id})

    async def remove_link(self, qkdl_id: str, erase: bool = True) -> None:
        link = self.registry.links.pop(qkdl_id, None)
        if link is None:
            return
        if self._started:
            self.relay.stop(qkdl_id)
            self.dispensers.drop_link(qkdl_id)
            self.streams.drop_link(qkdl_id)
        if erase and self._started:
            n = await self.store.drop_pool(qkdl_id)
            log.info("link %s removed, %d keys erased", self._label(qkdl_id, link.peer_node_id), n)

    def _label(self, qkdl_id: str, peer_node_id: str) -> str:
        return link_label(self.names, self.names.get(self.node_id, self.node_id), peer_node_id, qkdl_id)

    # --- applications ------------------------------------------------------------------------
    def register_app(self, app_id: str, master_sae_id: str, slave_sae_ids: Sequence[str], local_node_id: str,
                     remote_node_id: str, backing_qkdl_ids: Sequence[str]) -> None:
        if not slave_sae_ids:
            raise ValueError("an application needs at least one slave SAE")
        app = self.registry.apps.get(app_id)
        if app is None:
            app = App(app_id, master_sae_id, tuple(slave_sae_ids), local_node_id, remote_node_id,
                      tuple(backing_qkdl_ids))
        else:  # re-registration (a reroute, the controller confirming a registration) keeps the
            # object, its history and its use: open ETSI 004 streams hold it and charge it
            app.master_sae_id, app.slave_sae_ids = master_sae_id, tuple(slave_sae_ids)
            app.local_node_id, app.remote_node_id = local_node_id, remote_node_id
            app.backing_qkdl_ids = tuple(backing_qkdl_ids)
        self.registry.add_app(app)

    def unregister_app(self, app_id: str) -> None:
        self.registry.remove_app(app_id)

    def app_stats(self, app_id: str) -> dict[str, Any]:
        app = self.registry.apps.get(app_id)
        if app is None:
            raise KeyError(app_id)
        up = app.is_local or any(link.up for link in self.registry.backing_links(app))
        created = dt.datetime.fromtimestamp(app.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"app_status": "ON" if up else "DISCONNECTED", "creation_time": created,
                "consumed_bits": app.consumed_bits, "consumed_keys": app.consumed_keys,
                # One statistics period: since registration (counters live in memory).
                "statistics": [{"start_time": created, "end_time": now, "consumed_bits": app.consumed_bits}]}

    def add_local_sae(self, sae_id: str) -> None:
        self.registry.local_saes.add(sae_id)

    def remove_local_sae(self, sae_id: str) -> None:
        self.registry.local_saes.discard(sae_id)

    # --- engine ------------------------------------------------------------------------
    async def add_block(self, qkdl_id: str, material: bytes, key_size_bits: int, block_id: str) -> list[str]:
        if not self._started:
            raise RuntimeError("LKMS not started")
        link = self.registry.links.get(qkdl_id)
        if link is None or link.kind != PHYS:
            raise KeyError(f"no physical link {qkdl_id}")
        ids = await self.store.add_block(qkdl_id, material, key_size_bits, block_id)
        self.core.rate(qkdl_id).add(len(ids) * key_size_bits)
        return ids

    def has_room(self, qkdl_id: str) -> bool:
        return self.store.has_room(qkdl_id)

    def room_keys(self, qkdl_id: str) -> int:
        return self.store.room_keys(qkdl_id)

    async def wait_for_room(self, qkdl_id: str, keys: int = 1) -> None:
        while self.store.room_keys(qkdl_id) < keys:
            if self._started:  # stale keys (held here only) may be what fills it
                self._reconcile_full(qkdl_id)
            ev = self._room.setdefault(qkdl_id, asyncio.Event())
            ev.clear()
            await ev.wait()

    def _reconcile_full(self, qkdl_id: str) -> None:
        """A full pool asks for a reconciliation pass, once more a reconcile_grace_s later (keys
        still within the grace at the first pass were not checked), then only after the pool
        changed, and never twice within the grace. A link waits for room anew every second: asking
        at every wait ran a pass over the whole pool (~0.5 s of CPU, both ends, for 100,000 keys)
        every reconcile_min_gap_s for as long as the pool stayed full, half a core for an idle
        network."""
        changes, now = self._changes.get(qkdl_id, 0), time.monotonic()
        asks = 1
        if (last := self._full_asked.get(qkdl_id)) is not None:
            when, seen, before = last
            if now - when < self.limits.reconcile_grace_s or (seen == changes and before >= 2):
                return
            asks = before + 1 if seen == changes else 1
        self._full_asked[qkdl_id] = (now, changes, asks)
        self.reconciler.request(qkdl_id)

    # --- state -------------------------------------------------------------------------
    def key_store_stats(self) -> dict[str, Any]:
        """The sdqkd-key-store container (YANG leaf names)."""
        pools = []
        tk = tb = dk = 0
        for q in self.store.pools():
            st = self.store.pool_stats(q)
            if st is None:
                continue
            pools.append({"qkdl-id": q, "stored-keys": st.stored_keys, "stored-bits": st.stored_bits,
                          "delivered-keys": st.delivered_keys})
            tk += st.stored_keys
            tb += st.stored_bits
            dk += st.delivered_keys
        return {"max-key-count": self.store.max_key_count, "stored-keys": tk, "stored-bits": tb,
                "delivered-keys": dk, "pool": pools}
