"""Analytic key rates: asymptotic decoy-state BB84 (GLLP with vacuum + weak decoy bounds,
Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005)) and the repeaterless PLOB bound, exactly as docs/physics.md states them.

`asymptotic(profile, loss_db)` and `plob(loss_db)` are contracts (secret bits per pulse / per
channel use).  `decoy_rate` is the same formula fed with measured gains, so the simulator can be
checked against the model; `rate_vs_distance` serves plots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sdqkd.engine import profiles
from sdqkd.engine.profiles import Profile


def h2(x: float) -> float:
    """Binary entropy in bits (0 outside (0, 1))."""
    if x <= 0 or x >= 1:
        return 0.0
    return -x * math.log2(x) - (1 - x) * math.log2(1 - x)


def check_loss(loss_db: float) -> float:
    if isinstance(loss_db, bool) or not isinstance(loss_db, (int, float)) or not math.isfinite(loss_db):
        raise ValueError(f"loss_db must be a finite number, got {loss_db!r}")
    if loss_db < 0:
        raise ValueError(f"loss_db must be >= 0, got {loss_db}")
    return float(loss_db)


def transmittance(loss_db: float) -> float:
    """Channel transmittance eta_ch = 10^(-loss/10)."""
    return 10 ** (-check_loss(loss_db) / 10)


def fibre_loss_db(km: float, alpha_db_per_km: float = 0.2) -> float:
    if not (math.isfinite(km) and km >= 0 and math.isfinite(alpha_db_per_km) and alpha_db_per_km >= 0):
        raise ValueError(f"need finite km >= 0 and alpha >= 0, got km={km!r}, alpha={alpha_db_per_km!r}")
    return km * alpha_db_per_km


@dataclass(frozen=True)
class Gains:
    """Gains (click probability per pulse) and QBERs of the signal and weak decoy, and Y0."""

    q_mu: float
    e_mu: float
    q_nu: float
    e_nu: float
    y0: float


def model_gains(profile: str | Profile, loss_db: float) -> Gains:
    """The model of docs/physics.md: Q = Y0 + 1 - exp(-eta k), E Q = Y0/2 + e_d (1 - exp(-eta k))."""
    p = profiles.get(profile)
    eta = transmittance(loss_db) * p.eta_det
    mu, nu, _ = p.intensities

    def gain(k: float) -> tuple[float, float]:
        q = p.y0 + 1 - math.exp(-eta * k)
        return q, (p.y0 / 2 + p.e_d * (1 - math.exp(-eta * k))) / q

    q_mu, e_mu = gain(mu)
    q_nu, e_nu = gain(nu)
    return Gains(q_mu, e_mu, q_nu, e_nu, p.y0)


def decoy_rate(mu: float, nu: float, g: Gains, f: float, q: float) -> float:
    """GLLP key rate per pulse with the vacuum + weak decoy bounds; 0 where negative."""
    y1 = (
        mu
        / (mu * nu - nu * nu)
        * (
            g.q_nu * math.exp(nu)
            - g.q_mu * math.exp(mu) * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * g.y0
        )
    )
    if y1 <= 0:
        return 0.0
    e1 = min(max((g.e_nu * g.q_nu * math.exp(nu) - g.y0 / 2) / (y1 * nu), 0.0), 0.5)
    q1 = y1 * mu * math.exp(-mu)
    return max(q * (q1 * (1 - h2(e1)) - f * g.q_mu * h2(g.e_mu)), 0.0)


def asymptotic(profile: str, loss_db: float) -> float:
    """Asymptotic secret bits per pulse of `profile` over a channel of `loss_db` dB."""
    return profile_rate(profiles.get(profile), loss_db)


def profile_rate(p: Profile, loss_db: float) -> float:
    """`asymptotic` for a Profile object (custom profiles need not be registered)."""
    mu, nu, _ = p.intensities
    return decoy_rate(mu, nu, model_gains(p, loss_db), p.f_ec, p.q)


def plob(loss_db: float) -> float:
    """PLOB repeaterless bound -log2(1 - eta_ch) in bits per channel use (inf at 0 dB)."""
    eta = transmittance(loss_db)
    return math.inf if eta >= 1 else -math.log2(1 - eta)


def rate_vs_distance(profile: str, km_values: Iterable[float]) -> list[dict[str, float]]:
    """Rows {km, loss_db, asymptotic_bps, plob_bps} for plots (bit/s at the profile's clock)."""
    p = profiles.get(profile)
    rows = []
    for km in km_values:
        loss = fibre_loss_db(km, p.alpha_db_per_km)
        rows.append(
            {
                "km": float(km),
                "loss_db": loss,
                "asymptotic_bps": profile_rate(p, loss) * p.clock_hz,
                "plob_bps": plob(loss) * p.clock_hz,
            }
        )
    return rows
