"""The classical-channel stream of an engine link (runtime/node/links.py FramePipe): a silent
peer ends the session with TimeoutError (one watchdog per session, no timer per message), a
stream lost under a session ends it with ConnectionError, and stopping the link is a plain
cancellation."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from generated.proto.sdqkd import classical_pb2
from runtime.node import links


class Stream:
    """Stands in for the gRPC call / servicer context: read() waits for what the test feeds."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list[bytes] = []

    async def read(self):
        return await self.inbox.get()

    async def write(self, frame: classical_pb2.Frame) -> None:
        self.sent.append(frame.payload)


def test_echo_then_end_of_stream():
    async def main() -> None:
        s = Stream()
        pipe = links.FramePipe(s)
        got: list[bytes] = []

        async def session() -> None:
            while True:
                data = await pipe.recv(5)
                got.append(data)
                await pipe.send(data[::-1])

        s.inbox.put_nowait(classical_pb2.Frame(kind="data", payload=b"abc"))
        s.inbox.put_nowait(grpc.aio.EOF)
        with pytest.raises(ConnectionError, match="closed"):
            await pipe.run(session())
        assert got == [b"abc"] and s.sent == [b"cba"] and pipe.closed.done()

    asyncio.run(main())


def test_silent_peer_times_out(monkeypatch):
    monkeypatch.setattr(links, "WATCHDOG_S", 0.02)

    async def main() -> None:
        pipe = links.FramePipe(Stream())
        with pytest.raises(TimeoutError, match="no message from the peer"):
            await asyncio.wait_for(pipe.run(pipe.recv(0.1)), 10)
        assert pipe.closed.done()

    asyncio.run(main())


def test_a_slow_but_live_peer_does_not_time_out(monkeypatch):
    monkeypatch.setattr(links, "WATCHDOG_S", 0.02)

    async def main() -> None:
        s = Stream()
        pipe = links.FramePipe(s)

        async def session() -> None:
            for _ in range(5):  # 5 x 0.08 s in all, each message within its 0.2 s
                await pipe.recv(0.2)
            await asyncio.sleep(0.3)  # no recv pending: no deadline either

        async def feed() -> None:
            for _ in range(5):
                await asyncio.sleep(0.08)
                s.inbox.put_nowait(classical_pb2.Frame(kind="data", payload=b"x"))

        feeder = asyncio.create_task(feed())
        await pipe.run(session())
        await feeder

    asyncio.run(main())


def test_lost_stream_ends_the_session():
    async def main() -> None:
        pipe = links.FramePipe(Stream())
        runner = asyncio.create_task(pipe.run(pipe.recv(60)))
        await asyncio.sleep(0.05)
        pipe.lost()  # what the receiver's Connect handler does when its RPC ends
        with pytest.raises(ConnectionError, match="lost"):
            await runner

    asyncio.run(main())


def test_stopping_the_link_cancels_the_session():
    async def main() -> None:
        pipe = links.FramePipe(Stream())
        runner = asyncio.create_task(pipe.run(pipe.recv(60)))
        await asyncio.sleep(0.05)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert pipe.closed.done()

    asyncio.run(main())


def test_a_stream_closed_before_its_session_starts():
    async def main() -> None:
        pipe = links.FramePipe(Stream())
        pipe.close()
        with pytest.raises(ConnectionError, match="before its session started"):
            await pipe.run(pipe.recv(1))

    asyncio.run(main())


PAIR = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 10}], "saes": []}


def test_engine_cascade_variant_is_the_nodes_default(tmp_path):
    """A link whose configuration names no Cascade variant runs the node's engine default; an
    unknown one stops the node before it starts, naming the valid ones (the model's enum)."""
    from runtime.harness.inprocess import start_network
    from runtime.node.config import ConfigError

    async def main() -> None:
        net = await start_network(PAIR, tmp_path / "ok", engine={"clock_scale": 0.01, "cascade_variant": "original"},
                                  wait_keys=False)
        try:
            ends = [link for rt in net.nodes.values() for link in rt.links.values()]
            assert len(ends) == 2 and {e.p.variant for e in ends} == {"original"}
        finally:
            await net.stop()
        with pytest.raises(ConfigError, match="unknown Cascade variant 'bogus'.*original, optimized"):
            await start_network(PAIR, tmp_path / "bad", engine={"cascade_variant": "bogus"}, timeout=10)

    asyncio.run(main())
