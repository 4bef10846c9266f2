"""`sdqkd bench link`'s `channel` case (runtime/bench/_channel.py): Cascade-sized round trips over
mutual TLS between two frame connections complete, every request answered, and the figures are
per round trip (a few hundred trips here; the bench runs 20,000). Its speed is the bench's to
report, not this test's."""

from __future__ import annotations

import os

from sdqkd.bench._channel import channel_case


def test_channel_case_runs_its_round_trips_and_leaves_no_key_behind(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # its CA and node keys live in a temporary directory
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    res = channel_case(trips=400, repeats=1)  # a lost or unanswered frame: TimeoutError
    assert res["trips"] == 400
    assert res["cpu_us_per_trip_1_block"] > 0 and res["cpu_us_per_trip_4_blocks"] > 0
    assert os.listdir(tmp_path) == []
