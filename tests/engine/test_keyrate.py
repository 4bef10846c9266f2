"""Analytic key-rate model (docs/physics.md) and its agreement with the simulated link."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sdqkd.engine import keyrate, profiles, sim


def test_design_figures():
    # docs/physics.md: about 2e-3 bits/pulse at 40 km (8 dB); ours with mu = 0.5 gives 1.75e-3
    assert keyrate.asymptotic("commercial", 8.0) == pytest.approx(1.749e-3, rel=1e-3)
    assert keyrate.asymptotic("commercial", 30.0) == pytest.approx(8.91e-6, rel=1e-2)
    assert keyrate.asymptotic("commercial", 40.0) == 0.0
    rates = [keyrate.asymptotic("commercial", x) for x in range(0, 41, 2)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_plob():
    assert keyrate.plob(10.0) == pytest.approx(-math.log2(0.9))
    assert keyrate.plob(0.0) == math.inf
    # the decoy protocol stays below the repeaterless bound
    for loss in (5.0, 10.0, 20.0, 30.0):
        assert keyrate.asymptotic("commercial", loss) < keyrate.plob(loss)


def test_rate_vs_distance_rows():
    rows = keyrate.rate_vs_distance("commercial", [0, 40, 150])
    assert [r["loss_db"] for r in rows] == [0.0, 8.0, 30.0]
    assert rows[1]["asymptotic_bps"] == pytest.approx(1.749e6, rel=1e-3)


@pytest.mark.parametrize("loss_db,n_pulses", [(10.0, 10**9), (20.0, 10**10), (30.0, 10**11)])
def test_simulated_gains_reproduce_the_model(loss_db, n_pulses):
    """Gains and QBERs counted on the simulated link, fed into the same decoy formula."""
    stats = sim.link_stats(sim.link_params("commercial", loss_db), 99, n_pulses)
    assert stats.asymptotic_rate() == pytest.approx(keyrate.asymptotic("commercial", loss_db), rel=0.05)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "8", None, True])
def test_bad_loss(bad):
    with pytest.raises(ValueError, match="loss_db"):
        keyrate.asymptotic("commercial", bad)
    with pytest.raises(ValueError, match="loss_db"):
        keyrate.plob(bad)


def test_unknown_profile():
    with pytest.raises(ValueError, match="valid profiles: commercial, snspd"):
        keyrate.asymptotic("nope", 10.0)


@pytest.mark.parametrize(
    "change,msg",
    [
        (dict(q=0.25), "symmetric BB84"),
        (dict(intensities=(0.5, 0.5, 0.0)), "mu > nu"),
        (dict(intensities=(0.5, 0.3, 0.25)), "mu > nu"),
        (dict(probabilities=(0.7, 0.2, 0.2)), "sum to 1"),
        (dict(eta_det=0.0), "eta_det"),
        (dict(y0=math.nan), "y0"),
        (dict(clock_hz=0.0), "clock_hz"),
    ],
)
def test_profile_validation(change, msg):
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(profiles.get("commercial"), **change)
