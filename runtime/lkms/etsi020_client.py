"""ETSI GS QKD 020 client: HTTPS with mutual TLS to a peer KMS whose certificate identity is
checked *before* any request (and so any key) is written.

Why not aiohttp/httpx here: neither lets a caller inspect the server certificate between the
TLS handshake and the request; the peer identity of 020 (a node ID, or another vendor's KMS
name) is not a host name we could hand to hostname checking. So connections are opened with
asyncio + ssl, the identity checked, and HTTP/1.1 framing is done by h11 (the well-kept sans-I/O
HTTP/1.1 library httpx itself is built on). Idle connections are kept per peer and reused.
Bodies are encoded and parsed with orjson (a relay request carries hundreds of keys; the
standard library's json took about a fifth of the CPU of a relayed key).

Version negotiation: the first call to a peer reads `GET /kmapi/versions` and picks the most
recent version both support; a peer with none in common is refused (`Etsi020Error`).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson

from sdqkd.errors import SdqkdError
from sdqkd.lkms.etsi020_schema import negotiate, parse_versions
from sdqkd.tls import https_client_context, tls_files

KMS_ID_HEADER = "X-KMS-ID"  # without TLS (loopback development only) the caller names itself


class Etsi020Error(SdqkdError):
    """The call did not complete: the outcome at the peer is unknown (connection, timeout,
    protocol) or the peer cannot be used (identity, versions). Never carries key material."""


class IdentityMismatch(Etsi020Error):
    pass


@dataclass(frozen=True)
class PeerKms:
    """A remote KMS: base URL (https://host:port), the identity its certificate must carry
    (subject CN or a DNS subjectAltName) and, for another vendor's KMS, its own CA file."""

    url: str
    identity: str
    ca: str | None = None

    @property
    def hostport(self) -> tuple[str, int]:
        u = urlsplit(self.url)
        return u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)


def cert_identities(peercert: dict[str, Any] | None) -> set[str]:
    """Subject CN and DNS subjectAltNames of a verified certificate (ssl.getpeercert())."""
    out: set[str] = set()
    if not peercert:
        return out
    for rdn in peercert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                out.add(str(v))
    for kind, v in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            out.add(str(v))
    return out


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.writer.close()

    async def roundtrip(self, method: str, target: str, host: str, body: bytes | None,
                        headers: list[tuple[str, str]]) -> tuple[int, bytes]:
        hs = [("Host", host), ("Accept", "application/json"), *headers]
        if body is not None:
            hs += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        out = self.h.send(h11.Request(method=method, target=target, headers=hs))
        if body:
            out += self.h.send(h11.Data(data=body))
        out += self.h.send(h11.EndOfMessage())
        self.writer.write(out)
        await self.writer.drain()
        status = 0
        chunks: list[bytes] = []
        while True:
            ev = self.h.next_event()
            if ev is h11.NEED_DATA:
                data = await self.reader.read(262144)
                self.h.receive_data(data)
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(ev, h11.ConnectionClosed):
                raise Etsi020Error("connection closed before the response")

    @property
    def reusable(self) -> bool:
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()
            return True
        return False


class Etsi020Client:
    """Calls to peer KMSs. `tls`: our client certificate and the CA for sdqkd peers (None for
    loopback development, where `own_id` travels in the X-KMS-ID header instead)."""

    def __init__(self, own_id: str, cert: str | None, key: str | None, default_ca: str | None,
                 timeout: float = 5.0, max_idle: int = 16) -> None:
        self.own_id = own_id
        self._cert, self._key, self._default_ca = cert, key, default_ca
        self.timeout = timeout
        self._max_idle = max_idle
        self._ctx: dict[str | None, ssl.SSLContext] = {}
        self._idle: dict[PeerKms, list[_Conn]] = {}
        self._versions: dict[PeerKms, str] = {}

    @property
    def tls(self) -> bool:
        return self._cert is not None

    def _context(self, ca: str | None) -> ssl.SSLContext:
        ctx = self._ctx.get(ca)
        if ctx is None:
            assert self._cert is not None and self._key is not None
            # the standard asks for TLS 1.3 or later; the peer identity is checked against
            # `PeerKms.identity`, not the host name
            ctx = https_client_context(tls_files(str(ca or self._default_ca), self._cert, self._key),
                                       minimum=ssl.TLSVersion.TLSv1_3, check_hostname=False)
            self._ctx[ca] = ctx
        return ctx

    async def _open(self, peer: PeerKms) -> _Conn:
        host, port = peer.hostport
        if not self.tls:
            r, w = await asyncio.open_connection(host, port)
            return _Conn(r, w)
        r, w = await asyncio.open_connection(host, port, ssl=self._context(peer.ca), server_hostname=host)
        if peer.identity not in cert_identities(w.get_extra_info("peercert")):
            w.close()
            raise IdentityMismatch(f"peer KMS at {host}:{port} does not present the identity {peer.identity!r}")
        return _Conn(r, w)

    async def call(self, peer: PeerKms, method: str, target: str, body: Any = None,
                   timeout: float | None = None) -> tuple[int, Any]:
        """One request; (status, parsed JSON body or None). Etsi020Error if it did not complete."""
        raw = None if body is None else orjson.dumps(body)
        headers = [] if self.tls else [(KMS_ID_HEADER, self.own_id)]
        host = "{}:{}".format(*peer.hostport)
        idle = self._idle.setdefault(peer, [])
        conn = idle.pop() if idle else None
        fresh = conn is None
        try:
            async with asyncio.timeout(timeout or self.timeout):
                if conn is None:
                    conn = await self._open(peer)
                try:
                    status, data = await conn.roundtrip(method, target, host, raw, headers)
                except (OSError, h11.ProtocolError, Etsi020Error):
                    if fresh:
                        raise
                    # a kept-alive connection the peer closed meanwhile: one retry on a new one
                    conn.close()
                    conn = await self._open(peer)
                    status, data = await conn.roundtrip(method, target, host, raw, headers)
        except IdentityMismatch:
            raise
        except (OSError, ssl.SSLError, h11.ProtocolError, TimeoutError, Etsi020Error) as e:
            if conn is not None:
                conn.close()
            raise Etsi020Error(f"{method} {target} to {peer.url} failed: {type(e).__name__}") from None
        if conn.reusable and len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()
        try:
            parsed = orjson.loads(data) if data else None
        except ValueError:
            parsed = None
        return status, parsed

    async def version(self, peer: PeerKms) -> str:
        v = self._versions.get(peer)
        if v is None:
            status, body = await self.call(peer, "GET", "/kmapi/versions")
            try:
                theirs = parse_versions(body) if status == 200 else ()
            except Exception:
                theirs = ()
            v = negotiate(theirs)
            if v is None:
                raise Etsi020Error(f"peer KMS {peer.url} supports no ETSI 020 version we speak (status {status})")
            self._versions[peer] = v
        return v

    async def post(self, peer: PeerKms, op: str, body: Any, timeout: float | None = None) -> tuple[int, Any]:
        """POST /kmapi/<negotiated version>/<op> (op: ext_keys, ext_keys/void, ext_keys/ack)."""
        v = await self.version(peer)
        return await self.call(peer, "POST", f"/kmapi/{v}/{op}", body, timeout)

    async def post_url(self, peer: PeerKms, url: str, body: Any) -> tuple[int, Any]:
        """POST to an ack_callback_url on `peer` (its host and port were checked by the caller)."""
        u = urlsplit(url)
        target = u.path + (f"?{u.query}" if u.query else "")
        return await self.call(peer, "POST", target or "/", body)

    async def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
