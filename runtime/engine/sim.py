"""Simulated decoy-state BB84 link at the level of detection events (hot loop in C: _sim).

Receiver model: two threshold detectors behind Bob's (active, random) basis choice, each with
dark-click probability d per gate where (1 - d)^2 = 1 - Y0; the n ~ Poisson(eta k) photons of
intensity k split between the detectors as (1 - e_d, e_d) when bases match (50/50 otherwise);
a double click gets a random bit (squashing); the receiver is blind for the profile's dead time
after any click.  Hence a slot clicks with Q_k = 1 - (1 - Y0) e^(-eta k) and, with matching
bases, is wrong with probability ((1 - c) w + c w / 2) / Q_k, c and w the click probabilities of
the right and the wrong detector.  An intercept-resend eavesdropper on a fraction of the pulses
randomises Bob's bit whenever she picked the other basis (QBER + ~25 % x fraction).

Bob's view is what his detectors report; Alice's view is derived from the block seed for the
slots Bob announces (see csrc/sim/sim.c).  Both need the same LinkParams (profile + loss).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from sdqkd.engine import _sim, keyrate, profiles
from sdqkd.engine.profiles import Profile

U64 = 2**64


@dataclass(frozen=True)
class LinkParams:
    """Per-link detection statistics derived from a profile and a channel loss."""

    profile: Profile
    loss_db: float
    gains: tuple[float, float, float]  # Q_k per intensity class
    p_det: float  # click probability of a slot, all classes
    class_cdf: tuple[float, float]  # P(class <= 0 | click), P(class <= 1 | click)
    perr: tuple[float, float, float]  # P(error | click, bases match) per class

    @property
    def dead_slots(self) -> int:
        return self.profile.dead_slots


def link_params(profile: str | Profile, loss_db: float) -> LinkParams:
    p = profiles.get(profile)
    eta = keyrate.transmittance(loss_db) * p.eta_det
    d = 1 - math.sqrt(1 - p.y0)
    gains, perr = [], []
    for k in p.intensities:
        q = 1 - (1 - p.y0) * math.exp(-eta * k)
        right = 1 - (1 - d) * math.exp(-eta * k * (1 - p.e_d))
        wrong = 1 - (1 - d) * math.exp(-eta * k * p.e_d)
        gains.append(q)
        perr.append(((1 - right) * wrong + right * wrong / 2) / q if q > 0 else 0.5)
    weights = [pk * q for pk, q in zip(p.probabilities, gains, strict=True)]
    p_det = sum(weights)
    c0 = weights[0] / p_det if p_det > 0 else 1.0
    c1 = min((weights[0] + weights[1]) / p_det, 1.0) if p_det > 0 else 1.0
    return LinkParams(p, float(loss_db), tuple(gains), p_det, (c0, c1), tuple(perr))  # type: ignore[arg-type]


def _check_int(name: str, v: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
        raise ValueError(f"{name} must be an integer in [0, {hi}), got {v!r}")
    return v


def _check_eve(eve: float) -> float:
    if isinstance(eve, bool) or not isinstance(eve, (int, float)) or not (0 <= eve <= 1):
        raise ValueError(f"eavesdropper fraction must be a number in [0, 1], got {eve!r}")
    return float(eve)


@dataclass(frozen=True)
class BobView:
    """Bob's detections: slots as a Rice-coded gap stream, his bases and bits (packed)."""

    n_pulses: int
    n_det: int
    rice_k: int
    slot_code: bytes = field(repr=False)
    bases: bytes = field(repr=False)
    bits: bytes = field(repr=False)  # raw key material: kept out of reprs and logs


@dataclass(frozen=True)
class AliceView:
    """Alice's bits, bases (packed) and intensity classes (one byte each) at Bob's detections."""

    n_det: int
    bits: bytes = field(repr=False)  # raw key material: kept out of reprs and logs
    bases: bytes = field(repr=False)
    classes: bytes = field(repr=False)


def bob_view(link: LinkParams, seed: int, n_pulses: int, eve: float = 0.0) -> BobView:
    _check_int("seed", seed, U64)
    _check_int("n_pulses", n_pulses, 2**62)
    n, k, code, bases, bits = _sim.detect(
        seed, n_pulses, link.p_det, link.dead_slots, link.class_cdf, link.perr, _check_eve(eve)
    )
    return BobView(n_pulses, n, k, code, bases, bits)


def alice_view(
    link: LinkParams, seed: int, n_pulses: int, n_det: int, rice_k: int, slot_code: bytes
) -> AliceView:
    """Alice's side of the announced detections; malformed slot codes raise ValueError."""
    _check_int("seed", seed, U64)
    _check_int("n_pulses", n_pulses, 2**62)
    _check_int("n_det", n_det, 2**62)
    bits, bases, classes = _sim.alice(
        seed, n_pulses, link.dead_slots, link.class_cdf, n_det, rice_k, slot_code
    )
    return AliceView(n_det, bits, bases, classes)


def slots(view: BobView, dead_slots: int) -> list[int]:
    """Decoded detection slot numbers (tests and diagnostics)."""
    raw = _sim.slots(view.n_pulses, dead_slots, view.n_det, view.rice_k, view.slot_code)
    return list(struct.unpack(f"<{view.n_det}Q", raw))


@dataclass(frozen=True)
class LinkStats:
    """Per-class click counts, basis-matched counts and errors over a block, and live pulses."""

    profile: Profile
    detections: tuple[int, int, int]
    matched: tuple[int, int, int]
    errors: tuple[int, int, int]
    live_pulses: int

    def gains(self) -> keyrate.Gains:
        """Measured gains over the pulses the receiver was armed for, as the model defines them."""
        p = self.profile
        q = [d / (pk * self.live_pulses) for d, pk in zip(self.detections, p.probabilities, strict=True)]
        e = [err / m if m else 0.0 for err, m in zip(self.errors, self.matched, strict=True)]
        return keyrate.Gains(q_mu=q[0], e_mu=e[0], q_nu=q[1], e_nu=e[1], y0=q[2])

    def asymptotic_rate(self) -> float:
        """The analytic decoy formula fed with the measured gains (secret bits per pulse)."""
        mu, nu, _ = self.profile.intensities
        return keyrate.decoy_rate(mu, nu, self.gains(), self.profile.f_ec, self.profile.q)


def link_stats(link: LinkParams, seed: int, n_pulses: int, eve: float = 0.0) -> LinkStats:
    """Count the events of a block without materialising them (model checks, plots)."""
    _check_int("seed", seed, U64)
    _check_int("n_pulses", n_pulses, 2**62)
    det, matched, err, live = _sim.tally(
        seed, n_pulses, link.p_det, link.dead_slots, link.class_cdf, link.perr, _check_eve(eve)
    )
    return LinkStats(link.profile, det, matched, err, live)
