"""Bench-only processes for `sdqkd bench gnmi`: the agent with N links and a control method
that feeds state updates as fast as it can, or a bare grpc.aio unary echo server."""

from __future__ import annotations

import argparse
import asyncio
import uuid

import grpc

from sdqkd.argtypes import integer


def _identity(b: bytes) -> bytes:
    return b


async def echo_server() -> None:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(call, _identity, _identity)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def agent_server(links: int) -> None:
    from sdqkd.agent.serve import start_gnmi
    from sdqkd.agent.server import NodeAgent

    agent = NodeAgent(str(uuid.uuid4()))
    ids = [str(uuid.uuid4()) for _ in range(links)]
    agent.root["qkd_node"]["qkd_links"] = {"qkd_link": {(i,): {
        "qkdl_id": i, "qkdl_enable": True, "qkdl_type": "etsi-qkd-node-types:PHYS",
        "qkdl_local": {"qkdn_id": agent.node_id}, "qkdl_remote": {"qkdn_id": str(uuid.uuid4())},
        "qkdl_performance": {"skr": 1000, "eskr": 900, "expected_consumption": 0}} for i in ids}}
    async def feed(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        n = int(request.decode())
        path = f"/qkd_node/qkd_links/qkd_link[qkdl_id={ids[0]}]/qkdl_performance/skr"
        for i in range(n):
            agent.state.update({path: i})
            if i % 200 == 199:
                await asyncio.sleep(0)  # let the stream pump send
        return b"done"

    control = grpc.method_handlers_generic_handler("bench.Control", {
        "Feed": grpc.unary_unary_rpc_method_handler(feed, _identity, _identity)})
    server, port = await start_gnmi(agent, "127.0.0.1:0", extra_handlers=(control,))
    print(port, ids[0], flush=True)
    await server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["echo", "agent"])
    ap.add_argument("--links", type=integer(1), default=50)
    a = ap.parse_args()
    asyncio.run(echo_server() if a.kind == "echo" else agent_server(a.links))


if __name__ == "__main__":
    main()
