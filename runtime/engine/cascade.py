"""Cascade information reconciliation (Brassard-Salvail 1993; Martinez-Mateo et al., QIC 2015).

Two message-driven state machines do the work: :class:`CascadeBob` holds the noisy key and drives the
protocol, :class:`CascadeAlice` holds the reference key and answers parity requests. They exchange
opaque ``bytes`` messages, so the network can run them in different processes; :func:`reconcile`
runs both ends in one process through the very same machines and messages. The heavy lifting
(permutations, parities, bisection bookkeeping, wire format) lives in the C extension
``sdqkd.engine._cascade``; this module validates input and wraps it.

Bit convention: bit i of a packed key is ``(buf[i >> 3] >> (7 - (i & 7))) & 1``.

Variants:

* ``"original"``  -- Brassard-Salvail: 4 passes, k1 = ceil(0.73/Q), k_i = 2 k_{i-1}.
* ``"optimized"`` -- Martinez-Mateo et al. "Cascade opt. (8)": 14 passes, k1 = 2^ceil(a),
  k2 = 2^ceil((a+12)/2) with a = log2(1/Q) - 1/2, k3 = 4096, then n/2; known parities are never asked
  again (bisection trees are reused) and the last block parity of every later pass is inferred from
  the total parity; large-block bisections wait for cheaper small-block ones (serial Cascade order).

Yan et al.'s variant (10 passes, k1 = 0.8/Q, k2 = 5 k1, then n/2) was removed: in this engine it
left 0.2-0.4 % of 1e4-bit frames uncorrected at Q = 1-5 % even with every odd block bisected at
once (and up to 19 of 32 1e6-bit frames at Q = 5 % with the serial order), short of the 99.9 % the
other two reach; reinstating it needs that fixed first (tests/engine/test_cascade.py counts).

Schedule of the optimized variant (Bob's alone: Alice answers whatever is asked, and the parameter
digest is the same; "original" always bisects every odd block at once):

* ``"serial"`` (the class default): as above, a pass after the first bisecting at most a tenth of its
  blocks at a time; the order the published efficiency assumes.
* ``"balanced"`` (the network default): a quarter at a time, and Bob halves pass 2's blocks: round 0
  asks Alice, beside her block parities, the parity of each block's left half. Pass 2's blocks
  hold several errors that pass 1 left (about 5 in 1,024 bits at 1 %) and start long chains of
  cascading corrections, one bisection after another; half the size cuts them short.
* ``"parallel"``: every odd block at once.

Round trips and efficiency at n = 3.6e6 (6 frames each, every frame corrected):

=========  ======================  ======================  ======================
QBER       serial                  balanced                parallel
=========  ======================  ======================  ======================
1 %        2,188 trips, 1.0294     628 trips, 1.0383       1,438 trips, 1.0325
2 %        1,895 trips, 1.0367     584 trips, 1.0477       1,009 trips, 1.0508
3 %        2,682 trips, 1.0377     773 trips, 1.0452       1,320 trips, 1.0511
5 %        2,024 trips, 1.0469     524 trips, 1.0561         798 trips, 1.0598
=========  ======================  ======================  ======================

Balanced discloses 0.7-1.1 % more parities than serial (at 1 %, where n h(Q) = 0.08 n, that is about
0.2 % less final key) for 0.26-0.31x its round trips; a quarter at a time without the halving
took 1,180-1,546 trips (0.6x serial's) for 1.0315-1.0503.

Round trips: every parity question of a round travels in one message, but Cascade's error chains are
sequential, so "original" needs ~40 (n = 1e4) to ~100 (n = 1e6) round trips while "optimized", whose
large second-pass blocks create long chains, needs ~500-900 (n = 1e4) and ~1500 (n = 1e6).

Passes after the first use a fast structured interleaver (row shuffle + row rotation + 64x64 bit
transpose + column shuffle, all seeded); a test checks it matches uniformly random permutations.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from dataclasses import dataclass

from sdqkd.engine import _cascade

__all__ = [
    "SCHEDULES",
    "VARIANTS",
    "CascadeAlice",
    "CascadeBob",
    "CascadeResult",
    "bench",
    "binary_entropy",
    "params",
    "reconcile",
]

VARIANTS: tuple[str, ...] = ("original", "optimized")
# Bob's order of bisections (module docstring): the C core's flags
SCHEDULES = {"serial": 0, "balanced": _cascade.FLAG_BALANCED, "parallel": _cascade.FLAG_PARALLEL}

_VARIANT_IDS = {
    "original": _cascade.ORIGINAL,
    "optimized": _cascade.OPTIMIZED,
}
_MAX_BITS = (1 << 31) - 64  # the C core indexes permuted positions with uint32


def binary_entropy(q: float) -> float:
    """h(q) = -q log2 q - (1-q) log2(1-q); h(0) = h(1) = 0."""
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"binary_entropy needs 0 <= q <= 1, got {q!r}")
    if q in (0.0, 1.0):
        return 0.0
    return -q * math.log2(q) - (1.0 - q) * math.log2(1.0 - q)


def _check_key(name: str, key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"{name} must be bytes, not {type(key).__name__}")
    return bytes(key)


def _check_params(n_bits: object, qber: object, variant: object, seed: object, nbytes: int) -> int:
    """Validates the shared parameters; returns the C variant id."""
    if isinstance(n_bits, bool) or not isinstance(n_bits, int):
        raise TypeError(f"n_bits must be an int, not {type(n_bits).__name__}")
    if n_bits < 1:
        raise ValueError(f"n_bits must be >= 1, got {n_bits}")
    if n_bits > nbytes * 8:
        raise ValueError(f"n_bits={n_bits} is beyond the key buffer ({nbytes} bytes = {nbytes * 8} bits)")
    if n_bits > _MAX_BITS:
        raise ValueError(f"n_bits={n_bits} exceeds the supported maximum of {_MAX_BITS}")
    if isinstance(qber, bool) or not isinstance(qber, (int, float)):
        raise TypeError(f"qber must be a float, not {type(qber).__name__}")
    if not math.isfinite(qber):
        raise ValueError(f"qber must be finite, got {qber!r}")
    if not 0.0 < qber < 0.5:
        raise ValueError(f"qber must lie in the open interval (0, 0.5), got {qber!r}")
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str, not {type(variant).__name__}")
    if variant not in _VARIANT_IDS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return _VARIANT_IDS[variant]


class CascadeBob:
    """Bob's end: holds the noisy key and drives the protocol.

    ``start()`` gives the first request; feed every reply of Alice to ``handle()``, which returns the next
    request or ``None`` once ``corrected`` is final.
    """

    def __init__(
        self, key: bytes, n_bits: int, qber: float, variant: str = "optimized", seed: int = 0,
        schedule: str = "serial",
    ) -> None:
        key = _check_key("key", key)
        vid = _check_params(n_bits, qber, variant, seed, len(key))
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown Cascade schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        self._len = len(key)
        self.n_bits = n_bits
        self.qber = float(qber)
        self.variant = variant
        self._c = _cascade.Bob(key, n_bits, float(qber), vid, seed, SCHEDULES[schedule])

    def start(self) -> bytes:
        """First request (all top-level block parities of every pass)."""
        return self._c.start()

    def handle(self, reply: bytes) -> bytes | None:
        """Consumes Alice's reply; returns the next request, or None when finished."""
        if not isinstance(reply, (bytes, bytearray)):
            raise TypeError(f"reply must be bytes, not {type(reply).__name__}")
        return self._c.handle(reply)

    @property
    def corrected(self) -> bytes:
        """Bob's key with every correction so far (same length as the input, bits past n_bits zero)."""
        return self._c.corrected(self._len)

    @property
    def leaked_bits(self) -> int:
        """Parity bits Alice disclosed so far."""
        return self._c.leaked_bits

    @property
    def channel_uses(self) -> int:
        """Request/reply round trips so far."""
        return self._c.channel_uses

    @property
    def errors_corrected(self) -> int:
        """Bits Bob flipped."""
        return self._c.corrections

    @property
    def done(self) -> bool:
        return self._c.done


