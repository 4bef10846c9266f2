"""TLS with QKD keys: TLS 1.3 external PSK and TLS 1.2 PSK cipher suites, one QKD key per session.

The client is the master SAE: for every new session it takes one key with ETSI 014 `enc_keys`
and offers its key_ID as the PSK identity and the key as the PSK. The server is the slave SAE: on
receiving the identity it calls `dec_keys(key_ID)` at its own KMS. A KMS delivers a key to each
side once, so a key cannot serve two sessions; on top of that session tickets and the session
cache are off on both sides, so there is no resumption either. Neither side loads a certificate:
a server that does not find the PSK has nothing to fall back to, and a client refuses a server
certificate (empty trust store), so a wrong, unknown or missing key always fails the handshake.

Library: Python 3.11's `ssl` has no PSK callbacks (they arrive in 3.13). pyOpenSSL (pyca) has
no PSK API either -- its maintainers declined one (pyca/pyopenssl#704) -- but its dependency
`cryptography` (also pyca) ships the OpenSSL PSK bindings precisely so that a pyOpenSSL
`Context` can be given PSK callbacks (pyca/cryptography#4084). We use those: two well-kept pyca
packages, wheels with their own current OpenSSL, no compiler, no ctypes guessing of libssl.
The one private piece is `Context._context` (the SSL_CTX pointer), used once per context. The
alternatives were weaker: sslpsk3 is a C extension compiled against the system OpenSSL headers
that patches the interpreter's private `_ssl` socket objects; tlslite-ng is pure Python (slow,
not OpenSSL). On Python 3.13+ the stdlib callbacks could replace this module's internals with
the same public API.

We set the TLS 1.2-style callbacks; under TLS 1.3 OpenSSL uses them for an external PSK with
SHA-256 as its hash (RFC 8446 default), which is exactly what `openssl s_client -psk` and
`s_server -psk` do, so the TLS 1.3 suites offered are the SHA-256 ones. TLS 1.3 uses the
psk_dhe_ke mode (an (EC)DHE share mixed into the key schedule), OpenSSL's default.

Key bytes are never logged, printed or put in an exception; a connection keeps only the key_ID
and a SHA-256 fingerprint prefix of the key (the convention of `sdqkd demo`)."""

from __future__ import annotations

import hashlib
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from sdqkd.apps.keyclient import Etsi014Client, Key, KeyDeliveryError
from sdqkd.errors import SdqkdError

ffi, lib = Binding.ffi, Binding.lib

TlsVersion = Literal["1.3", "1.2", "any"]
# TLS 1.2 PSK suites (plain PSK: the QKD key is the only secret, as a quantum-safe PSK suite should be).
TLS12_CIPHERS = "PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256"
# TLS 1.3 suites whose hash is SHA-256, the hash OpenSSL gives a callback-supplied external PSK.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"

NewKey = Callable[[], Key]
KeyFor = Callable[[str], bytes]


class PskHandshakeError(SdqkdError, ConnectionError):
    """The TLS-PSK handshake failed; the message says why (which identity, which side, OpenSSL's reason)."""


def fingerprint(key: bytes) -> str:
    """A short SHA-256 prefix of a key, safe to print: shows two ends agree without revealing it."""
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass
class _Pending:
    """Per-handshake state of one SSL object (the callback may run twice: HelloRetryRequest,
    or a TLS 1.3 ClientHello answered with TLS 1.2; both runs must use the same key)."""

    key_id: str | None = None
    key: bytearray | None = None
    fingerprint: str = ""
    error: BaseException | None = None

    def wipe(self) -> None:
        if self.key is not None:
            self.key[:] = bytes(len(self.key))
            self.key = None


