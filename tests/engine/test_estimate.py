"""Finite-key parameter estimation (Lim et al. 2014 style bounds)."""

from __future__ import annotations

import math
import random

import pytest

from sdqkd.engine import estimate, sim
from sdqkd.engine.estimate import Tally


def expected_tallies(loss_db: float, seconds: float, fraction: float = 0.1) -> tuple[Tally, Tally]:
    """Mean counts of a block of the commercial link (both bases, key set and sample)."""
    link = sim.link_params("commercial", loss_db)
    p = link.profile
    live = seconds * p.clock_hz / (1 + link.p_det * p.dead_slots)
    per = [live * pk * q / 4 for pk, q in zip(p.probabilities, link.gains, strict=True)]
    key = tuple(int(x * (1 - fraction)) for x in per)
    test = tuple(int(x * fraction) for x in per)
    errs = tuple(int(x * fraction * e) for x, e in zip(per, link.perr, strict=True))
    return Tally((key, key)), Tally((test, test), (errs, errs))


def test_chernoff_bounds_cover_the_mean():
    rng = random.Random(5)
    eps, n, p = 0.01, 400, 0.05
    misses = 0
    for _ in range(2000):
        x = sum(rng.random() < p for _ in range(n))
        lo, hi = estimate.chernoff(x, eps)
        misses += not lo <= n * p <= hi
    assert misses <= 2000 * 2 * eps
    lo, hi = estimate.chernoff(0, 1e-10)
    assert lo == 0 and hi > 0


def test_more_data_more_key_and_errors_cost_key():
    lengths = []
    for seconds in (0.1, 0.3, 1.0, 3.0):
        key, test = expected_tallies(8.0, seconds)
        est = estimate.finite_key("commercial", key, test)
        lengths.append(est.secret_length(0) / seconds)
    assert all(a < b for a, b in zip(lengths, lengths[1:]))
    key, test = expected_tallies(8.0, 1.0)
    noisy = Tally(test.counts, tuple(tuple(e * 3 for e in row) for row in test.errors))
    good = estimate.finite_key("commercial", key, test)
    bad = estimate.finite_key("commercial", key, noisy)
    assert bad.bases[0].phi > good.bases[0].phi and bad.secret_length(0) < good.secret_length(0)


def test_secret_length_formula():
    key, test = expected_tallies(8.0, 1.0)
    est = estimate.finite_key("commercial", key, test, eps_sec=1e-10, eps_cor=1e-15)
    b0, b1 = est.bases
    assert 0 < b0.phi < 0.1 and b0.s1 > 0
    entropy = sum(b.s0 + b.s1 * (1 - estimate.h2(b.phi)) for b in (b0, b1))
    assert est.entropy == pytest.approx(entropy)
    penalty = 6 * math.log2(21 / 1e-10) + 128  # 128-bit verification tag >= log2(2/eps_cor)
    assert est.secret_length(12345) == math.floor(entropy - 12345 - penalty)
    assert est.secret_length(10**9) == 0
    looser = estimate.finite_key("commercial", key, test, eps_sec=1e-20)
    assert looser.secret_length(0) < est.secret_length(0)


def test_no_key_at_40_db():
    key, test = expected_tallies(40.0, 10_000.0)
    est = estimate.finite_key("commercial", key, test)
    leak = int(key.total * estimate.h2(test.qber()))  # even at the Shannon limit
    assert est.secret_length(leak) == 0


def test_empty_sample_gives_no_key():
    key, _ = expected_tallies(8.0, 1.0)
    est = estimate.finite_key("commercial", key, Tally(((0, 0, 0), (0, 0, 0))))
    assert all(b.phi == 0.5 for b in est.bases)
    assert est.secret_length(0) == 0


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: Tally.from_flat((1, 2, 3, 4, 5, -6)), "integers"),
        (lambda: Tally.from_flat((1, 2, 3, 4, 5, 6), (0, 0, 4, 0, 0, 0)), "errors <= counts"),
        (lambda: Tally.from_flat((1, 2, 3)), "6 counts"),
        (
            lambda: estimate.finite_key(
                "commercial", Tally(((1, 1, 1),) * 2), Tally(((1, 1, 1),) * 2), eps_sec=0
            ),
            "eps_sec",
        ),
        (
            lambda: estimate.finite_key(
                "commercial", Tally(((1, 1, 1),) * 2), Tally(((1, 1, 1),) * 2), eps_cor=math.nan
            ),
            "eps_cor",
        ),
        (lambda: estimate.finite_key("bogus", Tally(((1, 1, 1),) * 2), Tally(((1, 1, 1),) * 2)), "unknown"),
        (
            lambda: (
                expected_tallies(8, 1)[0]
                and estimate.finite_key("commercial", *expected_tallies(8.0, 1.0)).secret_length(-1)
            ),
            "leak_ec_bits",
        ),
    ],
)
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
