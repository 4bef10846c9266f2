"""Hybrid keys for the management plane: X25519 + a QKD key through one KDF, and an authenticated,
encrypted TCP tunnel keyed by the result that carries the controller's gNMI traffic to an agent.

The combiner (`combine`, `hybrid_secret`) follows the concatenation KDF ("CatKDF") of ETSI TS 103 744
(CYBER; quantum-safe hybrid key exchanges), instantiated with HKDF-SHA256 (RFC 5869):

    PRK    = HKDF-Extract(salt = "sdqkd-hybrid-v1", IKM = X25519_shared || QKD_key)
    secret = HKDF-Expand(PRK, info = label || mode || key_ID || context, 32)

where `context` is the SHA-256 transcript hash of the two signed handshake messages, so the secret
is bound to both X25519 public keys, both nonces, both SAE identities (and who is client/server),
the QKD key_ID and the mode. HKDF-Extract is a randomness extractor keyed by HMAC: if *either*
input is secret and uniformly random, the output is pseudorandom, so the session secret is never
weaker than the stronger input (a broken X25519 leaves the QKD key; an unavailable or compromised
QKD key leaves X25519). When the KMS cannot give a key (503 or unreachable) the session falls back
to X25519 only, visibly: `HybridSecret.mode == "classical-only"`, a WARNING log line, a counter and
the mode of every session in `status()`; `allow_fallback=False` refuses such sessions instead.
Other KMS errors (400 unknown/used key_ID, 401) abort: they point at a replay or a
misconfiguration, never at a reason to downgrade.

Why a tunnel in front of the gNMI port, not a change to gRPC: grpcio cannot inject an external
secret into its TLS handshake (no PSK, no exporter hook), so a hybrid layer inside gRPC is not
possible without forking it. A transparent byte tunnel keeps the agent, the generated
`ModelClient` and any gNMI client (pygnmi, gnmic) unchanged: the client dials the tunnel's local
port, the tunnel's far end dials the agent. The agent's own mutual TLS still runs end to end
*inside* the tunnel, so the management channel is TLS (classical) wrapped in an
X25519+QKD-keyed AES-256-GCM layer — defence in depth, the way a QKD-keyed MACsec/IPsec link
would protect it, but per connection and in user space.

Handshake (all handshake messages are small JSON documents, framed as `type(1) || length(4)`):

    client -> server  HELLO   {client/server SAE IDs, X25519 pub, nonce, key_ID|null, cert} + ECDSA sig
    server -> client  HELLO   {mode, X25519 pub, nonce, key_ID, cert, hash(client hello)} + sig over
                              the transcript
    client -> server  FINISHED  HMAC(finished key, transcript)   (key confirmation, both directions)
    server -> client  FINISHED

Both sides sign with the private key of their SAE client certificate (issued by the network CA,
CN = SAE ID, the same identity their ETSI 014 mutual TLS uses) and check the peer's certificate
with RFC 5280 path validation (`cryptography.x509.verification`) and its CN against the expected
SAE. The master (client) takes a fresh key with ETSI 014 `enc_keys`; the slave (server) takes the
same bytes with `dec_keys` by key_ID, after it has checked the client's signature — one QKD key
per TCP connection, never reused (the KMS delivers each key once). Records: AES-256-GCM, one key
and IV per direction from the secret, nonce = IV xor record counter, the record header as AAD; a
record that fails authentication ends the session (`RecordError`), both sockets close.

Key bytes (QKD key, X25519 shared secret, session secret, traffic keys) never appear in logs,
errors or reprs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import struct
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from sdqkd.errors import SdqkdError
from sdqkd.logfmt import brief

from .keyclient import Etsi014Client, Key, KeyDeliveryError, SaeIdentity

log = logging.getLogger("sdqkd.apps.hybrid")

PROTOCOL = "sdqkd-hybrid-v1"
SALT = PROTOCOL.encode()
LABEL = b"sdqkd hybrid CatKDF (ETSI TS 103 744) "
Mode = Literal["hybrid", "classical-only"]

MAX_RECORD = 16384  # plaintext bytes per record
MAX_HANDSHAKE = 64 * 1024
MAX_RECORDS = 2**48  # per direction and key; far below the AES-GCM bound for random-looking nonces
HANDSHAKE_TIMEOUT_S = 20.0

T_HELLO, T_FINISHED, T_ALERT, T_DATA, T_CLOSE = 1, 2, 3, 16, 17
_HDR = struct.Struct(">BI")


class HybridError(SdqkdError, RuntimeError):
    """Base of the errors of this module."""


class QkdUnavailable(HybridError):
    """The KMS could not give a key now (HTTP 503, unreachable, timeout): fallback territory."""


class HybridRefused(HybridError):
    """A side refused the session (fallback not allowed, or the peer said no)."""


class HandshakeError(HybridError):
    """The peer failed authentication or broke the handshake protocol."""


class RecordError(HybridError):
    """A tunnel record failed authentication or broke the protocol: the session is over."""


class StreamTruncated(RecordError):
    """The stream ended without a close record (peer gone, or a truncation attempt)."""


# ---------------------------------------------------------------------------- the combiner

@dataclass(frozen=True)
class HybridSecret:
    """A session secret and how it was made. `mode` says whether QKD key went into it."""

    mode: Mode
    key_id: str | None
    context: bytes  # transcript hash: public
    secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"HybridSecret(mode={self.mode!r}, key_ID={self.key_id!r}, {len(self.secret) * 8} bits)"

    def expand(self, label: str, length: int = 32) -> bytes:
        """A sub-key for one purpose (traffic key, IV, finished key), HKDF-Expand under the secret."""
        return HKDFExpand(hashes.SHA256(), length, f"{PROTOCOL} {label}".encode()).derive(self.secret)


def _info(mode: Mode, key_id: str | None, context: bytes) -> bytes:
    kid = (key_id or "").encode()
    return LABEL + mode.encode() + b"\0" + struct.pack(">H", len(kid)) + kid + context


def combine(classical: bytes, qkd: bytes | None, context: bytes, *, key_id: str | None = None,
            length: int = 32) -> bytes:
    """CatKDF: HKDF-SHA256 over `classical || qkd` with the mode, key_ID and `context` in info.
    `qkd=None` is the classical-only fallback (a different mode in info, so never the same secret)."""
    if len(classical) != 32:
        raise ValueError(f"classical input must be a 32-byte X25519 shared secret, got {len(classical)} bytes")
    if qkd is not None and len(qkd) < 16:
        raise ValueError(f"QKD key must be at least 128 bits, got {len(qkd) * 8}")
    mode: Mode = "hybrid" if qkd is not None else "classical-only"
    return HKDF(hashes.SHA256(), length, SALT, _info(mode, key_id, context)).derive(classical + (qkd or b""))


def hybrid_secret(classical: bytes, qkd: Key | None, context: bytes) -> HybridSecret:
    """The session secret from an X25519 shared secret and (when the KMS gave one) a QKD key."""
    kid = qkd.key_id if qkd is not None else None
    secret = combine(classical, qkd.key if qkd is not None else None, context, key_id=kid)
    return HybridSecret("hybrid" if qkd is not None else "classical-only", kid, context, secret)


# ---------------------------------------------------------------------------- QKD key source

class KeySource(Protocol):
    """Where QKD keys come from: the master's `new_key` (enc_keys), the slave's `key_by_id` (dec_keys)."""

    def new_key(self, slave_sae_id: str) -> Key: ...

    def key_by_id(self, master_sae_id: str, key_id: str) -> Key: ...


class Etsi014KeySource:
    """QKD keys through ETSI GS QKD 014; 503 / transport failures become `QkdUnavailable`."""

    def __init__(self, me: SaeIdentity, *, key_bits: int = 256, retry_s: float = 0.0, timeout_s: float = 10.0):
        self.me, self.key_bits, self.retry_s = me, key_bits, retry_s
        self._client = Etsi014Client(me, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Key:
        try:
            return fn(*args, **kw)[0]
        except KeyDeliveryError as e:
            if e.status == 503:
                raise QkdUnavailable(f"KMS at {self.me.etsi014}: {what}: {e}") from None
            raise
        except httpx.HTTPError as e:
            raise QkdUnavailable(f"KMS at {self.me.etsi014} unreachable for {what}: "
                                 f"{type(e).__name__}: {e}") from None

    def new_key(self, slave_sae_id: str) -> Key:
        return self._call(f"enc_keys for {slave_sae_id}", self._client.enc_keys, slave_sae_id, number=1,
                          size=self.key_bits, retry_s=self.retry_s)

    def key_by_id(self, master_sae_id: str, key_id: str) -> Key:
        return self._call(f"dec_keys {key_id} from {master_sae_id}", self._client.dec_keys, master_sae_id,
                          [key_id])


# ---------------------------------------------------------------------------- identities

class Credentials:
    """The handshake identity of one side: its SAE certificate and key, and the CA it trusts."""

    def __init__(self, sae_id: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes):
        self.sae_id, self.cert_pem = sae_id, cert_pem
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
            raise ValueError(f"{sae_id}: handshake signatures need an EC or Ed25519 key, got {type(key).__name__}")
        self._key = key
        self._ca = x509.load_pem_x509_certificates(ca_pem)
        cn = _cn(x509.load_pem_x509_certificate(cert_pem))
        if cn != sae_id:
            raise ValueError(f"certificate CN {cn!r} does not name SAE {sae_id!r}")

    @classmethod
    def from_identity(cls, me: SaeIdentity) -> Credentials:
        return cls(me.sae_id, Path(me.cert).read_bytes(), Path(me.key).read_bytes(), Path(me.ca).read_bytes())

    def __repr__(self) -> str:
        return f"Credentials({self.sae_id!r})"

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data)

    def verify_peer(self, cert_pem: str, signature: bytes, data: bytes, allowed: Collection[str]) -> str:
        """Check the peer's certificate chains to our CA, names an allowed SAE and signed `data`."""
        from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError as e:
            raise HandshakeError(f"peer certificate does not parse: {e}") from None
        # our SAE certificates carry no SAN (the SAE ID is the subject CN, as ETSI 014 uses it)
        ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName,
                                                                 Criticality.AGNOSTIC, None)
        verifier = (PolicyBuilder().store(Store(self._ca)).time(dt.datetime.now(dt.UTC))
                    .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
                    .build_client_verifier())
        try:
            verifier.verify(cert, [])
        except Exception as e:  # VerificationError
            raise HandshakeError(f"peer certificate {_cn(cert)!r} rejected: {e}") from None
        cn = _cn(cert)
        if cn not in allowed:
            raise HandshakeError(f"peer certificate names {cn!r}, expected one of {sorted(allowed)}")
        pub = cert.public_key()
        try:
            if isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            elif isinstance(pub, ed25519.Ed25519PublicKey):
                pub.verify(signature, data)
            else:
                raise HandshakeError(f"peer {cn!r}: unsupported key type {type(pub).__name__}")
        except InvalidSignature:
            raise HandshakeError(f"peer {cn!r}: handshake signature does not verify") from None
        return cn


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


