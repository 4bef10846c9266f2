"""Toeplitz privacy amplification against the plain O(n*m) definition."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdqkd.engine import _pa, pa


def naive(key: bytes, n: int, m: int, seed: bytes) -> bytes:
    """Output bit i = XOR_j s[i - j + n - 1] & key[j], straight from the contract."""
    kb = [(key[j >> 3] >> (7 - (j & 7))) & 1 for j in range(n)]
    sb = [(seed[t >> 3] >> (7 - (t & 7))) & 1 for t in range(n + m - 1)]
    out = bytearray((m + 7) // 8)
    for i in range(m):
        v = 0
        for j in range(n):
            v ^= sb[i - j + n - 1] & kb[j]
        if v:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def fast_ref(key: bytes, n: int, m: int, seed: bytes) -> bytes:
    """Same definition with Python integers (row i = window of s dotted with the reversed key)."""
    s = int.from_bytes(seed, "big") >> (len(seed) * 8 - (n + m - 1))  # bit t of s at position n+m-2-t
    krev = int("".join(str((key[j >> 3] >> (7 - (j & 7))) & 1) for j in range(n))[::-1], 2)
    out = 0
    for i in range(m):
        window = (s >> (m - 1 - i)) & ((1 << n) - 1)  # s[i..i+n-1], s[i+n-1] least significant
        out = (out << 1) | ((window & krev).bit_count() & 1)
    out <<= (-m) % 8
    return out.to_bytes((m + 7) // 8, "big")


SIZES = [
    (1, 1),
    (2, 1),
    (63, 1),
    (63, 63),
    (64, 64),
    (65, 65),
    (65, 1),
    (64, 63),
    (127, 65),
    (129, 128),
    (200, 190),
    (300, 17),
    (700, 700),
]


@pytest.fixture(
    params=[(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (3, 3)],
    ids=["portable", "pclmul", "vpclmul-avx2", "vpclmul-avx512", "fft1", "fft3"],
)
def engine(request):
    """Every multiplication kernel (falls back where the CPU lacks it) and the FFT path."""
    kernel, fft_k = request.param
    before = _pa.configure()
    _pa.configure(kernel=kernel, fft_k=fft_k)
    yield
    _pa.configure(kernel=3, fft_k=before["fft_k"])


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("n,m", SIZES)
def test_matches_definition(n, m):
    rng = random.Random(n * 1000 + m)
    for _ in range(3):
        key = rng.randbytes((n + 7) // 8 + rng.randint(0, 2))  # slack bytes must be ignored
        seed = rng.randbytes((n + m - 1 + 7) // 8 + rng.randint(0, 2))
        assert pa.toeplitz(key, n, m, seed) == naive(key, n, m, seed)


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("n,m", [(1000, 129), (1500, 1500), (3000, 1000), (4097, 2049), (6000, 300)])
def test_matches_definition_larger(n, m):
    rng = random.Random(n + m)
    key, seed = rng.randbytes((n + 7) // 8), rng.randbytes((n + m + 6) // 8)
    assert pa.toeplitz(key, n, m, seed) == fast_ref(key, n, m, seed)


@pytest.mark.parametrize("kernel", [0, 1, 2, 3], ids=["portable", "pclmul", "vpclmul-avx2", "best"])
def test_auto_path_large_block_consistent(kernel):
    """The cost model picks the FFT for big blocks (by each kernel's tuning); it must agree with
    Karatsuba."""
    rng = random.Random(7)
    n, m = 300_000, 120_000
    key, seed = rng.randbytes(n // 8), rng.randbytes((n + m) // 8)
    _pa.configure(kernel=kernel)
    try:
        auto = pa.toeplitz(key, n, m, seed)
        _pa.configure(fft_k=0)
        kara = pa.toeplitz(key, n, m, seed)
    finally:
        _pa.configure(kernel=3, fft_k=-1)
    assert auto == kara
    # spot-check a few output bits against the definition
    kb = [(key[j >> 3] >> (7 - (j & 7))) & 1 for j in range(n)]
    for i in (0, 1, 63, 64, m // 2, m - 1):
        v = 0
        for j in range(n):
            t = i - j + n - 1
            v ^= ((seed[t >> 3] >> (7 - (t & 7))) & 1) & kb[j]
        assert (auto[i >> 3] >> (7 - (i & 7))) & 1 == v


def test_linear_in_key():
    rng = random.Random(3)
    n, m = 777, 300
    a, b, seed = rng.randbytes(98), rng.randbytes(98), rng.randbytes(135)
    x = bytes(p ^ q for p, q in zip(a, b, strict=True))
    ta, tb, tx = (pa.toeplitz(k, n, m, seed) for k in (a, b, x))
    assert tx == bytes(p ^ q for p, q in zip(ta, tb, strict=True))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_hypothesis_random_inputs(n, data):
    m = data.draw(st.integers(1, n))
    key = data.draw(st.binary(min_size=(n + 7) // 8, max_size=(n + 7) // 8 + 3))
    seed = data.draw(st.binary(min_size=(n + m + 6) // 8, max_size=(n + m + 6) // 8 + 3))
    assert pa.toeplitz(key, n, m, seed) == naive(key, n, m, seed)


@pytest.mark.parametrize(
    "key,n,m,seed,msg",
    [
        (b"\x00" * 8, 64, 65, b"\x00" * 16, "out_bits"),
        (b"\x00" * 8, 65, 10, b"\x00" * 16, "exceeds the key buffer"),
        (b"\x00" * 8, 64, 64, b"\x00" * 15, "seed has"),
        (b"\x00" * 8, 0, 0, b"", "n_bits must be >= 1"),
        (b"\x00" * 8, 64, 0, b"\x00" * 16, "out_bits"),
        (b"\x00" * 8, -1, 1, b"\x00" * 16, "n_bits"),
        (b"\x00" * 8, 64.0, 1, b"\x00" * 16, "integer"),
        ("text", 8, 1, b"\x00", "bytes-like"),
    ],
)
def test_bad_input(key, n, m, seed, msg):
    with pytest.raises(ValueError, match=msg):
        pa.toeplitz(key, n, m, seed)


def test_each_kernel_brings_its_tuning_and_what_is_asked_overrides_it():
    before = _pa.configure()
    try:
        port = _pa.configure(kernel=0)
        assert (port["kernel"], port["base_threshold"], port["fft_unit"]) == ("portable", 64, 0.1)
        asked = _pa.configure(kernel=0, base_threshold=8, fft_unit=2.0)
        assert (asked["base_threshold"], asked["fft_unit"]) == (8, 2.0)
        assert _pa.configure(kernel=0)["base_threshold"] == 64  # chosen again: its own tuning
        with pytest.raises(ValueError, match="fft_k"):
            _pa.configure(kernel=0, base_threshold=16, fft_k=99)
        assert _pa.configure()["base_threshold"] == 64  # a refused call changed nothing
    finally:
        _pa.configure(kernel=3, fft_k=before["fft_k"])
