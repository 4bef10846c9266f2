"""Engine links of a node: each PHYS link runs key blocks with its peer over the classical
channel (channel.py: framed TLS, mutual authentication by node certificate). The transmitter
(Alice) dials the receiver's channel endpoint and opens a session (session.py) in which the
receiver starts blocks as the simulated clock allows, several in flight, so that neither the
channel's round-trip time nor the Cascade round trips of one block cap the link's rate. A lost
session is retried with back-off; a disabled or deleted link drains its blocks in flight first.

Authentication: every session starts from the link's bootstrap secret (HKDF with the session
ID, so no pad repeats across sessions); each successful block then sets aside the start of its
key for a later block's tags, so steady-state authentication uses QKD key."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdqkd.engine import memory, pipeline
from sdqkd.logfmt import brief
from sdqkd.pki import TlsFiles

from .channel import (
    MAX_WINDOW,
    ChannelError,
    ChannelServer,
    FrameConnection,
    Hello,
    Kind,
    Refused,
    dial,
    frame_limit,
    hello_payload,
)
from .session import Carry, Session, block_seed, resolve_pending

log = logging.getLogger("sdqkd.engine")

DEFAULT_WINDOW = 64  # blocks in flight at most (4e6-bit blocks at RTT 20 ms need ~43, 2e6-bit ones ~62); the clock and the measured time on the network decide how many are really used
# sifted bits per block: the finite-key penalty shrinks with larger blocks, memory grows linearly
# (~25 B per sifted bit while a block is simulated and sifted, ~1.5 B while it is in Cascade)
DEFAULT_BLOCK_BITS = 4e6
# Cascade's order of bisections at a receiving end: "balanced" (pass 2's blocks halved, a quarter
# bisecting at a time) takes ~0.3x the round trips of "serial" (whose order the optimized variant's
# published efficiency assumes) for 0.7-1.1 % more parities disclosed (runtime/engine/cascade.py)
DEFAULT_SCHEDULE = "balanced"
DRAIN_S = 3.0  # seconds a stopping link (a gNMI Set waits for it) lets its blocks in flight finish
SHUTDOWN_DRAIN_S = 1.0  # the same when the whole node stops (its process has ~5 s after SIGTERM)
FIRST_BLOCK_BITS = 5e5  # a session's first block: small, so a link produces key soon after it starts
READY_TIMEOUT = 10.0
ROOM_RECHECK_S = 1.0  # how often a link waiting for room looks again without a change to its pool

# per (role, bootstrap digest, link): keys awaiting the peer's word, across sessions and restarts of a link
_CARRY: dict[tuple[str, bytes, str], Carry] = {}


@dataclass
class LinkParams:
    qkdl_id: str
    role: str  # "alice" (transmitter, dials) or "bob" (receiver)
    peer_address: str  # the peer's classical-channel endpoint
    profile: str
    loss_db: float
    variant: str  # a Cascade variant of the model's enum (its default comes from the datastore)
    schedule: str = DEFAULT_SCHEDULE  # Cascade's order of bisections at this end when it receives (Bob)
    eve: float = 0.0
    enabled: bool = True
    target_sifted_bits: float = 1e6
    clock_scale: float = 1.0  # < 1: a slower simulated clock (large networks on few cores)
    window: int = DEFAULT_WINDOW
    peer_id: str = ""  # the peer node's ID: its certificate CN on the classical channel
    label: str = ""  # "A-B (1234abcd)" for logs


@dataclass
class LinkStats:
    blocks_ok: int = 0
    blocks_aborted: int = 0
    secret_bits: int = 0
    qber: float = math.nan
    skr: float = 0.0
    auth_bps: float = 0.0
    last_abort: str = ""
    status: str = "PENDING"
    paused: bool = False  # waiting for room in the key pool
    cut_bits: int = 0  # key verified at both ends but dropped: the pool had no room for it
    # CPU seconds per pipeline stage of every block that ended here (BlockResult.cpu), summed
    stage_cpu_s: dict[str, float] = field(default_factory=dict)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """The threads every link of this process shares for the heavy steps of a block (simulation,
    sifting, privacy amplification: C that releases the GIL). They never wait on a peer, so a
    small pool is enough and cannot deadlock; Cascade steps (a few bisections in C) run inline."""
    global _POOL
    if _POOL is None:
        memory.keep_freed_memory()  # if the process has not yet (sdqkd.engine.memory)
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="engine")
    return _POOL


class KeyRoom(Protocol):
    """The key store's back-pressure (the LKMS): a full pool starts no block."""

    def room_keys(self, qkdl_id: str) -> int:
        """Keys the link's pool takes before it holds max_key_count (0: full)."""
        ...

    async def wait_for_room(self, qkdl_id: str, keys: int = 1) -> None:
        """Return once the pool takes `keys` more keys."""
        ...