# ---------------------------------------------------------------------------- framing

async def _read_frame(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes, bytes]:
    hdr = await reader.readexactly(_HDR.size)
    typ, n = _HDR.unpack(hdr)
    if n > limit:
        raise RecordError(f"frame of {n} bytes exceeds the limit of {limit}")
    return typ, hdr, await reader.readexactly(n)


def _frame(typ: int, body: bytes) -> bytes:
    return _HDR.pack(typ, len(body)) + body


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: Any, what: str, size: int | None = None) -> bytes:
    try:
        b = base64.b64decode(s, validate=True)
    except (ValueError, TypeError):
        raise HandshakeError(f"handshake field {what} is not base64") from None
    if size is not None and len(b) != size:
        raise HandshakeError(f"handshake field {what} must be {size} bytes, got {len(b)}")
    return b


def _signed(hello: dict[str, Any], creds: Credentials, to_sign: bytes) -> bytes:
    return json.dumps({"hello": hello, "sig": _b64(creds.sign(to_sign))}).encode()


def _transcript(ch: bytes, sh: bytes) -> bytes:
    h = hashlib.sha256(SALT)
    for part in (ch, sh):
        h.update(struct.pack(">I", len(part)) + part)
    return h.digest()


# ---------------------------------------------------------------------------- sessions

