"""Encryptor key streams: AES-GCM fed by an ETSI GS QKD 004 key stream, rekeyed every N bytes.

The model is a link encryptor pair. Both peers open the *same* ETSI 004 key stream (the first
with OPEN_CONNECT, the second joins with the key stream ID) and so see the same chunk at the
same index. The sender takes chunks in stream order and uses each as an AES-GCM key for at most
`rekey_bytes` of plaintext, then discards it and takes the next; the receiver takes the chunk
of the index written in each frame's header. Nothing but the index travels, so the two stay in
step without any key agreement of their own.

Frame: header `b"QE" | version | 0 | key index (u64) | counter (u32)` (16 bytes), then AES-GCM
ciphertext and 16-byte tag. The nonce is the counter (96 bits, big-endian), unique per key
because the counter only grows and a key never outlives `rekey_bytes` (or 2**32 frames); the
header is authenticated as associated data, so a frame cannot be moved to another key or slot.
A stream carries one direction: two encryptors on one stream would take the same chunks and
reuse (key, nonce) pairs, so each direction opens its own stream.

Receiver policy for order and replay (like ESP's anti-replay, RFC 4303 3.4.3): it keeps the
keys of the `keep_keys` highest indices it has authenticated a frame for and a sliding window
of `window` counters per key. A frame in the window not seen before is accepted in any order;
a counter seen before is `replayed`; one below the window, or of a discarded key, is `too old`;
an index more than `max_skip` ahead is refused before any key is fetched (a forged header
cannot make the receiver drain the stream). State changes only after the tag verifies.

When demand exceeds supply the KMS answers GET_KEY with status 2 (insufficient key) or 6
(timeout: no key within qos.timeout, or max_bps pacing would take longer); the encryptor then
raises `KeyStarved` and sends nothing until a fresh key arrives -- it never stretches the old
key past `rekey_bytes`. `Encryptor.consumption()` reports the key bits taken per second next to
the stream's granted QoS and, where given, the link's secret key rate (`read_link_skr` reads it
from the node's gNMI state, ETSI 015 qkdl_performance/skr).

AES-GCM is `cryptography`'s AESGCM (OpenSSL underneath). Key bytes are never logged or put in
a repr or an error; discarded keys are overwritten in our buffers (AESGCM's internal copy is
out of reach of Python, which is as far as a Python process can go)."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sdqkd.apps.keyclient import Etsi004Client, KeyDeliveryError, ManagementIdentity
from sdqkd.errors import SdqkdError
from sdqkd.generated.client import ModelClient
from sdqkd.tls import aio_channel

T = TypeVar("T")

MAGIC, VERSION = b"QE", 1
HEADER = struct.Struct(">2sBxQI")  # magic, version, reserved, key index, counter
TAG_LEN = 16
MAX_COUNTER = 2**32
STARVED = {2: "GET_KEY_INSUFFICIENT_KEY_AVAILABLE", 6: "TIMEOUT_ERROR"}


class EncryptorError(SdqkdError):
    """Base of this module's errors; `status` is the ETSI 004 status when the KMS gave one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KeyStreamError(EncryptorError):
    """The key stream cannot serve (peer application not connected, no QKD connection, QoS refused)."""


class KeyStarved(KeyStreamError):
    """Demand exceeds supply: the KMS had no key in time (ETSI 004 status 2 or 6). Nothing was
    encrypted; the caller may retry later (a fresh key will be taken) or shed load."""


