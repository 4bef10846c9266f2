"""Toeplitz privacy amplification (C: _pa).

`toeplitz(key, n_bits, out_bits, seed)` is a contract: output bit i = XOR over j of
s[i - j + n_bits - 1] AND key[j], s the first n_bits + out_bits - 1 bits of the seed, bits packed
MSB-first.  It is the middle product of two GF(2) polynomials, computed with a transposed
Karatsuba middle product on PCLMULQDQ or VPCLMULQDQ (AVX2, AVX-512) kernels, or for large blocks
Schönhage's ternary FFT over GF(2)[x]/(x^2L + x^L + 1), whichever the cost model (tuned per
kernel) says is cheaper; O(n log n log log n) at the top end.  Toeplitz matrices with a uniform seed are a
2-universal family, as the leftover hash lemma needs (Krawczyk 1994; Tomamichel et al. 2011).
"""

from __future__ import annotations

from sdqkd.engine import _pa


def _check_bits(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    return v


def seed_bits(n_bits: int, out_bits: int) -> int:
    """Seed length the contract reads: n_bits + out_bits - 1."""
    return n_bits + out_bits - 1


def toeplitz(key: bytes, n_bits: int, out_bits: int, seed: bytes) -> bytes:
    """Compress the first n_bits of key to out_bits with the Toeplitz matrix given by seed."""
    n, m = _check_bits("n_bits", n_bits), _check_bits("out_bits", out_bits)
    if not isinstance(key, (bytes, bytearray, memoryview)) or not isinstance(
        seed, (bytes, bytearray, memoryview)
    ):
        raise ValueError("key and seed must be bytes-like")
    # range checks (n >= 1, 1 <= m <= n, buffer lengths) live in C with clear messages
    return _pa.toeplitz(key, n, m, seed)
