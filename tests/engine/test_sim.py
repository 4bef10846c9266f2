"""Detection-event link simulation: both views agree, physics as modelled, bad input rejected."""

from __future__ import annotations

import math

import pytest

from sdqkd.engine import _sim, sift, sim

SEED = 2024


def views(loss_db: float, n_pulses: int, eve: float = 0.0, seed: int = SEED):
    link = sim.link_params("commercial", loss_db)
    bob = sim.bob_view(link, seed, n_pulses, eve)
    alice = sim.alice_view(link, seed, n_pulses, bob.n_det, bob.rice_k, bob.slot_code)
    return link, alice, bob


def matched_qber(alice, bob) -> tuple[int, float]:
    mask = sift.match_mask(alice.bases, bob.bases, bob.n_det)
    a, _, n = sift.select(alice.bits, alice.bases, mask, bob.n_det)
    b, _, _ = sift.select(bob.bits, bob.bases, mask, bob.n_det)
    return n, sift._as_int(sift.xor(a, b, n), n).bit_count() / n


def test_views_agree_with_the_tally_and_the_model():
    link, alice, bob = views(8.0, 200_000_000)
    stats = sim.link_stats(link, SEED, 200_000_000)
    assert bob.n_det == sum(stats.detections)
    assert tuple(alice.classes.count(bytes([k])) for k in range(3)) == stats.detections
    n, qber = matched_qber(alice, bob)
    assert n == sum(stats.matched)
    assert qber == pytest.approx(sum(stats.errors) / n)
    # about half the bases match, QBER near e_d = 1 % at 8 dB
    assert 0.49 < n / bob.n_det < 0.51
    assert 0.009 < qber < 0.0115
    # the click rate follows the gains (live pulses exclude the dead time)
    expected = link.p_det * stats.live_pulses
    assert abs(bob.n_det - expected) < 5 * math.sqrt(expected)


def test_slots_respect_dead_time_and_block_end():
    link, _, bob = views(3.0, 20_000_000)
    slots = sim.slots(bob, link.dead_slots)
    assert len(slots) == bob.n_det > 10_000
    assert all(b - a > link.dead_slots for a, b in zip(slots, slots[1:]))
    assert 0 <= slots[0] and slots[-1] < 20_000_000


@pytest.mark.parametrize("loss_db", [3.0, 20.0])
def test_gaps_between_clicks_are_geometric(loss_db):
    """The gap after each click's dead time is drawn by inverse transform (a vectorised log in C):
    its survival P(gap >= k) must be (1 - P)^k, P the click probability, far into the tail."""
    link, _, bob = views(loss_db, 20_000_000 if loss_db < 10 else 4_000_000_000)
    slots = sim.slots(bob, link.dead_slots)
    gaps = [b - a - 1 - link.dead_slots for a, b in zip(slots, slots[1:])]
    n, p = len(gaps), link.p_det
    assert n > 50_000
    mean = (1 - p) / p
    for multiple in (0.1, 1.0, 3.0, 6.0):
        k = int(multiple * mean)
        expected = (1 - p) ** k
        seen = sum(1 for g in gaps if g >= k) / n
        assert abs(seen - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-9, (k, seen, expected)


def test_deterministic_per_seed():
    _, a1, b1 = views(10.0, 10_000_000, seed=5)
    _, a2, b2 = views(10.0, 10_000_000, seed=5)
    _, _, b3 = views(10.0, 10_000_000, seed=6)
    assert (a1, b1) == (a2, b2)
    assert b3.slot_code != b1.slot_code


@pytest.mark.parametrize("fraction", [0.4, 1.0])
def test_intercept_resend_raises_qber(fraction):
    _, alice, bob = views(8.0, 100_000_000, eve=fraction)
    _, qber = matched_qber(alice, bob)
    assert qber == pytest.approx(0.01 + 0.25 * fraction, abs=0.01)


def test_double_clicks_and_vacuum_errors():
    link = sim.link_params("commercial", 30.0)
    # vacuum pulses only click on dark counts: half of them are wrong
    assert link.perr[2] == pytest.approx(0.5)
    assert link.perr[0] < link.perr[1] < 0.5
    stats = sim.link_stats(link, SEED, 10**10)
    assert stats.errors[2] / stats.matched[2] == pytest.approx(0.5, abs=0.05)


def test_no_clicks_without_pulses():
    link, alice, bob = views(8.0, 0)
    assert bob.n_det == alice.n_det == 0


@pytest.mark.parametrize(
    "call,msg",
    [
        (
            lambda: sim.link_params("lab-prototype", 8),
            "unknown device profile 'lab-prototype'; valid profiles: ",
        ),
        (lambda: sim.link_params("commercial", -1), "loss_db must be >= 0"),
        (lambda: sim.link_params("commercial", math.nan), "finite"),
        (lambda: sim.link_params("commercial", math.inf), "finite"),
        (lambda: sim.bob_view(sim.link_params("commercial", 8), SEED, 10, eve=1.5), "eavesdropper"),
        (lambda: sim.bob_view(sim.link_params("commercial", 8), -1, 10), "seed"),
        (lambda: sim.bob_view(sim.link_params("commercial", 8), SEED, 10.5), "n_pulses"),
        (lambda: _sim.detect(1, 10, math.nan, 0, (0.5, 1.0), (0.1, 0.1, 0.5), 0.0), "finite"),
    ],
)
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_malformed_slot_code_rejected():
    link, _, bob = views(8.0, 5_000_000)
    with pytest.raises(ValueError, match="truncated or malformed"):
        sim.alice_view(
            link, SEED, bob.n_pulses, bob.n_det, bob.rice_k, bob.slot_code[: len(bob.slot_code) // 2]
        )
    with pytest.raises(ValueError, match="past the end"):
        sim.alice_view(link, SEED, bob.n_pulses // 2, bob.n_det, bob.rice_k, bob.slot_code)
    with pytest.raises(ValueError, match="impossible"):
        sim.alice_view(link, SEED, bob.n_pulses, 10**12, bob.rice_k, bob.slot_code)
    with pytest.raises(ValueError, match="Rice parameter"):
        sim.alice_view(link, SEED, bob.n_pulses, bob.n_det, 99, bob.slot_code)
