"""The engines' classical channel: length-prefixed frames over one TLS connection per link session.

Why not gRPC: a key block is ~1,500 Cascade round trips of a few hundred bytes, and grpcio hands
each message to Python at 70-200 us of CPU; here a frame costs a few microseconds (one
`readexactly` per header and body, writes coalesced per event-loop turn). The frames' content is
Wegman-Carter authenticated by the engine (runtime/engine/auth.py); TLS adds confidentiality of
the transcript's metadata and, above all, admission control.

Wire format (big-endian), both directions:

    u32 length | u8 kind | u32 block | payload        (length counts kind, block and payload)

    HELLO    transmitter -> receiver, first frame: JSON {qkdl_id, session, window, prev_session, stored}
    READY    receiver -> transmitter: the session runs
    DATA     one authenticated pipeline message of block `block`
    STORED   transmitter -> receiver: the transmitter stored block `block`'s key
    BYE      no new blocks from the sender's side: finish those in flight, then close
    PING     liveness while nothing else is sent

Admission (receiver), in this order, before any frame larger than HELLO_LIMIT is read:
1. the TLS handshake requires a client certificate that verifies against the network CA;
2. its CN must be the node ID at the far end of a link here (`admit(cn)`), else the
   connection is closed without reading a byte (an SAE or controller certificate is refused);
3. the HELLO (at most HELLO_LIMIT bytes) must name a receiving link whose peer is that node;
4. only then the frame limit rises to what that link's blocks need (`frame_limit`).
Without TLS (loopback-only nodes) steps 1-2 cannot apply; the HELLO checks still do.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sdqkd.errors import SdqkdError
from sdqkd.lkms.tlsctx import peercert_cn
from sdqkd.pki import TlsFiles

log = logging.getLogger("sdqkd.channel")

HEADER = struct.Struct(">IBI")
HELLO_LIMIT = 8 * 1024  # bytes of a frame before the link is known
ALPN = "sdqkd-channel/1"
MAX_WINDOW = 128  # blocks in flight per link (HELLO names what the transmitter wants)
WRITE_HIGH = 1 << 20  # bytes buffered in the transport before a sender waits for the socket


class Kind(enum.IntEnum):
    HELLO = 1
    READY = 2
    DATA = 3
    STORED = 4
    BYE = 5
    PING = 6


class ChannelError(SdqkdError, ConnectionError):
    """The classical channel broke or the peer broke its protocol; the session ends."""


class Refused(ChannelError):
    """A connection failed admission (wrong node, unknown link, malformed HELLO)."""


@dataclass(frozen=True)
class Frame:
    kind: Kind
    block: int
    payload: bytes


def frame_limit(sifted_bits: float) -> int:
    """Largest frame a block of this size can need: DETECT carries a Rice-coded gap (<= 64 bits,
    typically ~20) and a basis bit per detection (~2.2 detections per sifted bit), CONFIRM a
    Toeplitz seed of about twice the key; 16 bytes per sifted bit bounds both with room."""
    return max(1 << 20, int(16 * sifted_bits) + 4096)


class FrameConnection:
    """One end of a channel connection. `send` never blocks on a single frame: frames written in
    the same event-loop turn leave in one TLS record (the Cascade messages of independent blocks
    batch themselves); `flush` waits only when the socket is far behind."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int = HELLO_LIMIT):
        self._reader, self._writer = reader, writer
        self.limit = limit
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        self.peer_cn = peercert_cn(writer.get_extra_info("peercert"))
        self.frames_sent = 0
        self.frames_received = 0
        self.last_sent = self.last_received = self._loop.time()

    def send(self, kind: Kind, block: int = 0, payload: bytes = b"") -> None:
        if self._writer.is_closing():
            raise ChannelError("classical channel closed")
        self._out.append(HEADER.pack(5 + len(payload), kind, block) + payload)
        self.frames_sent += 1
        self.last_sent = self._loop.time()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_scheduled = False
        if self._out and not self._writer.is_closing():
            self._writer.write(b"".join(self._out))
        self._out.clear()

    async def flush(self) -> None:
        """Back-pressure: wait while the transport holds more than WRITE_HIGH unsent bytes."""
        transport = self._writer.transport
        if transport.get_write_buffer_size() > WRITE_HIGH:
            self._write_out()
            await self._writer.drain()

    async def recv(self) -> Frame:
        try:
            head = await self._reader.readexactly(HEADER.size)
            length, kind, block = HEADER.unpack(head)
            if length < 5 or length > self.limit:
                raise ChannelError(f"frame of {length} bytes outside 5..{self.limit}")
            payload = await self._reader.readexactly(length - 5)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as e:
            if isinstance(e, ChannelError):
                raise
            raise ChannelError(f"classical channel lost: {e.__class__.__name__}") from None
        try:
            k = Kind(kind)
        except ValueError:
            raise ChannelError(f"unknown frame kind {kind}") from None
        self.frames_received += 1
        self.last_received = self._loop.time()
        return Frame(k, block, payload)

    async def close(self) -> None:
        self._write_out()
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)

    def abort(self) -> None:
        """Drop the connection at once (tests: a lost channel)."""
        self._out.clear()
        transport = self._writer.transport
        transport.abort()


