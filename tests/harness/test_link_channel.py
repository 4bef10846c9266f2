"""The engines' classical channel (runtime/node/channel.py) and link sessions (session.py) on a
real 2-node network in this process (agents, LKMS stores on SQLite files, mutual TLS on
loopback): admission by node certificate before any large frame, the KeySync size limit, and
faults — connection lost mid-block, before DONE reached Alice, before STORED reached Bob;
duplicated and reordered frames; a peer that stops answering; links stopped with blocks in
flight. After each, both stores hold exactly the same keys (none stored by one end only)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from sdqkd.bench.link import stored_keys
from sdqkd.engine import pipeline
from sdqkd.engine.auth import HEADER_BYTES
from sdqkd.generated.proto.sdqkd import kms_pb2, kms_pb2_grpc
from sdqkd.harness.inprocess import start_network
from sdqkd.lkms.tlsctx import grpc_channel_credentials, https_client_context
from sdqkd.node import channel, session
from sdqkd.node.channel import ChannelError, FrameConnection, Kind
from sdqkd.pki import TlsFiles

PAIR = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 40}],
        "saes": [{"name": "sae-b", "node": "B"}]}
# small blocks and the original Cascade (~80 round trips): many blocks per second on a loaded machine
FAST = {"clock_scale": 1.0, "block_sifted_bits": 5e5, "cascade_variant": "original"}

Fault = Callable[[FrameConnection, Kind, int, bytes], str]  # -> "send" | "drop" | "lose" | "dup" | "hold" | "abort"


async def wait_for(pred: Callable[[], bool], timeout: float = 90.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def faults(monkeypatch: pytest.MonkeyPatch, fault: Fault):
    """Every frame any FrameConnection sends goes through `fault` first."""
    real = FrameConnection.send
    held: dict[int, tuple[Kind, int, bytes]] = {}

    def send(self: FrameConnection, kind: Kind, block: int = 0, payload: bytes = b"") -> None:
        what = fault(self, kind, block, payload)
        if what == "abort":
            self.abort()
            raise ChannelError("test: connection cut")
        if what == "drop":
            return
        if what == "lose":  # the frame left but never arrives: the connection dies under it
            asyncio.get_running_loop().call_soon(self.abort)
            return
        if what == "hold":
            held[id(self)] = (kind, block, payload)
            return
        real(self, kind, block, payload)
        if what == "dup":
            real(self, kind, block, payload)
        if id(self) in held and what != "hold":
            real(self, *held.pop(id(self)))  # a held frame leaves after a later one: reordered

    monkeypatch.setattr(FrameConnection, "send", send)
    yield


def msg_kind(payload: bytes) -> int:
    return payload[HEADER_BYTES] if len(payload) > HEADER_BYTES else -1


class Net:
    def __init__(self, net: Any, state: Path):
        self.net, self.state = net, state
        self.alice = next(iter(net.nodes["A"].links.values()))
        self.bob = next(iter(net.nodes["B"].links.values()))

    def conn_of(self, who: str) -> FrameConnection | None:
        link = self.alice if who == "alice" else self.bob
        return link.session.conn if link.session else None

    async def keys_after(self, blocks: int, timeout: float = 120.0) -> None:
        goal = self.alice.stats.blocks_ok + blocks
        await wait_for(lambda: self.alice.stats.blocks_ok >= goal and self.bob.stats.blocks_ok >= goal, timeout,
                       f"{blocks} more blocks at both ends")


async def running(tmp_path: Path, engine: dict[str, Any] | None = None) -> Net:
    net = await start_network(PAIR, tmp_path, engine=engine or FAST, wait_keys=True, timeout=120)
    return Net(net, tmp_path)


def same_stores(state: Path) -> int:
    a, b = stored_keys(state, "A"), stored_keys(state, "B")
    assert a.keys() == b.keys(), f"key IDs differ: {len(a.keys() - b.keys())} only at A, {len(b.keys() - a.keys())} only at B"
    assert a == b
    return len(a)


def deliver(net: Any, count: int) -> None:
    """`count` keys of A-B delivered over ETSI 014: sae-a's enc_keys at A, sae-b's dec_keys at B."""
    def client(node: str, sae: str) -> httpx.Client:
        files = net.endpoints[node]["saes"][sae]
        tls = TlsFiles(Path(net.endpoints[node]["ca"]), Path(files["cert"]), Path(files["key"]))
        return httpx.Client(verify=https_client_context(tls), timeout=30)

    with client("A", "sae-a") as a, client("B", "sae-b") as b:
        while count > 0:
            got = a.post(f"https://{net.endpoints['A']['etsi014']}/api/v1/keys/sae-b/enc_keys",
                         json={"number": min(count, 100)})
            assert got.status_code == 200, got.text
            ids = [{"key_ID": k["key_ID"]} for k in got.json()["keys"]]
            r = b.post(f"https://{net.endpoints['B']['etsi014']}/api/v1/keys/sae-a/dec_keys", json={"key_IDs": ids})
            assert r.status_code == 200, r.text
            count -= len(ids)


# ------------------------------------------------------------------ admission


def test_only_the_links_peer_node_may_open_a_session(tmp_path: Path):
    """An SAE certificate (valid, same CA) is refused before a frame is read; the peer node's
    own certificate cannot send a large frame before its HELLO, nor name a link it is not on."""

    async def main() -> None:
        n = await running(tmp_path)
        try:
            b = n.net.nodes["B"]
            addr, server, bid = b.addresses["channel"], b._channel, b.cfg.id
            sae = n.net.endpoints["B"]["saes"]["sae-b"]
            sae_tls = TlsFiles(Path(n.net.endpoints["B"]["ca"]), Path(sae["cert"]), Path(sae["key"]))
            a_tls = n.net.nodes["A"].cfg.tls
            qkdl = n.bob.p.qkdl_id

            async def refused(tls: TlsFiles, send: Callable[[FrameConnection], None]) -> None:
                before = server.refused
                conn = await channel.dial(addr, tls, bid)
                with contextlib.suppress(ChannelError):  # the server may have closed already
                    send(conn)
                with pytest.raises(ChannelError):
                    await asyncio.wait_for(conn.recv(), 10)
                await conn.close()
                await wait_for(lambda: server.refused == before + 1, 10, "the refusal")

            hello = channel.hello_payload(qkdl, "test-session", 4, "", [])
            await refused(sae_tls, lambda c: c.send(Kind.HELLO, 0, hello))
            await refused(a_tls, lambda c: c.send_bytes(channel.HEADER.pack(256 << 20, Kind.HELLO, 0)))
            await refused(a_tls, lambda c: c.send(Kind.HELLO, 0, channel.hello_payload("no-such-link", "s", 4, "", [])))
            await refused(a_tls, lambda c: c.send(Kind.DATA, 0, b"x"))  # anything but HELLO first
            await n.keys_after(1)  # the real session was never disturbed
        finally:
            await n.net.stop()
        same_stores(tmp_path)

    asyncio.run(main())


def test_keysync_port_refuses_oversized_messages(tmp_path: Path):
    """The peer (KeySync) port parses messages before the servicer checks the caller: 4 MiB."""

    async def main() -> None:
        n = await running(tmp_path)
        try:
            b = n.net.nodes["B"]
            opts = [("grpc.max_send_message_length", 64 << 20)]
            async with grpc.aio.secure_channel(b.addresses["peer"], grpc_channel_credentials(n.net.nodes["A"].cfg.tls),
                                               options=opts) as ch:
                stub = kms_pb2_grpc.KeySyncStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.Reserve(kms_pb2.ReserveRequest(txn_id="x" * (5 << 20)), timeout=20)
                assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            await n.net.stop()

    asyncio.run(main())


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("where", ["mid-block", "before-done", "before-stored"])
def test_lost_connection_discards_the_blocks_in_flight_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             where: str):
    """mid-block: cut during Cascade; before-done: Bob has his key, Alice never hears DONE (Bob
    must drop it); before-stored: Alice stored, Bob never hears STORED (Bob must store it when the
    next session's HELLO says so). Both stores stay equal, and the link recovers."""

    async def main() -> None:
        n = await running(tmp_path)
        cut: list[str] = []

        def fault(conn: FrameConnection, kind: Kind, block: int, payload: bytes) -> str:
            if cut:
                return "send"
            bob, alice = conn is n.conn_of("bob"), conn is n.conn_of("alice")
            if (where == "mid-block" and bob and kind == Kind.DATA and msg_kind(payload) == pipeline.CASCADE
                    and block >= 2) or (where == "before-done" and bob and kind == Kind.DATA
                                        and msg_kind(payload) == pipeline.DONE) or (
                    where == "before-stored" and alice and kind == Kind.STORED):
                cut.append(f"block {block}")
                return "abort" if where == "mid-block" else "lose"
            return "send"

        try:
            first = n.alice.session.sid if n.alice.session else ""
            with faults(monkeypatch, fault):
                await wait_for(lambda: bool(cut), 60, "the cut")
                await n.keys_after(2)
            assert n.alice.session is not None and n.alice.session.sid != first  # a new session
            if where == "before-done":
                assert n.bob.carry.dropped >= 1
            if where == "before-stored":
                assert n.bob.carry.resolved >= 1
            # the pools were far from full: no block's key was cut (blocks whose CONFIRMs
            # overlapped once were, each counting the other's room as taken)
            assert n.alice.stats.cut_bits == n.bob.stats.cut_bits == 0
        finally:
            await n.net.stop()
        assert same_stores(tmp_path) > 0

    asyncio.run(main())


def test_duplicated_and_reordered_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A duplicated Cascade frame fails authentication (its counter) and the block is discarded
    at both ends; frames of independent blocks reordered change nothing."""

    async def main() -> None:
        n = await running(tmp_path, {**FAST, "cascade_variant": "optimized"})
        done: set[str] = set()

        def fault(conn: FrameConnection, kind: Kind, block: int, payload: bytes) -> str:
            if conn is not n.conn_of("alice") or kind != Kind.DATA:
                return "send"
            if "dup" not in done and msg_kind(payload) == pipeline.CASCADE and block >= 1:
                done.add("dup")
                return "dup"
            if "hold" not in done and "dup" in done and msg_kind(payload) == pipeline.CASCADE:
                done.add("hold")  # released after the next frame, which may be another block's
                return "hold"
            return "send"

        try:
            aborted = n.alice.stats.blocks_aborted + n.bob.stats.blocks_aborted
            with faults(monkeypatch, fault):
                await wait_for(lambda: len(done) == 2, 60, "the duplicate and the reordering")
                await n.keys_after(2)
            assert n.alice.stats.blocks_aborted + n.bob.stats.blocks_aborted > aborted
        finally:
            await n.net.stop()
        assert same_stores(tmp_path) > 0

    asyncio.run(main())


def test_a_silent_peer_ends_the_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Alice's frames (PINGs and STOREDs too) stop reaching Bob: he ends the session after
    RECV_TIMEOUT; the next session resolves what was pending and key flows again."""
    monkeypatch.setattr(session, "RECV_TIMEOUT", 1.5)
    monkeypatch.setattr(session, "PING_S", 0.2)

    async def main() -> None:
        n = await running(tmp_path)
        silent: list[FrameConnection] = []

        def fault(conn: FrameConnection, kind: Kind, block: int, payload: bytes) -> str:
            if not silent and conn is n.conn_of("alice") and kind == Kind.STORED:
                silent.append(conn)
            return "drop" if conn in silent else "send"

        try:
            with faults(monkeypatch, fault):
                await wait_for(lambda: bool(silent), 60, "Alice to fall silent")
                first = n.bob.session.sid if n.bob.session else ""
                await wait_for(lambda: n.bob.session is None or n.bob.session.sid != first, 30,
                               "Bob to end the silent session")
                await n.keys_after(2)
        finally:
            await n.net.stop()
        assert same_stores(tmp_path) > 0

    asyncio.run(main())


@pytest.mark.parametrize("order", ["both", "alice-first", "bob-first"])
def test_links_stopped_with_blocks_in_flight(tmp_path: Path, order: str):
    """What disabling or deleting a link does (runtime: link.stop()): blocks in flight finish or
    are dropped at both ends; nothing is left pending and both stores are equal."""

    async def main() -> None:
        n = await running(tmp_path, {**FAST, "cascade_variant": "optimized"})
        try:
            await wait_for(lambda: n.bob.session is not None and n.bob.session.in_flight >= 2, 60,
                           "two blocks in flight")
            if order == "both":
                await asyncio.gather(n.alice.stop(), n.bob.stop())
            else:
                first, second = (n.alice, n.bob) if order == "alice-first" else (n.bob, n.alice)
                await first.stop()
                await second.stop()
            assert not n.bob.carry.pending
        finally:
            await n.net.stop()
        assert same_stores(tmp_path) > 0

    asyncio.run(main())


def test_engine_cascade_variant_is_the_nodes_default(tmp_path: Path):
    """A link whose configuration names no Cascade variant runs the node's engine default; an
    unknown one stops the node before it starts, naming the valid ones (the model's enum)."""
    from sdqkd.harness.inprocess import start_network
    from sdqkd.node.config import ConfigError

    async def main() -> None:
        net = await start_network(PAIR, tmp_path / "ok", engine={"clock_scale": 0.01, "cascade_variant": "original"},
                                  wait_keys=False)
        try:
            ends = [link for rt in net.nodes.values() for link in rt.links.values()]
            assert len(ends) == 2 and {e.p.variant for e in ends} == {"original"}
        finally:
            await net.stop()
        with pytest.raises(ConfigError, match="engine.cascade_variant: must be one of 'original' or 'optimized', got 'bogus'"):
            await start_network(PAIR, tmp_path / "bad", engine={"cascade_variant": "bogus"}, timeout=10)

    asyncio.run(main())


def test_cascade_schedule_reaches_the_links_which_store_equal_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`engine: {cascade_schedule: serial}` reaches the receiving end's Cascade (Bob drives the
    order; Alice answers alike), and without it the links run the network default, balanced: both
    store equal keys. That balanced takes fewer round trips is shown on fixed keys (test_cascade,
    test_pipeline): on a live link a block's round trips vary too much (600-2,400 at this QBER)
    for a few blocks to show it."""
    from sdqkd.engine import cascade

    built: list[str] = []

    class Recording(cascade.CascadeBob):
        def __init__(self, *args: Any, schedule: str = "serial", **kwargs: Any) -> None:
            built.append(schedule)
            super().__init__(*args, schedule=schedule, **kwargs)

    monkeypatch.setattr(cascade, "CascadeBob", Recording)

    async def schedules(schedule: str | None) -> set[str]:
        built.clear()
        state = tmp_path / str(schedule)
        n = await running(state, {**FAST, "cascade_variant": "optimized",
                                  **({"cascade_schedule": schedule} if schedule else {})})
        try:
            assert {n.alice.p.schedule, n.bob.p.schedule} == {schedule or "balanced"}
            await n.keys_after(2)
            for end in (n.alice, n.bob):  # the blocks' stage CPU, summed per end (sdqkd bench link)
                assert all(end.stats.stage_cpu_s.get(s, 0.0) > 0 for s in ("sim", "sift", "cascade", "pa"))
            # the count the bench cuts its windows on: Bob's blocks of the session, each once it is reported
            bob = n.bob.session
            assert bob is not None and bob.ended == n.bob.stats.blocks_ok + n.bob.stats.blocks_aborted >= 2
        finally:
            await n.net.stop()
        assert same_stores(state) > 0
        return set(built)

    assert asyncio.run(schedules("serial")) == {"serial"}
    assert asyncio.run(schedules(None)) == {"balanced"}


def test_a_full_pool_pauses_the_link_at_the_topologys_max_key_count(tmp_path: Path):
    """`settings: {max_key_count: N}` reaches every node's LKMS: a link's pool fills to exactly N
    keys and no more (the blocks in flight as it fills keep only what fits, the same at both ends),
    its engine starts no more blocks, and both stores stay equal.
    Meanwhile both ends say so: `engine-state/paused` true and `qkdl_status` ACTIVE (the link is
    healthy, not down), in their trees and in the controller's view; keys delivered over ETSI 014
    make room, and the link produces again."""

    async def main() -> None:
        topo = {**PAIR, "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-b", "node": "B"}],
                "settings": {"max_key_count": 1500}}
        net = await start_network(topo, tmp_path, engine=FAST, wait_keys=True, timeout=120)
        n = Net(net, tmp_path)

        def engine_state(node: str) -> dict[str, Any]:
            """The link's engine-state in `node`'s tree as it is now (read afresh: updates replace it)."""
            entry = net.nodes[node].agent.root["qkd_node"]["qkd_links"]["qkd_link"][(n.bob.p.qkdl_id,)]
            return {"qkdl_status": entry.get("qkdl_status"), **entry["sdqkd-link"].get("engine-state", {})}

        def link_state(node: str) -> tuple[str, bool]:
            state = engine_state(node)
            return state["qkdl_status"], state.get("paused")

        try:
            assert all(rt.lkms is not None and rt.lkms.store.max_key_count == 1500 for rt in net.nodes.values())
            lkms = net.nodes["B"].lkms
            await wait_for(lambda: not lkms.has_room(n.bob.p.qkdl_id), 90, "the pool full")
            await wait_for(lambda: n.bob.session is not None and n.bob.session.in_flight == 0, 60,
                           "the blocks in flight ended")
            ok = n.alice.stats.blocks_ok
            await asyncio.sleep(3.0)
            assert n.alice.stats.blocks_ok == ok  # paused
            pools = [rt.lkms.key_store_stats()["pool"] for rt in net.nodes.values()]
            assert [p[0]["stored-keys"] for p in pools] == [1500, 1500]  # not one block more
            assert n.alice.stats.cut_bits == n.bob.stats.cut_bits  # both ends kept the same bits
            # the last block kept what fitted: cut, or (once in a while) the blocks' whole keys filled
            # the pool exactly; a block that did not fit was neither stored whole (1500 above) nor dropped
            assert n.bob.stats.cut_bits > 0 or n.alice.stats.blocks_aborted == n.bob.stats.blocks_aborted == 0
            for node in ("A", "B"):  # and both trees say how much (engine-state/cut-bits)
                await wait_for(lambda node=node: engine_state(node).get("cut-bits") == n.bob.stats.cut_bits,
                               10, f"cut-bits at {node}")
            active = ("etsi-qkd-node-types:ACTIVE", True)
            await wait_for(lambda: link_state("A") == active and link_state("B") == active, 10, "paused, ACTIVE")
            ctl = net.controller
            await wait_for(lambda: ctl.link_table()[0]["paused"] and ctl.link_table()[0]["up"], 10, "the controller's view")
            # the controller writes PENDING when a node comes back; a paused link with its session
            # up is up (no block would come to say so): it answers with its state
            await ctl._client("A").update_qkd_link(n.bob.p.qkdl_id, {"qkdl_status": "etsi-qkd-node-types:PENDING"})
            await wait_for(lambda: link_state("A") == active, 10, "ACTIVE again after the controller's PENDING")

            # room at both ends; the link may fill it again within a few blocks, so the moments it
            # is not paused are latched
            unpaused = {"A": False, "B": False, "controller": False}

            async def latch() -> None:
                while True:
                    for who in ("A", "B"):
                        unpaused[who] |= link_state(who)[1] is False
                    unpaused["controller"] |= not ctl.link_table()[0]["paused"]
                    await asyncio.sleep(0.005)

            watch = asyncio.create_task(latch())
            await asyncio.to_thread(deliver, net, 100)
            await wait_for(lambda: n.alice.stats.blocks_ok > ok, 60, "a block after the pause")
            await wait_for(lambda: all(unpaused.values()), 10, "not paused at both ends and in the controller's view")
            watch.cancel()
        finally:
            await net.stop()
        assert same_stores(tmp_path) >= 1500

    asyncio.run(main())