class FrameRejected(EncryptorError):
    """A frame was refused: `reason` is one of malformed, tampered, replayed, too-old,
    too-far-ahead, over-budget, key-gone."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"frame rejected ({reason}): {message}")
        self.reason = reason


@dataclass(frozen=True)
class StreamQoS:
    """The ETSI 004 QoS an application asks for (chunk = one AES key, so 16, 24 or 32 bytes)."""

    chunk_size: int = 32
    max_bps: int = 0  # 0: unpaced
    min_bps: int = 0  # refused (status 7) if above the link's measured key rate
    timeout_ms: int = 2000  # how long GET_KEY may wait for key before status 6
    ttl_s: int = 0

    def __post_init__(self) -> None:
        for name in ("chunk_size", "max_bps", "min_bps", "timeout_ms", "ttl_s"):
            v = getattr(self, name)
            if not 0 <= v < 2**32:
                raise ValueError(f"QoS {name} must be in 0..2**32-1 (ETSI 004 uint32), got {v}")


class KeyStream:
    """One peer's handle of an ETSI 004 key stream. `take(index)` returns (index, key) once per
    index; errors become KeyStarved (2, 6) or KeyStreamError (other statuses)."""

    def __init__(self, client: Etsi004Client, key_stream_id: str, peer_sae_id: str, qos: Any) -> None:
        self.client, self.key_stream_id, self.peer_sae_id = client, key_stream_id, peer_sae_id
        self.chunk_size: int = qos.key_chunk_size
        self.max_bps: int = qos.max_bps
        self.min_bps: int = qos.min_bps
        self.timeout_ms: int = qos.timeout
        self.keys_taken = 0
        self.bits_taken = 0

    def __repr__(self) -> str:
        return (f"KeyStream({self.key_stream_id}, peer={self.peer_sae_id}, chunk={self.chunk_size} B, "
                f"max_bps={self.max_bps}, taken={self.keys_taken})")

    @classmethod
    def open(cls, client: Etsi004Client, peer_sae_id: str, qos: StreamQoS = StreamQoS(),
             key_stream_id: str = "") -> KeyStream:
        """OPEN_CONNECT: a new stream (first peer) or, with `key_stream_id`, join the peer's."""
        try:
            ksid = client.open(peer_sae_id, key_stream_id, chunk_size=qos.chunk_size, max_bps=qos.max_bps,
                               min_bps=qos.min_bps, timeout_ms=qos.timeout_ms, ttl_s=qos.ttl_s)
        except KeyDeliveryError as e:
            raise KeyStreamError(f"{e} (asked chunk {qos.chunk_size} B, max_bps {qos.max_bps}, "
                                 f"min_bps {qos.min_bps})", e.status) from e
        return cls(client, ksid, peer_sae_id, client.qos)

    def take(self, index: int | None = None) -> tuple[int, bytearray]:
        try:
            idx, key = self.client.get_key(self.key_stream_id, index, timeout=self.timeout_ms / 1000.0 + 30.0)
        except KeyDeliveryError as e:
            what = f"key index {index}" if index is not None else "the next key"
            if e.status in STARVED:
                raise KeyStarved(f"key stream {self.key_stream_id}: no key for {what}: ETSI 004 status {e.status} "
                                 f"{STARVED[e.status]} (demand above supply; nothing sent)", e.status) from e
            raise KeyStreamError(f"key stream {self.key_stream_id}: {what}: {e}", e.status) from e
        if len(key) != self.chunk_size:
            raise KeyStreamError(f"key stream {self.key_stream_id}: chunk {idx} has {len(key)} bytes, "
                                 f"expected {self.chunk_size}")
        self.keys_taken += 1
        self.bits_taken += len(key) * 8
        return idx, bytearray(key)

    def close(self) -> int:
        return self.client.close_stream(self.key_stream_id)


def parse_header(frame: bytes) -> tuple[int, int]:
    """(key index, counter) of a frame, without decrypting it."""
    if len(frame) < HEADER.size + TAG_LEN:
        raise FrameRejected("malformed", f"{len(frame)} bytes is shorter than header and tag")
    magic, version, index, counter = HEADER.unpack_from(frame)
    if magic != MAGIC or version != VERSION:
        raise FrameRejected("malformed", f"not a version {VERSION} encryptor frame")
    return index, counter


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


def _check_key(chunk_size: int) -> None:
    if chunk_size not in (16, 24, 32):
        raise ValueError(f"AES-GCM needs 16, 24 or 32 byte keys; the stream's chunk size is {chunk_size}")


