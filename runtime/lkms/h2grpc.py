"""A small gRPC server over HTTP/2 (the `h2` protocol library) on asyncio, for the ETSI 004 port.

Why not grpcio here: grpcio hands every message to Python separately (one completion-queue
operation and one event-loop wake-up per read and per write), about 70-100 us of CPU per
message on each side; one pipelined GetKeyStream then tops out near 10,000 keys/s. This server
reads whatever the socket delivered, parses *all* complete messages of a stream at once, answers
them in one go and writes the responses as one DATA frame sequence, so the per-message cost is
the protobuf parse/serialise and the service's own logic (a few us).

What it implements of gRPC over HTTP/2 (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
TLS with ALPN "h2" (client certificates as the given `ssl.SSLContext` requires them) or cleartext
HTTP/2 with prior knowledge; unary and bidirectional-streaming methods; length-prefixed messages
without compression (a compressed message ends the call with UNIMPLEMENTED); `grpc-timeout`
(DEADLINE_EXCEEDED); status and message in trailers (trailers-only responses for early errors);
UNIMPLEMENTED for unknown methods; RESOURCE_EXHAUSTED for messages above `max_message`;
RST_STREAM from the client cancels the call; flow control both ways (a stream's requests are
consumed - and its receive window reopened - only while its unsent responses stay below a
high-water mark, so a client that does not read cannot make the server buffer without bound);
GOAWAY and a grace period on stop. No server reflection, health service or compression.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from sdqkd.errors import SdqkdError
from sdqkd.lkms.tlsctx import peercert_cn

log = logging.getLogger(__name__)

_WINDOW = 1 << 20  # receive window per stream, bytes
_CONN_WINDOW = 1 << 24  # receive window of the connection
_HIGH_WATER = 256 << 10  # unsent response bytes per stream above which requests are not read
_MAX_BATCH = 4096  # messages handed to a streaming handler at once at most
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


class GrpcError(SdqkdError):
    """Raised by a handler to end its call with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str = "") -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Unary:
    """`fn(request_bytes, call) -> response_bytes` (the handler parses and serialises)."""

    fn: Callable[[bytes, Call], Awaitable[bytes]]


@dataclass(frozen=True)
class Stream:
    """Bidirectional streaming: `fn(call)` reads with `await call.batch()` and answers with
    `call.send(bytes)`, then `await call.drain()` once per batch."""

    fn: Callable[[Call], Awaitable[None]]


Handler = Unary | Stream


def _parse_timeout(v: bytes) -> float | None:
    try:
        return int(v[:-1]) * _TIMEOUT_UNITS[v[-1:]]
    except (ValueError, KeyError):
        return None