class CascadeAlice:
    """Alice's end: holds the reference key and answers parity requests (one reply per request)."""

    def __init__(
        self, key: bytes, n_bits: int, qber: float, variant: str = "optimized", seed: int = 0
    ) -> None:
        key = _check_key("key", key)
        vid = _check_params(n_bits, qber, variant, seed, len(key))
        self.n_bits = n_bits
        self._c = _cascade.Alice(key, n_bits, float(qber), vid, seed)

    def handle(self, request: bytes) -> bytes:
        """Answers one request of Bob; raises ValueError on a malformed or out-of-order request."""
        if not isinstance(request, (bytes, bytearray)):
            raise TypeError(f"request must be bytes, not {type(request).__name__}")
        return self._c.handle(request)

    @property
    def leaked_bits(self) -> int:
        """Parity bits disclosed so far."""
        return self._c.leaked_bits


@dataclass(frozen=True)
class CascadeResult:
    corrected: bytes  # Bob's corrected key, same length as the input, bits past n_bits zero
    leaked_bits: int  # every parity bit Alice disclosed
    channel_uses: int  # request/reply round trips
    efficiency: float  # leaked_bits / (n_bits * h(qber))
    errors_corrected: int  # bits Bob flipped


def reconcile(
    alice: bytes, bob: bytes, n_bits: int, qber: float, variant: str = "optimized", seed: int = 0
) -> CascadeResult:
    """Reconciles Bob's key with Alice's by running both Cascade state machines in this process."""
    alice = _check_key("alice", alice)
    bob = _check_key("bob", bob)
    if len(alice) != len(bob):
        raise ValueError(f"key buffers differ in length: alice {len(alice)} bytes, bob {len(bob)} bytes")
    b = CascadeBob(bob, n_bits, qber, variant, seed)
    a = CascadeAlice(alice, n_bits, qber, variant, seed)
    # The pump relays the same opaque messages between the same two machines, without a Python hop per round.
    _cascade.pump(b._c, a._c, b.start())
    leaked = b.leaked_bits
    return CascadeResult(
        corrected=b.corrected,
        leaked_bits=leaked,
        channel_uses=b.channel_uses,
        efficiency=leaked / (n_bits * binary_entropy(qber)),
        errors_corrected=b.errors_corrected,
    )


