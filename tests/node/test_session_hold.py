"""Bob holds a new block's DETECT while other blocks run Cascade, on a line too slow for both
(runtime/node/session.py, `_hold`): DETECTs would otherwise keep a queue on the line in front of
every Cascade round. On a faster line it leaves at once, overlapping Cascade's rounds."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from sdqkd.engine import pipeline
from sdqkd.engine.auth import HEADER_BYTES
from sdqkd.node import session
from sdqkd.node.channel import Kind
from sdqkd.node.links import LinkParams

DETECT_BYTES = 9_800_000  # a 4e6-bit block's DETECT at 40 km
MBIT = 1e6 / 8  # bytes per second


class Conn:
    """What a session asks of its connection here: the line's rate, and the frames sent."""

    def __init__(self, line_rate: float) -> None:
        self.line_rate = line_rate
        self.sent: list[tuple[Kind, int, bytes]] = []

    def send(self, kind: Kind, block: int = 0, payload: bytes = b"") -> None:
        self.sent.append((kind, block, payload))


CONFIG = pipeline.BlockConfig("commercial", 8.0, pipeline.pulses_for("commercial", 8.0, 4e6), seed=1)  # 1.45 s


class Party:
    """A Bob block whose state machine is not run: only `finished` and its config are asked."""

    finished = False
    config = CONFIG


def frame(kind: int) -> bytes:
    """A sealed frame of that kind, as long as its kind is on the wire (the hold weighs its length)."""
    size = DETECT_BYTES if kind == pipeline.DETECT else 300
    return bytes(HEADER_BYTES) + bytes([kind]) + bytes(size - HEADER_BYTES - 1)


def bob_session(line_rate: float) -> tuple[session.Session, Conn]:
    p = LinkParams("L", "bob", "127.0.0.1:1", "commercial", 8.0, "optimized", "balanced")
    link = SimpleNamespace(p=p, bootstrap=b"\1" * 32)
    conn = Conn(line_rate)

    async def make() -> session.Session:
        return session.Session(link, conn, "s", 16)  # type: ignore[arg-type]

    return asyncio.run(make()), conn


def block(s: session.Session, n: int, on_network: bool) -> session._Block:
    b = s._blocks[n] = session._Block(n, Party(), 0.0, on_network=on_network)  # type: ignore[arg-type]
    return b


@pytest.mark.parametrize(("mbit", "held"), [
    (100, True),  # DETECTs keep the line busy 0.78 s of the 1.45 s the clock gives a block
    (50, True),
    (200, False),  # 0.39 s of 1.45
    (10_000, False),
])
def test_a_detect_is_held_only_where_it_keeps_the_line_busy_most_of_the_time(mbit: float, held: bool) -> None:
    s, _ = bob_session(mbit * MBIT)
    b = block(s, 1, on_network=False)
    assert not s._hold(b, DETECT_BYTES)  # no block in Cascade: nothing to wait for
    block(s, 0, on_network=True)
    assert s._hold(b, DETECT_BYTES) is held


def test_nothing_is_held_before_the_line_is_known() -> None:
    s, _ = bob_session(0.0)  # no big frame received yet
    block(s, 0, on_network=True)
    assert not s._hold(block(s, 1, on_network=False), DETECT_BYTES)


def test_a_slower_clock_leaves_the_line_more_time() -> None:
    s, _ = bob_session(100 * MBIT)
    s.link.p.clock_scale = 0.5  # a block every 2.9 s: 0.78 s of DETECT is 0.27 of it
    block(s, 0, on_network=True)
    assert not s._hold(block(s, 1, on_network=False), DETECT_BYTES)


def test_held_detects_leave_in_block_order_once_cascade_is_over() -> None:
    s, conn = bob_session(100 * MBIT)
    cascading = block(s, 0, on_network=True)
    for n in (2, 1):  # their simulations may end in either order
        b = block(s, n, on_network=False)
        s._step(b, frame(pipeline.DETECT))
    assert conn.sent == []
    assert s.detects_held == 2
    s._step(cascading, frame(pipeline.CASCADE))  # still in Cascade: a round's request leaves alone
    assert [(k, n) for k, n, _ in conn.sent] == [(Kind.DATA, 0)]
    s._bob_done[0] = (pipeline.BlockResult("bob"), 0.0)  # its key computed: its Cascade is over
    s._release_held()
    assert [(k, n) for k, n, _ in conn.sent] == [(Kind.DATA, 0), (Kind.DATA, 1), (Kind.DATA, 2)]
    assert conn.sent[1][2] == frame(pipeline.DETECT)


def test_once_one_is_held_the_next_waits_too_even_on_a_line_seen_fast_since() -> None:
    s, conn = bob_session(100 * MBIT)
    block(s, 0, on_network=True)
    s._step(block(s, 1, on_network=False), frame(pipeline.DETECT))
    conn.line_rate = 10_000 * MBIT
    s._step(block(s, 2, on_network=False), frame(pipeline.DETECT))
    assert conn.sent == [] and sorted(s._held) == [1, 2]


def test_a_held_block_does_not_keep_its_batch_from_cascade() -> None:
    """Bob sends a batch's first Cascade requests once no other block is in its heavy steps; a
    block whose DETECT is held is past them (counted among them, it would keep this batch out of
    Cascade until the batch before ended and the held block's own heavy steps ran)."""
    s, conn = bob_session(100 * MBIT)
    block(s, 0, on_network=True)  # the batch before, still in Cascade
    s._step(block(s, 5, on_network=False), frame(pipeline.DETECT))  # the batch after: held
    s._step(block(s, 4, on_network=False), frame(pipeline.CASCADE))  # this batch's last block
    assert [(k, n) for k, n, _ in conn.sent] == [(Kind.DATA, 4)]
    assert s._blocks[4].on_network and sorted(s._held) == [5]


def test_a_stopping_session_sends_what_it_held() -> None:
    s, conn = bob_session(100 * MBIT)
    block(s, 0, on_network=True)
    s._step(block(s, 1, on_network=False), frame(pipeline.DETECT))
    s._release_held(force=True)
    assert [(k, n) for k, n, _ in conn.sent] == [(Kind.DATA, 1)]
    assert s._held == {}
