"""Bench-only processes for `sdqkd bench restconf`: a node's RESTCONF server over an agent with N
links, or a bare aiohttp handler answering one small JSON body (the baseline)."""

from __future__ import annotations

import argparse
import asyncio
import uuid

from aiohttp import web

from sdqkd.argtypes import integer


async def bare_server() -> None:
    body = b'{"etsi-qkd-sdn-node:qkdl_enable":true}'

    async def leaf(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/yang-data+json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", leaf)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


async def node_server(links: int) -> None:
    from sdqkd.agent.server import NodeAgent
    from sdqkd.restconf import ModelAdapter, start_restconf

    agent = NodeAgent(str(uuid.uuid4()))
    ids = [str(uuid.uuid4()) for _ in range(links)]
    agent.root["qkd_node"]["qkd_links"] = {"qkd_link": {(i,): {
        "qkdl_id": i, "qkdl_enable": True, "qkdl_type": "etsi-qkd-node-types:PHYS",
        "qkdl_local": {"qkdn_id": agent.node_id}, "qkdl_remote": {"qkdn_id": str(uuid.uuid4())},
        "qkdl_performance": {"skr": 1000, "eskr": 900, "expected_consumption": 0}} for i in ids}}
    _runner, port, _server = await start_restconf(ModelAdapter(agent), "127.0.0.1:0")
    print(port, ids[0], flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["bare", "node"])
    ap.add_argument("--links", type=integer(1), default=50)
    a = ap.parse_args()
    asyncio.run(bare_server() if a.kind == "bare" else node_server(a.links))


if __name__ == "__main__":
    main()
