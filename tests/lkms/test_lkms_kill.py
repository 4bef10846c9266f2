"""Repeated SIGKILL of LKMS node processes under ETSI 014 traffic (a few rounds; `sdqkd bench
reliability` runs many): every delivered key reaches the peer SAE with the same bytes, and
after recovery both ends' pools hold the same key IDs with the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdqkd.bench import reliability
from sdqkd.bench.reliability import KillReport, kill_probe


def test_repeated_kills_leave_both_pools_equal(tmp_path: Path) -> None:
    r = kill_probe(tmp_path, rounds=3, keys=2048)
    assert r.delivered_keys > 0, r
    assert (r.mismatches, r.lost) == (0, 0), r
    # every key an SAE got was fetched at the peer (or served there by a node killed before answering)
    assert r.checked_keys + r.answer_lost == r.delivered_keys, r
    assert r.uncertain >= 1, r  # the case that used to leave keys at one end only did happen
    assert r.pool_keys > 0 and r.divergence == 0 and r.reserved_out_left == 0, r


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(("report", "code"), [
    (KillReport(rounds=1, pool_keys=10), 0),
    (KillReport(rounds=1, pool_keys=10, divergence=1), 1),
    (KillReport(rounds=1, pool_keys=10, lost=1), 1),
    (KillReport(rounds=1, pool_keys=0), 1),  # drained: nothing was compared
])
def test_bench_verdict_is_the_same_with_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             report: KillReport, code: int, as_json: bool) -> None:
    """`sdqkd bench reliability --json` used to exit 0 whatever the probe found."""
    idle = {"connections": 1, "handshakes_completed": 1, "refused": 0, "still_open": 1,
            "rss_base_mb": 1.0, "rss_with_mb": 1.0}
    monkeypatch.setattr(reliability, "kill_probe", lambda *a, **kw: report)
    monkeypatch.setattr(reliability, "idle_connections", lambda *a, **kw: idle)
    assert reliability.main(["--rounds", "1"] + (["--json"] if as_json else [])) == code
    if as_json:
        assert json.loads(capsys.readouterr().out)["kill"]["divergence"] == report.divergence