def params(n_bits: int, qber: float, variant: str = "optimized") -> dict:
    """Pass count, block sizes and switches a variant uses for this key length and QBER."""
    vid = _check_params(n_bits, qber, variant, 0, (n_bits + 7) // 8)
    return _cascade.params(n_bits, float(qber), vid)


def _noisy_pair(rng: random.Random, n_bits: int, qber: float) -> tuple[bytes, bytes]:
    """Random Alice key and Bob's copy with exactly round(n_bits * qber) flipped bits."""
    nbytes = (n_bits + 7) // 8
    alice = bytearray(rng.randbytes(nbytes))
    if n_bits % 8:
        alice[-1] &= (0xFF00 >> (n_bits % 8)) & 0xFF
    bob = bytearray(alice)
    for i in rng.sample(range(n_bits), round(n_bits * qber)):
        bob[i >> 3] ^= 0x80 >> (i & 7)
    return bytes(alice), bytes(bob)


def bench(n_bits: int = 1_000_000, qber: float = 0.02, variant: str = "optimized", runs: int = 5) -> dict:
    """Times `reconcile` (both ends in this process); returns median throughput in Mbit/s of sifted key."""
    _check_params(n_bits, qber, variant, 0, (n_bits + 7) // 8)
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    times, effs, uses, fails = [], [], [], 0
    for r in range(runs):
        alice, bob = _noisy_pair(rng, n_bits, qber)
        t0 = time.perf_counter()
        res = reconcile(alice, bob, n_bits, qber, variant, seed=r)
        times.append(time.perf_counter() - t0)
        effs.append(res.efficiency)
        uses.append(res.channel_uses)
        fails += res.corrected != alice
    med = statistics.median(times)
    return {
        "n_bits": n_bits,
        "qber": qber,
        "variant": variant,
        "runs": runs,
        "median_s": med,
        "mbit_s": n_bits / med / 1e6,
        "efficiency": statistics.fmean(effs),
        "channel_uses": statistics.fmean(uses),
        "frame_errors": fails,
    }
