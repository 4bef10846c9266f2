"""Validators of RESTCONF answers (RFC 8040 §3.4.1.1, RFC 7232): the ETag describes the
representation; Last-Modified is the last configuration commit, so it is sent, and
If-Modified-Since honoured, only for answers that hold configuration alone. State changes
without a commit: a 304 by date would hand a client stale counters."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from sdqkd.agent.server import NodeAgent
from sdqkd.restconf import ModelAdapter, start_restconf

ROOT = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
H = {"Accept": "application/yang-data+json"}
LATER = "Fri, 01 Jan 2100 00:00:00 GMT"  # after any commit


def test_last_modified_only_on_configuration_and_a_304_by_date_never_hides_state() -> None:
    async def main() -> None:
        agent = NodeAgent(str(uuid.uuid4()), target="A")
        runner, port, _server = await start_restconf(ModelAdapter(agent), "127.0.0.1:0")
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                r = await c.get(f"{ROOT}/qkdn_id", headers=H)  # a config leaf
                assert r.status_code == 200 and r.headers["last-modified"].endswith("GMT")
                r = await c.get(f"{ROOT}/qkdn_id", headers={**H, "If-Modified-Since": LATER})
                assert r.status_code == 304
                r = await c.get(ROOT, headers={**H, "If-Modified-Since": LATER}, params={"content": "config"})
                assert r.status_code == 304

                counter = f"{ROOT}/sdqkd-node-ext:sdqkd-restconf"  # state: requests served
                agent.state.update({"/qkd_node/sdqkd-node-ext:sdqkd-restconf/requests": 1})
                first = await c.get(counter, headers=H)
                assert first.status_code == 200 and "last-modified" not in first.headers
                agent.state.update({"/qkd_node/sdqkd-node-ext:sdqkd-restconf/requests": 2})  # no commit
                again = await c.get(counter, headers={**H, "If-Modified-Since": LATER})
                assert again.status_code == 200 and again.json() != first.json()
                whole = await c.get(ROOT, headers={**H, "If-Modified-Since": LATER})  # content=all
                assert whole.status_code == 200 and "last-modified" not in whole.headers
                r = await c.get(counter, headers={**H, "If-None-Match": again.headers["etag"]})
                assert r.status_code == 304  # the ETag still revalidates state
        finally:
            await runner.cleanup()

    asyncio.run(main())
