"""Sifting and sample selection on packed bits (C: _sift).

Basis reconciliation: Bob announces his detection slots and bases, Alice answers with her
bases and the intensity classes of the events whose bases matched; both keep those events.
A random sample chosen from a public seed is then disclosed for QBER and phase-error
estimation and removed from the key.  The messages themselves are framed in pipeline.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdqkd.engine import _sift
from sdqkd.engine.estimate import Tally


@dataclass(frozen=True)
class Sifted:
    """n events: bits and bases packed MSB-first, intensity class one byte each."""

    n: int
    bits: bytes = field(repr=False)  # raw key material: kept out of reprs and logs
    bases: bytes = field(repr=False)
    classes: bytes = field(repr=False)

    def tally(self, diff: bytes | None = None) -> Tally:
        """Counts per basis and class; with diff (packed), errors where diff has a 1."""
        counts, errors = _sift.tally(self.bases, self.classes, self.n, diff)
        return Tally.from_flat(counts, errors if diff is not None else None)


def _as_int(buf: bytes, n: int) -> int:
    """The first n bits of buf as an integer (bit 0 most significant)."""
    if n == 0:
        return 0
    if len(buf) < (n + 7) // 8:
        raise ValueError(f"buffer of {len(buf)} bytes is shorter than {n} bits")
    return int.from_bytes(buf[: (n + 7) // 8], "big") >> ((-n) % 8)


def _to_bytes(v: int, n: int) -> bytes:
    return (v << ((-n) % 8)).to_bytes((n + 7) // 8, "big")


def match_mask(bases_a: bytes, bases_b: bytes, n_det: int) -> bytes:
    """Packed mask of the events where the two bases agree."""
    full = (1 << n_det) - 1
    return _to_bytes(~(_as_int(bases_a, n_det) ^ _as_int(bases_b, n_det)) & full, n_det)


def count(mask: bytes, n: int) -> int:
    return _as_int(mask, n).bit_count()


def keep(bits: bytes, bases: bytes, classes: bytes, mask: bytes, n: int) -> Sifted:
    """The events of (bits, bases, classes) selected by mask."""
    kb, m = _sift.compact(bits, mask, n)
    kbase, _ = _sift.compact(bases, mask, n)
    return Sifted(m, kb, kbase, _sift.compact_bytes(classes, mask, n))


def select(bits: bytes, bases: bytes, mask: bytes, n: int) -> tuple[bytes, bytes, int]:
    """Bits and bases selected by mask, when the classes arrive separately (Bob)."""
    kb, m = _sift.compact(bits, mask, n)
    kbase, _ = _sift.compact(bases, mask, n)
    return kb, kbase, m


def sample_mask(seed: bytes, n: int, fraction: float) -> bytes:
    """Public random sample: each event disclosed independently with probability fraction."""
    return _sift.bernoulli(seed, n, fraction)


def split(s: Sifted, mask: bytes) -> tuple[Sifted, Sifted]:
    """(key set, disclosed test set) of a sifted block."""
    parts = []
    for want in (False, True):
        b, m = _sift.compact(s.bits, mask, s.n, want)
        base, _ = _sift.compact(s.bases, mask, s.n, want)
        parts.append(Sifted(m, b, base, _sift.compact_bytes(s.classes, mask, s.n, want)))
    return parts[0], parts[1]


def xor(a: bytes, b: bytes, n: int) -> bytes:
    """Bitwise difference of two n-bit buffers."""
    return _to_bytes(_as_int(a, n) ^ _as_int(b, n), n)


pack_classes = _sift.pack2
unpack_classes = _sift.unpack2