class PskTlsConnection:
    """An established TLS-PSK session over a socket: `sendall`, `recv`, `close`.

    `key_id` is the PSK identity (the ETSI 014 key_ID), `key_fingerprint` a printable hash prefix
    of the key, `version` and `cipher` what was negotiated."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket, pending: _Pending, timeout: float | None) -> None:
        self._conn, self._sock, self.timeout = conn, sock, timeout
        self.key_id: str = pending.key_id or ""
        self.key_fingerprint = pending.fingerprint
        self.version: str = conn.get_protocol_version_name()
        self.cipher: str = conn.get_cipher_name() or ""

    def __repr__(self) -> str:
        return f"PskTlsConnection(key_id={self.key_id!r}, {self.version}, {self.cipher})"

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = _deadline(self.timeout)
        while view:
            part = bytes(view[:16384])
            n = _retry(lambda: self._conn.send(part), self._sock, deadline, "send")  # noqa: B023
            view = view[n:]

    def recv(self, bufsize: int = 65536) -> bytes:
        """Up to `bufsize` bytes; b"" once the peer closed the session with close_notify. A TCP
        close without it raises ConnectionError: the data may have been truncated."""
        try:
            return _retry(lambda: self._conn.recv(bufsize), self._sock, _deadline(self.timeout), "recv")
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as e:
            raise ConnectionError(f"TLS-PSK session {self.key_id}: connection closed without close_notify "
                                  f"({e.args[-1] if e.args else e})") from e
        except SSL.Error as e:
            raise ConnectionError(f"TLS-PSK session {self.key_id}: {_ssl_reason(e)}") from e

    def recv_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.recv(n - len(out))
            if not chunk:
                raise ConnectionError(f"TLS-PSK session {self.key_id}: peer closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        try:
            self._conn.shutdown()  # send close_notify; do not wait for the peer's
        except SSL.Error:
            pass
        self._sock.close()

    def __enter__(self) -> PskTlsConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _retry(op: Callable[[], Any], sock: socket.socket, deadline: float | None, what: str) -> Any:
    """Run a pyOpenSSL operation on a non-blocking socket, waiting for readiness until `deadline`."""
    while True:
        try:
            return op()
        except SSL.WantReadError:
            r, w = [sock], []
        except SSL.WantWriteError:
            r, w = [], [sock]
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"TLS-PSK {what} timed out")
        select.select(r, w, [], left)


class _PskEndpoint:
    """What client and server share: an SSL.Context with PSK callbacks, no certificates, no
    tickets, no session cache, and a handshake that reports the real reason it failed."""

    server_side: bool

    def __init__(self, version: TlsVersion) -> None:
        if version not in ("1.3", "1.2", "any"):
            raise ValueError(f"TLS version must be '1.3', '1.2' or 'any', got {version!r}")
        self.version = version
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if self.server_side else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION if version == "1.3" else SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION if version == "1.2" else SSL.TLS1_3_VERSION)
        ctx.set_cipher_list(TLS12_CIPHERS.encode())
        ctx.set_tls13_ciphersuites(TLS13_SUITES.encode())
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # A client trusts no CA: if a server answered with a certificate instead of the PSK,
        # verification fails and so does the handshake.
        ctx.set_verify(SSL.VERIFY_PEER if not self.server_side else SSL.VERIFY_NONE)
        self.ctx = ctx
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()

    # -- per-SSL state, looked up from the callbacks by the SSL* address
    def _state(self, ssl_ptr: Any) -> _Pending:
        with self._lock:
            return self._pending.setdefault(int(ffi.cast("uintptr_t", ssl_ptr)), _Pending())

    def _handshake(self, sock: socket.socket, timeout: float | None) -> PskTlsConnection:
        sock.setblocking(False)
        conn = SSL.Connection(self.ctx, sock)
        if self.server_side:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
        addr = int(ffi.cast("uintptr_t", conn._ssl))  # noqa: SLF001 -- pyOpenSSL keeps SSL* private
        pending = self._state(conn._ssl)  # noqa: SLF001
        try:
            _retry(conn.do_handshake, sock, _deadline(timeout), "handshake")
            self._check_psk_used(conn)
            return PskTlsConnection(conn, sock, pending, timeout)
        except (SSL.Error, TimeoutError, OSError) as e:
            sock.close()
            if isinstance(pending.error, KeyboardInterrupt):  # the handshake failed because of it
                raise pending.error from None
            raise self._explain(e, pending) from (pending.error or e)
        finally:
            pending.wipe()
            with self._lock:
                self._pending.pop(addr, None)

    def _check_psk_used(self, conn: SSL.Connection) -> None:
        cipher = conn.get_cipher_name() or ""
        tls13 = conn.get_protocol_version_name() == "TLSv1.3"
        if (tls13 and not lib.SSL_session_reused(conn._ssl)) or (not tls13 and "PSK" not in cipher):  # noqa: SLF001
            raise PskHandshakeError(f"negotiated {conn.get_protocol_version_name()} {cipher} without the PSK")

    def _explain(self, e: BaseException, pending: _Pending) -> PskHandshakeError:
        side = "server" if self.server_side else "client"
        ident = f" for PSK identity {pending.key_id!r}" if pending.key_id else ""
        if isinstance(e, PskHandshakeError):
            return e
        if pending.error is not None:
            return PskHandshakeError(f"TLS-PSK {side} handshake failed{ident}: {pending.error}")
        return PskHandshakeError(f"TLS-PSK {side} handshake failed{ident}: {_ssl_reason(e)}")


def _is_key_id(raw: bytes) -> bool:
    try:
        return len(raw) == 36 and str(uuid.UUID(raw.decode("ascii"))) == raw.decode("ascii").lower()
    except ValueError:
        return False


def _ssl_reason(e: BaseException) -> str:
    if isinstance(e, SSL.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        return "; ".join(str(x[-1]) for x in e.args[0])
    if isinstance(e, SSL.SysCallError):
        return "peer closed the connection during the handshake"
    return str(e) or type(e).__name__


class PskTlsClient(_PskEndpoint):
    """The master SAE's side: each new session takes a fresh key from `new_key()`.

    `from_kms` wires `new_key` to ETSI 014 `enc_keys`; the plain constructor takes any source of
    `Key`s (a test may hand it a key it already fetched)."""

    server_side = False

    def __init__(self, new_key: NewKey, version: TlsVersion = "1.3") -> None:
        super().__init__(version)
        self.new_key = new_key
        self._cb = ffi.callback("unsigned int(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)",
                                self._psk_cb)
        lib.SSL_CTX_set_psk_client_callback(self.ctx._context, self._cb)  # noqa: SLF001

    @classmethod
    def from_kms(cls, kms: Etsi014Client, slave_sae_id: str, *, version: TlsVersion = "1.3",
                 key_bits: int = 256, retry_s: float = 0.0) -> PskTlsClient:
        return cls(lambda: kms.enc_keys(slave_sae_id, number=1, size=key_bits, retry_s=retry_s)[0], version)

    def _psk_cb(self, ssl: Any, hint: Any, identity: Any, max_identity_len: int, psk: Any, max_psk_len: int) -> int:
        st = self._state(ssl)
        try:
            if st.key is None:
                k = self.new_key()
                st.key_id, st.key, st.fingerprint = k.key_id, bytearray(k.key), fingerprint(k.key)
            ident = st.key_id.encode() if st.key_id else b""
            if not ident or len(ident) + 1 > max_identity_len:
                raise ValueError(f"key_ID of {len(ident)} bytes does not fit a PSK identity ({max_identity_len - 1})")
            if not 0 < len(st.key) <= max_psk_len:
                raise ValueError(f"a key of {len(st.key)} bytes does not fit a PSK (at most {max_psk_len})")
            ffi.memmove(identity, ident + b"\0", len(ident) + 1)
            ffi.memmove(psk, bytes(st.key), len(st.key))
            return len(st.key)
        except KeyboardInterrupt as e:  # Ctrl-C (or SIGTERM, run_script) during OpenSSL's call: raised after it
            st.error = e
            return 0
        except Exception as e:  # an exception must not cross into OpenSSL: 0 aborts the handshake
            st.error = e if isinstance(e, (KeyDeliveryError, ValueError)) else RuntimeError(
                f"key source failed: {type(e).__name__}: {e}")
            return 0

    def wrap(self, sock: socket.socket, timeout: float | None = 30.0) -> PskTlsConnection:
        """Run the client handshake on a connected socket (which the session then owns)."""
        return self._handshake(sock, timeout)

    def connect(self, address: tuple[str, int], timeout: float | None = 30.0) -> PskTlsConnection:
        return self.wrap(socket.create_connection(address, timeout=timeout), timeout)


class PskTlsServer(_PskEndpoint):
    """The slave SAE's side: `key_for(identity)` returns the key for a PSK identity.

    `from_kms` wires it to ETSI 014 `dec_keys` with the master SAE this server serves (the URL of
    dec_keys names the master, so one server object serves one master SAE)."""

    server_side = True

    def __init__(self, key_for: KeyFor, version: TlsVersion = "1.3", identity_hint: str | None = None) -> None:
        super().__init__(version)
        self.key_for = key_for
        self._cb = ffi.callback("unsigned int(SSL *, char *, unsigned char *, unsigned int)", self._psk_cb)
        lib.SSL_CTX_set_psk_server_callback(self.ctx._context, self._cb)  # noqa: SLF001
        if identity_hint:
            lib.SSL_CTX_use_psk_identity_hint(self.ctx._context, identity_hint.encode())  # noqa: SLF001

    @classmethod
    def from_kms(cls, kms: Etsi014Client, master_sae_id: str, *, version: TlsVersion = "1.3") -> PskTlsServer:
        return cls(lambda key_id: kms.dec_key(master_sae_id, key_id), version)

    def _psk_cb(self, ssl: Any, identity: Any, psk: Any, max_psk_len: int) -> int:
        st = self._state(ssl)
        try:
            # OpenSSL hands the identity over as a C string: a binary one (say, the ID of a
            # resumption ticket) arrives cut at its first NUL. Only a UUID, the form ETSI 014
            # gives key_IDs, is ever sent to the KMS.
            raw = ffi.string(identity) if identity != ffi.NULL else b""
            if not raw:
                raise LookupError("empty PSK identity (none offered, or a binary one such as a ticket ID)")
            if not _is_key_id(raw):
                raise LookupError(f"PSK identity of {len(raw)} bytes is not an ETSI 014 key_ID (a UUID)")
            ident = raw.decode()
            if st.key is None or st.key_id != ident:
                st.wipe()
                st.key_id = ident
                try:
                    key = self.key_for(ident)
                except KeyDeliveryError as e:
                    raise LookupError(f"no key for PSK identity {ident!r}: {e}") from e
                st.key, st.fingerprint = bytearray(key), fingerprint(key)
            if not 0 < len(st.key) <= max_psk_len:
                raise ValueError(f"a key of {len(st.key)} bytes does not fit a PSK (at most {max_psk_len})")
            ffi.memmove(psk, bytes(st.key), len(st.key))
            return len(st.key)
        except KeyboardInterrupt as e:  # Ctrl-C (or SIGTERM, run_script) during OpenSSL's call: raised after it
            st.error = e
            return 0
        except Exception as e:  # 0 = unknown identity: OpenSSL aborts (1.2) or ignores the PSK (1.3, then fails)
            st.error = e if isinstance(e, (LookupError, ValueError)) else RuntimeError(
                f"key lookup failed: {type(e).__name__}: {e}")
            return 0

    def wrap(self, sock: socket.socket, timeout: float | None = 30.0) -> PskTlsConnection:
        """Run the server handshake on an accepted socket (which the session then owns)."""
        return self._handshake(sock, timeout)

    def accept(self, listener: socket.socket, timeout: float | None = 30.0) -> PskTlsConnection:
        sock, _ = listener.accept()
        return self.wrap(sock, timeout)
