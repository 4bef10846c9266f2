"""Wegman-Carter authentication of classical messages."""

from __future__ import annotations

import pytest

from sdqkd.engine.auth import (
    AuthenticationError,
    Authenticator,
    BufferKeySource,
    CallableKeySource,
    KeyExhausted,
)

SECRET = bytes(range(256)) * 4


def pair(secret: bytes = SECRET, context: bytes = b"link-1/block-0"):
    return (
        Authenticator(BufferKeySource(secret), "alice", context),
        Authenticator(BufferKeySource(secret), "bob", context),
    )


def test_round_trip_both_directions_and_key_use():
    a, b = pair()
    for i in range(5):
        assert b.open(a.seal(f"ping {i}".encode())) == f"ping {i}".encode()
        assert a.open(b.seal(b"pong" * i)) == b"pong" * i
    # one 128-bit hash key per session plus a 128-bit pad per message, at each end
    assert a.consumed_bits == b.consumed_bits == 128 + 10 * 128


@pytest.mark.parametrize("as_type", [bytes, bytearray])
@pytest.mark.parametrize("where", ["header", "payload", "tag", "truncate", "extend"])
def test_tampering_detected(where, as_type):
    a, b = pair()
    frame = bytearray(a.seal(b"sift: 0101"))
    if where == "header":
        frame[0] ^= 1
    elif where == "payload":
        frame[12] ^= 0x40
    elif where == "tag":
        frame[-1] ^= 1
    elif where == "truncate":
        frame = frame[:-1]
    else:
        frame += b"\0"
    with pytest.raises(AuthenticationError):
        b.open(as_type(frame))


@pytest.mark.parametrize("defer", [False, True])
def test_a_bytearray_frame_opens_to_bytes_without_keeping_the_buffer(defer):
    """The channel hands big frames over as the bytearray they were read into."""
    a, b = pair()
    frame = bytearray(a.seal(b"detect" * 1000, defer=defer))
    payload = b.open(frame)
    frame[10:16] = b"XXXXXX"  # the buffer reused afterwards: the payload is a copy
    assert type(payload) is bytes and payload == b"detect" * 1000
    assert b.open(a.seal(b"next")) == b"next"  # the digest covered the original bytes


def test_replay_reorder_and_reflection_rejected():
    a, b = pair()
    _first, second = a.seal(b"one"), a.seal(b"two")
    with pytest.raises(AuthenticationError):
        b.open(second)  # out of order
    a2, b2 = pair()
    f = a2.seal(b"one")
    b2.open(f)
    with pytest.raises(AuthenticationError):
        b2.open(f)  # replay
    a3, _ = pair()
    with pytest.raises(AuthenticationError):
        a3.open(a3.seal(b"mirror"))  # reflected back to its sender


def test_other_context_or_key_rejected():
    a, _ = pair(context=b"block-1")
    _, b = pair(context=b"block-2")
    with pytest.raises(AuthenticationError):
        b.open(a.seal(b"x"))
    a, _ = pair(SECRET)
    _, b = pair(bytes(reversed(SECRET)))
    with pytest.raises(AuthenticationError):
        b.open(a.seal(b"x"))


def test_key_exhaustion_is_a_clear_error():
    a = Authenticator(BufferKeySource(bytes(40)), "alice")
    a.seal(b"first")  # 16 hash key + 16 pad
    with pytest.raises(KeyExhausted, match="need 16 bytes, 8 left"):
        a.seal(b"second")
    bad = Authenticator(CallableKeySource(lambda n: b"\0" * (n - 1)), "bob")
    with pytest.raises(KeyExhausted, match="instead of 16 bytes"):
        bad.seal(b"x")


def test_refill_and_bad_role():
    src = BufferKeySource(bytes(32))
    a = Authenticator(src, "alice")
    a.seal(b"x")
    src.extend(bytes(16))
    a.seal(b"y")
    assert src.remaining == 0 and src.consumed == 48
    with pytest.raises(ValueError, match="role"):
        Authenticator(src, "eve")


def test_deferred_frames_are_covered_by_the_next_tag():
    a, b = pair()
    for i in range(50):  # a Cascade-like exchange: no pads spent
        assert b.open(a.seal(b"req %d" % i, defer=True)) == b"req %d" % i and not b.last_tagged
        assert a.open(b.seal(b"rep %d" % i, defer=True)) == b"rep %d" % i
    assert b.open(a.seal(b"verify")) == b"verify" and b.last_tagged
    assert a.consumed_bits == b.consumed_bits == 128 + 128


@pytest.mark.parametrize("target", ["request", "reply"])
def test_tampered_deferred_frame_fails_the_next_tag(target):
    a, b = pair()
    for i in range(5):
        req = bytearray(a.seal(b"parities %d" % i, defer=True))
        if target == "request" and i == 3:
            req[-1] ^= 1
        b.open(bytes(req))
        rep = bytearray(b.seal(b"answers %d" % i, defer=True))
        if target == "reply" and i == 2:
            rep[-1] ^= 1
        a.open(bytes(rep))
    with pytest.raises(AuthenticationError):
        b.open(a.seal(b"verify"))


def test_stripping_a_tag_is_caught():
    a, b = pair()
    frame = bytearray(a.seal(b"confirm"))
    frame[0] &= ~2  # claim "deferred": the old tag becomes payload, and the next tag fails
    b.open(bytes(frame[:-16]))
    with pytest.raises(AuthenticationError):
        a.open(b.seal(b"next"))


def test_ends_stay_in_step_after_a_rejected_frame():
    """A rejected frame still uses its pad at both ends, so the failing end can send an
    authenticated abort that the peer accepts."""
    a, b = pair()
    frame = a.seal(b"sample bits")
    with pytest.raises(AuthenticationError):
        b.open(frame[:12])
    assert a.open(b.seal(b"abort: authentication failure")) == b"abort: authentication failure"
    assert a.consumed_bits == b.consumed_bits
