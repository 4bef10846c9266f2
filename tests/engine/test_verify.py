"""GF(2^128) polynomial hash (verification and authentication) against a Python model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdqkd.engine import _hash, verify

POLY = (1 << 128) | 0x87


def gmul(a: int, b: int) -> int:
    r = 0
    for i in range(128):
        if (b >> i) & 1:
            r ^= a << i
    for i in range(254, 127, -1):
        if (r >> i) & 1:
            r ^= POLY << (i - 128)
    return r


def model_hash(key: bytes, data: bytes, n_bits: int) -> bytes:
    k = int.from_bytes(key, "little")
    nbytes = (n_bits + 7) // 8
    buf = bytearray(data[:nbytes])
    if n_bits & 7:
        buf[-1] &= (0xFF00 >> (n_bits & 7)) & 0xFF
    y = 0
    for i in range(0, nbytes, 16):
        y = gmul(y ^ int.from_bytes(bytes(buf[i : i + 16]).ljust(16, b"\0"), "little"), k)
    return gmul(y ^ n_bits, k).to_bytes(16, "little")


@pytest.fixture(params=[False, True], ids=["pclmul", "portable"])
def kernel(request):
    _hash.kernel(request.param)
    yield
    _hash.kernel(False)


@pytest.mark.usefixtures("kernel")
def test_field_multiplication():
    rng = random.Random(1)
    for _ in range(100):
        a, b = rng.getrandbits(128), rng.getrandbits(128)
        got = _hash.gf_mul(a.to_bytes(16, "little"), b.to_bytes(16, "little"))
        assert int.from_bytes(got, "little") == gmul(a, b)


@pytest.mark.usefixtures("kernel")
@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(max_size=80), st.data())
def test_hash_matches_model(key, data, d):
    n = d.draw(st.integers(0, len(data) * 8))
    assert verify.tag(key, data, n) == model_hash(key, data, n)


def test_bits_beyond_n_are_ignored_and_length_matters():
    k = bytes(range(16))
    assert verify.tag(k, b"\x80", 1) == verify.tag(k, b"\xff", 1)
    assert verify.tag(k, b"\x80", 1) != verify.tag(k, b"\x80", 2)
    assert verify.tag(k, b"", 0) != verify.tag(k, b"\x00", 8)


def test_single_bit_flip_changes_tag():
    rng = random.Random(2)
    key, hk = rng.randbytes(5000), rng.randbytes(16)
    base = verify.tag(hk, key, 40000)
    for pos in (0, 7, 127, 128, 39999):
        flipped = bytearray(key)
        flipped[pos >> 3] ^= 0x80 >> (pos & 7)
        assert not verify.same(verify.tag(hk, bytes(flipped), 40000), base)


def test_eps_cor_feasibility():
    verify.check_eps_cor(1e-15, 10**8)
    assert verify.collision_bound(128) == 2 / 2.0**128
    with pytest.raises(ValueError, match="eps_cor"):
        verify.check_eps_cor(1e-40, 10**8)


@pytest.mark.parametrize("args,msg", [((b"short", b"x", 8), "16 bytes"), ((b"k" * 16, b"x", 9), "n_bits")])
def test_bad_input(args, msg):
    with pytest.raises(ValueError, match=msg):
        _hash.poly_hash(*args)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("n_bytes, n_bits", [(16, 121), (32, 255), (48, 377), (17, 129), (15, 113)])
def test_partial_last_byte_at_a_block_boundary_is_masked(n_bytes, n_bits):
    """Regression: a partial last byte that ends a 16-byte block was hashed unmasked."""
    rng = random.Random(n_bits)
    key, data = rng.randbytes(16), rng.randbytes(n_bytes)
    assert verify.tag(key, data, n_bits) == model_hash(key, data, n_bits)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("n_bytes", [127, 128, 129, 143, 144, 191, 192, 200, 257])
def test_messages_of_eight_blocks_and_more_match_the_model(n_bytes):
    """From 8 whole blocks on, the pclmul kernel takes four blocks per reduction (k^4..k): the
    same polynomial, whatever the remainder of blocks and bits."""
    rng = random.Random(n_bytes)
    key, data = rng.randbytes(16), rng.randbytes(n_bytes)
    for n_bits in (n_bytes * 8, n_bytes * 8 - 5, 8 * 16 * 8 - 1):
        if n_bits <= n_bytes * 8:
            assert verify.tag(key, data, n_bits) == model_hash(key, data, n_bits)


def test_kernels_agree_on_a_megabyte_message():
    """A frame-sized message (a DETECT is megabytes): the four-block loop runs ~65,000 times."""
    rng = random.Random(7)
    key, data = rng.randbytes(16), rng.randbytes((1 << 20) + 77)
    tags = []
    try:
        for portable in (True, False):
            _hash.kernel(portable)
            tags.append([_hash.poly_hash(key, data, n) for n in (len(data) * 8, len(data) * 8 - 3, 8 * 999_999)])
    finally:
        _hash.kernel(False)
    assert tags[0] == tags[1]
