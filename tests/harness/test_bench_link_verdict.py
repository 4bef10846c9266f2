"""`sdqkd bench link`'s verdict over alternated pipeline / link pairs (runtime/bench/link.py)."""

from __future__ import annotations

from sdqkd.bench.link import _verdict


def _pair(pipe: float, link: float, of_clock: float = 1.0, rate: float = 900e3) -> list[dict[str, object]]:
    return [{"case": "pipeline", "cpu_s_per_mbit": pipe},
            {"case": "rtt0", "cpu_s_per_mbit": link, "of_clock": of_clock, "rate_bps": rate, "stores_equal": True}]


def test_the_ratio_is_the_median_of_the_pairs_each_against_its_own_pipeline() -> None:
    cases = [*_pair(0.25, 0.275), *_pair(0.30, 0.345, of_clock=0.97, rate=800e3), *_pair(0.20, 0.30, rate=1000e3),
             {"case": "rtt5", "rate_bps": 855e3, "stores_equal": True}]
    v = _verdict(cases)
    assert v["cpu_vs_pipeline_pairs"] == [1.1, 1.15, 1.5]
    assert v["cpu_vs_pipeline"] == 1.15  # not the last pair's 1.5, nor 1.23 from the sums
    assert v["of_clock"] == 0.97  # the slowest run must keep up
    assert v["rtt5_vs_rtt0"] == 0.95  # against the median link rate
    assert v["ok"]


def test_one_pair_over_the_limit_fails_alone_and_a_store_mismatch_fails_any() -> None:
    assert not _verdict(_pair(0.25, 0.31))["ok"]  # 1.24x
    bad = [*_pair(0.25, 0.26), {"case": "rtt20", "rate_bps": 900e3, "stores_equal": False}]
    assert not _verdict(bad)["ok"]
