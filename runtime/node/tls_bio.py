"""TLS for the classical channel over a non-blocking socket, through ssl.SSLObject and memory BIOs.

Why not ssl.SSLSocket: Python's ssl module cannot turn on OpenSSL's read-ahead, so an SSLSocket
reads each TLS record with two system calls (its 5-byte header, then its body) and one more that
finds the socket empty: ~3,200 `read`s per 4e6-bit block on the link's event loop. Here one
`recv` takes whatever the kernel holds (up to RAW_CHUNK) into the incoming BIO, and the records in
it are decrypted from memory; outgoing records leave in the caller's own writes, however many a
frame needs. The TLS itself (handshake, certificates, ciphers) is OpenSSL's, as before.

    handshake(sock, ctx, server_side) -> TlsPipe      on the event loop, before any frame
    TlsPipe.recv_into(buffer) -> n                    plaintext; 0 at EOF; -1: nothing more yet
    TlsPipe.encrypt(data) -> bytes                    records to write to the socket as they are
    TlsPipe.outgoing() -> bytes                       records OpenSSL wrote on its own (rare: after reads)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import cast

RAW_CHUNK = 256 * 1024  # ciphertext bytes per recv (a TLS record is at most ~16 KiB)


class TlsPipe:
    """One TLS session whose records pass through memory: the socket is read and written raw."""

    def __init__(self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self._sock, self._obj, self._in, self._out = sock, obj, incoming, outgoing
        self._raw = bytearray(RAW_CHUNK)
        self._drained = False  # the last recv was short: the socket is most likely empty
        self._eof = False  # the peer's close_notify was read behind records returned: 0 next

    def getpeercert(self) -> dict[str, object] | None:
        return self._obj.getpeercert()  # type: ignore[return-value]

    def recv_into(self, buffer: memoryview) -> int:
        """Plaintext into `buffer`: the records already taken from the socket, as many as fit, else
        one `recv` more; 0 at the peer's EOF; -1 once both the BIO and the socket are empty (no
        exception: this ends every read callback), found without a system call when the last recv
        was short (the event loop wakes us when more comes)."""
        obj, incoming = self._obj, self._in
        if self._eof:
            return 0
        while True:
            if incoming.pending or obj.pending():  # else OpenSSL would only say it wants more
                try:
                    n = cast(int, obj.read(len(buffer), buffer))
                except ssl.SSLWantReadError:
                    pass  # a record not whole yet
                else:
                    return self._more(buffer, n) if n else 0
            if self._drained:
                self._drained = False
                return -1
            try:
                n = self._sock.recv_into(self._raw)
            except (BlockingIOError, InterruptedError):
                return -1
            if n == 0:
                return 0
            incoming.write(memoryview(self._raw)[:n])
            self._drained = n < RAW_CHUNK

    def _more(self, buffer: memoryview, n: int) -> int:
        """After a record's `n` bytes, the next whole records in the BIO too, while they fit: one
        call per recv'd chunk (~16 records of a big frame), not one per record."""
        obj, incoming, size = self._obj, self._in, len(buffer)
        while n < size and incoming.pending:
            try:
                m = cast(int, obj.read(size - n, buffer[n:]))
            except ssl.SSLWantReadError:
                break  # a record not whole yet
            if m == 0:
                self._eof = True  # the peer's close_notify: the next call says 0
                break
            n += m
        return n

    def encrypt(self, data: bytes | memoryview) -> bytes:
        self._obj.write(data)
        return self._out.read()

    def outgoing(self) -> bytes:
        return self._out.read() if self._out.pending else b""


async def handshake(sock: socket.socket, ctx: ssl.SSLContext, server_side: bool) -> TlsPipe:
    """The TLS handshake on a connected non-blocking socket; bytes read past it stay in the BIO."""
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=server_side)
    while True:
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError:
            if outgoing.pending:  # the alert saying why, so that the peer fails at once too
                with contextlib.suppress(OSError):
                    sock.send(outgoing.read())
            raise
        if outgoing.pending:
            await loop.sock_sendall(sock, outgoing.read())
        if done:
            return TlsPipe(sock, obj, incoming, outgoing)
        data = await loop.sock_recv(sock, RAW_CHUNK)
        if not data:
            raise ssl.SSLEOFError("connection closed during the TLS handshake")
        incoming.write(data)
