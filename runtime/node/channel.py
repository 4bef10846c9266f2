"""The engines' classical channel: length-prefixed frames over one TLS connection per link session.

Why not gRPC: a key block is ~1,500 Cascade round trips of a few hundred bytes, and grpcio hands
each message to Python at 70-200 us of CPU; here a frame costs a few microseconds: the socket is
read and written by event-loop callbacks, its TLS records through memory (tls_bio: one `recv` for
all the records the kernel holds, no asyncio stream or Python TLS layer), writes coalesced per
read callback or event-loop turn. The
frames' content is Wegman-Carter authenticated by the engine (runtime/engine/auth.py); TLS adds
confidentiality of the transcript's metadata and, above all, admission control.

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
2. its CN must be the node ID at the far end of a link here (`admit(cn)` raises Refused
   otherwise), else the connection is closed without reading a byte (an SAE or controller
   certificate is refused);
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
import socket
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sdqkd.errors import SdqkdError
from sdqkd.lkms.tlsctx import peercert_cn
from sdqkd.node.tls_bio import TlsPipe, handshake
from sdqkd.pki import TlsFiles

log = logging.getLogger("sdqkd.channel")

HEADER = struct.Struct(">IBI")
HELLO_LIMIT = 8 * 1024  # bytes of a frame before the link is known
ALPN = "sdqkd-channel/1"
MAX_WINDOW = 128  # blocks in flight per link (HELLO names what the transmitter wants)
WRITE_HIGH = 1 << 20  # bytes waiting for the socket before a sender waits; also read ahead at most
READ_CHUNK = 256 * 1024  # bytes per read call (a TLS record is at most 16 KiB)
# A frame at least this large (DETECT, SIFT, CONFIRM: megabytes) is read straight into a buffer of
# its own size and written without being copied behind its header: grown 16 KiB at a time, the read
# buffer was reallocated ~50 times per frame, copying ~9x its size.
BIG_FRAME = 64 * 1024
# A big payload is encrypted and written WRITE_CHUNK at a time: its records then go from TLS to the
# socket while still in cache, and no ciphertext copy of it all is made (10 MiB each way through
# the channel: 27.0-29.6 ms of CPU against 31.3-32.5 whole; docs/channel.md).
WRITE_CHUNK = 256 * 1024
RATE_FRAMES = 8  # big frames received whose arrival rate `line_rate` keeps (it gives the best)


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
    """A connection failed admission (wrong node, unknown link, malformed HELLO). `not_yet`: the
    link it names is not (yet) provisioned here, as when a network starts and the transmitting
    end dials before this end has its link; the dialler retries, so that is no warning."""

    def __init__(self, message: str, not_yet: bool = False) -> None:
        super().__init__(message)
        self.not_yet = not_yet


class Frame(NamedTuple):  # a tuple: built once per received frame, cheaper than a dataclass
    kind: Kind
    block: int
    payload: bytes | bytearray  # a big frame's is the buffer it was read into (megabytes: no copy)


_KINDS = {int(k): k for k in Kind}


def frame_limit(sifted_bits: float) -> int:
    """Largest frame a block of this size can need: DETECT carries a Rice-coded gap (<= 64 bits,
    typically ~20) and a basis bit per detection (~2.2 detections per sifted bit), CONFIRM a
    Toeplitz seed of about twice the key; 16 bytes per sifted bit bounds both with room."""
    return max(1 << 20, int(16 * sifted_bits) + 4096)


class FrameConnection:
    """One end of a channel connection on a non-blocking socket (its TLS records through `tls`)
    driven by the event loop's reader and writer callbacks, without asyncio's Python TLS layer and
    stream reader, which cost several times the frame handling itself (~2 x 2,300 messages per
    4e6-bit block).

    `send` never blocks: frames written in the same event-loop turn leave in one write (one TLS
    record; the Cascade messages of independent blocks batch themselves), and those a read
    callback's handlers send (the replies to what it read) at its end, without waiting for the
    loop's next turn; `flush` waits only when far behind. Reading starts at the first `recv`
    (admission reads nothing before it) and pauses while received frames are not collected.

    A running session takes its frames with `deliver` instead: each one goes to its handler from
    the read callback itself, without a future and a task wake-up per TLS record (a 4e6-bit block
    has ~2,000 records each way). Reading then never waits for sending: if both ends stopped
    reading while far behind with sending, neither would ever drain (a bulk frame each way at
    once is enough); what a session queues is bounded by its window of blocks, each of which
    answers only what the peer asked."""

    def __init__(self, sock: socket.socket, limit: int = HELLO_LIMIT, tls: TlsPipe | None = None):
        self._sock = sock
        self._tls = tls
        self._fd = sock.fileno()
        self.limit = limit
        self._loop = asyncio.get_running_loop()
        self._out: deque[bytes | memoryview] = deque()
        self._out_bytes = 0
        self._pending: memoryview | None = None  # bytes for the wire the socket could not take yet
        self._flush_scheduled = False
        self._in_read = False  # in the read callback: what its handlers send leaves at its end
        self._buf = bytearray()
        self._chunk = memoryview(bytearray(READ_CHUNK))
        self._big: bytearray | None = None  # the payload of a big frame being read (BIG_FRAME)
        self._big_fill = 0
        self._big_head: tuple[Kind, int] = (Kind.PING, 0)
        self._big_since = 0.0  # when the big frame being read began to arrive
        self._rates: deque[float] = deque(maxlen=RATE_FRAMES)
        self._frames: deque[Frame] = deque()
        self._queued = 0  # payload bytes received and not yet collected
        self._reading = False
        self._waiter: asyncio.Future[None] | None = None
        self._handler: Callable[[Frame], None] | None = None  # deliver(): frames go here
        self._on_error: Callable[[BaseException], None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._error: ChannelError | None = None
        self._closed = False
        self.peer_cn = peercert_cn(tls.getpeercert()) if tls is not None else None
        self.frames_sent = 0
        self.frames_received = 0
        self.last_sent = self.last_received = self._loop.time()

    # ------------------------------------------------------------ sending

    def send(self, kind: Kind, block: int = 0, payload: bytes = b"") -> None:
        head = HEADER.pack(5 + len(payload), kind, block)
        if len(payload) >= BIG_FRAME:
            self.send_bytes(head)
            self.send_bytes(payload)  # written as it is, after the small frames before it
        else:
            self.send_bytes(head + payload)
        self.frames_sent += 1

    def send_bytes(self, data: bytes) -> None:
        """Raw bytes after the frames already sent (a frame; tests: a malformed one)."""
        if self._closed:
            raise self._error or ChannelError("classical channel closed")
        self._out.append(data)
        self._out_bytes += len(data)
        self.last_sent = self._loop.time()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if not self._in_read:
                self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_scheduled = False
        while self._pending is None and self._out and not self._closed:
            data = self._next_write()
            if self._tls is not None:
                try:
                    data = self._tls.encrypt(data)
                except ssl.SSLError as e:
                    self._fail(f"classical channel lost: {e.__class__.__name__}")
                    return
            self._try_send(data)

    def _next_write(self) -> bytes | memoryview:
        """What leaves in one write: the next WRITE_CHUNK of a big payload (the rest stays first in
        line), else the queued small frames together."""
        out = self._out
        parts = [out.popleft()]
        if len(parts[0]) > WRITE_CHUNK:
            view = memoryview(parts[0])
            out.appendleft(view[WRITE_CHUNK:])
            parts[0] = view[:WRITE_CHUNK]
        while len(parts[0]) < BIG_FRAME and out and len(out[0]) < BIG_FRAME:
            parts.append(out.popleft())
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._out_bytes -= len(data)
        return data

    def _try_send(self, data: bytes | memoryview) -> None:
        """Bytes for the wire (TLS records already), in order after any still pending."""
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._fail(f"classical channel lost: {e.__class__.__name__}")
            return
        if sent < len(data):
            if self._pending is None:
                self._loop.add_writer(self._fd, self._on_writable)
            self._pending = memoryview(data)[sent:]  # no copy: big frames are megabytes
        elif self._pending is not None:
            self._pending = None
            self._loop.remove_writer(self._fd)

    def _send_tls_own(self) -> None:
        """Records OpenSSL wrote while reading (a TLS 1.3 key update, say): out before any frame."""
        assert self._tls is not None
        own = self._tls.outgoing()
        if not own:
            return
        if self._pending is None:
            self._try_send(own)
        else:
            self._pending = memoryview(bytes(self._pending) + own)

    def _on_writable(self) -> None:
        if self._pending is not None:
            self._try_send(self._pending)
        if self._pending is None:
            self._write_out()
            if self._pending is None and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def _backlog(self) -> int:
        return self._out_bytes + (len(self._pending) if self._pending is not None else 0)

    async def flush(self) -> None:
        """Back-pressure: wait while more than WRITE_HIGH bytes wait for the socket."""
        if self._backlog() > WRITE_HIGH and self._pending is not None and not self._closed:
            await asyncio.shield(self._drain_future())

    def _drain_future(self) -> asyncio.Future[None]:
        """Done when the socket took everything: one future shared by every task that waits (a
        future per waiter would leave all but the last one waiting forever)."""
        if self._drained is None or self._drained.done():
            self._drained = self._loop.create_future()
        return self._drained

    # ------------------------------------------------------------ receiving

    def deliver(self, handler: Callable[[Frame], None], on_error: Callable[[BaseException], None]) -> None:
        """From now on hand every frame (those already received first) to `handler`, called from
        the read callback; `on_error` gets the connection's failure or the handler's exception,
        after which nothing more is delivered."""
        self._handler, self._on_error = handler, on_error
        if self._error is not None:
            self._tell(self._error)
            return
        self._resume()
        if self._frames:  # read with the frame recv() returned: the socket may not wake us again
            self._loop.call_soon(self._on_readable)

    def _hand_over(self) -> None:
        """deliver(): the received frames to the handler, in order, while the connection is open."""
        frames, handler = self._frames, self._handler
        assert handler is not None
        while frames and not self._closed:
            f = frames.popleft()
            self._queued -= len(f.payload)
            try:
                handler(f)
            except Exception as e:  # noqa: BLE001 - the session's protocol failure: it ends
                frames.clear()
                self._queued = 0
                self._pause()
                self._tell(e)
                return

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            if not self._closed:
                self._loop.remove_reader(self._fd)

    async def recv(self) -> Frame:
        while not self._frames:
            if self._error is not None:
                raise self._error
            self._resume()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        f = self._frames.popleft()
        self._queued -= len(f.payload)
        return f

    def _resume(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
            # the TLS BIO may hold bytes already taken from the socket: the socket would not wake us
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        if self._closed or not self._reading:
            return
        self._in_read = True
        try:
            self._read_and_deliver()
        finally:
            self._in_read = False
            if self._flush_scheduled:
                self._write_out()

    def _read_and_deliver(self) -> None:
        if self._handler is not None:
            self._hand_over()
            if not self._reading or self._closed:
                return
        tls = self._tls
        recv_into = self._sock.recv_into if tls is None else tls.recv_into
        try:
            while True:
                big = self._big
                into = self._chunk if big is None else memoryview(big)[self._big_fill:]
                try:
                    n = recv_into(into)
                except (BlockingIOError, InterruptedError):
                    break
                if n < 0:  # TLS: nothing more yet
                    break
                if n == 0:
                    raise ChannelError("classical channel lost: closed by the peer")
                if big is None:
                    self._buf += into if n == len(into) else into[:n]
                    self._parse()
                else:
                    self._big_fill += n
                    self.last_received = self._loop.time()
                    if self._big_fill == len(big):
                        self._big_done()
                if self._handler is not None and self._frames:
                    self._hand_over()
                    if not self._reading or self._closed:
                        return
                # a short read drained a plain socket; TLS gives a record per call, until it blocks
                if (n < len(into) and tls is None) or self._queued > max(self.limit, WRITE_HIGH):
                    break
            if tls is not None and not self._closed:
                self._send_tls_own()
        except ChannelError as e:
            self._fail(str(e))
        except (OSError, ssl.SSLError) as e:
            self._fail(f"classical channel lost: {e.__class__.__name__}")
        if self._queued > max(self.limit, WRITE_HIGH) and self._reading:  # collected frames first
            self._pause()
        if self._frames and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse(self) -> None:
        """Complete frames at the start of the buffer, each checked against the limit by its header."""
        buf, off, end = self._buf, 0, len(self._buf)
        with memoryview(buf) as view:  # released before the buffer shrinks
            while end - off >= HEADER.size:
                length, kind, block = HEADER.unpack_from(buf, off)
                if length < 5 or length > self.limit:
                    raise ChannelError(f"frame of {length} bytes outside 5..{self.limit}")
                k = _KINDS.get(kind)
                if k is None:
                    raise ChannelError(f"unknown frame kind {kind}")
                stop = off + 4 + length
                if stop > end:
                    if length - 5 >= BIG_FRAME:  # the rest is read straight into the payload's buffer
                        self._big_start(k, block, length - 5, view[off + HEADER.size:end])
                        off = end
                    break
                payload = bytes(view[off + HEADER.size:stop])
                self._frames.append(Frame(k, block, payload))
                self._queued += len(payload)
                self.frames_received += 1
                off = stop
        if off:
            del buf[:off]
            self.last_received = self._loop.time()

    def _big_start(self, kind: Kind, block: int, size: int, head: memoryview) -> None:
        self._big = bytearray(size)
        self._big[:len(head)] = head
        self._big_fill = len(head)
        self._big_head = (kind, block)
        self._big_since = self._loop.time()

    def _big_done(self) -> None:
        assert self._big is not None
        payload, self._big = self._big, None  # handed over as it is: the reader keeps no reference
        kind, block = self._big_head
        self._rates.append(len(payload) / max(self._loop.time() - self._big_since, 1e-6))
        self._frames.append(Frame(kind, block, payload))
        self._queued += len(payload)
        self.frames_received += 1
        self.last_received = self._loop.time()

    @property
    def line_rate(self) -> float:
        """Bytes per second at which the peer's big frames arrived here, the best of the last
        RATE_FRAMES (0: none yet): the line's rate towards this end, or less when the peer sent
        slowly or this end read late (hence the best of several, not the last)."""
        return max(self._rates, default=0.0)

    # ------------------------------------------------------------ ending

    def _fail(self, why: str) -> None:
        if self._error is None:
            self._error = ChannelError(why)
        self._shut()
        for fut in (self._waiter, self._drained):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._tell(self._error)

    def _tell(self, exc: BaseException) -> None:
        """deliver(): the first failure goes to on_error (later, not from inside the caller)."""
        on_error, self._on_error = self._on_error, None
        if on_error is not None:
            self._loop.call_soon(on_error, exc)

    def _shut(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._pending is not None:
            self._loop.remove_writer(self._fd)
        self._out.clear()
        self._out_bytes = 0
        self._sock.close()

    async def close(self) -> None:
        """Send what is queued (for up to 2 s), then close."""
        if self._closed:
            return
        self._write_out()
        if self._pending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drain_future()), 2.0)
        self._fail("classical channel closed")

    def abort(self) -> None:
        """Drop the connection at once (tests: a lost channel)."""
        self._fail("classical channel closed")


async def _connect(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames are latency-bound
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise error


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
    def parse(cls, payload: bytes | bytearray) -> Hello:
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
    sock: socket.socket | None = None
    pipe: TlsPipe | None = None
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(host, port)
            if tls is not None:
                pipe = await handshake(sock, client_context(tls), server_side=False)
    except (OSError, ssl.SSLError, TimeoutError) as e:
        if sock is not None:
            sock.close()
        raise ChannelError(f"cannot reach the classical channel at {address}: {e}") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    conn = FrameConnection(sock, tls=pipe)
    if tls is not None and conn.peer_cn != peer_id:
        await conn.close()
        raise ChannelError(f"{address} presented {conn.peer_cn!r}, not the link's peer node {peer_id}")
    return conn


# admit(cn) -> None if a node with this certificate CN may connect at all, else raises Refused;
# accept(conn, hello) -> a coroutine that runs the session (raises ChannelError to refuse).
Admit = Callable[[str | None], None]
Accept = Callable[[FrameConnection, Hello], Awaitable[None]]


class ChannelServer:
    """The receiving side's listener: admission as in the module docstring, then `accept`."""

    def __init__(self, tls: TlsFiles | None, admit: Admit, accept: Accept):
        self._ctx = server_context(tls) if tls else None
        self._admit, self._accept = admit, accept
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.refused = 0

    async def start(self, listen: str) -> str:
        host, port = _split(listen)
        loop = asyncio.get_running_loop()
        family, kind, proto, _, addr = (await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE))[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(256)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._acceptor = asyncio.create_task(self._accept_loop(sock), name="channel-accept")
        bound = sock.getsockname()[1]
        return f"{listen.rsplit(':', 1)[0]}:{bound}"

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(BaseException):
                await self._acceptor
        if self._listener is not None:
            self._listener.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(BaseException):
                await t

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as e:  # out of descriptors and the like: the listener stays
                log.warning("classical channel: accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(sock))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _serve(self, sock: socket.socket) -> None:
        pipe: TlsPipe | None = None
        try:
            if self._ctx is not None:
                pipe = await asyncio.wait_for(handshake(sock, self._ctx, server_side=True), 10.0)
        except (OSError, ssl.SSLError, TimeoutError) as e:
            sock.close()
            log.info("classical channel: TLS handshake failed: %s", e)
            return
        except BaseException:
            sock.close()
            raise
        conn = FrameConnection(sock, tls=pipe)
        try:
            if self._ctx is not None:
                self._admit(conn.peer_cn)
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
            log.log(logging.INFO if e.not_yet else logging.WARNING,
                    "classical channel: refused a connection from %r: %s", conn.peer_cn, e)
        except (ChannelError, TimeoutError) as e:
            log.info("classical channel: session with %r ended: %s", conn.peer_cn, e)
        finally:
            await conn.close()
