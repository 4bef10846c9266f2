"""The agent's runtime side: state feed, notifications, hooks that veto, 64-bit JSON_IETF,
1000 open streams, loopback-only plain text; all through a real grpc.aio server."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import pytest

from sdqkd.agent.serve import start_gnmi
from sdqkd.agent.server import NodeAgent
from sdqkd.generated.agent_skeleton import NOTIFICATIONS, HookVeto, ModelHooks
from sdqkd.generated.gnmi_support import parse_path as P
from sdqkd.generated.gnmi_support import path_str
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc

LINKS = "/qkd_node/qkd_links/qkd_link"


def run(coro):
    return asyncio.run(coro)


async def serve(agent: NodeAgent):
    server, port = await start_gnmi(agent, "127.0.0.1:0")
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, ch, gnmi_pb2_grpc.gNMIStub(ch)


def link_body(agent: NodeAgent, lid: str, **kw: Any) -> dict[str, Any]:
    return {"qkdl_id": lid, "qkdl_enable": True, "qkdl_local": {"qkdn_id": agent.node_id},
            "qkdl_type": "etsi-qkd-node-types:PHYS", **kw}


def upd(path: str, obj: Any) -> gnmi_pb2.Update:
    return gnmi_pb2.Update(path=P(path), val=gnmi_pb2.TypedValue(json_ietf_val=json.dumps(obj).encode()))


def sub_req(*paths: str, **kw: Any):
    async def gen():
        yield gnmi_pb2.SubscribeRequest(subscribe=gnmi_pb2.SubscriptionList(
            mode=gnmi_pb2.SubscriptionList.STREAM, encoding=gnmi_pb2.JSON_IETF,
            subscription=[gnmi_pb2.Subscription(path=P(p), mode=gnmi_pb2.ON_CHANGE) for p in paths], **kw))
        await asyncio.Event().wait()  # keep the request side open
    return gen()


async def next_update(call) -> gnmi_pb2.Notification:
    while True:
        r = await asyncio.wait_for(call.read(), 10)
        if r.HasField("update"):
            return r.update


def test_state_feed_reaches_get_and_subscribers_with_64bit_strings():
    async def main():
        agent = NodeAgent(str(uuid.uuid4()))
        server, ch, stub = await serve(agent)
        call = stub.Subscribe(sub_req("/qkd_node/sdqkd-key-store"))
        assert (await call.read()).sync_response  # nothing there yet
        agent.state.update({"/qkd_node/sdqkd-key-store/stored-bits": 2**40, "/qkd_node/sdqkd-key-store/stored-keys": 7})
        n = await next_update(call)
        got = {path_str(u.path): json.loads(u.val.json_ietf_val) for u in n.update}
        assert got == {"/qkd_node/sdqkd-key-store/stored-bits": str(2**40), "/qkd_node/sdqkd-key-store/stored-keys": "7"}
        r = await stub.Get(gnmi_pb2.GetRequest(path=[P("/qkd_node/sdqkd-key-store/stored-bits")], encoding=gnmi_pb2.JSON))
        assert json.loads(r.notification[0].update[0].val.json_val) == 2**40  # JSON: a number
        with pytest.raises(ValueError, match="stored-bits"):
            agent.state.update({"/qkd_node/sdqkd-key-store/stored-bits": -1})
        with pytest.raises(ValueError, match="nope"):
            agent.state.update({"/qkd_node/nope": 1})
        call.cancel()
        await ch.close()
        await server.stop(None)

    run(main())


def test_all_eleven_notifications_are_delivered():
    assert len(NOTIFICATIONS) == 11

    async def main():
        agent = NodeAgent(str(uuid.uuid4()))
        server, ch, stub = await serve(agent)
        call = stub.Subscribe(sub_req(*[f"/{n}" for n in NOTIFICATIONS]))
        assert (await call.read()).sync_response
        lid = str(uuid.uuid4())
        samples = {
            "sdqkdn_link_down": {"qkd_link": {"qkdl_id": lid, "reason": "fibre cut"}},
            "alarm": {"link": {"qkdl_id": lid, "message": "QBER 31 %", "severity": "etsi-qkd-node-types:MAJOR"}},
        }
        for name in NOTIFICATIONS:
            agent.state.notify(name, samples.get(name, {}))
        seen = {}
        while len(seen) < 11:
            n = await next_update(call)
            for u in n.update:
                seen[path_str(u.path).strip("/")] = json.loads(u.val.json_ietf_val)
        assert seen["sdqkdn_link_down"] == samples["sdqkdn_link_down"]
        assert seen["alarm"]["link"]["severity"] == "etsi-qkd-node-types:MAJOR"
        with pytest.raises(ValueError, match="unknown notification"):
            agent.state.notify("no_such", {})
        with pytest.raises(ValueError, match="qkdl_id"):
            agent.state.notify("sdqkdn_link_down", {"qkd_link": {"qkdl_id": "not-a-uuid"}})
        call.cancel()
        await ch.close()
        await server.stop(None)

    run(main())


class VetoingHooks(ModelHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, dict[str, Any]]] = []
        self.applied: list[tuple[Any, Any]] = []

    async def validate_qkd_link(self, txn, old, new, *, qkdl_id):
        self.calls.append((old, new, {"qkdl_id": qkdl_id}))
        if new is not None and new.get("qkdl_enable") is False and old is not None:
            raise HookVeto("the engine cannot stop this link now")

    async def apply_qkd_link(self, txn, old, new, *, qkdl_id):
        self.applied.append((old, new))


def test_hooks_see_each_change_and_can_veto():
    async def main():
        hooks = VetoingHooks()
        agent = NodeAgent(str(uuid.uuid4()), hooks=hooks)
        agent.calls = hooks.calls
        server, ch, stub = await serve(agent)
        lid = str(uuid.uuid4())
        p = f"{LINKS}[qkdl_id={lid}]"
        await stub.Set(gnmi_pb2.SetRequest(update=[upd(p, link_body(agent, lid))]))
        old, new, keys = agent.calls[-1]
        assert old is None and new["qkdl_id"] == lid and keys == {"qkdl_id": lid}
        assert hooks.applied == [(None, new)]  # applied once, after the commit
        call = stub.Subscribe(sub_req(p, updates_only=True))
        assert (await call.read()).sync_response
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Set(gnmi_pb2.SetRequest(update=[upd(f"{p}/qkdl_enable", False)]))
        assert e.value.code() == grpc.StatusCode.ABORTED and "cannot stop this link" in e.value.details()
        assert lid in e.value.details()
        assert len(hooks.applied) == 1  # a vetoed change is never applied
        r = await stub.Get(gnmi_pb2.GetRequest(path=[P(f"{p}/qkdl_enable")], encoding=gnmi_pb2.JSON_IETF))
        assert json.loads(r.notification[0].update[0].val.json_ietf_val) is True
        await stub.Set(gnmi_pb2.SetRequest(delete=[P(p)]))
        assert agent.calls[-1][1] is None and agent.calls[-1][0]["qkdl_id"] == lid
        n = await next_update(call)  # the vetoed Set was never seen; the delete is
        assert [path_str(d) for d in n.delete] == [p] and not n.update
        call.cancel()
        await ch.close()
        await server.stop(None)

    run(main())


def test_thousand_open_streams_do_not_block_get_and_set():
    async def main():
        agent = NodeAgent(str(uuid.uuid4()))
        server, ch, stub = await serve(agent)
        calls = [stub.Subscribe(sub_req(f"{LINKS}/qkdl_enable")) for _ in range(1000)]
        for c in calls:
            assert (await c.read()).sync_response
        assert agent.open_streams == 1000
        r = await stub.Get(gnmi_pb2.GetRequest(path=[P("/qkd_node/qkdn_id")], encoding=gnmi_pb2.JSON_IETF))
        assert json.loads(r.notification[0].update[0].val.json_ietf_val) == agent.node_id
        lid = str(uuid.uuid4())
        await stub.Set(gnmi_pb2.SetRequest(update=[upd(f"{LINKS}[qkdl_id={lid}]", link_body(agent, lid))]))
        got = await asyncio.gather(*(next_update(c) for c in calls))
        assert all(path_str(n.update[0].path) == f"{LINKS}[qkdl_id={lid}]/qkdl_enable" for n in got)
        for c in calls:
            c.cancel()
        await ch.close()
        await server.stop(None)

    run(main())


def test_a_subscriber_that_stops_reading_is_cut_off_not_buffered():
    """A STREAM client that never reads past sync_response: its responses back up into its
    bounded change queue, which overflows (the subscription is cut off) instead of the node
    queueing every change for it; before, its response queue took them all. When it reads again
    it gets what was queued, then RESOURCE_EXHAUSTED (before: the stream ended with OK)."""
    async def main():
        agent = NodeAgent(str(uuid.uuid4()))
        server, ch, stub = await serve(agent)
        try:
            call = stub.Subscribe(sub_req("/alarm"))
            assert (await call.read()).sync_response
            (sub,) = agent.hub._subs
            alarm = {"link": {"qkdl_id": str(uuid.uuid4()), "message": "x" * 2000,
                              "severity": "etsi-qkd-node-types:MINOR"}}
            sent = 0
            while not sub.overflowed and sent < 200_000:  # (the transport's buffers take some MB first)
                for _ in range(100):
                    agent.state.notify("alarm", alarm)
                sent += 100
                await asyncio.sleep(0)  # the pump and the server run between bursts
            assert sub.overflowed, f"{sent} changes queued for a client that reads nothing"
            # reading again, it gets what was queued, then a status that says why the stream ended
            got = 0
            with pytest.raises(grpc.aio.AioRpcError) as e:
                while (await asyncio.wait_for(call.read(), 10)) is not grpc.aio.EOF:
                    got += 1
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
            assert "cut off" in e.value.details() and "10000 changes behind" in e.value.details()
            assert 0 < got < sent
        finally:  # a failure here must not leave the server running (the process would hang)
            await ch.close()
            await server.stop(None)

    run(main())


def test_plain_text_only_on_loopback():
    async def main():
        with pytest.raises(ValueError, match="loopback"):
            await start_gnmi(NodeAgent(str(uuid.uuid4())), "0.0.0.0:0")

    run(main())


def test_server_only_tls_and_mutual_tls(tmp_path):
    from sdqkd.pki import write_ca, write_identity

    ca, ca_path = write_ca(tmp_path)
    srv = write_identity(ca, ca_path, tmp_path, "node", server=True)
    cli = write_identity(ca, ca_path, tmp_path, "ctl", server=False)

    async def main():
        for mutual in (False, True):
            agent = NodeAgent(str(uuid.uuid4()))
            server, port = await start_gnmi(agent, "127.0.0.1:0", tls=srv, mutual=mutual)
            bare = grpc.ssl_channel_credentials(ca_path.read_bytes())
            full = grpc.ssl_channel_credentials(ca_path.read_bytes(), cli.key.read_bytes(), cli.cert.read_bytes())
            for creds, should_work in ((bare, not mutual), (full, True)):
                async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
                    call = gnmi_pb2_grpc.gNMIStub(ch).Capabilities(gnmi_pb2.CapabilityRequest(), timeout=5)
                    if should_work:
                        assert (await call).gNMI_version == "0.10.0"
                    else:
                        with pytest.raises(grpc.aio.AioRpcError) as e:
                            await call
                        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            await server.stop(None)

    run(main())


def test_state_under_a_false_when_does_not_wedge_later_sets():
    """QA's wedge over gNMI (model alone, no node hooks): a replace leaves a PHYS link without
    qkdl_type, the state feed goes on publishing its QBER (phys_perf, `when ../qkdl_type =
    'PHYS'`); that state is not written, and later Sets, the link's and unrelated ones, go
    through."""
    async def main():
        agent = NodeAgent(str(uuid.uuid4()))
        server, ch, stub = await serve(agent)
        lid = str(uuid.uuid4())
        p = f"{LINKS}[qkdl_id={lid}]"
        qber = f"{p}/qkdl_performance/phys_perf[perf_type=etsi-qkd-node-types:QBER]/value"
        await stub.Set(gnmi_pb2.SetRequest(update=[upd(p, link_body(agent, lid))]))
        agent.state.update({qber: "0.020"})
        r = await stub.Set(gnmi_pb2.SetRequest(replace=[upd(p, {"qkdl_id": lid, "qkdl_enable": True})]))
        assert [u.op for u in r.response] == [gnmi_pb2.UpdateResult.REPLACE]
        agent.state.update({qber: "0.021"})  # the engine's next block
        await stub.Set(gnmi_pb2.SetRequest(update=[upd("/qkd_node/qkdn_location_id", "building 2b")]))
        await stub.Set(gnmi_pb2.SetRequest(update=[upd(f"{p}/qkdl_enable", False)]))
        r = await stub.Get(gnmi_pb2.GetRequest(path=[P("/qkd_node/qkdn_location_id"), P(p)],
                                               encoding=gnmi_pb2.JSON_IETF))
        assert json.loads(r.notification[0].update[0].val.json_ietf_val) == "building 2b"
        entry = json.loads(r.notification[1].update[0].val.json_ietf_val)
        assert entry == {"qkdl_id": lid, "qkdl_enable": False}  # no phys_perf under a link that is not PHYS
        await ch.close()
        await server.stop(None)

    run(main())


def test_on_change_hears_of_changed_state_not_of_every_write():
    """The runtime writes a link's status and rate after every block; an ON_CHANGE subscriber
    gets a leaf only when its value changed (gNMI spec 3.5.1.5.2), not each rewrite of it."""
    from sdqkd.agent.subscriptions import StreamSub
    from sdqkd.agent.transaction import resolve_text

    async def main():
        agent = NodeAgent(str(uuid.uuid4()))
        sub = StreamSub([resolve_text("/qkd_node/sdqkd-key-store").elems])
        agent.datastore.hub.add(sub)
        keys, bits = "/qkd_node/sdqkd-key-store/stored-keys", "/qkd_node/sdqkd-key-store/stored-bits"
        agent.state.update({keys: 7, bits: 1792})
        agent.state.update({keys: 7, bits: 1792})  # the same again: nothing
        agent.state.update({keys: 8, bits: 1792})  # one leaf changed: that leaf
        got = []
        while not sub.queue.empty():
            got.append([(c[0][-1][0], c[2]) for c in sub.queue.get_nowait()])
        assert got == [[("stored-keys", 7), ("stored-bits", 1792)], [("stored-keys", 8)]]

    run(main())
