"""Log lines stay one line: gRPC errors are summarised, links are named by their ends."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sdqkd.logfmt import brief, link_label


def test_a_real_grpc_error_is_one_line():
    async def call() -> BaseException:
        # a real failed call to a closed port: grpc's own error object, not a stand-in
        async with grpc.aio.insecure_channel("127.0.0.1:1") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ch.unary_unary("/x.Y/Z")(b"", timeout=2)
            return e.value

    err = asyncio.run(call())
    assert "\n" in str(err)  # what used to reach the logs
    line = brief(err)
    assert "\n" not in line and line.startswith("UNAVAILABLE")


def test_other_errors_keep_their_first_line():
    assert brief(ValueError("bad thing\nmore")) == "bad thing"
    assert brief(RuntimeError()) == "RuntimeError"


def test_links_are_named_by_their_ends():
    assert link_label({"id-b": "B"}, "A", "id-b", "0123456789ab") == "A-B (01234567)"
    assert link_label({}, "A", "id-c", "0123456789ab") == "0123456789ab (to node id-c)"