@dataclass
class SessionInfo:
    """What `status()` shows of one session: never key material."""

    peer: str
    mode: Mode
    key_id: str | None
    started: float
    bytes_sent: int = 0
    bytes_received: int = 0
    state: str = "open"
    reason: str = ""


class HybridSession:
    """An established tunnel session: AES-256-GCM records in both directions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: HybridSecret,
                 role: Literal["client", "server"], peer: str):
        self.reader, self.writer, self.secret, self.role, self.peer = reader, writer, secret, role, peer
        me, other = ("c2s", "s2c") if role == "client" else ("s2c", "c2s")
        self._tx, self._rx = AESGCM(secret.expand(f"{me} key")), AESGCM(secret.expand(f"{other} key"))
        self._tx_iv, self._rx_iv = secret.expand(f"{me} iv", 12), secret.expand(f"{other} iv", 12)
        self._tx_seq = self._rx_seq = 0
        self.close_sent = False
        self.info = SessionInfo(peer, secret.mode, secret.key_id, time.time())

    def __repr__(self) -> str:
        return f"HybridSession({self.role}, peer={self.peer!r}, {self.secret!r})"

    @property
    def mode(self) -> Mode:
        return self.secret.mode

    @staticmethod
    def _nonce(iv: bytes, seq: int) -> bytes:
        if seq >= MAX_RECORDS:
            raise RecordError("record counter exhausted: open a new session (new QKD key)")
        return (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")

    def _seal(self, typ: int, data: bytes) -> bytes:
        hdr = _HDR.pack(typ, len(data) + 16)
        ct = self._tx.encrypt(self._nonce(self._tx_iv, self._tx_seq), data, hdr)
        self._tx_seq += 1
        return hdr + ct

    async def send(self, data: bytes) -> None:
        for i in range(0, len(data), MAX_RECORD):
            chunk = data[i:i + MAX_RECORD]
            self.writer.write(self._seal(T_DATA, chunk))
            self.info.bytes_sent += len(chunk)
        await self.writer.drain()

    async def send_close(self) -> None:
        """The close record: the peer can tell a clean end from a cut stream."""
        if self.close_sent:
            return
        self.close_sent = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(self._seal(T_CLOSE, b""))
            await self.writer.drain()

    async def recv(self) -> bytes | None:
        """The next record's plaintext; None when the peer closed the session cleanly."""
        try:
            typ, hdr, ct = await _read_frame(self.reader, MAX_RECORD + 16)
        except asyncio.IncompleteReadError:
            raise StreamTruncated(f"stream from {self.peer} broke off without a close record") from None
        if typ not in (T_DATA, T_CLOSE):
            raise RecordError(f"unexpected record type {typ} from {self.peer}")
        try:
            data = self._rx.decrypt(self._nonce(self._rx_iv, self._rx_seq), ct, hdr)
        except InvalidTag:
            raise RecordError(f"record {self._rx_seq} from {self.peer} failed authentication "
                              "(tampered, reordered or wrong key)") from None
        self._rx_seq += 1
        if typ == T_CLOSE:
            return None
        self.info.bytes_received += len(data)
        return data

    def close(self) -> None:
        self.writer.close()


