"""Key verification after error correction: both ends hash their key with a fresh random
GF(2^128) polynomial-hash key (C: _hash) and compare the 128-bit tags in constant time.
Two different keys of L 128-bit blocks collide with probability <= (L + 1) / 2^128, which must
not exceed eps_cor; the tag is public, so its 128 bits count as leaked (estimate.py)."""

from __future__ import annotations

import hmac
import math

from sdqkd.engine import _hash

TAG_BITS = 128
HASH_KEY_BYTES = 16


def collision_bound(n_bits: int) -> float:
    """Probability that two different n_bits-bit keys get the same tag."""
    return (math.ceil(n_bits / 128) + 1) / 2.0**TAG_BITS


def check_eps_cor(eps_cor: float, n_bits: int) -> None:
    if collision_bound(n_bits) > eps_cor:
        raise ValueError(
            f"eps_cor={eps_cor:g} is below what a {TAG_BITS}-bit tag on {n_bits} bits can give "
            f"({collision_bound(n_bits):.2g})"
        )


def tag(hash_key: bytes, key: bytes, n_bits: int) -> bytes:
    """Tag of the first n_bits bits of key."""
    if len(hash_key) != HASH_KEY_BYTES:
        raise ValueError(f"verification hash key must be {HASH_KEY_BYTES} bytes")
    return _hash.poly_hash(hash_key, key, n_bits)


def same(tag_a: bytes, tag_b: bytes) -> bool:
    """Constant-time tag comparison."""
    return hmac.compare_digest(tag_a, tag_b)