def hello_payload(qkdl_id: str, session: str, window: int, prev_session: str, stored: list[int]) -> bytes:
    return json.dumps({"qkdl_id": qkdl_id, "session": session, "window": window,
                       "prev_session": prev_session, "stored": stored}).encode()


@dataclass(frozen=True)
class Hello:
    qkdl_id: str
    session: str
    window: int
    prev_session: str
    stored: tuple[int, ...]

    @classmethod
    def parse(cls, payload: bytes) -> Hello:
        try:
            d = json.loads(payload)
            h = cls(str(d["qkdl_id"]), str(d["session"]), int(d["window"]), str(d["prev_session"]),
                    tuple(int(n) for n in d["stored"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ChannelError(f"malformed HELLO: {e}") from None
        if not 1 <= h.window <= MAX_WINDOW or not h.session or len(h.session) > 64:
            raise ChannelError(f"HELLO: window must be 1..{MAX_WINDOW} and session 1..64 characters")
        return h


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    return ctx


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    # peers are named by node ID (certificate CN), not by host name: checked after the handshake
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    return ctx


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


async def dial(address: str, tls: TlsFiles | None, peer_id: str, timeout: float = 10.0) -> FrameConnection:
    """Connect to a peer's channel endpoint; with TLS its certificate CN must be `peer_id`."""
    host, port = _split(address)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_context(tls) if tls else None,
                                    limit=1 << 20), timeout)
    except (OSError, ssl.SSLError, TimeoutError) as e:
        raise ChannelError(f"cannot reach the classical channel at {address}: {e}") from None
    conn = FrameConnection(reader, writer)
    if tls is not None and conn.peer_cn != peer_id:
        await conn.close()
        raise ChannelError(f"{address} presented {conn.peer_cn!r}, not the link's peer node {peer_id}")
    return conn


# admit(cn) -> whether a node with this certificate CN may connect at all;
# accept(conn, hello) -> a coroutine that runs the session (raises ChannelError to refuse).
Admit = Callable[[str | None], bool]
Accept = Callable[[FrameConnection, Hello], Awaitable[None]]


class ChannelServer:
    """The receiving side's listener: admission as in the module docstring, then `accept`."""

    def __init__(self, tls: TlsFiles | None, admit: Admit, accept: Accept):
        self._ctx = server_context(tls) if tls else None
        self._admit, self._accept = admit, accept
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.refused = 0

    async def start(self, listen: str) -> str:
        host, port = _split(listen)
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self._ctx, limit=1 << 20,
                                                  backlog=256)
        bound = self._server.sockets[0].getsockname()[1]
        return f"{listen.rsplit(':', 1)[0]}:{bound}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(BaseException):
                await t

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._conns.add(me)
        conn = FrameConnection(reader, writer)
        try:
            if self._ctx is not None and not self._admit(conn.peer_cn):
                raise Refused(f"certificate {conn.peer_cn!r} is no peer node of this node")
            try:
                first = await asyncio.wait_for(conn.recv(), 10.0)
            except (ChannelError, TimeoutError) as e:
                raise Refused(f"no HELLO: {e}") from None
            if first.kind != Kind.HELLO:
                raise Refused(f"expected HELLO, got {first.kind.name}")
            try:
                hello = Hello.parse(first.payload)
            except ChannelError as e:
                raise Refused(str(e)) from None
            await self._accept(conn, hello)
        except Refused as e:
            self.refused += 1
            log.warning("classical channel: refused a connection from %r: %s", conn.peer_cn, e)
        except (ChannelError, TimeoutError) as e:
            log.info("classical channel: session with %r ended: %s", conn.peer_cn, e)
        finally:
            if me is not None:
                self._conns.discard(me)
            await conn.close()