async def _alert(writer: asyncio.StreamWriter, message: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(_frame(T_ALERT, json.dumps({"message": message}).encode()))
        await writer.drain()


async def _expect(reader: asyncio.StreamReader, typ: int, peer: str) -> bytes:
    try:
        got, _, body = await _read_frame(reader, MAX_HANDSHAKE)
    except asyncio.IncompleteReadError:
        raise HandshakeError(f"{peer} closed the connection during the handshake") from None
    if got == T_ALERT:
        try:
            msg = str(json.loads(body).get("message", ""))
        except ValueError:
            msg = "(unreadable alert)"
        raise HybridRefused(f"{peer} refused the session: {msg}")
    if got != typ:
        raise HandshakeError(f"{peer}: expected handshake message {typ}, got {got}")
    return body


def _parse_signed(body: bytes, peer: str) -> tuple[dict[str, Any], bytes, bytes]:
    """(hello, its canonical bytes, signature)"""
    try:
        outer = json.loads(body)
        hello = outer["hello"]
        sig = _unb64(outer["sig"], "sig")
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
            raise HandshakeError(f"{peer}: not a {PROTOCOL} hello")
    except (ValueError, KeyError, TypeError):
        raise HandshakeError(f"{peer}: malformed hello") from None
    return hello, _canon(hello), sig


def _canon(hello: dict[str, Any]) -> bytes:
    return json.dumps(hello, sort_keys=True, separators=(",", ":")).encode()


def _shared(priv: X25519PrivateKey, peer_pub: bytes) -> bytes:
    try:
        return priv.exchange(X25519PublicKey.from_public_bytes(peer_pub))
    except ValueError:
        raise HandshakeError("peer X25519 public key is invalid (low order)") from None


def _finished(secret: HybridSecret, who: str) -> bytes:
    return hmac.new(secret.expand(f"{who} finished"), secret.context, hashlib.sha256).digest()


async def take_qkd_key(keys: KeySource, server_sae: str, *, allow_fallback: bool = True) -> tuple[Key | None, str]:
    """Master side: a fresh QKD key for `server_sae` (enc_keys), or (None, why) when the KMS cannot
    give one and fallback is allowed; `HybridRefused` when it is not."""
    try:
        return await asyncio.to_thread(keys.new_key, server_sae), ""
    except QkdUnavailable as e:
        if not allow_fallback:
            raise HybridRefused(f"no QKD key for {server_sae} and classical-only fallback is not allowed: {e}") \
                from None
        return None, str(e)


async def client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, creds: Credentials,
                           keys: KeySource, server_sae: str, *, allow_fallback: bool = True,
                           qkd_key: tuple[Key | None, str] | None = None) -> HybridSession:
    """Master side: take a QKD key for `server_sae` (enc_keys) unless `qkd_key` (from
    `take_qkd_key`) is given, run the handshake, return the session."""
    qkd, reason = qkd_key if qkd_key is not None else await take_qkd_key(keys, server_sae,
                                                                          allow_fallback=allow_fallback)
    priv = X25519PrivateKey.generate()
    hello = {"protocol": PROTOCOL, "client": creds.sae_id, "server": server_sae,
             "x25519": _b64(priv.public_key().public_bytes_raw()), "nonce": _b64(os.urandom(16)),
             "key_ID": qkd.key_id if qkd else None, "qkd_error": reason[:300] or None,
             "cert": creds.cert_pem.decode()}
    ch = _canon(hello)
    writer.write(_frame(T_HELLO, _signed(hello, creds, b"client hello " + ch)))
    await writer.drain()

    sh_hello, sh, sig = _parse_signed(await _expect(reader, T_HELLO, server_sae), server_sae)
    context = _transcript(ch, sh)
    creds.verify_peer(str(sh_hello.get("cert", "")), sig, b"server hello " + context, {server_sae})
    if sh_hello.get("client") != creds.sae_id or sh_hello.get("server") != server_sae \
            or sh_hello.get("client_hello") != hashlib.sha256(ch).hexdigest() \
            or sh_hello.get("key_ID") != hello["key_ID"]:
        raise HandshakeError(f"{server_sae}: server hello does not answer our hello")
    mode = sh_hello.get("mode")
    if mode == "classical-only" and qkd is not None:
        if not allow_fallback:
            await _alert(writer, "client does not allow classical-only fallback")
            raise HybridRefused(f"{server_sae} could not use QKD key {qkd.key_id} "
                                f"({sh_hello.get('qkd_error')}) and fallback is not allowed")
        reason = f"server could not get QKD key {qkd.key_id}: {sh_hello.get('qkd_error')}"
        qkd = None
    elif mode != ("hybrid" if qkd is not None else "classical-only"):
        raise HandshakeError(f"{server_sae}: server hello has mode {mode!r} for key_ID {hello['key_ID']!r}")
    shared = _shared(priv, _unb64(sh_hello.get("x25519"), "x25519", 32))
    secret = hybrid_secret(shared, qkd, context)
    writer.write(_frame(T_FINISHED, _finished(secret, "client")))
    await writer.drain()
    if not hmac.compare_digest(await _expect(reader, T_FINISHED, server_sae), _finished(secret, "server")):
        raise HandshakeError(f"{server_sae}: server finished does not verify (different secret)")
    if secret.mode == "classical-only":
        log.warning("hybrid session %s -> %s is CLASSICAL-ONLY (X25519 without QKD key): %s",
                    creds.sae_id, server_sae, reason)
    else:
        log.info("hybrid session %s -> %s established with QKD key_ID %s", creds.sae_id, server_sae, secret.key_id)
    return HybridSession(reader, writer, secret, "client", server_sae)