@dataclass
class Consumption:
    """Key consumed by an encryptor, for comparison with what the link produces."""

    keys: int
    key_bits: int
    frames: int
    plaintext_bytes: int
    seconds: float
    starved: int
    granted_max_bps: int
    granted_min_bps: int

    @property
    def key_bps(self) -> float:
        return self.key_bits / self.seconds if self.seconds > 0 else 0.0

    @property
    def plaintext_bps(self) -> float:
        return self.plaintext_bytes * 8 / self.seconds if self.seconds > 0 else 0.0

    def report(self, skr_bps: float | None = None) -> str:
        cap = f"{self.granted_max_bps} bit/s" if self.granted_max_bps else "unpaced"
        s = (f"{self.frames} frames, {self.plaintext_bytes} B in {self.seconds:.2f} s "
             f"({self.plaintext_bps / 1e6:.2f} Mbit/s); {self.keys} keys = {self.key_bits} bits "
             f"({self.key_bps:.0f} bit/s) against granted max_bps {cap}")
        if skr_bps:
            s += f", link SKR {skr_bps:.0f} bit/s ({100 * self.key_bps / skr_bps:.2f}% of it)"
        if self.starved:
            s += f"; starved {self.starved} times"
        return s


class Encryptor:
    """The sending side: `seal(plaintext)` -> frame, taking a new key every `rekey_bytes`."""

    def __init__(self, stream: KeyStream, rekey_bytes: int = 1 << 20) -> None:
        _check_key(stream.chunk_size)
        if rekey_bytes <= 0:
            raise ValueError(f"rekey_bytes must be positive, got {rekey_bytes}")
        self.stream, self.rekey_bytes = stream, rekey_bytes
        self._aes: AESGCM | None = None
        self._index = -1  # key index in use (or last used)
        self._counter = 0
        self._used = 0
        self.frames = self.plaintext_bytes = self.starved = 0
        self._t0: float | None = None
        self._t_last = 0.0

    def __repr__(self) -> str:
        return f"Encryptor(key index {self._index}, {self._used}/{self.rekey_bytes} B used, {self.frames} frames)"

    def _rekey(self) -> None:
        self._aes = None  # discard the spent key before asking for the next one
        try:
            idx, key = self.stream.take()
        except KeyStarved:
            self.starved += 1
            raise
        try:
            if idx <= self._index:  # the KMS must never hand out an index twice; refuse if it did
                raise KeyStreamError(f"key stream {self.stream.key_stream_id}: got key index {idx} after "
                                     f"{self._index}; refusing to reuse key material")
            self._aes, self._index, self._counter, self._used = AESGCM(bytes(key)), idx, 0, 0
        finally:
            key[:] = bytes(len(key))

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt one frame. Raises KeyStarved (nothing sent) when the KMS has no key in time."""
        if len(plaintext) > self.rekey_bytes:
            raise ValueError(f"a frame of {len(plaintext)} bytes exceeds rekey_bytes={self.rekey_bytes}")
        if self._t0 is None:
            self._t0 = time.monotonic()
        if self._aes is None or self._used + len(plaintext) > self.rekey_bytes or self._counter >= MAX_COUNTER:
            self._rekey()
        assert self._aes is not None
        header = HEADER.pack(MAGIC, VERSION, self._index, self._counter)
        frame = header + self._aes.encrypt(_nonce(self._counter), plaintext, header + aad)
        self._counter += 1
        self._used += len(plaintext)
        self.frames += 1
        self.plaintext_bytes += len(plaintext)
        self._t_last = time.monotonic()
        return frame

    def consumption(self) -> Consumption:
        secs = (self._t_last - self._t0) if self._t0 is not None else 0.0
        return Consumption(self.stream.keys_taken, self.stream.bits_taken, self.frames, self.plaintext_bytes, secs,
                           self.starved, self.stream.max_bps, self.stream.min_bps)


@dataclass
class _RxKey:
    aes: AESGCM = field(repr=False)
    top: int = -1  # highest counter accepted
    seen: int = 0  # bit i: counter top - i accepted
    used: int = 0  # plaintext bytes accepted


class Decryptor:
    """The receiving side: `open(frame)` -> plaintext, or FrameRejected naming the reason."""

    def __init__(self, stream: KeyStream, rekey_bytes: int = 1 << 20, *, window: int = 64, keep_keys: int = 2,
                 max_skip: int = 16) -> None:
        _check_key(stream.chunk_size)
        if window < 1 or keep_keys < 1 or max_skip < 1:
            raise ValueError("window, keep_keys and max_skip must be at least 1")
        self.stream, self.rekey_bytes = stream, rekey_bytes
        self.window, self.keep_keys, self.max_skip = window, keep_keys, max_skip
        self._keys: dict[int, _RxKey] = {}
        self._high = -1  # highest key index with an authenticated frame
        self.frames = 0

    def __repr__(self) -> str:
        return f"Decryptor(highest key index {self._high}, {len(self._keys)} keys held, {self.frames} frames)"

    def _key(self, index: int) -> _RxKey:
        k = self._keys.get(index)
        if k is not None:
            return k
        if index <= self._high - self.keep_keys:
            raise FrameRejected("too-old", f"key index {index} already discarded (now at {self._high})")
        if index > self._high + self.max_skip:
            raise FrameRejected("too-far-ahead", f"key index {index} is more than {self.max_skip} past {self._high}")
        try:
            idx, key = self.stream.take(index)
        except KeyStreamError as e:
            raise FrameRejected("key-gone", f"key index {index}: {e}") from e
        try:
            if idx != index:
                raise FrameRejected("key-gone", f"asked key index {index}, the KMS gave {idx}")
            k = self._keys[index] = _RxKey(AESGCM(bytes(key)))
        finally:
            key[:] = bytes(len(key))
        return k

    def open(self, frame: bytes, aad: bytes = b"") -> bytes:
        index, counter = parse_header(frame)
        k = self._key(index)
        if counter > k.top:
            pass
        elif k.top - counter >= self.window:
            raise FrameRejected("too-old", f"counter {counter} of key {index} is below the replay window")
        elif k.seen >> (k.top - counter) & 1:
            raise FrameRejected("replayed", f"counter {counter} of key {index} was already accepted")
        header = frame[:HEADER.size]
        try:
            plaintext = k.aes.decrypt(_nonce(counter), frame[HEADER.size:], header + aad)
        except InvalidTag:
            raise FrameRejected("tampered", f"authentication failed for key {index}, counter {counter}") from None
        if k.used + len(plaintext) > self.rekey_bytes:
            raise FrameRejected("over-budget", f"key {index} would protect more than {self.rekey_bytes} bytes")
        # authenticated: now update state
        if counter > k.top:
            k.seen = ((k.seen << (counter - k.top)) | 1) & ((1 << self.window) - 1)
            k.top = counter
        else:
            k.seen |= 1 << (k.top - counter)
        k.used += len(plaintext)
        if index > self._high:
            self._high = index
            for old in [i for i in self._keys if i <= index - self.keep_keys]:
                del self._keys[old]  # discard: its frames are now too old
        self.frames += 1
        return plaintext


def read_link_skr(mgmt: ManagementIdentity, qkdl_id: str, timeout: float = 10.0) -> float | None:
    """The secret key rate (bit/s) a node reports for one link: a gNMI Get of the ETSI 015 leaf
    qkdl_performance/skr with the generated client, as a management identity of the network.
    Blocking (it runs an event loop of its own): call it from synchronous code."""
    from sdqkd.generated import paths

    skr = paths.qkd_node().qkd_links().qkd_link(qkdl_id=qkdl_id).qkdl_performance().skr
    v = _ask(mgmt, timeout, lambda c: c.get_value(skr, "STATE"))
    while isinstance(v, dict) and len(v) == 1:
        v = next(iter(v.values()))
    return float(v) if v is not None else None


def link_to(mgmt: ManagementIdentity, remote_qkdn_id: str, timeout: float = 10.0) -> str | None:
    """The qkdl_id of the node's physical link to node `remote_qkdn_id` (ETSI 015 qkdl_remote/
    qkdn_id), None if the two share no link (their keys are then relayed). Blocking, like
    `read_link_skr`."""
    for link in _ask(mgmt, timeout, lambda c: c.list_qkd_link()):
        kind = str(link.get("qkdl_type", "PHYS")).rpartition(":")[2]  # an identity, maybe prefixed
        if link.get("qkdl_remote", {}).get("qkdn_id") == remote_qkdn_id and kind == "PHYS":
            return str(link["qkdl_id"])
    return None


def _ask(mgmt: ManagementIdentity, timeout: float, call: Callable[[ModelClient], Awaitable[T]]) -> T:
    """One call of the generated gNMI client on a channel of its own, in an event loop of its own."""
    async def run() -> T:
        user, password = mgmt.login() or (None, None)
        async with aio_channel(mgmt.gnmi, mgmt.tls()) as channel:
            return await asyncio.wait_for(call(ModelClient(channel, username=user, password=password)), timeout)

    return asyncio.run(run())
