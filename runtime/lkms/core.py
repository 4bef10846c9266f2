"""State shared by the parts of one LKMS (store, registry, peer clients, limits), so each part
(ETSI 014, ETSI 004, KeySync, relay) can be a small module that takes one `Core`.

Applications. A key request names an SAE pair; `Core.app_for_request` finds the registered
application (qkd_app) serving it. When there is none, or none of its links is up yet, and a
`Registrar` is plugged in (the node's ETSI 015 registration workflow, runtime/node/apps.py), the
registrar registers the pair and waits, bounded, until the controller has provisioned it; it
raises `NotReady` (ETSI 014: 503 + Retry-After, a reason in words) or `UnknownPair` (400)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from sdqkd.errors import SdqkdError
from sdqkd.lkms.keys import LinkKey
from sdqkd.lkms.locate import Directory, locate
from sdqkd.lkms.peers import PeerClients
from sdqkd.lkms.registry import App, Link, Registry
from sdqkd.lkms.store_api import KeyStore


@dataclass
class Limits:
    """Tunables; the ETSI 014 ones are reported by the status call under the standard's names."""

    key_size: int = 256  # bits, default size of an ETSI 014 key
    min_key_size: int = 64
    max_key_size: int = 8192
    max_key_per_request: int = 128
    max_sae_id_count: int = 4  # additional_slave_SAE_IDs per request
    max_key_count: int = 100_000  # per pool (ETSI 014 max_key_count); the engine pauses when full
    relay_key_bits: int = 256  # size of keys relayed into virtual-link pools
    relay_target_keys: int = 32  # a relay source keeps this many keys ready in each VIRT pool
    relay_batch: int = 512  # keys relayed per ETSI 020 ext_keys request at most
    relay_020_mode: str = "sync"  # "sync" (200 when the path is done) or "async" (202, then acks)
    ack_timeout_s: float = 10.0  # an async ext_keys whose ack has not come by then is voided
    unconfirmed_ttl_s: float = 600.0  # RESERVED_IN keys never confirmed are erased after this
    chunk_default: int = 32  # ETSI 004 key_chunk_size when the application asks for 0, bytes
    chunk_max: int = 65536
    stream_ttl_default_s: int = 600
    stream_unused_s: float = 60.0  # a stream never used locally expires (or after its QoS timeout, if longer)
    max_streams_per_sae: int = 16  # ETSI 004 streams per SAE at a node
    stream_prefetch_max: int = 1024  # chunks a stream owner assigns per batch at most (up to 2 batches ahead)
    etsi004_server: str = "h2"  # "h2" (h2grpc.py, fast pipelined GetKeyStream) or "grpcio"
    rpc_timeout_s: float = 5.0
    # ETSI 014 server resources (connlimit.py): open connections at most, the time a connection
    # may stay without a complete request (idle keep-alive or a slow request head), TLS handshake
    etsi014_max_connections: int = 256
    etsi014_idle_timeout_s: float = 15.0
    etsi014_handshake_timeout_s: float = 10.0
    # a key the peer picked, not stored here yet, is waited for this long before it is refused
    # (Core.keys_arrive; well below rpc_timeout_s, the peer's deadline for the request)
    arrival_grace_s: float = 1.0
    # a link deleted from the node's model erases its pool (docs/reliability.md: kept by default)
    erase_deleted_links: bool = False
    # pool reconciliation (reconcile.py): keys younger than the grace are never judged stale
    reconcile_grace_s: float = 30.0
    reconcile_min_gap_s: float = 5.0  # one pass per link at most this often
    reconcile_interval_s: float = 300.0  # every link is reconciled this often anyway

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Limits:
        names = {f.name for f in fields(cls)}
        bad = set(d or {}) - names
        if bad:
            raise ValueError(f"unknown LKMS limits: {', '.join(sorted(bad))}")
        return cls(**(d or {}))


