"""Latency hiding end to end: a 2-node network whose classical channel has a 20 ms round trip
(`tc netem` on the loopback of a network namespace where the kernel has netem; this machine's
kernel is built without it, so there the channel goes through runtime/bench/_relay.py, which
delays every byte by 10 ms each way). A block of optimised Cascade needs ~1,300 round trips,
~26 s of waiting at this RTT: a link running blocks one after another needs that long per block.
The session keeps many blocks in flight, so eight blocks end in well under half that time each."""

from __future__ import annotations

from sdqkd.bench import link

BLOCKS = 8


def test_blocks_overlap_on_a_delayed_channel():
    args = link.parser().parse_args(["--block-bits", "5e5", "--cascade", "optimized", "--seconds", "400"])
    res = link.delayed(args, "rtt20", 20.0, {"warmup": 0, "until_blocks": BLOCKS})
    assert "error" not in res, res.get("error")
    assert res["rtt_ms"] >= 19, res  # the delay is really there
    one_at_a_time = res["round_trips_per_block"] * res["rtt_ms"] / 1e3  # seconds per block, at least
    assert res["blocks"] >= BLOCKS, res
    assert res["seconds"] <= 0.5 * BLOCKS * one_at_a_time, res
    assert res["max_in_flight"] >= 4, res
    assert res["stores_equal"], res


def test_latency_hiding_sends_every_detect_at_once():
    """On a fast line at a long round trip, no DETECT waits for Cascade (session.py: `_hold`)."""
    args = link.parser().parse_args(["--block-bits", "5e5", "--cascade", "optimized", "--seconds", "400"])
    res = link.delayed(args, "rtt20", 20.0, {"warmup": 0, "until_blocks": 4})
    assert "error" not in res, res.get("error")
    assert res["detects_held"] == 0, res
    assert res["stores_equal"], res