class Call:
    """One RPC (one HTTP/2 stream) as a handler sees it."""

    def __init__(self, conn: _Connection, sid: int, method: str, timeout: float | None) -> None:
        self._conn, self.sid, self.method, self.timeout = conn, sid, method, timeout
        self.caller: str | None = conn.caller  # CN of the verified client certificate (None without TLS)
        self._in = bytearray()
        self._unacked = 0  # flow-controlled bytes received and not yet handed back to the client
        self._ended = False  # the client half-closed
        self._out = bytearray()  # framed responses not yet handed to h2 (flow control)
        self._headers_sent = False
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self.closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.task: asyncio.Task[None] | None = None

    # --- reading -----------------------------------------------------------------------
    def _take(self, limit: int) -> list[bytes]:
        """Complete messages from the receive buffer (at most `limit`)."""
        b, pos, n = self._in, 0, len(self._in)
        out: list[bytes] = []
        mx = self._conn.server.max_message
        while n - pos >= 5 and len(out) < limit:
            size = int.from_bytes(b[pos + 1:pos + 5], "big")
            if b[pos]:
                raise GrpcError(grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported")
            if size > mx:
                raise GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message larger than {mx} bytes")
            if n - pos - 5 < size:
                break
            out.append(bytes(b[pos + 5:pos + 5 + size]))
            pos += 5 + size
        if pos:
            del b[:pos]
        if self._ended and not out and b:
            raise GrpcError(grpc.StatusCode.INTERNAL, "incomplete message at end of stream")
        return out

    def _ack(self, keep: int = 0) -> None:
        """Reopen the client's send window for everything received except the `keep` bytes
        still buffered (requests not yet handed to the handler)."""
        n = self._unacked - keep
        if n > 0 and not self.closed:
            self._unacked -= n
            self._conn.ack(self.sid, n)

    async def batch(self, limit: int = _MAX_BATCH) -> list[bytes] | None:
        """The next complete request messages (at least one), or None when the client has
        finished sending. Reopens the client's send window for what was consumed."""
        while True:
            msgs = self._take(limit)
            if msgs:
                self._ack(keep=len(self._in))
                return msgs
            if self._ended:
                return None
            self._ack()  # at most part of one message (<= max_message) is buffered: let it come
            self._readable.clear()
            await self._readable.wait()

    async def message(self) -> bytes:
        """The single request of a unary call."""
        while not self._ended:
            self._readable.clear()
            await self._readable.wait()
        msgs = self._take(2)
        if len(msgs) != 1:
            raise GrpcError(grpc.StatusCode.UNIMPLEMENTED if msgs else grpc.StatusCode.INTERNAL,
                            "expected exactly one request message")
        return msgs[0]

    # --- writing -----------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        """Queue one response message (written by `flush`/`drain`)."""
        out = self._out
        out += b"\0"
        out += len(message).to_bytes(4, "big")
        out += message

    def flush(self) -> None:
        if not self.closed:
            self._conn.flush(self)

    async def drain(self) -> None:
        """Write what flow control allows; wait while too much stays unsent."""
        self.flush()
        while len(self._out) > _HIGH_WATER and not self.closed:
            self._writable.clear()
            await self._writable.wait()
        await self._conn.writable()


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.calls: dict[int, Call] = {}
        self.caller: str | None = None
        self.transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(cfg)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 0})

    # --- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.caller = peercert_cn(sslobj.getpeercert())
        self.server._conns.add(self)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONN_WINDOW - 65535)
        self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        self._can_write.set()
        for call in list(self.calls.values()):
            self._drop(call)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def writable(self) -> None:
        await self._can_write.wait()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.info("ETSI 004 HTTP/2 connection closed on protocol error: %s", type(e).__name__)
            self._write()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                call = self.calls.get(ev.stream_id)
                if call is None:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                call._in += ev.data
                call._unacked += ev.flow_controlled_length
                if call.task is not None and isinstance(self.server.handlers.get(call.method), Unary):
                    call._ack()  # a unary request is bounded by max_message (checked on parse)
                    if len(call._in) > self.server.max_message + 5:
                        self._fail(call, GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "request too large"))
                        continue
                call._readable.set()
            elif isinstance(ev, h2.events.RequestReceived):
                self._start(ev.stream_id, dict(ev.headers))  # END_STREAM comes as StreamEnded
            elif isinstance(ev, h2.events.StreamEnded):
                self._half_close(ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                pass  # StreamEnded follows
            elif isinstance(ev, h2.events.StreamReset):
                call = self.calls.get(ev.stream_id)
                if call is not None:
                    self._drop(call)
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                sid = getattr(ev, "stream_id", 0)  # a new INITIAL_WINDOW_SIZE may open every stream
                targets = list(self.calls.values()) if sid == 0 else \
                    [c for c in (self.calls.get(sid),) if c is not None]
                for call in targets:
                    if call._out or call._trailers is not None:
                        self.flush(call, write=False)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                for call in list(self.calls.values()):
                    self._drop(call)
                if self.transport is not None:
                    self.transport.close()
        self._write()

    # --- calls ---------------------------------------------------------------------------
    def _start(self, sid: int, headers: dict[bytes, bytes]) -> None:
        path = headers.get(b":path", b"").decode("latin-1")
        timeout = _parse_timeout(headers[b"grpc-timeout"]) if b"grpc-timeout" in headers else None
        call = Call(self, sid, path, timeout)
        self.calls[sid] = call
        ctype = headers.get(b"content-type", b"")
        if headers.get(b":method") != b"POST" or not ctype.startswith(b"application/grpc"):
            self._fail(call, GrpcError(grpc.StatusCode.UNIMPLEMENTED, "not a gRPC request"))
            return
        handler = self.server.handlers.get(path)
        if handler is None or self.server.closing:
            code = grpc.StatusCode.UNAVAILABLE if self.server.closing else grpc.StatusCode.UNIMPLEMENTED
            self._fail(call, GrpcError(code, f"method {path} not found" if handler is None else "server stopping"))
            return
        call.task = task = asyncio.get_running_loop().create_task(self._run(call, handler))
        self.server._tasks.add(task)  # a strong reference until it ends
        task.add_done_callback(self.server._tasks.discard)

    async def _run(self, call: Call, handler: Handler) -> None:
        try:
            async with asyncio.timeout(call.timeout):
                if isinstance(handler, Unary):
                    resp = await handler.fn(await call.message(), call)
                    call.send(resp)
                else:
                    await handler.fn(call)
            self._finish(call, grpc.StatusCode.OK, "")
        except GrpcError as e:
            self._finish(call, e.code, e.message)
        except TimeoutError:
            self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        except asyncio.CancelledError:
            if not call.closed:  # server stopping: tell the client
                self._finish(call, grpc.StatusCode.UNAVAILABLE, "server stopping")
            raise
        except Exception as e:  # a bug: never a key byte in the log, only the type
            log.error("ETSI 004 %s failed: %s", call.method, type(e).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            self._finish(call, grpc.StatusCode.INTERNAL, "internal error")
        finally:
            self._write()

    def _half_close(self, sid: int) -> None:
        call = self.calls.get(sid)
        if call is not None:
            call._ended = True
            call._readable.set()

    def _fail(self, call: Call, e: GrpcError) -> None:
        """End a call from outside its handler (which is cancelled; it cannot answer again:
        the trailers are set)."""
        call._out.clear()
        self._finish(call, e.code, e.message)
        if call.task is not None:
            call.task.cancel()

    def _finish(self, call: Call, code: grpc.StatusCode, message: str) -> None:
        if call.closed or call._trailers is not None:
            return
        code_value: int = code.value[0]
        trailers = [(b"grpc-status", str(code_value).encode())]
        if message:
            trailers.append((b"grpc-message", urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
                             .encode()))
        call._trailers = trailers
        self.flush(call, write=False)

    def _drop(self, call: Call) -> None:
        """The stream is gone (reset, connection lost): forget it, stop its handler."""
        call.closed = True
        self.calls.pop(call.sid, None)
        call._readable.set()
        call._writable.set()
        if call.task is not None and not call.task.done():
            call.task.cancel()

    def ack(self, sid: int, n: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
            self.h2.acknowledge_received_data(n, sid)

    def _headers(self, call: Call) -> None:
        if not call._headers_sent:
            call._headers_sent = True
            self.h2.send_headers(call.sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                            (b"grpc-accept-encoding", b"identity")])

    def flush(self, call: Call, write: bool = True) -> None:
        """Hand queued responses (and, once they are all out, the trailers) to h2 as far as
        flow control allows."""
        if call.closed:
            return
        h = self.h2
        try:
            out = call._out
            if out:
                self._headers(call)
                mv = memoryview(out)
                pos, n = 0, len(out)
                while pos < n:
                    room = min(h.local_flow_control_window(call.sid), h.max_outbound_frame_size, n - pos)
                    if room <= 0:
                        break
                    h.send_data(call.sid, mv[pos:pos + room].tobytes())
                    pos += room
                mv.release()
                del out[:pos]
            if len(out) <= _HIGH_WATER:
                call._writable.set()
            if not out and call._trailers is not None:
                if call._headers_sent:
                    h.send_headers(call.sid, call._trailers, end_stream=True)
                else:  # trailers-only response
                    h.send_headers(call.sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                              *call._trailers], end_stream=True)
                call.closed = True
                self.calls.pop(call.sid, None)
                if not call._ended:  # the client may still be sending: tell it to stop
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        h.reset_stream(call.sid, h2.errors.ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._drop(call)
        if write:
            self._write()

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def goaway(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
        self._write()


class GrpcServer:
    """`handlers` maps full method paths ("/package.Service/Method") to `Unary` / `Stream`."""

    def __init__(self, handlers: dict[str, Handler], ssl_context: ssl.SSLContext | None = None,
                 max_message: int = 4 << 20) -> None:
        self.handlers = handlers
        self.ssl = ssl_context
        self.max_message = max_message
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # running handlers

    async def start(self, host: str, port: int) -> int:
        """Listen; the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, ssl=self.ssl, backlog=512,
                                                ssl_handshake_timeout=10.0 if self.ssl else None)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        """Stop listening, send GOAWAY, give running calls `grace` seconds, then cancel them."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.goaway()
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for c in list(self._conns):
            if c.transport is not None:
                c.transport.close()
        if self._server is not None:
            await self._server.wait_closed()

