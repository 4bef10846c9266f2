"""Wegman-Carter authentication of classical-channel messages.

tag = poly_hash_k(header || message) XOR pad, with k a 128-bit GF(2^128) polynomial-hash key
taken once per session (one key block) and a fresh one-time pad per message, both drawn in
message order from a key source shared by the two ends: the pre-shared bootstrap secret for the
first block, key from the store afterwards.  The polynomial hash is (L/2^128)-almost-XOR-
universal, so a forger succeeds with probability <= L / 2^128 per attempt (Wegman and Carter,
JCSS 22 (1981)); the pads keep k hidden, so it can serve every message of the session.
The header binds a session context (link, block), the direction and a message counter, so
messages cannot be replayed, reordered or reflected.  Tags are compared in constant time.

Deferred messages (seal(..., defer=True)) travel without a tag: both ends keep their digest
h_k(message) (never sent, so k stays hidden) and the next tagged message in either direction
covers all pending digests.  A change to a deferred message therefore fails that later tag
(probability of escape <= L / 2^128); the pipeline defers only the many Cascade round trips
and outputs key only after a tagged message covering them, so security is unchanged while a
block costs a few hundred key bits instead of 128 per round trip.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from typing import Protocol

from sdqkd.engine import _hash
from sdqkd.errors import SdqkdError

TAG_BYTES = 16
_HEADER = struct.Struct(">BQ")  # flags (bit 0 direction, bit 1 tagged), message counter
HEADER_BYTES = _HEADER.size  # a frame is header || payload [|| tag]
_TAGGED = 2


class KeyExhausted(SdqkdError, RuntimeError):
    """The authentication key source cannot supply the bits a message needs."""


class AuthenticationError(SdqkdError, ValueError):
    """A message failed authentication (tampered, replayed, reordered or truncated)."""


class KeySource(Protocol):
    def take(self, n_bytes: int) -> bytes: ...


class BufferKeySource:
    """Key bits from a buffer (the bootstrap secret), consumed front to back; refillable."""

    def __init__(self, secret: bytes = b"") -> None:
        self._buf = bytearray(secret)
        self.consumed = 0

    def extend(self, key: bytes) -> None:
        self._buf += key

    @property
    def remaining(self) -> int:
        return len(self._buf)

    def take(self, n_bytes: int) -> bytes:
        if n_bytes > len(self._buf):
            raise KeyExhausted(
                f"authentication key source exhausted: need {n_bytes} bytes, {len(self._buf)} left "
                f"after {self.consumed} consumed; refill it from the key store"
            )
        out = bytes(self._buf[:n_bytes])
        del self._buf[:n_bytes]
        self.consumed += n_bytes
        return out


class CallableKeySource:
    """Key bits from a callable fn(n_bytes) -> bytes (e.g. the LKMS key store)."""

    def __init__(self, fn: Callable[[int], bytes]) -> None:
        self._fn = fn

    def take(self, n_bytes: int) -> bytes:
        out = self._fn(n_bytes)
        if not isinstance(out, bytes) or len(out) != n_bytes:
            got = len(out) if isinstance(out, bytes) else type(out).__name__
            raise KeyExhausted(f"authentication key source returned {got} instead of {n_bytes} bytes")
        return out


class Authenticator:
    """One end of an authenticated session; `role` is "alice" or "bob"."""

    def __init__(self, source: KeySource, role: str, context: bytes = b"") -> None:
        if role not in ("alice", "bob"):
            raise ValueError(f"role must be 'alice' or 'bob', got {role!r}")
        self._source = source
        self._me = 0 if role == "alice" else 1
        self._context = bytes(context)
        self._hash_key: bytes | None = None
        self._counter = 0
        self._pending: list[bytes] = []  # digests of deferred messages, both directions, in order
        self.consumed_bits = 0
        self.last_tagged = False  # whether the last opened frame carried its own tag

    @property
    def messages(self) -> int:
        """Frames sealed or opened so far, tagged or deferred."""
        return self._counter

    def _take(self, n: int) -> bytes:
        out = self._source.take(n)
        self.consumed_bits += 8 * n
        return out

    def _digest(self, header: bytes, payload: bytes, extra: bytes = b"") -> bytes:
        if self._hash_key is None:
            self._hash_key = self._take(16)
        data = b"".join((header, self._context, struct.pack(">Q", len(payload)), payload, extra))
        return _hash.poly_hash(self._hash_key, data)

    def _tag(self, header: bytes, payload: bytes) -> bytes:
        digest = self._digest(header, payload, b"".join(self._pending))
        self._pending.clear()
        pad = self._take(TAG_BYTES)
        return (int.from_bytes(digest, "big") ^ int.from_bytes(pad, "big")).to_bytes(TAG_BYTES, "big")

    def seal(self, payload: bytes, defer: bool = False) -> bytes:
        """Frame = header || payload || tag; deferred frames carry no tag (see the module doc)."""
        header = _HEADER.pack(self._me | (0 if defer else _TAGGED), self._counter)
        self._counter += 1
        if defer:
            self._pending.append(self._digest(header, payload))
            return header + payload
        return header + payload + self._tag(header, payload)

    def open(self, frame: bytes | bytearray) -> bytes:
        """The payload of a frame from the peer; AuthenticationError if it is not authentic.
        A deferred frame is only checked by the next tagged one (last_tagged is False).
        Key is drawn in frame order, so a frame lost in transit desynchronises the two ends:
        the session must then be abandoned and both ends restart from an agreed key position."""
        if not isinstance(frame, (bytes, bytearray)) or len(frame) < _HEADER.size:
            raise AuthenticationError("message too short to carry a header")
        flags, counter = _HEADER.unpack_from(frame)
        tagged = bool(flags & _TAGGED)
        counter_ok = flags & 1 == 1 - self._me and flags < 4 and counter == self._counter
        header = _HEADER.pack((1 - self._me) | (_TAGGED if tagged else 0), self._counter)
        self._counter += 1
        if not tagged:
            if not counter_ok:
                raise AuthenticationError(f"message {self._counter - 1} failed authentication")
            payload = _cut(frame, _HEADER.size, len(frame))
            self._pending.append(self._digest(header, payload))
            self.last_tagged = False
            return payload
        payload, tag = _cut(frame, _HEADER.size, len(frame) - TAG_BYTES), frame[-TAG_BYTES:]
        # the pad is consumed whatever the outcome, so both ends stay at the same key position
        ok_tag = (
            hmac.compare_digest(self._tag(header, payload), tag) and len(frame) >= _HEADER.size + TAG_BYTES
        )
        if not (counter_ok and ok_tag):
            raise AuthenticationError(f"message {self._counter - 1} failed authentication")
        self.last_tagged = True
        return payload


def _cut(frame: bytes | bytearray, start: int, stop: int) -> bytes:
    """frame[start:stop] as bytes, copied once (a big frame arrives as the bytearray it was read into)."""
    return frame[start:stop] if type(frame) is bytes else bytes(memoryview(frame)[start:stop])
