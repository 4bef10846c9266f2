"""Engine links of a node: each PHYS link runs key blocks with its peer over the classical
channel (gRPC `ClassicalChannel.Connect`, mutual TLS). The transmitter (Alice) dials the
receiver's peer endpoint; blocks run back to back, paced so that a link never produces faster
than its simulated clock. A block's state machine is driven from the node's event loop: the
hundreds of Cascade round trips of a block are handled inline (a few microseconds of C each,
where a hop to a thread and back would cost more than the step), the heavy steps (simulation,
sifting, privacy amplification: C that releases the GIL) go to a small pool of threads shared
by all links. What a block costs is then mostly its gRPC messages (~0.1-0.3 ms of CPU per
round trip on loopback with TLS).

Authentication: every session starts from the link's bootstrap secret (HKDF with the session
ID, so no pad repeats across sessions); each successful block then sets aside the start of its
key as the next block's authentication key, so steady-state authentication uses QKD key."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from generated.proto.sdqkd import classical_pb2, classical_pb2_grpc
from runtime.engine import pipeline
from runtime.engine.auth import Authenticator, BufferKeySource

log = logging.getLogger("sdqkd.engine")

AUTH_RESERVE_BYTES = 1024  # taken from each block's key for the next block's tags (a block uses ~1 kbit)
SESSION_AUTH_BYTES = 64 * 1024
RECV_TIMEOUT = 120.0  # seconds a block waits for its peer's next message
WATCHDOG_S = 2.0  # how often a session checks that timeout
HELLO = "hello"


@dataclass
class LinkParams:
    qkdl_id: str
    role: str  # "alice" (transmitter, dials) or "bob" (receiver)
    peer_address: str
    profile: str
    loss_db: float
    variant: str  # a Cascade variant of the model's enum (its default comes from the datastore)
    eve: float = 0.0
    enabled: bool = True
    target_sifted_bits: float = 1e6
    clock_scale: float = 1.0  # < 1: a slower simulated clock (large networks on few cores)


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


class FramePipe:
    """One end of a link's classical-channel stream, for the session coroutine: the gRPC call at
    the transmitter, the server context at the receiver (the reader/writer API of grpc.aio, so
    no request-iterator or queue task stands between a Cascade message and the socket).

    A block exchanges hundreds of messages, so a receive timeout is not a timer per message: recv
    notes a deadline and a watchdog, waking every WATCHDOG_S, ends the session once it has passed."""

    def __init__(self, stream: Any):
        self._stream = stream  # grpc.aio.StreamStreamCall or ServicerContext: read() / write()
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._task: asyncio.Future[None] | None = None
        self._deadline = math.inf
        self._why = ""

    async def send(self, data: bytes) -> None:
        await self._stream.write(classical_pb2.Frame(kind="data", payload=data))

    async def recv(self, timeout: float) -> bytes:
        self._deadline = self._loop.time() + timeout
        frame = await self._stream.read()
        self._deadline = math.inf
        if frame is grpc.aio.EOF:
            raise ConnectionError("classical channel closed")
        return frame.payload

    async def run(self, session: Coroutine[Any, Any, None]) -> None:
        """Runs a session on this stream. TimeoutError if the peer stays silent past a recv's
        timeout, ConnectionError if the stream is lost meanwhile."""
        if self.closed.done():
            session.close()
            raise ConnectionError("classical channel closed before its session started")
        self._task = asyncio.ensure_future(session)
        watchdog = asyncio.create_task(self._watch())
        try:
            await self._task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # the link itself stops
                raise
            if self._why == "timeout":
                raise TimeoutError("no message from the peer") from None
            raise ConnectionError("classical channel lost") from None
        finally:
            watchdog.cancel()
            self.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_S)
            if self._loop.time() > self._deadline:
                self._end("timeout")

    def _end(self, why: str) -> None:
        if self._task is not None and not self._task.done():
            self._why = why
            self._task.cancel()

    def lost(self) -> None:
        """The RPC ended under the session (peer gone, cancelled): stop the session on it."""
        self._end("lost")
        self.close()

    def close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """The threads every link of this process shares for the heavy steps of a block (simulation,
    sifting, privacy amplification: C that releases the GIL). They never wait on a peer, so a
    small pool is enough and cannot deadlock; Cascade steps (a few bisections in C) run inline."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="engine")
    return _POOL


