"""Engine links of a node: each PHYS link runs key blocks with its peer over the classical
channel (gRPC `ClassicalChannel.Connect`, mutual TLS). The transmitter (Alice) dials the
receiver's peer endpoint; blocks run back to back, each in a worker thread (the C code does
the heavy lifting), paced so that a link never produces faster than its simulated clock.

Authentication: every session starts from the link's bootstrap secret (HKDF with the session
ID, so no pad repeats across sessions); each successful block then sets aside the start of its
key as the next block's authentication key, so steady-state authentication uses QKD key."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import queue
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
HELLO = "hello"


@dataclass
class LinkParams:
    qkdl_id: str
    role: str  # "alice" (transmitter, dials) or "bob" (receiver)
    peer_address: str
    profile: str
    loss_db: float
    variant: str = "optimized"
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


class BridgeTransport:
    """pipeline.Transport for a worker thread, over the asyncio side of a gRPC stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[bytes | None]):
        self._loop = loop
        self._out = out
        self.inbox: queue.Queue[bytes | None] = queue.Queue()

    def send(self, data: bytes) -> None:
        self._loop.call_soon_threadsafe(self._out.put_nowait, bytes(data))

    def recv(self, timeout: float | None = None) -> bytes:
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no message from the peer") from None
        if item is None:
            raise ConnectionError("classical channel closed")
        return item


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
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"link-{params.qkdl_id[:8]}")
        self._incoming: asyncio.Queue[tuple[Any, asyncio.Queue[bytes | None]]] = asyncio.Queue()
        self._stopped = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.p.qkdl_id}")

    async def stop(self) -> None:
        self._stopped.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._thread.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- sessions

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopped.is_set():
            try:
                if self.p.role == "alice":
                    await self._dial()
                else:
                    requests, out = await self._incoming.get()
                    await self._session(requests, out, session=None)
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
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        session = str(uuid.uuid4())
        hello = classical_pb2.Frame(qkdl_id=self.p.qkdl_id, kind=HELLO, payload=session.encode())

        async def frames() -> AsyncIterator[classical_pb2.Frame]:
            yield hello
            while True:
                data = await out.get()
                if data is None:
                    return
                yield classical_pb2.Frame(qkdl_id=self.p.qkdl_id, kind="data", payload=data)

        try:
            call = classical_pb2_grpc.ClassicalChannelStub(ch).Connect(frames())
            await self._session(call, out, session=session)
        finally:
            out.put_nowait(None)
            await ch.close()

    def attach(self, requests: Any, out: asyncio.Queue[bytes | None]) -> None:
        """The receiver side: an incoming Connect stream for this link."""
        self._incoming.put_nowait((requests, out))

    async def _session(self, incoming: Any, out: asyncio.Queue[bytes | None], session: str | None) -> None:
        loop = asyncio.get_running_loop()
        transport = BridgeTransport(loop, out)
        if session is None:  # receiver: the session ID came in the hello
            first = await incoming.__anext__() if hasattr(incoming, "__anext__") else await incoming.read()
            session = first.payload.decode()

        async def pump() -> None:
            try:
                async for frame in incoming:
                    transport.inbox.put(frame.payload)
            finally:
                transport.inbox.put(None)

        reader = asyncio.create_task(pump())
        auth_key = session_auth_key(self.bootstrap, self.p.qkdl_id, session)
        n = 0
        try:
            while not self._stopped.is_set():
                await self._wait_room(self.p.qkdl_id)
                t0 = time.monotonic()
                # a thread of the link's own: a block waits on its peer, so a shared, bounded pool
                # would deadlock once more link ends wait than it has workers
                result, auth_key = await loop.run_in_executor(self._thread, self._block, transport, session, n,
                                                              auth_key)
                await self._finish(result, session, n, time.monotonic() - t0)
                n += 1
                # never faster than the link's own clock: the simulated block took this long
                wait = result.duration_s / self.p.clock_scale - (time.monotonic() - t0)
                if wait > 0:
                    await asyncio.sleep(wait)
        finally:
            reader.cancel()
            out.put_nowait(None)  # ends the gRPC stream of this session

    def _block(self, transport: BridgeTransport, session: str, n: int, auth_key: bytes
               ) -> tuple[pipeline.BlockResult, bytes]:
        cfg = pipeline.BlockConfig(
            profile=self.p.profile, loss_db=self.p.loss_db,
            n_pulses=pipeline.pulses_for(self.p.profile, self.p.loss_db, self.p.target_sifted_bits),
            seed=block_seed(self.p.qkdl_id, session, n), cascade_variant=self.p.variant)
        source = BufferKeySource(auth_key)
        auth = Authenticator(source, self.p.role, context=f"{self.p.qkdl_id}|{session}|{n}".encode())
        if self.p.role == "alice":
            result = pipeline.serve_alice(pipeline.AliceBlock(cfg, auth), transport, timeout=120)
        else:
            result = pipeline.drive_bob(pipeline.BobBlock(cfg, auth, eve=self.p.eve), transport, timeout=120)
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

    async def Connect(self, request_iterator: AsyncIterator[classical_pb2.Frame], context: Any
                      ) -> AsyncIterator[classical_pb2.Frame]:
        first = await request_iterator.__anext__()
        link = self._links.get(first.qkdl_id)
        if first.kind != HELLO or link is None or link.p.role != "bob":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no receiving link {first.qkdl_id!r} here")
        out: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def with_hello() -> AsyncIterator[classical_pb2.Frame]:
            yield first
            async for f in request_iterator:
                yield f

        link.attach(with_hello(), out)
        while True:
            data = await out.get()
            if data is None:
                return
            yield classical_pb2.Frame(qkdl_id=first.qkdl_id, kind="data", payload=data)
