"""`sdqkd bench gnmi`: the agent against a bare grpc.aio unary echo, measured in one run on
this machine. Get of one leaf and of the whole tree (p50, p99), Set of one link, ON_CHANGE
updates per second on one stream, and Get p99 while 1000 streams are open.
Targets: Get leaf <= 2x echo latency; >= 20,000 ON_CHANGE updates/s; Get p99 <= 10 ms with 1000 streams."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sdqkd.argtypes import integer
from sdqkd.generated import paths
from sdqkd.generated.gnmi_support import parse_path as P
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc

from ._timing import latencies_us, spawn_target, summary_us

TARGET = "sdqkd.bench._gnmi_target"


def _set_link(stub: gnmi_pb2_grpc.gNMIStub, node_id: str) -> Callable[[], Awaitable[None]]:
    """One Set creating a link and one deleting it (the transaction's whole path, twice)."""

    async def set_link() -> None:
        new = str(uuid.uuid4())
        body = {"qkdl_id": new, "qkdl_enable": True, "qkdl_local": {"qkdn_id": node_id},
                "qkdl_type": "etsi-qkd-node-types:PHYS"}
        link = paths.qkd_node().qkd_links().qkd_link(qkdl_id=new).path()
        await stub.Set(gnmi_pb2.SetRequest(update=[gnmi_pb2.Update(
            path=link, val=gnmi_pb2.TypedValue(json_ietf_val=json.dumps(body).encode()))]))
        await stub.Set(gnmi_pb2.SetRequest(delete=[link]))

    return set_link


async def _node_id(stub: gnmi_pb2_grpc.gNMIStub) -> str:
    r = await stub.Get(gnmi_pb2.GetRequest(path=[paths.qkd_node().qkdn_id], encoding=gnmi_pb2.JSON_IETF))
    return str(json.loads(r.notification[0].update[0].val.json_ietf_val))


async def _baseline(python: str, links: int, n: int) -> dict[str, Any]:
    """Get of one leaf and Set latency of an agent run by another interpreter (an older
    install, e.g. the main branch's venv), measured in the same run as ours."""
    proc, (port, lid) = spawn_target(TARGET, "agent", "--links", str(links), python=python)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = gnmi_pb2_grpc.gNMIStub(ch)
            leaf = gnmi_pb2.GetRequest(path=[paths.qkd_node().qkd_links().qkd_link(qkdl_id=lid).qkdl_enable],
                                       encoding=gnmi_pb2.JSON_IETF)
            return {"python": python, "get_leaf": summary_us(await latencies_us(lambda: stub.Get(leaf), n)),
                    "set_link_create_and_delete": summary_us(await latencies_us(_set_link(stub, await _node_id(stub)),
                                                                  max(100, n // 10), warm=20))}
    finally:
        proc.terminate()
        proc.wait(10)


async def _run(n: int, links: int, streams: int, feed: int, baseline: str | None = None) -> dict[str, Any]:
    echo_p, (echo_port,) = spawn_target(TARGET, "echo")
    agent_p, (agent_port, lid) = spawn_target(TARGET, "agent", "--links", str(links))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as ech, \
                grpc.aio.insecure_channel(f"127.0.0.1:{agent_port}") as ach:
            get_leaf_req = gnmi_pb2.GetRequest(
                path=[paths.qkd_node().qkd_links().qkd_link(qkdl_id=lid).qkdl_enable], encoding=gnmi_pb2.JSON_IETF)
            echo = ech.unary_unary("/bench.Echo/Call", request_serializer=None, response_deserializer=None)
            payload = get_leaf_req.SerializeToString()
            stub = gnmi_pb2_grpc.gNMIStub(ach)
            res: dict[str, Any] = {"links_in_tree": links}
            res["echo"] = summary_us(await latencies_us(lambda: echo(payload), n))
            res["get_leaf"] = summary_us(await latencies_us(lambda: stub.Get(get_leaf_req), n))
            whole = gnmi_pb2.GetRequest(path=[P("/")], encoding=gnmi_pb2.JSON_IETF)
            res["get_tree"] = summary_us(await latencies_us(lambda: stub.Get(whole), max(50, n // 10), warm=20))
            set_link = _set_link(stub, await _node_id(stub))
            res["set_link_create_and_delete"] = summary_us(await latencies_us(set_link, max(100, n // 10), warm=20))
            if baseline:
                res["baseline"] = await _baseline(baseline, links, n)
                res["set_over_baseline_p50"] = round(res["set_link_create_and_delete"]["p50_us"]
                                                     / res["baseline"]["set_link_create_and_delete"]["p50_us"], 2)

            # ON_CHANGE throughput on one stream
            async def reqs(path: str) -> AsyncIterator[gnmi_pb2.SubscribeRequest]:
                yield gnmi_pb2.SubscribeRequest(subscribe=gnmi_pb2.SubscriptionList(
                    mode=gnmi_pb2.SubscriptionList.STREAM, encoding=gnmi_pb2.JSON_IETF, updates_only=True,
                    subscription=[gnmi_pb2.Subscription(path=P(path), mode=gnmi_pb2.ON_CHANGE)]))
                await asyncio.Event().wait()

            call = stub.Subscribe(reqs(f"/qkd_node/qkd_links/qkd_link[qkdl_id={lid}]/qkdl_performance/skr"))
            assert (await call.read()).sync_response
            control = ach.unary_unary("/bench.Control/Feed")
            fed = asyncio.ensure_future(control(str(feed).encode()))
            got, t0 = 0, 0.0
            while got < feed:
                r = await call.read()
                if not got:
                    t0 = time.perf_counter()
                got += len(r.update.update)
            dt = time.perf_counter() - t0
            await fed
            call.cancel()
            res["on_change_updates_per_s"] = round(got / dt)

            # Get p99 while `streams` subscriptions are open
            calls = [stub.Subscribe(reqs("/qkd_node/qkd_links/qkd_link/qkdl_enable")) for _ in range(streams)]
            for c in calls:
                assert (await c.read()).sync_response
            res["open_streams"] = streams
            res["get_leaf_with_streams"] = summary_us(await latencies_us(lambda: stub.Get(get_leaf_req), n))
            for c in calls:
                c.cancel()
    finally:
        for p in (echo_p, agent_p):
            p.terminate()
            p.wait(10)
    res["get_leaf_over_echo_p50"] = round(res["get_leaf"]["p50_us"] / res["echo"]["p50_us"], 2)
    res["targets"] = {"get_leaf_over_echo": 2.0, "on_change_updates_per_s": 20000, "get_p99_with_streams_ms": 10}
    res["ok"] = (res["get_leaf_over_echo_p50"] <= 2.0 and res["on_change_updates_per_s"] >= 20000
                 and res["get_leaf_with_streams"]["p99_us"] <= 10_000)
    return res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench gnmi")
    ap.add_argument("--n", type=integer(1), default=2000, help="calls per latency figure")
    ap.add_argument("--links", type=integer(1), default=50, help="links in the agent's tree")
    ap.add_argument("--streams", type=integer(1), default=1000)
    ap.add_argument("--feed", type=integer(1), default=100_000, help="ON_CHANGE updates to stream")
    ap.add_argument("--baseline-python", metavar="PYTHON",
                    help="also measure Get/Set of the agent an older install runs (its interpreter)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = asyncio.run(_run(a.n, a.links, a.streams, a.feed, a.baseline_python))
    if a.json:
        print(json.dumps(res))
    else:
        for k in ("echo", "get_leaf", "get_tree", "set_link_create_and_delete", "get_leaf_with_streams"):
            print(f"{k:28s} p50 {res[k]['p50_us']:9.1f} us   p99 {res[k]['p99_us']:9.1f} us")
        print(f"{'get leaf / echo (p50)':28s} {res['get_leaf_over_echo_p50']:.2f}x   target <= 2x")
        if "baseline" in res:
            for k in ("get_leaf", "set_link_create_and_delete"):
                print(f"{'baseline ' + k:28s} p50 {res['baseline'][k]['p50_us']:9.1f} us   "
                      f"p99 {res['baseline'][k]['p99_us']:9.1f} us")
            print(f"{'Set / baseline Set (p50)':28s} {res['set_over_baseline_p50']:.2f}x")
        print(f"{'ON_CHANGE updates/s':28s} {res['on_change_updates_per_s']}   target >= 20000")
        print(f"{'Get p99, ' + str(res['open_streams']) + ' streams open':28s} "
              f"{res['get_leaf_with_streams']['p99_us'] / 1000:.2f} ms   target <= 10 ms")
    return 0 if res["ok"] else 1
