"""ETSI GS QKD 004 key streams: OPEN_CONNECT / GET_KEY / CLOSE semantics, shared by the two
peer applications through their LKMSs.

A stream is *owned* by the node whose application opened it first (it picks the key stream ID
and announces it to the peer node with KeySync OpenStream). The peer application joins by
calling OPEN_CONNECT on its own node with that ID; its node tells the owner (OpenStream with the
same ID). Chunk `i` of a stream is the same `key_chunk_size` bytes at both ends: only the owner
assigns chunks, in batches, by reserving link keys, sending their IDs to the peer node
(AssignStream) and erasing its own pool copies; the peer node erases the same keys from its
pool. Assigned chunks live in memory (a stream does not survive a restart; its keys are gone
at both ends, never reused). Each side delivers chunk `i` to its application once; unused
chunks are erased after the stream's ttl.

Status codes (clause 6, numbered as in the standard):
 OPEN_CONNECT: 0 joined a stream the peer opened; 1 opened, peer application not connected yet;
   4 no link serves the pair (yet) or the peer KMS is unreachable; 5 key stream ID in use;
   7 QoS not satisfiable (the response carries the counter-proposal).
 GET_KEY: 0; 2 the chunk is gone (delivered/expired), or not enough key with timeout 0, or an
   index so far ahead the stream could never hold the chunks up to it (at once, logged);
   3 peer application not connected; 4 unknown stream or peer KMS unreachable;
   6 timeout (no key within qos.timeout ms, or max_bps pacing would exceed it; the reason is
     logged at INFO, at most once per TIMEOUT_LOG_S and stream);
   8 metadata room too small (metadata.size returns the size needed; nothing consumed).
 CLOSE: 0; 4 unknown stream.
An OPEN_CONNECT naming an SAE the network does not know, or the caller itself, as destination
is a mistake, not an outage: the standard has no status for it, so it ends with gRPC
INVALID_ARGUMENT and the reason (as ETSI 014 answers 400), never 4.
QoS: key_chunk_size (0 -> default), ttl, timeout, max_bps (delivery paced), min_bps (refused with
7 when above the link's measured key rate; a same-node stream has no such limit),
metadata_mimetype ("" or application/json).
jitter and priority are accepted and echoed but not enforced.

Resources: a stream that neither both applications joined nor its local application sent a
GET_KEY on expires after its QoS timeout or `Limits.stream_unused_s`, whichever is longer
(the peer is told, as on CLOSE); an
SAE has at most `Limits.max_streams_per_sae` streams at a node (opened or announced by the
peer): one more OPEN_CONNECT is RESOURCE_EXHAUSTED, one more announcement is refused.

Same-node streams (both SAEs attached to this node, a local application: no link, no peer
node). The opener's side is the owner and holds its *twin*, the side of the other application,
which joins it with its own OPEN_CONNECT (same key stream ID), exactly as a peer node's side
would. Whichever side needs a chunk first draws it, and a batch ahead, from the node's CSPRNG
(local.py says why that is sound) into both sides, so chunk `i` is the same bytes for both
applications and each side still delivers it once. Both sides answer to the same key stream ID,
so the caller's client certificate says which side a GET_KEY or CLOSE is for: without TLS such
a stream is refused (PERMISSION_DENIED) before anything is registered. CLOSE of one side tells
the twin as a peer node would be told (GET_KEY there: 3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from sdqkd.errors import SdqkdError
from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb
from sdqkd.generated.proto.sdqkd import kms_pb2
from sdqkd.lkms.core import Core, NotReady, UnknownPair
from sdqkd.lkms.keys import group_parts, is_uuid, join_parts
from sdqkd.lkms.local import local_chunk
from sdqkd.lkms.registry import App, Link
from sdqkd.lkms.syncmsg import key_refs, parse_refusal, refusal

log = logging.getLogger(__name__)
TIMEOUT_LOG_S = 10.0  # a stream's TIMEOUT_ERRORs are logged at most this often (with a count)

S = pb.Status
JSON = "application/json"
_MAX_ASSIGN_KEYS = 16384  # link keys per AssignStream


def _app_qos(q: pb.QoS) -> dict[str, int]:
    """An OPEN_CONNECT's QoS as ETSI 015 app_qos (what a first request registers)."""
    pairs = (("max_bandwidth", q.max_bps), ("min_bandwidth", q.min_bps), ("jitter", q.jitter), ("ttl", q.ttl))
    return {k: int(v) for k, v in pairs if v}


