"""An idle network whose key pools are full keeps its nodes. The controller pings each node's
gNMI server every 2 s (keepalive) on a Subscribe stream that has gone quiet; the nodes' servers
answered with GOAWAY "too_many_pings" ~134 s after the start, and the controller took every node
for lost and provisioned it again (runtime/agent/serve.py, KEEPALIVE_ACCEPTED)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sdqkd.harness.inprocess import start_network

# small pools: full (and the network quiet) within seconds
TOPOLOGY = {"nodes": [{"name": n} for n in "ABC"],
            "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}], "saes": [],
            "settings": {"max_key_count": 2000}}


@pytest.mark.slow
def test_an_idle_network_of_full_pools_keeps_its_nodes(tmp_path: Path) -> None:
    async def quiet() -> list[Any]:
        net = await start_network(TOPOLOGY, tmp_path, timeout=120.0)
        net.owns_state_dir = True  # its PKI and key stores go with it
        try:
            await asyncio.sleep(170)
            assert net.controller is not None
            return [e for e in net.controller.events if e[0] == "node-down"]
        finally:
            await net.stop()

    assert asyncio.run(quiet()) == []
