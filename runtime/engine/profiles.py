"""Named QKD device profiles: the transmitter/receiver figures a simulated link is built from.

"commercial" follows docs/physics.md (1 GHz clock, 10 % detector efficiency, Y0 1e-6, e_d 1 %,
f 1.16, q 1/2).  Signal/decoy/vacuum intensities 0.5/0.1/0 are the textbook vacuum+weak-decoy
choice of Ma, Qi, Zhao and Lo, PRA 72, 012326 (2005) (mu near the optimum ~0.5 for these
detectors, nu well below mu); the 70/20/10 % intensity probabilities are our own choice from a
grid search of the finite-key length (estimate.py) at 8 and 30 dB for 1e6..1e7-bit blocks.
The 10 ns common-mode dead time is an assumption (ten 1 GHz gates of afterpulse blanking), not a
vendor figure.  "snspd" is an illustrative superconducting-detector receiver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """One device profile; intensity classes are 0 = signal (mu), 1 = weak decoy (nu), 2 = vacuum."""

    name: str
    clock_hz: float
    eta_det: float  # detector efficiency (includes Bob's optics)
    y0: float  # dark/background click probability per gate, both detectors together
    e_d: float  # misalignment error probability
    f_ec: float  # error-correction inefficiency assumed by the asymptotic model
    q: float  # basis sift factor; the simulator chooses bases symmetrically, so 1/2
    intensities: tuple[float, float, float]  # mu > nu > omega >= 0, mu > nu + omega
    probabilities: tuple[float, float, float]  # p_mu, p_nu, p_omega
    dead_time_s: float = 0.0
    alpha_db_per_km: float = 0.2

    def __post_init__(self) -> None:
        for field in ("clock_hz", "eta_det", "y0", "e_d", "f_ec", "q", "dead_time_s", "alpha_db_per_km"):
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"profile {self.name!r}: {field} must be a finite number >= 0, got {v!r}")
        if self.clock_hz <= 0:
            raise ValueError(f"profile {self.name!r}: clock_hz must be > 0")
        if not 0 < self.eta_det <= 1 or self.y0 >= 1 or self.e_d >= 0.5:
            raise ValueError(f"profile {self.name!r}: need 0 < eta_det <= 1, y0 < 1, e_d < 0.5")
        if self.q != 0.5:
            raise ValueError(f"profile {self.name!r}: the simulator implements symmetric BB84, q must be 0.5")
        mu, nu, om = self.intensities
        if not (all(math.isfinite(x) for x in self.intensities) and mu > nu > om >= 0 and mu > nu + om):
            raise ValueError(
                f"profile {self.name!r}: intensities need mu > nu > omega >= 0 and mu > nu + omega"
            )
        p = self.probabilities
        if not (all(math.isfinite(x) and x > 0 for x in p) and abs(sum(p) - 1) < 1e-9):
            raise ValueError(f"profile {self.name!r}: intensity probabilities must be > 0 and sum to 1")

    @property
    def dead_slots(self) -> int:
        """Dead time in clock periods (the receiver ignores this many slots after a click)."""
        return int(round(self.dead_time_s * self.clock_hz))


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="commercial",
            clock_hz=1e9,
            eta_det=0.10,
            y0=1e-6,
            e_d=0.01,
            f_ec=1.16,
            q=0.5,
            intensities=(0.5, 0.1, 0.0),
            probabilities=(0.7, 0.2, 0.1),
            dead_time_s=10e-9,
        ),
        Profile(
            name="snspd",
            clock_hz=1e9,
            eta_det=0.80,
            y0=2e-7,
            e_d=0.01,
            f_ec=1.16,
            q=0.5,
            intensities=(0.5, 0.1, 0.0),
            probabilities=(0.7, 0.2, 0.1),
            dead_time_s=30e-9,
        ),
    )
}


def get(profile: str | Profile) -> Profile:
    """The named profile (a Profile passes through); unknown names raise ValueError."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown device profile {profile!r}; valid profiles: {', '.join(sorted(PROFILES))}"
        ) from None