class CallerRefused(SdqkdError):
    """The caller may not use this stream / act as this SAE (gRPC PERMISSION_DENIED)."""


class TooManyStreams(SdqkdError):
    """The SAE already has max_streams_per_sae streams here (gRPC RESOURCE_EXHAUSTED)."""


@dataclass(eq=False)
class Stream:
    ksid: str
    local_sae: str
    remote_sae: str
    qkdl_id: str
    owner: bool
    qos: pb.QoS
    app: App | None
    local_connected: bool = False
    peer_connected: bool = False
    chunks: dict[int, tuple[bytearray, float]] = field(default_factory=dict, repr=False)
    assigned: int = 0  # chunks 0..assigned-1 have been assigned (delivered, waiting or expired)
    cursor: int = 0
    prefetch: int = 8
    reading_ahead: bool = False  # a background assignment (_read_ahead) is scheduled or running
    last_alloc: float = 0.0
    next_send: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    opened: float = field(default_factory=time.monotonic)
    used: bool = False  # the local application sent a GET_KEY on it
    twin: Stream | None = field(default=None, repr=False)  # same-node stream: the other application's side
    timeouts_unlogged: int = 0  # TIMEOUT_ERRORs since the last one logged (TIMEOUT_LOG_S)
    timeout_logged: float = -math.inf

    @property
    def same_node(self) -> bool:
        return not self.qkdl_id  # both applications at this node: no link

    @property
    def chunk_bits(self) -> int:
        return self.qos.key_chunk_size * 8

    def wake(self) -> None:
        ev, self.arrived = self.arrived, asyncio.Event()
        ev.set()

    def wipe(self) -> None:
        for buf, _ in self.chunks.values():
            buf[:] = bytes(len(buf))
        self.chunks.clear()


