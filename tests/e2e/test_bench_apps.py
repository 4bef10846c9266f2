"""`sdqkd bench apps` runs end to end with its smallest options (a network of processes, the
controller's northbound with its bearer token, first requests, the enc_keys load): a bench that
stops on an API change is found here, not when its figures are next needed. Its figures are
not judged here (speed targets belong to the bench, on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_apps_runs_and_serves_every_pair() -> None:
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "bench", "apps", "--pairs", "2", "--runs", "1",
                        "--seconds", "0.5", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    fig = json.loads(r.stdout)
    for kind in ("ttfk_direct", "ttfk_3hop"):
        assert fig[kind]["served"] == 2 and fig[kind]["not_served"] == 0, fig[kind]
    assert fig["enc_keys_per_s_northbound_pair"] > 0 and fig["enc_keys_per_s_first_request_pair"] > 0
    assert set(fig["targets_met"]) == {"ttfk_direct_p99_s", "ttfk_3hop_p99_s", "enc_keys_ratio"}
