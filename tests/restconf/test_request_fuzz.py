"""Property: whatever a client sends, in the compatibility dialect (TeraFlowSDN) or strict RFC
8040, the node answers 2xx or 4xx, never 5xx, and a refused request leaves the configuration
exactly as it was."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdqkd.agent.server import NodeAgent
from sdqkd.restconf import ModelAdapter, start_restconf
from sdqkd.restconf.adapter import MERGE, Edit

ROOT = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
NODE_ID, PEER = str(uuid.uuid4()), str(uuid.uuid4())
NAMES = ["qkd_links", "qkd_link", "qkdl_id", "qkdl_type", "qkdl_local", "qkdl_remote", "qkdn_id", "qkdi_id",
         "virt_prev_hop", "virt_next_hop", "virt_bandwidth", "qkdl_enable", "qkd_applications", "qkd_app", "app_id",
         "sdqkd-link", "etsi-qkd-sdn-node:qkd_links", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**33), st.sampled_from(
    [NODE_ID, PEER, str(uuid.uuid4()), "etsi-qkd-node-types:PHYS", "etsi-qkd-node-types:VIRT", "", "0", "1"]),
    st.text(max_size=8))
JSON = st.recursive(SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(NAMES), kids, max_size=4)), max_leaves=12)
PATHS = st.sampled_from([f"{ROOT}/qkd_links/", f"{ROOT}/", f"{ROOT}/qkd_applications/", f"{ROOT}/qkd_interfaces/",
                         f"{ROOT}/qkd_links/qkd_link={uuid.uuid4()}/", "/restconf/data/etsi-qkd-sdn-node:",
                         f"{ROOT}/qkd_links", ROOT, f"{ROOT}/qkd_links/qkd_link={uuid.uuid4()}", "/restconf/data"])
DIALECTS = st.sampled_from([{"Accept": "*/*"}, {"Accept": "application/yang-data+json",
                                                "Content-Type": "application/yang-data+json"}])


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[str, NodeAgent]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    agent = NodeAgent(NODE_ID)

    async def start() -> Any:
        adapter = ModelAdapter(agent)
        iface = (("qkd_node", ()), ("qkd_interfaces", ()), ("qkd_interface", (("qkdi_id", "1"),)))
        await adapter.commit([Edit(MERGE, iface, {"qkdi_id": 1, "sdqkd-node-ext:sdqkd-interface": {
            "peer-node-id": PEER, "peer-qkdi-id": 1, "classical-endpoint": "127.0.0.1:9"}})])
        return await start_restconf(adapter, "127.0.0.1:0")

    runner, port, _server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield f"127.0.0.1:{port}", agent
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]), path=PATHS, body=JSON, headers=DIALECTS)
def test_requests_never_fail_the_node(node: tuple[str, NodeAgent], method: str, path: str, body: Any,
                                      headers: dict[str, str]):
    address, agent = node
    strict = {"Accept": "application/yang-data+json"}
    with httpx.Client(base_url=f"http://{address}", timeout=30) as c:
        before = c.get(f"{ROOT}?content=config", headers=strict).json()
        r = c.request(method, path, json=body, headers=headers)
        assert r.status_code < 500, (method, path, body, r.text)
        if r.status_code >= 400:
            assert "ietf-restconf:errors" in r.json()
            assert c.get(f"{ROOT}?content=config", headers=strict).json() == before, (method, path, body)