async def server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, creds: Credentials,
                           keys: KeySource, allowed_clients: Collection[str], *,
                           allow_fallback: bool = True) -> HybridSession:
    """Slave side: authenticate the client's hello, take its QKD key by key_ID (dec_keys), answer."""
    body = await _expect(reader, T_HELLO, "client")
    hello, ch, sig = _parse_signed(body, "client")
    client = str(hello.get("client", ""))
    try:
        cn = creds.verify_peer(str(hello.get("cert", "")), sig, b"client hello " + ch, allowed_clients)
        if cn != client:
            raise HandshakeError(f"client hello names {client!r} but its certificate names {cn!r}")
        if hello.get("server") != creds.sae_id:
            raise HandshakeError(f"client {client} addressed {hello.get('server')!r}, this is {creds.sae_id!r}")
        client_pub = _unb64(hello.get("x25519"), "x25519", 32)
    except HandshakeError as e:
        await _alert(writer, str(e))
        raise
    key_id = hello.get("key_ID")
    qkd: Key | None = None
    reason = str(hello.get("qkd_error") or "")
    if key_id is not None:
        try:
            qkd = await asyncio.to_thread(keys.key_by_id, client, str(key_id))
        except QkdUnavailable as e:
            reason = str(e)
        except KeyDeliveryError as e:  # 400 / 401: replayed or unknown key_ID, misconfiguration
            await _alert(writer, f"QKD key {key_id} refused by the KMS (HTTP {e.status})")
            raise HandshakeError(f"client {client}: QKD key {key_id}: {e}") from None
    if qkd is None and not allow_fallback:
        await _alert(writer, "server does not allow classical-only sessions")
        raise HybridRefused(f"client {client}: no QKD key ({reason or 'none offered'}) "
                            "and classical-only fallback is not allowed")
    priv = X25519PrivateKey.generate()
    sh_hello = {"protocol": PROTOCOL, "client": client, "server": creds.sae_id, "key_ID": key_id,
                "mode": "hybrid" if qkd is not None else "classical-only", "qkd_error": reason[:300] or None,
                "x25519": _b64(priv.public_key().public_bytes_raw()), "nonce": _b64(os.urandom(16)),
                "client_hello": hashlib.sha256(ch).hexdigest(), "cert": creds.cert_pem.decode()}
    sh = _canon(sh_hello)
    context = _transcript(ch, sh)
    writer.write(_frame(T_HELLO, _signed(sh_hello, creds, b"server hello " + context)))
    await writer.drain()
    secret = hybrid_secret(_shared(priv, client_pub), qkd, context)
    if not hmac.compare_digest(await _expect(reader, T_FINISHED, client), _finished(secret, "client")):
        await _alert(writer, "client finished does not verify")
        raise HandshakeError(f"client {client}: finished does not verify (different secret)")
    writer.write(_frame(T_FINISHED, _finished(secret, "server")))
    await writer.drain()
    if secret.mode == "classical-only":
        log.warning("hybrid session %s <- %s is CLASSICAL-ONLY (X25519 without QKD key): %s",
                    creds.sae_id, client, reason or "client offered no QKD key")
    else:
        log.info("hybrid session %s <- %s established with QKD key_ID %s", creds.sae_id, client, secret.key_id)
    return HybridSession(reader, writer, secret, "server", client)


