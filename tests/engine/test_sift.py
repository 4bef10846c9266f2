"""Sifting and sampling kernels against plain Python."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdqkd.engine import _sift, sift


def bits(buf: bytes, n: int) -> list[int]:
    return [(buf[i >> 3] >> (7 - (i & 7))) & 1 for i in range(n)]


def pack(values: list[int]) -> bytes:
    out = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 700), st.randoms(use_true_random=False), st.booleans())
def test_compact_matches_python(n, rnd, keep):
    buf, mask = rnd.randbytes((n + 7) // 8 + 1), rnd.randbytes((n + 7) // 8 + 1)
    got, count = _sift.compact(buf, mask, n, keep)
    want = [b for b, m in zip(bits(buf, n), bits(mask, n), strict=True) if m == keep]
    assert count == len(want) and got == pack(want)
    arr = rnd.randbytes(n)
    assert _sift.compact_bytes(arr, mask, n, keep) == bytes(
        a for a, m in zip(arr, bits(mask, n), strict=True) if m == keep
    )


def test_sift_split_and_tally():
    rng = random.Random(1)
    n = 5000
    a_bits, a_bases, b_bases = rng.randbytes(625), rng.randbytes(625), rng.randbytes(625)
    classes = bytes(rng.choice([0, 0, 0, 1, 2]) for _ in range(n))
    mask = sift.match_mask(a_bases, b_bases, n)
    assert bits(mask, n) == [int(x == y) for x, y in zip(bits(a_bases, n), bits(b_bases, n), strict=True)]
    s = sift.keep(a_bits, a_bases, classes, mask, n)
    assert s.n == sift.count(mask, n) == sum(bits(mask, n))
    key, test = sift.split(s, sift.sample_mask(b"\x01" * 16, s.n, 0.2))
    assert key.n + test.n == s.n and 0.15 < test.n / s.n < 0.25
    t = s.tally()
    kept = [(b, c) for b, c, m in zip(bits(a_bases, n), classes, bits(mask, n), strict=True) if m]
    assert t.counts == tuple(
        tuple(sum(1 for b, c in kept if (b, c) == (bb, cc)) for cc in range(3)) for bb in range(2)
    )
    assert key.tally().total + test.tally().total == t.total
    diff = sift.xor(s.bits, s.bits, s.n)
    assert s.tally(diff).total_errors == 0
    assert s.tally(b"\xff" * len(s.bits)).qber() == 1.0


def test_sample_mask_is_a_function_of_the_seed():
    a = sift.sample_mask(b"k" * 16, 100_000, 0.1)
    assert a == sift.sample_mask(b"k" * 16, 100_000, 0.1)
    assert a != sift.sample_mask(b"j" * 16, 100_000, 0.1)
    assert sum(bits(a, 100_000)) == pytest.approx(10_000, abs=400)
    assert sift.sample_mask(b"k" * 16, 9, 1.0) == b"\xff\x80"


def test_class_packing_round_trip():
    rng = random.Random(3)
    classes = bytes(rng.randrange(3) for _ in range(1001))
    assert sift.unpack_classes(sift.pack_classes(classes), 1001) == classes


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: _sift.compact(b"\0", b"\0", 9), "outside a buffer"),
        (lambda: _sift.compact_bytes(b"\0", b"\0", 2), "outside an array"),
        (lambda: _sift.bernoulli(b"short", 8, 0.1), "16 bytes"),
        (lambda: _sift.bernoulli(b"k" * 16, 8, 1.5), r"\[0, 1\]"),
        (lambda: _sift.tally(b"\0", bytes([3]), 1), "intensity class 3"),
        (lambda: _sift.tally(b"\0", b"", 1), "classes for"),
        (lambda: _sift.pack2(bytes([4])), "2 bits"),
        (lambda: _sift.unpack2(b"", 1), "need"),
        (lambda: sift.match_mask(b"\0", b"\0\0", 9), "shorter than"),
    ],
)
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
