"""A pipelining ETSI 004 GetKeyStream client for the benchmark (and tests): gRPC over HTTP/2
with the `h2` library and mutual TLS, that writes requests in batches (many length-prefixed
GetKeyRequest messages per DATA frame) and parses every response that arrived per socket read.

grpcio's clients write one message per operation (about 40-100 us of CPU each on this class of
machine), so a grpcio load generator, not the server, would set the figure; this one costs a few
microseconds per key. It is an ordinary gRPC client on the wire: the server cannot tell.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb

PATH = b"/sdqkd.etsi004.v1.KeyDelivery/GetKeyStream"


@dataclass
class StreamResult:
    keys: list[bytes] = field(default_factory=list, repr=False)
    indices: list[int] = field(default_factory=list)
    first_failure: int | None = None  # status of the first non-successful response
    grpc_status: int | None = None
    grpc_message: str = ""


class _Client(asyncio.Protocol):
    def __init__(self, authority: str, ksid: str, n: int, window: int, done: asyncio.Future[None]) -> None:
        self.authority, self.n, self.window, self.done = authority.encode(), n, window, done
        req = pb.GetKeyRequest(key_stream_id=ksid).SerializeToString()
        self.frame = b"\0" + len(req).to_bytes(4, "big") + req
        self.sent = self.got = 0
        self.buf = bytearray()
        self.res = StreamResult()
        self.cancelled = False
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24, h2.settings.SettingCodes.ENABLE_PUSH: 0})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        c = self.h2
        c.initiate_connection()
        c.increment_flow_control_window((1 << 28) - 65535)
        self.sid = c.get_next_available_stream_id()
        scheme = b"https" if transport.get_extra_info("ssl_object") else b"http"
        c.send_headers(self.sid, [(b":method", b"POST"), (b":scheme", scheme), (b":path", PATH),
                                  (b":authority", self.authority), (b"te", b"trailers"),
                                  (b"content-type", b"application/grpc")])
        self._pump()

    def _pump(self) -> None:
        c = self.h2
        if self.sid in c.streams and not self.cancelled:
            per_frame = max(1, c.max_outbound_frame_size // len(self.frame))
            while self.sent < self.n and self.sent - self.got < self.window:
                k = min(per_frame, self.n - self.sent, self.window - (self.sent - self.got))
                data = self.frame * k
                if c.local_flow_control_window(self.sid) < len(data):
                    break
                self.sent += k
                c.send_data(self.sid, data, end_stream=self.sent == self.n)
        out = c.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                self._parse(ev.data)
            elif isinstance(ev, h2.events.TrailersReceived | h2.events.ResponseReceived):
                hd = dict(ev.headers)
                if b"grpc-status" in hd:
                    self.res.grpc_status = int(hd[b"grpc-status"])
                    self.res.grpc_message = hd.get(b"grpc-message", b"").decode()
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated):
                if not self.done.done():
                    self.done.set_result(None)
        self._pump()

    def _parse(self, data: bytes) -> None:
        b = self.buf
        b += data
        pos, n = 0, len(b)
        keys, idx, res = self.res.keys, self.res.indices, self.res
        from_bytes = pb.GetKeyResponse.FromString
        while n - pos >= 5:
            size = int.from_bytes(b[pos + 1:pos + 5], "big")
            if n - pos - 5 < size:
                break
            r = from_bytes(bytes(b[pos + 5:pos + 5 + size]))
            pos += 5 + size
            self.got += 1
            if r.status != 0:
                if res.first_failure is None:
                    res.first_failure = r.status
                    # e.g. the pool ran dry: stop rather than wait out every timeout
                    self.cancelled = True
                    self.h2.reset_stream(self.sid, h2.errors.ErrorCodes.CANCEL)
                    if not self.done.done():
                        self.done.set_result(None)
                continue
            keys.append(r.key_buffer)
            idx.append(r.index)
        del b[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    from sdqkd.tls import https_client_context, tls_files

    return https_client_context(tls_files(ca, cert, key), alpn=["h2"])


async def get_keys(address: str, ksid: str, n: int, ssl_context: ssl.SSLContext | None,
                   window: int = 8192) -> StreamResult:
    """`n` GetKeyRequests (next index each) on one GetKeyStream, at most `window` unanswered."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, proto = await loop.create_connection(lambda: _Client(address, ksid, n, window, done),
                                                    host.strip("[]"), int(port), ssl=ssl_context,
                                                    server_hostname=host.strip("[]") if ssl_context else None)
    try:
        await done
    finally:
        transport.close()
    return proto.res
