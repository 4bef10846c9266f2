"""QBER and decoy-state parameter estimation with finite-key corrections.

Secret length after Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014):
    l = s_0 + s_1 (1 - h(phi_1)) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor)
with their vacuum (Eq. 2), single-photon (Eq. 3) and single-photon error (Eq. 4) bounds and
the random-sampling correction gamma for the phase error.  Our adaptations, all conservative
or standard:
- Both bases make key (symmetric BB84, q = 1/2).  The key bits of basis b are analysed as
  Lim's "X" with the disclosed sample of the other basis as their "Z" test set, so s_0, s_1,
  phi are per basis and l sums the two; each basis gets eps_sec/2 of the budget.
- Counts per intensity are bounded with the multiplicative Chernoff bound per count, which is
  tighter than Lim's Hoeffding term sqrt(n/2 ln(1/eps)) on the total for rare classes:
  given the photon-number split, n_k is a sum of independent Bernoulli variables, and
  E[n_k] lies in [x + b/2 - sqrt(2bx + b^2/4), x + b + sqrt(2bx + b^2)], b = ln(1/eps).
- The verification term is the full 128-bit tag actually disclosed (>= log2(2/eps_cor)).
Intensity classes: 0 signal mu, 1 weak decoy nu, 2 vacuum/weakest omega (Lim's mu1 > mu2 > mu3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdqkd.engine import profiles
from sdqkd.engine.keyrate import h2
from sdqkd.engine.profiles import Profile

VERIFY_TAG_BITS = 128  # see verify.py


@dataclass(frozen=True)
class Tally:
    """Event counts (and errors, for a disclosed sample) indexed [basis][class]."""

    counts: tuple[tuple[int, int, int], tuple[int, int, int]]
    errors: tuple[tuple[int, int, int], tuple[int, int, int]] = ((0, 0, 0), (0, 0, 0))

    @classmethod
    def from_flat(cls, counts: tuple[int, ...], errors: tuple[int, ...] | None = None) -> Tally:
        """From the 6-tuples of _sift.tally (index basis * 3 + class)."""
        e = errors if errors is not None else (0,) * 6
        if len(counts) != 6 or len(e) != 6:
            raise ValueError("a tally has 6 counts (2 bases x 3 intensity classes)")
        for v, ev in zip(counts, e, strict=True):
            if not isinstance(v, int) or not isinstance(ev, int) or v < 0 or not 0 <= ev <= v:
                raise ValueError(
                    f"tally entries must be integers with 0 <= errors <= counts, got {v!r}/{ev!r}"
                )
        return cls((tuple(counts[:3]), tuple(counts[3:])), (tuple(e[:3]), tuple(e[3:])))  # type: ignore[arg-type]

    def flat(self) -> tuple[int, ...]:
        return self.counts[0] + self.counts[1] + self.errors[0] + self.errors[1]

    @property
    def total(self) -> int:
        return sum(self.counts[0]) + sum(self.counts[1])

    @property
    def total_errors(self) -> int:
        return sum(self.errors[0]) + sum(self.errors[1])

    def qber(self) -> float:
        """Error rate of the disclosed sample (all bases and intensities)."""
        return self.total_errors / self.total if self.total else 0.0


def chernoff(x: float, eps: float) -> tuple[float, float]:
    """Bounds on the mean of a sum of independent Bernoulli variables observed at x,
    each failing with probability eps (multiplicative Chernoff)."""
    b = math.log(1 / eps)
    return max(x + b / 2 - math.sqrt(2 * b * x + b * b / 4), 0.0), x + b + math.sqrt(2 * b * x + b * b)


def gamma(a: float, b: float, c: float, d: float) -> float:
    """Lim et al.'s random-sampling deviation of the phase error (a = eps, b = error rate,
    c = test-set and d = key-set single-photon counts)."""
    if b <= 0 or b >= 1 or c <= 0 or d <= 0:
        return 0.5
    arg = (c + d) / (c * d * (1 - b) * b) * 21**2 / a**2
    return math.sqrt((c + d) * (1 - b) * b / (c * d * math.log(2)) * max(math.log2(arg), 0.0))


@dataclass(frozen=True)
class BasisBound:
    s0: float  # vacuum events in the key set (lower bound)
    s1: float  # single-photon events in the key set (lower bound)
    phi: float  # phase error rate of those single photons (upper bound)

    @property
    def entropy(self) -> float:
        return self.s0 + self.s1 * (1 - h2(self.phi))


@dataclass(frozen=True)
class Estimate:
    """Finite-key bounds for one block, per key basis."""

    bases: tuple[BasisBound, BasisBound]
    eps_sec: float
    eps_cor: float

    @property
    def entropy(self) -> float:
        """s_0 + s_1 (1 - h(phi)) summed over the two key bases."""
        return sum(b.entropy for b in self.bases)

    @property
    def penalty(self) -> float:
        """Privacy-amplification and verification terms of the secret length."""
        return 6 * math.log2(21 / self.eps_sec) + max(math.log2(2 / self.eps_cor), VERIFY_TAG_BITS)

    def secret_length(self, leak_ec_bits: int) -> int:
        """Final key bits after error correction leaked `leak_ec_bits` parity bits (0 if none)."""
        if isinstance(leak_ec_bits, bool) or not isinstance(leak_ec_bits, int) or leak_ec_bits < 0:
            raise ValueError(f"leak_ec_bits must be a non-negative integer, got {leak_ec_bits!r}")
        return max(int(math.floor(self.entropy - leak_ec_bits - self.penalty)), 0)


def _check_eps(name: str, eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {eps!r}")
    return float(eps)


def _tau(ks: tuple[float, float, float], ps: tuple[float, float, float], n: int) -> float:
    """Probability that a pulse carries n photons, over the intensity mix."""
    return sum(math.exp(-k) * k**n * p / math.factorial(n) for k, p in zip(ks, ps, strict=True))


def _vac_single(ks: tuple[float, float, float], ps: tuple[float, float, float], n: tuple[int, int, int],
                eps: float) -> tuple[float, float]:
    """Lim Eqs. 2-3: lower bounds on vacuum and single-photon events among counts n."""
    mu1, mu2, mu3 = ks
    bnd = [chernoff(x, eps) for x in n]
    lo = [math.exp(k) / p * b[0] for k, p, b in zip(ks, ps, bnd, strict=True)]
    hi = [math.exp(k) / p * b[1] for k, p, b in zip(ks, ps, bnd, strict=True)]
    t0, t1 = _tau(ks, ps, 0), _tau(ks, ps, 1)
    s0 = max(t0 * (mu2 * lo[2] - mu3 * hi[1]) / (mu2 - mu3), 0.0)
    s1 = (
        t1
        * mu1
        * (lo[1] - hi[2] - (mu2**2 - mu3**2) / mu1**2 * (hi[0] - s0 / t0))
        / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)
    )
    return s0, max(s1, 0.0)


def finite_key(
    profile: str | Profile, key: Tally, test: Tally, eps_sec: float = 1e-10, eps_cor: float = 1e-15
) -> Estimate:
    """Bounds for a block whose key set has counts `key` and whose disclosed sample has
    counts and errors `test` (both per basis and intensity class)."""
    p = profiles.get(profile)
    eps_sec, eps_cor = _check_eps("eps_sec", eps_sec), _check_eps("eps_cor", eps_cor)
    ks, ps = p.intensities, p.probabilities
    eps_basis = eps_sec / 2
    eps = eps_basis / 21  # one share per bound, as Lim et al. allocate eps_sec
    t1 = _tau(ks, ps, 1)
    mu2, mu3 = ks[1], ks[2]
    out = []
    for b in (0, 1):
        s0, s1 = _vac_single(ks, ps, key.counts[b], eps)
        other = 1 - b
        _, u1 = _vac_single(ks, ps, test.counts[other], eps)
        m = [chernoff(x, eps) for x in test.errors[other]]
        m_hi1 = math.exp(mu2) / ps[1] * m[1][1]
        m_lo2 = math.exp(mu3) / ps[2] * m[2][0]
        v1 = max(t1 * (m_hi1 - m_lo2) / (mu2 - mu3), 0.0)
        if u1 > 0 and s1 > 0:
            ratio = min(v1 / u1, 0.5)
            phi = min(ratio + gamma(eps_basis, ratio, u1, s1), 0.5)
        else:
            phi = 0.5
        out.append(BasisBound(s0, s1, phi))
    return Estimate((out[0], out[1]), eps_sec, eps_cor)
