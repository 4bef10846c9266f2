"""A listening server with a connection cap, for the ETSI 014 HTTPS port.

Why: every open TLS connection costs memory whether or not it ever sends a request (Python's
TLS layer alone keeps a 256 KiB buffer per connection), so an unbounded number of idle or
slow clients can exhaust the node. Three bounds together:

- a TLS handshake must finish within `handshake_timeout_s` (asyncio's ssl_handshake_timeout),
  and a closing one waits no longer for the peer's close_notify;
- a connection must deliver a complete request head within `idle_timeout_s` of being opened or
  of its previous response, else it is closed (idle clients and slowloris alike): for the first
  request a timer here (cancelled when the bytes seen so far contain the head's blank line),
  afterwards aiohttp's keep-alive timer (`keepalive_timeout`), which is not pushed back by
  partial data either;
- at most `max_connections` connections are open (handshaking ones included); one beyond the
  cap is closed as soon as it is accepted (after its handshake, with TLS), costing nothing
  further.

The cap counts at accept time: a counting protocol wraps aiohttp's request handler and
forwards every protocol call to it; a connection whose TLS handshake fails or times out never
reaches it, so its slot is given back once the handshake timeout has passed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class _Counter:
    def __init__(self, cap: int) -> None:
        self.cap, self.open, self.refused = cap, 0, 0
        self._last_warning = 0.0

    def refuse(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_warning > 10.0:  # one warning per 10 s, not one per connection
            self._last_warning = now
            log.warning("ETSI 014: connection cap of %d reached; refusing new connections (%d so far)",
                        self.cap, self.refused)


class _Counted(asyncio.Protocol):
    """Forwards to the real protocol; gives the connection's slot back when it closes, and
    closes it if no complete request head arrives within `first_head_s`."""

    def __init__(self, inner: asyncio.Protocol, counter: _Counter, first_head_s: float) -> None:
        self._inner, self._counter, self._first_head_s = inner, counter, first_head_s
        self._released = False
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, so a blank line split across reads is found
        self._made = False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._counter.open -= 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made = True
        self._deadline = asyncio.get_running_loop().call_later(self._first_head_s, transport.close)
        self._inner.connection_made(transport)

    def handshake_over(self) -> None:
        """Called once the TLS handshake timeout has passed: asyncio has aborted a handshake
        still unfinished by then, and a failed one never reaches this protocol at all."""
        if not self._made:
            self._release()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._stop_deadline()
        self._inner.connection_lost(exc)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data[:65536]
            if b"\r\n\r\n" in seen:
                self._stop_deadline()
            self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # abort, not close: a TLS close would wait for the peer's close_notify meanwhile
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        else:
            transport.close()


async def serve_capped(factory: Callable[[], Any], host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                       max_connections: int, handshake_timeout_s: float, first_head_s: float, backlog: int = 512
                       ) -> tuple[asyncio.Server, Callable[[], tuple[int, int]]]:
    """Listen on host:port with `factory` (e.g. an aiohttp `web.Server`) behind the cap; returns
    the server and a function giving (open connections, refused so far)."""
    counter = _Counter(max_connections)

    def make() -> asyncio.Protocol:
        if counter.open >= counter.cap:
            counter.refuse()
            return _Refused()
        counter.open += 1
        proto = _Counted(factory(), counter, first_head_s)
        if ssl_context is not None:  # a failed handshake gives no sign: free its slot after the timeout
            asyncio.get_running_loop().call_later(handshake_timeout_s + 0.5, proto.handshake_over)
        return proto

    server = await asyncio.get_running_loop().create_server(
        make, host, port, ssl=ssl_context, backlog=backlog,
        ssl_handshake_timeout=handshake_timeout_s if ssl_context is not None else None,
        # a closed TLS connection waits this long for the peer's close_notify (default 30 s)
        ssl_shutdown_timeout=min(2.0, handshake_timeout_s) if ssl_context is not None else None)
    return server, lambda: (counter.open, counter.refused)