# ---------------------------------------------------------------------------- tunnels

def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


class _Tunnel:
    """Shared part of both tunnel ends: a local listener, sessions, counters, `status()`."""

    role = ""

    def __init__(self, me: SaeIdentity, listen: str, keys: KeySource | None, allow_fallback: bool):
        self.me, self.listen_addr, self.allow_fallback = me, listen, allow_fallback
        self.creds = Credentials.from_identity(me)
        self._own_keys = keys is None
        self.keys: KeySource = keys if keys is not None else Etsi014KeySource(me, retry_s=2.0)
        self.sessions: list[SessionInfo] = []
        self.counters = {"hybrid": 0, "classical-only": 0, "refused": 0, "handshake_failures": 0,
                         "record_failures": 0}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> str:
        host, port = _split(self.listen_addr)
        self._server = await asyncio.start_server(self._accept, host, port)
        sock = self._server.sockets[0].getsockname()
        self.address = f"{sock[0]}:{sock[1]}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._own_keys and isinstance(self.keys, Etsi014KeySource):
            self.keys.close()

    async def __aenter__(self) -> _Tunnel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def status(self) -> dict[str, Any]:
        """Mode of every session (hybrid / classical-only), counters; no key material."""
        return {"role": self.role, "sae": self.me.sae_id, "listen": self.address,
                "allow_fallback": self.allow_fallback, "counters": dict(self.counters),
                "sessions": [vars(s).copy() for s in self.sessions]}

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _count(self, session: HybridSession) -> None:
        self.counters[session.mode] += 1
        self.sessions.append(session.info)

    def _failed(self, e: BaseException, what: str) -> None:
        if isinstance(e, HybridRefused):
            self.counters["refused"] += 1
        else:
            self.counters["handshake_failures"] += 1
        log.warning("hybrid tunnel %s (%s): %s: %s", self.role, self.me.sae_id, what, brief(e))

    async def _pump(self, session: HybridSession, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        """Plain side <-> session until either side closes or a record fails authentication."""

        async def up() -> None:
            while data := await reader.read(MAX_RECORD):
                await session.send(data)
            await session.send_close()

        async def down() -> None:
            while (data := await session.recv()) is not None:
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, RecordError):
                    if not isinstance(exc, StreamTruncated):
                        self.counters["record_failures"] += 1
                    session.info.state, session.info.reason = "failed", str(exc)
                    log.warning("hybrid tunnel %s (%s): session with %s ended: %s", self.role,
                                self.me.sae_id, session.peer, exc)
                elif exc is not None and not isinstance(exc, ConnectionError):
                    session.info.reason = f"{type(exc).__name__}: {exc}"
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if session.info.state == "open" and not session.close_sent:
                await session.send_close()  # stopping or the peer closed: say so, do not just vanish
            if session.info.state == "open":
                session.info.state = "closed"
            session.close()
            writer.close()