class StreamManager:
    def __init__(self, core: Core) -> None:
        self.core = core
        # key stream ID -> this node's side (of a same-node stream: the opener's, holding its twin)
        self.streams: dict[str, Stream] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[str]] = set()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def sides(self) -> Iterator[Stream]:
        """Every stream side held here (both sides of a same-node stream)."""
        for s in self.streams.values():
            yield s
            if s.twin is not None:
                yield s.twin

    def _side(self, ksid: str, sae: str | None) -> Stream | None:
        """The side of stream `ksid` that SAE `sae` uses (of a same-node stream: that SAE's)."""
        s = self.streams.get(ksid)
        if s is None or not s.same_node or sae == s.local_sae:
            return s
        if s.twin is not None and sae == s.twin.local_sae:
            return s.twin
        return None if sae == s.remote_sae else s  # (the other application closed its side already)

    async def close(self) -> None:
        tasks = [*self._bg, *([self._sweeper] if self._sweeper else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in list(self.sides()):
            s.wipe()
            s.wake()
        self.streams.clear()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self._expire_unused(now)
            for s in list(self.sides()):
                ttl = s.qos.ttl or self.core.limits.stream_ttl_default_s
                old = [i for i, (_, t) in s.chunks.items() if now - t > ttl]
                for i in old:
                    buf, _ = s.chunks.pop(i)
                    buf[:] = bytes(len(buf))
                if old:
                    log.debug("stream %s: %d chunks expired", s.ksid, len(old))

    def _expire_unused(self, now: float) -> None:
        """Streams never used by their local application go after their idle limit."""
        for s in list(self.streams.values()):
            limit = max(s.qos.timeout / 1000.0, self.core.limits.stream_unused_s)
            established = s.local_connected and s.peer_connected  # both applications joined
            if not s.used and not established and now - s.opened > limit:
                log.info("key stream %s of %s expired: not joined nor used for %.0f s", s.ksid, s.local_sae, limit)
                self._forget(s)
                task = asyncio.get_running_loop().create_task(self._tell_peer_closed(s))
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)

    def _check_cap(self, sae: str) -> None:
        cap = self.core.limits.max_streams_per_sae
        if sum(1 for s in self.sides() if s.local_sae == sae) >= cap:
            raise TooManyStreams(f"SAE {sae} already has {cap} key streams open here")

    def _forget(self, s: Stream) -> None:
        s.local_connected = False
        s.wipe()
        s.wake()
        twin, s.twin = s.twin, None
        if self.streams.get(s.ksid) is s:
            del self.streams[s.ksid]
            if twin is not None and twin.local_connected:  # the other application closes it itself
                self.streams[s.ksid] = twin
        if twin is not None:  # same-node stream: its twin hears of it as a peer node would
            twin.twin = None
            self.peer_close(twin)

    async def _tell_peer_closed(self, s: Stream) -> str:
        link = self.core.registry.links.get(s.qkdl_id)
        if link is not None:
            msg = kms_pb2.StreamRequest(key_stream_id=s.ksid, source=s.local_sae, destination=s.remote_sae,
                                        qkdl_id=s.qkdl_id)
            try:
                await self.core.peers.stub(link.peer_kms_address).CloseStream(msg, timeout=self.core.limits.rpc_timeout_s)
            except grpc.aio.AioRpcError:
                log.info("key stream %s: peer not told of close (unreachable)", s.ksid)
        return "ok"

    def drop_link(self, qkdl_id: str) -> None:
        for k, s in list(self.streams.items()):
            if s.qkdl_id == qkdl_id:
                s.wipe()
                s.local_connected = s.peer_connected = False
                s.wake()
                del self.streams[k]

    # --- QoS -----------------------------------------------------------------------------
    def _grant(self, want: pb.QoS, link: Link | None) -> tuple[pb.QoS, bool]:
        """The QoS granted for `want` over `link` (None: a same-node stream) and whether it is all of it."""
        lim = self.core.limits
        g = pb.QoS()
        g.CopyFrom(want)
        ok = True
        if g.key_chunk_size == 0:
            g.key_chunk_size = lim.chunk_default
        if g.key_chunk_size > lim.chunk_max:
            g.key_chunk_size, ok = lim.chunk_max, False
        if g.ttl == 0:
            g.ttl = lim.stream_ttl_default_s
        if g.max_bps and g.min_bps > g.max_bps:
            g.min_bps, ok = g.max_bps, False
        rate = self.core.rate(link.qkdl_id).rate() if link is not None else None
        if g.min_bps and rate is not None and g.min_bps > rate:
            g.min_bps, ok = int(rate), False
        if g.metadata_mimetype not in ("", JSON):
            g.metadata_mimetype, ok = JSON, False
        return g, ok

    # --- OPEN_CONNECT ----------------------------------------------------------------------
    def _authorise(self, sae: str, caller: str | None) -> None:
        if self.core.tls and caller != sae:
            raise CallerRefused("source is not the SAE of the client certificate")
        if not self.core.registry.is_local(sae):
            raise CallerRefused("source is not an SAE attached to this node")

    def _authorise_pair(self, req: pb.OpenConnectRequest) -> None:
        if not self.core.tls and self.core.registry.is_local(req.destination):
            raise CallerRefused("a key stream between two SAEs of this node needs TLS: only their client "
                                "certificates tell its two applications apart")

    async def open_connect(self, req: pb.OpenConnectRequest, caller: str | None) -> pb.OpenConnectResponse:
        core = self.core
        self._authorise(req.source, caller)
        if req.source == req.destination:
            raise ValueError(f"source and destination must differ (both {req.source!r})")
        self._authorise_pair(req)
        ksid = req.key_stream_id
        if ksid and not is_uuid(ksid):
            raise ValueError("key_stream_id must be a UUID")
        try:  # a first OPEN_CONNECT of a pair registers it (ETSI 015 clause 5.2), bounded wait
            app, link = await core.app_for_request(req.source, (req.destination,), qos=_app_qos(req.qos))
        except UnknownPair as e:  # a mistake in the request (ETSI 014: 400), not an outage
            log.info("OPEN_CONNECT %s -> %s refused: %s", req.source, req.destination, e)
            raise ValueError(str(e)) from None
        except NotReady as e:
            log.info("OPEN_CONNECT %s -> %s: %s", req.source, req.destination, e)
            return pb.OpenConnectResponse(status=S.NO_QKD_CONNECTION_AVAILABLE)
        if link is None and not app.is_local:
            return pb.OpenConnectResponse(status=S.NO_QKD_CONNECTION_AVAILABLE)
        granted, ok = self._grant(req.qos, link)
        s = self._side(ksid, req.source) if ksid else None
        if s is not None:
            return await self._join(s, req, granted, ok)
        if not ok:
            return pb.OpenConnectResponse(status=S.OPEN_CONNECT_QOS_NOT_SATISFIED, qos=granted)
        self._check_cap(req.source)
        ksid = ksid or str(uuid.uuid4())
        if link is None:
            return self._open_local(ksid, req, granted, app)
        s = Stream(ksid, req.source, req.destination, link.qkdl_id, owner=True, qos=granted, app=app,
                   local_connected=True)
        self.streams[ksid] = s
        announce = kms_pb2.StreamRequest(key_stream_id=ksid, source=req.source, destination=req.destination,
                                         qkdl_id=link.qkdl_id, key_chunk_size=granted.key_chunk_size,
                                         ttl=granted.ttl)
        try:
            resp = await core.peers.stub(link.peer_kms_address).OpenStream(announce, timeout=core.limits.rpc_timeout_s)
        except grpc.aio.AioRpcError:
            self.streams.pop(ksid, None)
            return pb.OpenConnectResponse(status=S.NO_QKD_CONNECTION_AVAILABLE)
        if not resp.ok:
            self.streams.pop(ksid, None)
            in_use = "in use" in resp.reason
            return pb.OpenConnectResponse(status=S.OPEN_CONNECT_KSID_ALREADY_IN_USE if in_use
                                          else S.NO_QKD_CONNECTION_AVAILABLE)
        log.info("key stream %s opened by %s towards %s", ksid, req.source, req.destination)
        return pb.OpenConnectResponse(status=S.PEER_NOT_CONNECTED, key_stream_id=ksid, qos=granted)

    def _open_local(self, ksid: str, req: pb.OpenConnectRequest, granted: pb.QoS, app: App) -> pb.OpenConnectResponse:
        """A same-node stream: the opener's side and its twin, waiting for the other application."""
        try:  # the twin counts for its SAE as a peer node's announcement would there
            self._check_cap(req.destination)
        except TooManyStreams as e:
            log.info("key stream to %s refused: %s", req.destination, e)
            return pb.OpenConnectResponse(status=S.NO_QKD_CONNECTION_AVAILABLE)
        s = Stream(ksid, req.source, req.destination, "", owner=True, qos=granted, app=app, local_connected=True)
        s.twin = Stream(ksid, req.destination, req.source, "", owner=False, app=app, peer_connected=True,
                        qos=pb.QoS(key_chunk_size=granted.key_chunk_size, ttl=granted.ttl), twin=s)
        self.streams[ksid] = s
        log.info("key stream %s opened by %s towards %s (same node)", ksid, req.source, req.destination)
        return pb.OpenConnectResponse(status=S.PEER_NOT_CONNECTED, key_stream_id=ksid, qos=granted)

    async def _join(self, s: Stream, req: pb.OpenConnectRequest, granted: pb.QoS, ok: bool) -> pb.OpenConnectResponse:
        """The peer application joins a stream the other side opened and announced."""
        if s.owner or s.local_connected or s.local_sae != req.source or s.remote_sae != req.destination:
            return pb.OpenConnectResponse(status=S.OPEN_CONNECT_KSID_ALREADY_IN_USE)
        # Chunk size and ttl are the stream's; the rest (timeout, max_bps, metadata) is per side.
        if req.qos.key_chunk_size not in (0, s.qos.key_chunk_size):
            ok = False
        granted.key_chunk_size, granted.ttl = s.qos.key_chunk_size, s.qos.ttl
        if not ok:
            return pb.OpenConnectResponse(status=S.OPEN_CONNECT_QOS_NOT_SATISFIED, key_stream_id=s.ksid, qos=granted)
        if s.twin is not None:  # same node: the opener's side is right here
            s.twin.peer_connected = True
            s.twin.wake()
        elif not await self._tell_owner_joined(s, req):
            return pb.OpenConnectResponse(status=S.NO_QKD_CONNECTION_AVAILABLE)
        s.qos = granted
        s.local_connected = True
        log.info("key stream %s joined by %s", s.ksid, req.source)
        return pb.OpenConnectResponse(status=S.SUCCESSFUL, key_stream_id=s.ksid, qos=granted)

    async def _tell_owner_joined(self, s: Stream, req: pb.OpenConnectRequest) -> bool:
        link = self.core.registry.links.get(s.qkdl_id)
        if link is None:
            return False
        join = kms_pb2.StreamRequest(key_stream_id=s.ksid, source=req.source, destination=req.destination,
                                     qkdl_id=s.qkdl_id, key_chunk_size=s.qos.key_chunk_size, ttl=s.qos.ttl)
        try:
            resp = await self.core.peers.stub(link.peer_kms_address).OpenStream(
                join, timeout=self.core.limits.rpc_timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.ok)

    def peer_open(self, req: kms_pb2.StreamRequest, link: Link) -> kms_pb2.TxnResponse:
        """OpenStream from the peer node: an announcement of a new stream, or (at the owner)
        the news that the peer application joined."""
        reg = self.core.registry
        s = self.streams.get(req.key_stream_id)
        if s is None:
            if not is_uuid(req.key_stream_id) or not reg.is_local(req.destination):
                return kms_pb2.TxnResponse(ok=False, reason="destination SAE not attached here")
            app = reg.app_for(req.source, req.destination)
            if app is None or link.qkdl_id not in app.backing_qkdl_ids:
                return kms_pb2.TxnResponse(ok=False, reason="SAE pair not registered for this link here")
            if not 0 < req.key_chunk_size <= self.core.limits.chunk_max:
                return kms_pb2.TxnResponse(ok=False, reason="bad chunk size")
            try:
                self._check_cap(req.destination)
            except TooManyStreams as e:
                return kms_pb2.TxnResponse(ok=False, reason=str(e))
            qos = pb.QoS(key_chunk_size=req.key_chunk_size, ttl=req.ttl)
            self.streams[req.key_stream_id] = Stream(req.key_stream_id, req.destination, req.source, link.qkdl_id,
                                                     owner=False, qos=qos, app=app, peer_connected=True)
            return kms_pb2.TxnResponse(ok=True)
        if (s.owner and not s.peer_connected and s.qkdl_id == link.qkdl_id
                and s.remote_sae == req.source and s.local_sae == req.destination):
            s.peer_connected = True
            s.wake()
            return kms_pb2.TxnResponse(ok=True)
        return kms_pb2.TxnResponse(ok=False, reason="key stream ID in use")

    # --- chunk assignment ------------------------------------------------------------------
    def _max_ahead(self, s: Stream) -> int:
        """Chunks assigned ahead at most: the limit, and at most _MAX_ASSIGN_KEYS link keys per
        AssignStream (stays far below gRPC's 4 MiB message limit)."""
        parts = max(1, -(-s.chunk_bits // 256))
        return max(1, min(self.core.limits.stream_prefetch_max, _MAX_ASSIGN_KEYS // parts))

    def _grow_prefetch(self, s: Stream) -> int:
        """Chunks to assign ahead: doubling while the application keeps asking, bounded."""
        now = time.monotonic()
        s.prefetch = min(self._max_ahead(s), s.prefetch * 2) if now - s.last_alloc < 1.0 else 8
        s.last_alloc = now
        return s.prefetch

    def _assign_local(self, s: Stream, index: int) -> str:
        """Same-node stream: chunks up to `index` (and a batch ahead) for both sides. "ok" |
        "peer" | "short": the sides would hold more undelivered key than a link's pool may
        (max_key_count keys of key_size), which is what bounds a stream over a link."""
        twin = s.twin
        if twin is None:
            return "peer"
        if index < s.assigned:
            return "ok"
        lim = self.core.limits
        room = (max(2 * self._max_ahead(s), lim.max_key_count * lim.key_size // s.chunk_bits)
                - max(len(s.chunks), len(twin.chunks)))
        need = index + 1 - s.assigned
        if need > room:
            return "short"
        count = min(max(need, self._grow_prefetch(s)), room)
        t = time.monotonic()
        for i in range(s.assigned, s.assigned + count):
            chunk = local_chunk(s.qos.key_chunk_size)
            s.chunks[i], twin.chunks[i] = (bytearray(chunk), t), (bytearray(chunk), t)
        s.assigned = twin.assigned = s.assigned + count
        s.wake()
        twin.wake()
        return "ok"

    def _read_ahead(self, s: Stream, delivered: int) -> None:
        """Owner: assign the next batch in the background while the application still has a
        batch left, so a busy stream does not wait for the assignment round trip (which takes
        about as long as a fast application needs to use half a batch)."""
        if s.twin is not None:
            if s.assigned - delivered <= s.prefetch // 2:  # (no round trip to hide: no task)
                self._assign_local(s, s.assigned)
            return
        if s.owner and not s.reading_ahead and not s.lock.locked() and s.assigned - delivered <= s.prefetch:
            s.reading_ahead = True  # one at a time: a batch of GET_KEYs must not spawn one each
            task = asyncio.get_running_loop().create_task(self._allocate_ahead(s))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

    async def _allocate_ahead(self, s: Stream) -> str:
        try:
            return await self._allocate(s, s.assigned)
        finally:
            s.reading_ahead = False

    async def _allocate(self, s: Stream, index: int) -> str:
        """Owner: make sure chunks up to `index` are assigned. "ok" | "short" | "peer"."""
        core = self.core
        link = core.registry.links.get(s.qkdl_id)
        if link is None or not link.up:
            return "peer"
        async with s.lock:
            for _attempt in range(3):
                if index < s.assigned:
                    return "ok"
                need = index + 1 - s.assigned
                txn = f"stream-{uuid.uuid4()}"
                extra = max(0, self._grow_prefetch(s) - need)
                got = await core.store.reserve_out(s.qkdl_id, txn, [need, extra], s.chunk_bits,
                                                   core.from_back(link))
                if got[0] is None:
                    return "short"
                keys = got[0] + (got[1] or [])
                msg = kms_pb2.StreamAssign(key_stream_id=s.ksid, index=s.assigned, keys=key_refs(keys))
                try:
                    resp = await core.peers.stub(link.peer_kms_address).AssignStream(
                        msg, timeout=core.limits.rpc_timeout_s)
                except grpc.aio.AioRpcError:
                    await core.store.abort_out(txn, erase_all=True)
                    return "peer"
                if not resp.ok:
                    unknown, busy = parse_refusal(resp.reason)
                    await core.store.abort_out(txn, erase=unknown)
                    if unknown or busy:
                        continue
                    return "peer"
                # The peer holds the chunks now: deliverable here at once; erasing our reserved
                # copies (commit_out, one more fsync) need not hold the application up. A crash
                # before that commit cannot return them to the pool: recovery erases every
                # RESERVED_OUT key.
                t = time.monotonic()
                for i, k in enumerate(keys):
                    s.chunks[s.assigned + i] = (bytearray(k.material), t)
                s.assigned += len(keys)
                s.wake()
                if core.fault == "pause_before_stream_commit":
                    log.warning("fault injection: paused before stream commit txn %s keys %s", txn,
                                ",".join(p for k in keys for p, _ in k.parts))
                    await asyncio.Event().wait()
                await core.store.commit_out(txn, confirm=False)
                return "ok"
            return "short"

    async def _request(self, s: Stream, index: int) -> str:
        """Peer side: ask the owner to assign chunks up to `index`."""
        link = self.core.registry.links.get(s.qkdl_id)
        if link is None or not link.up:
            return "peer"
        msg = kms_pb2.StreamAssign(key_stream_id=s.ksid, index=index)
        try:
            resp = await self.core.peers.stub(link.peer_kms_address).AssignStream(
                msg, timeout=self.core.limits.rpc_timeout_s * 2)
        except grpc.aio.AioRpcError:
            return "peer"
        return "ok" if resp.ok else (resp.reason if resp.reason in ("short", "peer") else "peer")

    async def peer_assign(self, s: Stream, req: kms_pb2.StreamAssign) -> kms_pb2.TxnResponse:
        if not req.keys:  # a request from the peer node to assign up to req.index
            if not s.owner:
                return kms_pb2.TxnResponse(ok=False, reason="peer")
            r = await self._allocate(s, req.index)
            return kms_pb2.TxnResponse(ok=r == "ok", reason=r)
        if s.owner or req.index != s.assigned:
            return kms_pb2.TxnResponse(ok=False, reason="assignment out of order")
        ids = [k.key_id for k in req.keys]
        taken = await self.core.take_arrived(s.qkdl_id, ids, delivered=True)
        if taken is None:
            unknown, busy = await self.core.store.missing(s.qkdl_id, ids)
            return kms_pb2.TxnResponse(ok=False, reason=refusal(unknown, busy))
        sizes = [k.bits for k in taken]
        groups = group_parts(sizes, s.chunk_bits)
        t = time.monotonic()
        i = 0
        for n, g in enumerate(groups):
            s.chunks[s.assigned + n] = (bytearray(join_parts([k.material for k in taken[i:i + g]], s.chunk_bits)), t)
            i += g
        s.assigned += len(groups)
        s.wake()
        return kms_pb2.TxnResponse(ok=True)

    # --- GET_KEY -----------------------------------------------------------------------
    def _metadata(self, s: Stream, index: int) -> bytes:
        if s.qos.metadata_mimetype != JSON:
            return b""
        return json.dumps({"key_stream_id": s.ksid, "index": index}, separators=(",", ":")).encode()

    def _check(self, req: pb.GetKeyRequest, caller: str | None) -> tuple[Stream, int, bytes] | pb.GetKeyResponse:
        """GET_KEY checks that need no waiting: (stream, index, metadata) or the final answer
        (including a chunk already delivered or expired)."""
        s = self._side(req.key_stream_id, caller)
        if s is None or not s.local_connected:
            return pb.GetKeyResponse(status=S.NO_QKD_CONNECTION_AVAILABLE)
        if self.core.tls and caller != s.local_sae:
            raise CallerRefused("key stream belongs to another SAE")
        s.used = True
        if not s.peer_connected:
            return pb.GetKeyResponse(status=S.GET_KEY_PEER_APPLICATION_NOT_CONNECTED)
        idx = req.index if req.HasField("index") else s.cursor
        md = self._metadata(s, idx)
        if md and req.metadata.size < len(md):
            return pb.GetKeyResponse(status=S.GET_KEY_METADATA_INSUFFICIENT_SIZE, index=idx,
                                     metadata=pb.Metadata(size=len(md)))
        if idx not in s.chunks and idx < s.assigned:  # delivered or expired
            return pb.GetKeyResponse(status=S.GET_KEY_INSUFFICIENT_KEY_AVAILABLE, index=idx)
        return s, idx, md

    def get_key_now(self, req: pb.GetKeyRequest, caller: str | None) -> pb.GetKeyResponse | None:
        """GET_KEY if it can be answered without waiting (the chunk is assigned and pacing does
        not hold it back), else None: then `get_key` answers it. The pipelined GetKeyStream
        answers a whole batch of requests this way in one go."""
        c = self._check(req, caller)
        if not isinstance(c, tuple):
            return c
        s, idx, md = c
        if idx not in s.chunks:
            return None
        if s.qos.max_bps:
            now = time.monotonic()
            if s.next_send > now:
                return None
            s.next_send = now + s.chunk_bits / s.qos.max_bps
        return self._deliver(s, idx, md)

    async def get_key(self, req: pb.GetKeyRequest, caller: str | None) -> pb.GetKeyResponse:
        c = self._check(req, caller)
        if not isinstance(c, tuple):
            return c
        s, idx, md = c
        if idx not in s.chunks:
            st = await self._obtain(s, idx)
            if st != S.SUCCESSFUL:
                return pb.GetKeyResponse(status=st, index=idx)
        if s.qos.max_bps:
            st = await self._pace(s)
            if st != S.SUCCESSFUL:
                return pb.GetKeyResponse(status=st, index=idx)
        return self._deliver(s, idx, md)

    def _deliver(self, s: Stream, idx: int, md: bytes) -> pb.GetKeyResponse:
        """Hand chunk `idx` to the application (once): the response, the chunk wiped."""
        got = s.chunks.pop(idx, None)
        if got is None:  # delivered by a concurrent call, or expired meanwhile
            return pb.GetKeyResponse(status=S.GET_KEY_INSUFFICIENT_KEY_AVAILABLE, index=idx)
        buf = got[0]
        data = bytes(buf)
        buf[:] = bytes(len(buf))
        if idx >= s.cursor:
            s.cursor = idx + 1
        self.core.charge(s.app, len(data) * 8, 1)
        self._read_ahead(s, idx + 1)
        return pb.GetKeyResponse(status=S.SUCCESSFUL, key_buffer=data, index=idx,
                                 metadata=pb.Metadata(size=len(md), buffer=md) if md else None)

    def _ahead_max(self, s: Stream) -> int:
        """Chunks past the last assigned one a GET_KEY may ask for: what the stream may ever hold
        undelivered (a link's full pool, max_key_count keys of key_size; a same-node stream as
        much, or two batches ahead). An index further ahead can never be served."""
        lim = self.core.limits
        pool = lim.max_key_count * lim.key_size // s.chunk_bits
        return max(2 * self._max_ahead(s), pool) if s.same_node else pool

    async def _obtain(self, s: Stream, idx: int) -> pb.Status:
        """Get chunk `idx` assigned (waiting for key up to qos.timeout); a Status value."""
        need = idx + 1 - s.assigned
        if need > self._ahead_max(s):  # never servable: refused at once, not after the timeout
            self._timed_out(s, f"chunk {idx} needs {need} chunks assigned at once (chunks {s.assigned}..{idx}), "
                               f"more than the {self._ahead_max(s)} a stream may hold undelivered: refused at once",
                            "INSUFFICIENT_KEY_AVAILABLE")
            return S.GET_KEY_INSUFFICIENT_KEY_AVAILABLE
        loop = asyncio.get_running_loop()
        timeout = s.qos.timeout / 1000.0
        deadline = loop.time() + timeout
        while True:
            r = (self._assign_local(s, idx) if s.twin is not None
                 else await (self._allocate(s, idx) if s.owner else self._request(s, idx)))
            if idx in s.chunks:
                return S.SUCCESSFUL
            if not s.peer_connected or not s.local_connected:
                return S.GET_KEY_PEER_APPLICATION_NOT_CONNECTED
            if r == "peer":
                return S.NO_QKD_CONNECTION_AVAILABLE
            if r == "ok":  # assigned (the peer's AssignStream lands before its reply) but gone
                return S.GET_KEY_INSUFFICIENT_KEY_AVAILABLE
            left = deadline - loop.time()
            if timeout <= 0:
                return S.GET_KEY_INSUFFICIENT_KEY_AVAILABLE
            if left <= 0:
                self._timed_out(s, f"no key for chunk {idx} within {s.qos.timeout} ms: {self._shortage(s, idx)}")
                return S.TIMEOUT_ERROR
            await self.core.wait_changed(s.qkdl_id, left)

    async def _pace(self, s: Stream) -> pb.Status:
        """max_bps: deliver at most that rate; if the wait exceeds the timeout, TIMEOUT_ERROR."""
        now = time.monotonic()
        wait = s.next_send - now
        if wait > 0 and s.qos.timeout and wait > s.qos.timeout / 1000.0:
            self._timed_out(s, f"max_bps {s.qos.max_bps} puts the next key {wait:.1f} s away, beyond the "
                               f"timeout of {s.qos.timeout} ms")
            return S.TIMEOUT_ERROR
        s.next_send = max(now, s.next_send) + s.chunk_bits / s.qos.max_bps
        if wait > 0:
            await asyncio.sleep(wait)
        return S.SUCCESSFUL

    def _shortage(self, s: Stream, idx: int) -> str:
        """Why chunk `idx` did not come, as this end sees it: assigning it takes the chunks from
        the last one assigned up to it, all at once."""
        need = idx + 1 - s.assigned
        chunks = f"{need} chunks of {s.chunk_bits} bits" if need > 1 else f"a chunk of {s.chunk_bits} bits"
        if s.same_node:
            return (f"{chunks} (up to chunk {idx}) would hold more undelivered key than the stream may "
                    f"({self._ahead_max(s)} chunks) until the applications take some")
        if not s.owner:  # the stream's other end assigns the chunks
            return f"the peer's KMS assigned none (link {s.qkdl_id}; {chunks} needed, up to chunk {idx})"
        st = self.core.store.pool_stats(s.qkdl_id)
        have = st.available_bits if st is not None else 0
        return (f"link {s.qkdl_id} holds {have} bits of key available, chunk {idx} needs {chunks} "
                f"({need * s.chunk_bits} bits: chunks {s.assigned}..{idx} are assigned together)")

    @staticmethod
    def _timed_out(s: Stream, why: str, status: str = "TIMEOUT_ERROR") -> None:
        """TIMEOUT_ERROR (and a GET_KEY refused for good) carries no reason on the wire: the
        operator finds it here, at most once per TIMEOUT_LOG_S and stream (an application short of
        key may ask hundreds of times a second)."""
        now = time.monotonic()
        if now - s.timeout_logged < TIMEOUT_LOG_S:
            s.timeouts_unlogged += 1
            return
        more = f" ({s.timeouts_unlogged} more since the last one logged)" if s.timeouts_unlogged else ""
        log.info("key stream %s: GET_KEY %s, %s%s", s.ksid, status, why, more)
        s.timeout_logged, s.timeouts_unlogged = now, 0

    # --- CLOSE -------------------------------------------------------------------------
    async def close_stream(self, req: pb.CloseRequest, caller: str | None) -> pb.CloseResponse:
        s = self._side(req.key_stream_id, caller)
        if s is None or not s.local_connected:
            return pb.CloseResponse(status=S.NO_QKD_CONNECTION_AVAILABLE)
        if self.core.tls and caller != s.local_sae:
            raise CallerRefused("key stream belongs to another SAE")
        self._forget(s)
        await self._tell_peer_closed(s)
        log.info("key stream %s closed by %s", s.ksid, s.local_sae)
        if s.app is not None and self.core.registrar is not None:
            still = sum(1 for o in self.sides() if o.local_connected and o.app is not None
                        and o.app.app_id == s.app.app_id)
            self.core.registrar.stream_closed(s.app, still)
        return pb.CloseResponse(status=S.SUCCESSFUL)

    def peer_close(self, s: Stream) -> None:
        s.peer_connected = False
        s.wipe()
        s.wake()
        if not s.local_connected and self.streams.get(s.ksid) is s:
            del self.streams[s.ksid]