class NotReady(SdqkdError):
    """The pair cannot be served yet (ETSI 014: 503 with Retry-After). The message is for users."""

    def __init__(self, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class UnknownPair(SdqkdError, ValueError):
    """The network knows no such SAE pair (ETSI 014: 400). The message is for users."""


class Registrar(Protocol):
    """The node's application-registration workflow (ETSI GS QKD 015 clause 5.2)."""

    async def ensure(self, master: str, slaves: Sequence[str], qos: dict[str, int] | None = None) -> App:
        """The app serving master -> slaves with a usable link (or a local app), registering
        the pair (with the request's ETSI 015 app_qos, if it has any) and waiting for its
        provisioning if needed; NotReady / UnknownPair otherwise."""

    def stream_closed(self, app: App, still_open: int) -> None:
        """An ETSI 004 stream of `app` was closed; `still_open` streams of it remain."""

    def node_of(self, sae: str) -> str | None:
        """The ID of the node SAE `sae` is attached to, if this node knows it."""


class RateMeter:
    """Bits added to a pool per second over the last `window` seconds (for ETSI 004 min_bps)."""

    def __init__(self, window: float = 30.0) -> None:
        self.window = window
        self._ev: deque[tuple[float, int]] = deque()

    def add(self, bits: int) -> None:
        now = time.monotonic()
        self._ev.append((now, bits))
        while self._ev and self._ev[0][0] < now - self.window:
            self._ev.popleft()

    def rate(self) -> float | None:
        """None while unknown (fewer than two events)."""
        if len(self._ev) < 2:
            return None
        span = max(time.monotonic() - self._ev[0][0], 1.0)
        return sum(b for _, b in self._ev) / span


class Core:
    def __init__(self, node_id: str, registry: Registry, store: KeyStore, peers: PeerClients, limits: Limits,
                 tls: bool, fault: str | None = None) -> None:
        self.node_id = node_id
        self.registry = registry
        self.store = store
        self.peers = peers
        self.limits = limits
        self.tls = tls
        self.fault = fault
        self.rates: dict[str, RateMeter] = {}
        self.outbox_wakeup = asyncio.Event()
        self.pool_changed: dict[str, asyncio.Event] = {}
        self.etsi020_address = ""  # host:port of our ETSI 020 server (KeySync Describe)
        self.registrar: Registrar | None = None
        self.directory: Directory | None = None  # neighbour node ID -> KeySync address (the node's interfaces)
        self.names: dict[str, str] = {}  # node ID -> name (the node config's peers and its own), for messages
        self._on_uncertain: Callable[[str], None] | None = None

    def node_label(self, node_id: str) -> str:
        """A node as a message names it: `B (UUID)` where its name is known, else the UUID."""
        name = self.names.get(node_id)
        return f"{name} ({node_id})" if name else node_id

    async def locate(self, target: str, via: Sequence[str]) -> str:
        """host:port of node `target`'s KeySync server, asked along `via` (locate.py)."""
        return await locate(self.node_id, self.registry, self.directory, self.peers, target, via,
                            self.limits.rpc_timeout_s)

    def on_uncertain(self, callback: Callable[[str], None]) -> None:
        self._on_uncertain = callback

    def uncertain(self, qkdl_id: str) -> None:
        """A key of this pool may now be held at one end only (an unknown outcome): have both
        ends reconcile the pool (reconcile.py)."""
        if self._on_uncertain is not None:
            self._on_uncertain(qkdl_id)

    def from_back(self, link: Link) -> bool:
        """The two ends of a pool pick keys from opposite ends so their picks rarely collide."""
        return self.node_id > link.peer_node_id

    def rate(self, qkdl_id: str) -> RateMeter:
        m = self.rates.get(qkdl_id)
        if m is None:
            m = self.rates[qkdl_id] = RateMeter()
        return m

    def charge(self, app: App | None, bits: int, keys: int) -> None:
        if app is not None:
            app.consumed_bits += bits
            app.consumed_keys += keys
            app.last_used = time.monotonic()

    @contextlib.contextmanager
    def serving(self, app: App) -> Iterator[None]:
        """A key request of `app` being served: the pair is not idle meanwhile (a relayed pair's
        first keys may take a while, its relay filling first; node/apps.py)."""
        app.serving += 1
        try:
            yield
        finally:
            app.serving -= 1

    def usable(self, app: App | None) -> bool:
        return app is not None and (app.is_local or self.pick_link(app) is not None)

    def sae_node(self, sae: str) -> str | None:
        """The ID of the node an SAE is attached to, as far as this node knows (the network's SAEs
        from the registrar, else the registered applications); None for an unknown SAE."""
        if self.registry.is_local(sae):
            return self.node_id
        node = self.registrar.node_of(sae) if self.registrar is not None else None
        if node is not None:
            return node
        for app in self.registry.apps.values():
            if sae == app.master_sae_id or sae in app.slave_sae_ids:
                return app.remote_node_id or None
        return None

    def served(self, master: str, slaves: Sequence[str]) -> tuple[App, Link | None] | None:
        """The pair's app and the link to take keys from (None: a local app), when it can be
        served right now; the synchronous fast path of every request of a registered pair."""
        app = self.registry.app_for_group(master, slaves)
        if app is None:
            return None
        if app.is_local:
            return app, None
        link = self.pick_link(app)
        return None if link is None else (app, link)

    async def app_for_request(self, master: str, slaves: Sequence[str], need_link: bool = True,
                              qos: dict[str, int] | None = None) -> tuple[App, Link | None]:
        """`served`, else: the application serving a key request of `master` for `slaves`,
        registered and waited for through the registrar (see the module doc), and its link.
        `need_link=False` (dec_keys: the keys are already reserved here) takes any registered app."""
        got = self.served(master, slaves)
        if got is not None:
            return got
        app = self.registry.app_for_group(master, slaves)
        if app is not None and not need_link:
            return app, None
        if self.registrar is not None:
            app = await self.registrar.ensure(master, slaves, qos)
            return app, None if app.is_local else self.pick_link(app)
        if app is None:
            raise UnknownPair("no application registered for this master/slave SAE pair")
        raise NotReady("no key association link up for this SAE pair")

    def changed_event(self, qkdl_id: str) -> asyncio.Event:
        ev = self.pool_changed.get(qkdl_id)
        if ev is None:
            ev = self.pool_changed[qkdl_id] = asyncio.Event()
        return ev

    def notify(self, qkdl_ids: set[str]) -> None:
        for q in qkdl_ids:
            ev = self.pool_changed.pop(q, None)
            if ev is not None:
                ev.set()

    async def wait_changed(self, qkdl_id: str, timeout: float) -> bool:
        """Wait until the pool changes (keys added or taken) or `timeout` seconds pass."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it may swallow cancellation (3.11)
                await self.changed_event(qkdl_id).wait()
            return True
        except TimeoutError:
            return False

    async def keys_arrive(self, qkdl_id: str, key_ids: Sequence[str]) -> bool:
        """Whether every key of `key_ids` is stored here (in any state) within `arrival_grace_s`.
        The two ends of a pool store the same key moments apart: a link's transmitter before its
        receiver, a relay's far end before its source. A key the peer picked from its newest may
        not be here yet; refused as unknown, the peer would erase its copy and this end would
        store one that can never be used (the pools drift until a reconcile, and a relay source
        that counts its own copies stops refilling the far end). Keys that can never arrive (of
        a block stored here, taken or erased since: `KeyStore.gone`) are not waited for; the
        answer is then False, but only once the others have arrived or the grace has passed, so
        that the caller's refusal, asked afresh, names only keys that are really not coming."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.limits.arrival_grace_s
        waiting, _busy = await self.store.missing(qkdl_id, key_ids)
        if not waiting:
            return True
        gone = set(await self.store.gone(qkdl_id, waiting))
        waiting = [k for k in waiting if k not in gone]
        while waiting:
            left = end - loop.time()
            if left <= 0:
                break
            await self.wait_changed(qkdl_id, left)
            waiting, _busy = await self.store.missing(qkdl_id, waiting)
        return not gone and not waiting

    async def take_arrived(self, qkdl_id: str, key_ids: Sequence[str], delivered: bool = False
                           ) -> list[LinkKey] | None:
        """`KeyStore.take_keys`, once more after waiting for keys the peer picked that are not
        stored here yet (keys_arrive); None if some are still missing or busy."""
        taken = await self.store.take_keys(qkdl_id, key_ids, delivered)
        if taken is None and await self.keys_arrive(qkdl_id, key_ids):
            taken = await self.store.take_keys(qkdl_id, key_ids, delivered)
        return taken

    def pick_link(self, app: App) -> Link | None:
        """The backing link of `app` that is up and holds most available bits."""
        best: tuple[int, Link] | None = None
        for link in self.registry.backing_links(app):
            if not link.up:
                continue
            st = self.store.pool_stats(link.qkdl_id)
            bits = st.available_bits if st else 0
            if best is None or bits > best[0]:
                best = (bits, link)
        return best[1] if best else None
