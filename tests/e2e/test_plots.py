"""`sdqkd plot`: real PNGs from the running code."""

from __future__ import annotations

import subprocess
import sys

from sdqkd import plots


def test_simulated_rate_follows_the_seed_papers():
    assert plots.simulated_rate("commercial", 40) >= 0.7e6  # about 1 Mbit/s at 40 km (8 dB)
    assert plots.simulated_rate("commercial", 200) == 0.0  # 40 dB: none


def test_plot_topology_writes_a_png(tmp_path):
    out = tmp_path / "t.png"
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "plot", "topology", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_keyrate_is_quick_by_default_and_shows_progress(tmp_path):
    out = tmp_path / "k.png"
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "plot", "keyrate", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "simulating the link at 0 km (1/11)" in r.stderr and "simulating the link at 200 km (11/11)" in r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "40 km" in r.stdout
