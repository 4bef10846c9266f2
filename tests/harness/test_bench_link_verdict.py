"""`sdqkd bench link`'s verdict over alternated pipeline / link pairs (runtime/bench/link.py)."""

from __future__ import annotations

import threading
import time

from sdqkd.bench.link import _verdict, extra_cpu, thread_cpu, thread_role


def _pair(pipe: float, link: float, of_clock: float = 1.0, rate: float = 900e3) -> list[dict[str, object]]:
    return [{"case": "pipeline", "cpu_s_per_mbit": pipe},
            {"case": "rtt0", "cpu_s_per_mbit": link, "of_clock": of_clock, "rate_bps": rate, "stores_equal": True}]


def test_the_ratio_is_the_median_of_the_links_each_against_the_pipelines_on_either_side() -> None:
    cases = [*_pair(0.24, 0.286), *_pair(0.28, 0.276, of_clock=0.97, rate=800e3), *_pair(0.20, 0.315, rate=1000e3),
             {"case": "pipeline", "cpu_s_per_mbit": 0.22}, {"case": "rtt5", "rate_bps": 855e3, "stores_equal": True}]
    v = _verdict(cases)
    assert v["cpu_vs_pipeline_pairs"] == [1.1, 1.15, 1.5]  # 0.286 / 0.26, 0.276 / 0.24, 0.315 / 0.21
    assert v["cpu_vs_pipeline"] == 1.15  # not the last pair's 1.5, nor a ratio of the sums
    assert v["cpu_vs_pipeline_before_pairs"] == [1.192, 0.986, 1.575]  # each against the one before alone
    assert v["of_clock"] == 0.97  # the slowest run must keep up
    assert v["rtt5_vs_rtt0"] == 0.95  # against the median link rate
    assert v["ok"]
    # without the closing pipeline (or when it failed), the last link is set against the one before it
    assert _verdict(cases[:6])["cpu_vs_pipeline_pairs"] == [1.1, 1.15, 1.575]
    failed = [*cases[:6], {"case": "pipeline", "error": "killed"}]
    assert _verdict(failed)["cpu_vs_pipeline_pairs"] == [1.1, 1.15, 1.575]


def test_one_pair_over_the_limit_fails_alone_and_a_store_mismatch_fails_any() -> None:
    assert not _verdict(_pair(0.25, 0.31))["ok"]  # 1.24x
    bad = [*_pair(0.25, 0.26), {"case": "rtt20", "rate_bps": 900e3, "stores_equal": False}]
    assert not _verdict(bad)["ok"]


def _costs(total: float, stages: dict[str, float], threads: dict[str, float] | None = None) -> dict[str, object]:
    return {"total": total, "stages": stages, **({"threads": threads} if threads else {})}


def test_the_extra_cpu_of_a_link_splits_into_its_stages_cascade_and_the_rest() -> None:
    pipe = {"case": "pipeline", "cpu_s_per_mbit": 0.35,
            "cpu_ms_per_block": _costs(480.0, {"sim": 225.0, "cascade": 57.0, "pa": 90.0, "auth": 40.0, "sift": 64.0})}
    link = {"case": "rtt0", "cpu_s_per_mbit": 0.44, "of_clock": 1.0, "rate_bps": 9e5, "stores_equal": True,
            "cpu_ms_per_block": _costs(600.0, {"sim": 230.0, "cascade": 73.0, "pa": 91.0, "auth": 34.0, "sift": 67.0},
                                       {"event_loop": 146.0, "engine": 424.0, "key_store": 27.0, "other": 3.0})}
    assert extra_cpu(pipe, link) == {"total": 120.0, "stages_but_cascade": 3.0, "cascade": 16.0,
                                     "outside_stages": 101.0}  # 495 - 476 - 16; 120 - 3 - 16
    assert _verdict([pipe, link])["extra_cpu_ms_per_block_pairs"] == [extra_cpu(pipe, link)]
    after = {"case": "pipeline", "cpu_s_per_mbit": 0.45,
             "cpu_ms_per_block": _costs(520.0, {"sim": 245.0, "cascade": 61.0, "pa": 90.0, "auth": 40.0, "sift": 64.0})}
    bracketed = _verdict([pipe, link, after])
    assert bracketed["extra_cpu_ms_per_block_pairs"] == [{"total": 100.0, "stages_but_cascade": -7.0, "cascade": 14.0,
                                                          "outside_stages": 93.0}]  # against 500 ms, sim 235, Cascade 59
    assert bracketed["cpu_vs_pipeline_pairs"] == [1.1]  # 0.44 / 0.40
    assert "extra_cpu_ms_per_block_pairs" not in _verdict(_pair(0.25, 0.26))  # older cases: no breakdown


def test_threads_are_counted_by_role() -> None:
    assert thread_role(7, "MainThread", 7) == "event_loop"
    assert thread_role(8, "engine_0", 7) == "engine"
    assert thread_role(9, "keystore:keys.sqlite", 7) == "key_store"
    assert thread_role(10, "asyncio_0", 7) == thread_role(11, "", 7) == "other"

    spun, stop = threading.Event(), threading.Event()

    def spin() -> None:
        t = time.thread_time()
        while time.thread_time() - t < 0.3:
            pass
        spun.set()
        stop.wait(30)  # alive and idle until read: an ended thread's CPU leaves /proc with it

    before = thread_cpu()
    worker = threading.Thread(target=spin, name="engine_test")
    worker.start()
    try:
        assert spun.wait(30)
        worker_cpu = thread_cpu()["engine"] - before["engine"]
    finally:
        stop.set()
        worker.join()
    assert worker_cpu >= 0.25  # /proc counts in ticks of 10 ms; the spinning thread's CPU is the engine's