class EngineLink:
    """One PHYS link at one node. `on_key` stores a block's key (LKMS add_block); `on_stats`
    reports telemetry (agent state); `room` is the key store's back-pressure."""

    def __init__(self, params: LinkParams, bootstrap: bytes, tls: TlsFiles | None,
                 on_key: Callable[[str, bytes, int, str], Awaitable[Any]],
                 on_stats: Callable[[LinkParams, LinkStats, pipeline.BlockResult | None], None],
                 room: KeyRoom):
        self.p = params
        self.bootstrap = bootstrap
        self.tls = tls
        self.stats = LinkStats()
        self._on_key, self._on_stats, self._room = on_key, on_stats, room
        self._waiting_room = 0  # a session's steps held back by a full pool, and the watch below
        self.keys_per_block = 0  # the last whole block's keys: what a block in flight will likely bring
        self._room_watch: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.session: Session | None = None
        self._session_lock = asyncio.Lock()
        self._last_ok = time.monotonic()
        digest = hashlib.sha256(bootstrap).digest()
        self.carry = _CARRY.setdefault((params.role, digest, params.qkdl_id), Carry())
        self.stats.skr = self.carry.skr  # enabled again, or re-provisioned: its rate until a block says

    # ------------------------------------------------------------ what a session needs

    def room_keys(self) -> int:
        """Keys the link's pool takes before it holds max_key_count."""
        return self._room.room_keys(self.p.qkdl_id)

    async def wait_room(self, qkdl_id: str, ahead: Callable[[], int] = lambda: 0) -> None:
        """Hold a new block back while the key pool has no room beyond the `ahead()` keys the
        blocks in flight will bring. Once none is left in flight the link says so: paused, and
        ACTIVE (its session is up and its pool full of key both ends hold), so that a manager
        neither waits for a block to see it up again nor reads the quiet as a fault."""
        if self._room.room_keys(qkdl_id) > ahead():
            return
        paused = False
        try:
            while self._room.room_keys(qkdl_id) <= (need := ahead()):
                if not paused and need == 0:
                    paused = True
                    self._pause(+1)
                # the pool wakes this when it changes; a block in flight that ends without key
                # lowers ahead() without any change to the pool
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait_for_room(qkdl_id, need + 1), ROOM_RECHECK_S)
        finally:
            if paused:
                self._pause(-1)

    def _pause(self, step: int) -> None:
        """Count the waits of a link with nothing in flight; publish paused as it goes 0 <-> 1."""
        self._waiting_room += step
        if step > 0 and self._waiting_room == 1:
            self.stats.paused, self.stats.status = True, "ACTIVE"
            self._on_stats(self.p, self.stats, None)
        elif step < 0 and self._waiting_room == 0:
            self.stats.paused = False
            self._last_ok = time.monotonic()  # the next block's rate is not spread over the pause
            if not self._stopped.is_set():
                self._on_stats(self.p, self.stats, None)

    @staticmethod
    def pool() -> ThreadPoolExecutor:
        return _pool()

    def block_config(self, session: str, n: int) -> pipeline.BlockConfig:
        p = self.p
        bits = min(p.target_sifted_bits, FIRST_BLOCK_BITS) if n == 0 else p.target_sifted_bits
        return pipeline.BlockConfig(
            profile=p.profile, loss_db=p.loss_db,
            n_pulses=pipeline.pulses_for(p.profile, p.loss_db, bits),
            seed=block_seed(p.qkdl_id, session, n), cascade_variant=p.variant, cascade_schedule=p.schedule)

    async def store(self, block_id: str, key: bytes) -> None:
        await self._on_key(self.p.qkdl_id, key, 256, block_id)
        self._check_room()

    def _check_room(self, session_start: bool = False) -> None:
        """After a block is stored and when a session starts: the end that starts blocks (the
        receiver) waits for room, this end may never be asked to, and says it is paused all the
        same (and ACTIVE: a session that came back finds its pool full) until it has room."""
        if self._room.room_keys(self.p.qkdl_id) > 0 or self._stopped.is_set():
            return
        if self._room_watch is None:
            self._room_watch = asyncio.create_task(self._watch_room())
        elif session_start or self.stats.status != "ACTIVE":
            # paused through a lost session, up again and still full: whatever was written
            # meanwhile (the controller's PENDING while no session was up) is not the state now
            self.restate()

    def restate(self) -> None:
        """Publish the link's state again where nothing else would soon: while paused (no block
        ends to say ACTIVE) with its session up, whatever status a manager wrote meanwhile."""
        if self.stats.paused and self.session is not None:
            self.stats.status = "ACTIVE"
            self._on_stats(self.p, self.stats, None)

    async def _watch_room(self) -> None:
        try:
            await self.wait_room(self.p.qkdl_id)
        finally:
            self._room_watch = None

    def report(self, result: pipeline.BlockResult, stored_bits: int, wall_s: float, lost: bool = False) -> None:
        """One block ended at this end: `stored_bits` of key went to the store (0: none). `lost`:
        discarded with its session, which says the link's state itself; the rate stands."""
        s = self.stats
        s.cut_bits += result.cut_bits
        for stage, cpu in result.cpu.items():
            s.stage_cpu_s[stage] = s.stage_cpu_s.get(stage, 0.0) + cpu
        if not math.isnan(result.qber):
            s.qber = result.qber
        if stored_bits:
            now = time.monotonic()
            # the rate this node really achieves: the link's clock, or the CPU / channel when slower
            interval = max(result.duration_s / self.p.clock_scale, now - self._last_ok, 1e-9)
            self._last_ok = now
            s.blocks_ok += 1
            s.secret_bits += stored_bits
            rate = stored_bits / interval
            s.skr = rate if s.skr == 0 else 0.7 * s.skr + 0.3 * rate
            s.auth_bps = 8 * 1024 / interval
            s.status = "ACTIVE"
        elif result.status == "ok":
            pass  # verified, but the pool had no room for its key (session.py: Bob's keep)
        else:
            s.blocks_aborted += 1
            s.last_abort = result.reason
            if not lost:
                s.skr *= 0.5
                s.status = "PASSIVE"
        self.carry.skr = s.skr
        self._on_stats(self.p, s, result)

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self.p.role == "alice":
            self._task = asyncio.create_task(self._dial_loop(), name=f"link-{self.p.qkdl_id}")

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Let the blocks in flight finish (for up to drain_s), then end the session."""
        self._stopped.set()
        s = self.session
        if s is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.drain(drain_s), drain_s + 2)
            s.fail(ChannelError("link stopped"))
        for task in (self._task, self._room_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        async with self._session_lock:  # a receiving session ends in its connection's task
            pass

    def _session_ended(self, e: BaseException | None) -> None:
        if e is not None and not self._stopped.is_set():
            log.info("link %s: session ended: %s", self.p.label or self.p.qkdl_id, brief(e),
                     exc_info=log.isEnabledFor(logging.DEBUG))
            self.stats.status = "PASSIVE"
            self._on_stats(self.p, self.stats, None)

    async def _dial_loop(self) -> None:
        backoff = 0.2
        while not self._stopped.is_set():
            try:
                await self._dial_once()
                backoff = 0.2
                self._session_ended(None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a session fails; the link retries
                self._session_ended(e)
            if self._stopped.is_set():
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 3.0)

    async def _dial_once(self) -> None:
        p = self.p
        conn = await dial(p.peer_address, self.tls, p.peer_id)
        sid = str(uuid.uuid4())
        try:
            conn.send(Kind.HELLO, 0, hello_payload(p.qkdl_id, sid, p.window, self.carry.session,
                                                   list(self.carry.stored)))
            ready = await asyncio.wait_for(conn.recv(), READY_TIMEOUT)
            if ready.kind != Kind.READY:
                raise ChannelError(f"expected READY, got {ready.kind.name}")
        except BaseException:
            await conn.close()
            raise
        await self._run_session(conn, sid, p.window)

    async def accept(self, conn: FrameConnection, hello: Hello) -> None:
        """The receiving side of a new session (the channel server's connection task). A new
        session replaces one still running (the transmitter lost it first)."""
        if self._stopped.is_set():
            raise Refused(f"link {self.p.qkdl_id} is stopping")
        if self.session is not None:
            self.session.fail(ChannelError("replaced by a new session"))
        async with self._session_lock:
            for sid, n, key in resolve_pending(self.carry, hello.prev_session, hello.stored):
                await self.store(f"{sid}:{n}", key)  # Alice stored it; her STORED was lost with the session
                self.stats.secret_bits += len(key) * 8
            conn.send(Kind.READY)
            await self._run_session(conn, hello.session, min(hello.window, MAX_WINDOW), locked=True)

    async def _run_session(self, conn: FrameConnection, sid: str, window: int, locked: bool = False) -> None:
        conn.limit = frame_limit(self.p.target_sifted_bits)  # the link is known: frames may be block-sized
        if not locked:
            async with self._session_lock:
                await self._session_body(conn, sid, window)
        else:
            await self._session_body(conn, sid, window)

    async def _session_body(self, conn: FrameConnection, sid: str, window: int) -> None:
        session = self.session = Session(self, conn, sid, window)
        self._check_room(session_start=True)
        try:
            await session.run()
        finally:
            if self.session is session:
                self.session = None


class LinkDirectory:
    """Admission for the node's channel server (channel.py): which certificates may connect at
    all, and which link a HELLO may open a session on."""

    def __init__(self, links: dict[str, EngineLink], tls: TlsFiles | None, nodes: frozenset[str] = frozenset()):
        self._links, self._tls, self._nodes = links, tls, nodes  # nodes: the network's other node IDs

    def admit(self, cn: str | None) -> None:
        if cn is not None and any(link.p.peer_id == cn for link in self._links.values()):
            return
        if cn in self._nodes:  # a network starting: its link here comes soon, and it dials again
            raise Refused(f"node {cn} has no link with this node (yet)", not_yet=True)
        raise Refused(f"certificate {cn!r} is no peer node of this node")

    async def accept(self, conn: FrameConnection, hello: Hello) -> None:
        link = self._links.get(hello.qkdl_id)
        if link is None or link.p.role != "bob":
            raise Refused(f"no receiving link {hello.qkdl_id!r} here (yet)", not_yet=link is None)
        if self._tls is not None and conn.peer_cn != link.p.peer_id:
            raise Refused(f"link {hello.qkdl_id} belongs to node {link.p.peer_id}, not {conn.peer_cn}")
        await link.accept(conn, hello)

    def server(self) -> ChannelServer:
        return ChannelServer(self._tls, self.admit, self.accept)