class HybridTunnelServer(_Tunnel):
    """The agent side: accepts hybrid sessions from `allowed_clients` and forwards to `target`
    (the node's gNMI address), one TCP connection to the target per session."""

    role = "server"

    def __init__(self, me: SaeIdentity, target: str, allowed_clients: Collection[str], *,
                 listen: str = "127.0.0.1:0", keys: KeySource | None = None, allow_fallback: bool = True):
        super().__init__(me, listen, keys, allow_fallback)
        _split(target)
        if not allowed_clients:
            raise ValueError("allowed_clients must name at least one client SAE")
        self.target, self.allowed = target, frozenset(allowed_clients)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            session = await asyncio.wait_for(server_handshake(
                reader, writer, self.creds, self.keys, self.allowed, allow_fallback=self.allow_fallback),
                HANDSHAKE_TIMEOUT_S)
        except (HybridError, KeyDeliveryError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            self._failed(e, "handshake")
            writer.close()
            return
        except Exception as e:  # a bug or an odd peer must not vanish as a never-retrieved task error
            log.exception("hybrid tunnel server (%s): unexpected handshake error", self.me.sae_id)
            self._failed(e, "handshake")
            writer.close()
            return
        self._count(session)
        try:
            t_reader, t_writer = await asyncio.open_connection(*_split(self.target))
        except OSError as e:
            log.warning("hybrid tunnel server: target %s unreachable: %s", self.target, e)
            session.info.state, session.info.reason = "failed", f"target unreachable: {e}"
            session.close()
            return
        await self._pump(session, t_reader, t_writer)


class HybridTunnelClient(_Tunnel):
    """The controller side: a local port; each connection to it becomes one hybrid session to
    `remote` (a `HybridTunnelServer` whose SAE is `server_sae`)."""

    role = "client"

    def __init__(self, me: SaeIdentity, remote: str, server_sae: str, *, listen: str = "127.0.0.1:0",
                 keys: KeySource | None = None, allow_fallback: bool = True):
        super().__init__(me, listen, keys, allow_fallback)
        _split(remote)
        self.remote, self.server_sae = remote, server_sae

    async def connect(self) -> HybridSession:
        """One hybrid session to the remote end (what each local connection gets). The QKD key
        is taken first: a refused fallback never opens a connection."""
        try:
            qkd = await take_qkd_key(self.keys, self.server_sae, allow_fallback=self.allow_fallback)
            reader, writer = await asyncio.open_connection(*_split(self.remote))
            try:
                session = await asyncio.wait_for(client_handshake(
                    reader, writer, self.creds, self.keys, self.server_sae, allow_fallback=self.allow_fallback,
                    qkd_key=qkd), HANDSHAKE_TIMEOUT_S)
            except BaseException:
                writer.close()
                raise
        except (HybridError, KeyDeliveryError, TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            self._failed(e, f"session to {self.server_sae} at {self.remote}")
            raise
        self._count(session)
        return session

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            session = await self.connect()
        except (HybridError, KeyDeliveryError, TimeoutError, OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        await self._pump(session, reader, writer)
