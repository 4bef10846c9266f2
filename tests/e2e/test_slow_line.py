"""A classical line slower than the link's bulk: 10 Mbit/s each way (runtime/bench/_relay.py),
where a 5e5-bit block's DETECT (~1.2 MB) takes ~1 s. Bob then holds each new block's DETECT while
other blocks run Cascade (runtime/node/session.py, `_hold`), so that Cascade's rounds do not
queue behind megabytes on the line and the window does not take that wait for latency and start
ever more blocks; every block still ends with equal keys at both ends."""

from __future__ import annotations

from sdqkd.bench import link
from sdqkd.node.session import BATCH_BLOCKS

BLOCKS = 8


def test_a_slow_line_holds_bulk_back_from_cascade():
    args = link.parser().parse_args(["--block-bits", "5e5", "--cascade", "optimized", "--seconds", "400"])
    res = link.child(args, {"name": "rate10", "rate_mbit": 10, "delay": "relay", "warmup": 0,
                            "until_blocks": BLOCKS})
    assert "error" not in res, res.get("error")
    assert res["blocks"] >= BLOCKS, res
    assert res["max_in_flight"] <= 2 * BATCH_BLOCKS, res  # a batch in Cascade, the next one ready
    assert res["detects_held"] > 0, res
    assert res["blocks_without_key"] == 0, res
    assert res["stores_equal"], res