def session_auth_key(bootstrap: bytes, qkdl_id: str, session: str) -> bytes:
    """HKDF to a session key, then SHAKE-256 as the XOF that stretches it (HKDF stops at 8160 B)."""
    prk = HKDF(algorithm=hashes.SHA256(), length=32, salt=session.encode(),
               info=f"sdqkd classical channel {qkdl_id}".encode()).derive(bootstrap)
    return hashlib.shake_256(prk).digest(SESSION_AUTH_BYTES)


def block_seed(qkdl_id: str, session: str, n: int) -> int:
    h = hashlib.sha256(f"{qkdl_id}|{session}|{n}".encode()).digest()
    return int.from_bytes(h[:8], "big") or 1


class EngineLink:
    """One PHYS link at one node. `on_key` stores a block's key (LKMS add_block); `on_stats`
    reports telemetry (agent state); `wait_room` is the key store's back-pressure."""

    def __init__(self, params: LinkParams, bootstrap: bytes, channel_factory: Callable[[str], grpc.aio.Channel],
                 on_key: Callable[[str, bytes, int, str], Awaitable[Any]],
                 on_stats: Callable[[LinkParams, LinkStats, pipeline.BlockResult | None], None],
                 wait_room: Callable[[str], Awaitable[None]]):
        self.p = params
        self.bootstrap = bootstrap
        self.stats = LinkStats()
        self._channel_factory = channel_factory
        self._on_key, self._on_stats, self._wait_room = on_key, on_stats, wait_room
        self._task: asyncio.Task[None] | None = None
        self._incoming: asyncio.Queue[tuple[FramePipe, str]] = asyncio.Queue()
        self._stopped = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.p.qkdl_id}")

    async def stop(self) -> None:
        self._stopped.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        while not self._incoming.empty():  # streams that arrived but never ran: let them end
            self._incoming.get_nowait()[0].close()

    # ---------------------------------------------------------------- sessions

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopped.is_set():
            try:
                if self.p.role == "alice":
                    await self._dial()
                else:
                    pipe, session = await self._incoming.get()
                    await pipe.run(self._session(pipe, session))
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a session fails; the link retries
                log.info("link %s: session ended: %s", self.p.qkdl_id, e)
                self.stats.status = "PASSIVE"
                self._on_stats(self.p, self.stats, None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 3.0)

    async def _dial(self) -> None:
        ch = self._channel_factory(self.p.peer_address)
        session = str(uuid.uuid4())
        try:
            call = classical_pb2_grpc.ClassicalChannelStub(ch).Connect()
            await call.write(classical_pb2.Frame(qkdl_id=self.p.qkdl_id, kind=HELLO, payload=session.encode()))
            pipe = FramePipe(call)
            try:
                await pipe.run(self._session(pipe, session))
            finally:
                call.cancel()
        finally:
            await ch.close()

    def attach(self, pipe: FramePipe, session: str) -> None:
        """The receiver side: an incoming Connect stream for this link."""
        self._incoming.put_nowait((pipe, session))

    async def _session(self, pipe: FramePipe, session: str) -> None:
        auth_key = session_auth_key(self.bootstrap, self.p.qkdl_id, session)
        n = 0
        while not self._stopped.is_set():
            await self._wait_room(self.p.qkdl_id)
            t0 = time.monotonic()
            result, auth_key = await self._block(pipe, session, n, auth_key)
            await self._finish(result, session, n, time.monotonic() - t0)
            n += 1
            # never faster than the link's own clock: the simulated block took this long
            wait = result.duration_s / self.p.clock_scale - (time.monotonic() - t0)
            if wait > 0:
                await asyncio.sleep(wait)

    async def _block(self, pipe: FramePipe, session: str, n: int, auth_key: bytes
                     ) -> tuple[pipeline.BlockResult, bytes]:
        """One block: the party's state machine driven from this event loop. Cascade messages
        (hundreds per block, a few microseconds of C each) are handled inline; the heavy steps
        go to the shared engine threads."""
        cfg = pipeline.BlockConfig(
            profile=self.p.profile, loss_db=self.p.loss_db,
            n_pulses=pipeline.pulses_for(self.p.profile, self.p.loss_db, self.p.target_sifted_bits),
            seed=block_seed(self.p.qkdl_id, session, n), cascade_variant=self.p.variant)
        source = BufferKeySource(auth_key)
        auth = Authenticator(source, self.p.role, context=f"{self.p.qkdl_id}|{session}|{n}".encode())
        loop = asyncio.get_running_loop()
        party: pipeline.AliceBlock | pipeline.BobBlock
        # the peer may pace a whole simulated block before its first message of the next one
        first_wait = RECV_TIMEOUT + cfg.duration_s / self.p.clock_scale
        if self.p.role == "alice":
            party = pipeline.AliceBlock(cfg, auth)
        else:
            party = pipeline.BobBlock(cfg, auth, eve=self.p.eve)
            await pipe.send(await loop.run_in_executor(_pool(), party.start))
        timeout = first_wait
        while not party.finished:
            frame = await pipe.recv(timeout)
            timeout = RECV_TIMEOUT
            if pipeline.light(frame):
                reply = party.handle(frame)
            else:
                reply = await loop.run_in_executor(_pool(), party.handle, frame)
            if reply is not None:
                await pipe.send(reply)
        result = party.result
        rest = auth_key[auth.consumed_bits // 8:]
        if result.status == "ok" and result.key and len(result.key) > AUTH_RESERVE_BYTES:
            # the next block's tags come from this block's key (both ends cut the same bytes)
            rest = rest + result.key[:AUTH_RESERVE_BYTES]
            result.key = result.key[AUTH_RESERVE_BYTES:]
            result.key_bits -= 8 * AUTH_RESERVE_BYTES
        if len(rest) < 2 * 1024:
            raise RuntimeError("authentication key for the next block ran low; starting a new session")
        return result, rest

    async def _finish(self, result: pipeline.BlockResult, session: str, n: int, wall_s: float) -> None:
        s = self.stats
        if not math.isnan(result.qber):
            s.qber = result.qber
        # the rate this node really achieves: the link's clock, or the CPU when that is slower
        duration = max(result.duration_s / self.p.clock_scale, wall_s, 1e-9)
        if result.status == "ok" and result.key:
            usable = (result.key_bits // 256) * 256
            if usable:
                await self._on_key(self.p.qkdl_id, result.key[: usable // 8], 256, f"{session}:{n}")
            s.blocks_ok += 1
            s.secret_bits += usable
            s.skr = usable / duration if s.skr == 0 else 0.7 * s.skr + 0.3 * usable / duration
            s.auth_bps = 8 * AUTH_RESERVE_BYTES / duration
            s.status = "ACTIVE"
        else:
            s.blocks_aborted += 1
            s.last_abort = result.reason
            s.skr *= 0.5
            s.status = "PASSIVE"
        self._on_stats(self.p, s, result)


class ClassicalChannelService(classical_pb2_grpc.ClassicalChannelServicer):
    """Receiver side of the classical channel: hands each incoming stream to its link."""

    def __init__(self, links: dict[str, EngineLink]):
        self._links = links

    async def Connect(self, request_iterator: AsyncIterator[classical_pb2.Frame], context: Any) -> None:
        first = await context.read()
        link = self._links.get(first.qkdl_id) if first is not grpc.aio.EOF else None
        if link is None or first.kind != HELLO or link.p.role != "bob":
            qkdl_id = getattr(first, "qkdl_id", "")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no receiving link {qkdl_id!r} here")
            return  # abort raises; the type checker cannot know it
        pipe = FramePipe(context)
        link.attach(pipe, first.payload.decode())
        try:
            await asyncio.shield(pipe.closed)  # the link's session runs on this stream until it ends
        finally:
            pipe.lost()
