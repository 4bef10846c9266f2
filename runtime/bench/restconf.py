"""`sdqkd bench restconf`: a node's RESTCONF server against a bare aiohttp handler, measured in one
run on this machine, both in processes of their own, plain HTTP/1.1 on loopback with keep-alive.
The client is a minimal HTTP/1.1 reader on asyncio streams, so its own cost stays small and equal
for both. Figures: GET of one leaf (the target: p50 <= 2x the bare handler), GET of a list entry
and of the whole node (50 links), PATCH of one leaf (a full transaction through the agent)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from sdqkd.argtypes import integer

from ._timing import latencies_us, spawn_target, summary_us

YANG = "application/yang-data+json"
TARGET = "sdqkd.bench._restconf_target"


class Http:
    """One keep-alive HTTP/1.1 connection; request() returns (status, body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> Http:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {YANG}\r\n"
                f"Content-Type: {YANG}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.w.write(head.encode() + body)
        status_line = await self.r.readline()
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await self.r.readexactly(length) if length else b""
        return int(status_line.split()[1]), data

    def close(self) -> None:
        self.w.close()


async def _run(n: int, links: int) -> dict[str, Any]:
    bare_p, (bare_port,) = spawn_target(TARGET, "bare")
    node_p, (node_port, lid) = spawn_target(TARGET, "node", "--links", str(links))
    res: dict[str, Any] = {"links_in_tree": links}
    try:
        bare, node = await Http.open(int(bare_port)), await Http.open(int(node_port))
        link = f"/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link={lid}"
        leaf = f"{link}/qkdl_enable"
        status, body = await node.request("GET", leaf)
        assert status == 200 and json.loads(body) == {"etsi-qkd-sdn-node:qkdl_enable": True}, (status, body)

        async def ok(conn: Http, method: str, path: str, body: bytes = b"", want: int = 200) -> None:
            st, _ = await conn.request(method, path, body)
            if st != want:
                raise RuntimeError(f"{method} {path}: {st}")

        # interleaved rounds, so load changes on a shared machine hit both alike
        bare_l, leaf_l = [], []
        for _ in range(5):
            bare_l += await latencies_us(lambda: ok(bare, "GET", leaf), n // 5, warm=50)
            leaf_l += await latencies_us(lambda: ok(node, "GET", leaf), n // 5, warm=50)
        res["bare_aiohttp"] = summary_us(bare_l)
        res["get_leaf"] = summary_us(leaf_l)
        res["get_entry"] = summary_us(await latencies_us(lambda: ok(node, "GET", link), n // 2))
        res["get_node"] = summary_us(await latencies_us(lambda: ok(node, "GET", "/restconf/data/etsi-qkd-sdn-node:qkd_node"),
                                          max(50, n // 10), warm=20))
        flip = [False]

        async def patch() -> None:
            flip[0] = not flip[0]
            await ok(node, "PATCH", leaf, json.dumps({"etsi-qkd-sdn-node:qkdl_enable": flip[0]}).encode(), 204)

        res["patch_leaf"] = summary_us(await latencies_us(patch, max(100, n // 10), warm=20))
        bare.close()
        node.close()
    finally:
        for p in (bare_p, node_p):
            p.terminate()
            p.wait(10)
    res["get_leaf_over_bare_p50"] = round(res["get_leaf"]["p50_us"] / res["bare_aiohttp"]["p50_us"], 2)
    res["target"] = {"get_leaf_over_bare_p50": 2.0}
    res["ok"] = res["get_leaf_over_bare_p50"] <= 2.0
    return res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench restconf")
    ap.add_argument("--n", type=integer(1), default=5000, help="requests per latency figure")
    ap.add_argument("--links", type=integer(1), default=50, help="links in the agent's tree")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = asyncio.run(_run(a.n, a.links))
    if a.json:
        print(json.dumps(res))
    else:
        for k in ("bare_aiohttp", "get_leaf", "get_entry", "get_node", "patch_leaf"):
            print(f"{k:28s} p50 {res[k]['p50_us']:9.1f} us   p99 {res[k]['p99_us']:9.1f} us")
        print(f"{'GET leaf / bare (p50)':28s} {res['get_leaf_over_bare_p50']:.2f}x   target <= 2x")
    return 0 if res["ok"] else 1
