"""pytest plugin (entry point `pytest11`): a fixture that starts a QKD network and yields its
endpoints.

    def test_my_app(sdqkd_network):
        net = sdqkd_network({"nodes": [...], "links": [...], "saes": [...]})           # in-process
        net = sdqkd_network(topology, workers=2)       # in-process, nodes shared out over 2 processes
        net = sdqkd_network("topology.yaml", mode="processes")                      # one process per node
        net.endpoints["A"]["etsi014"], net.endpoints["A"]["saes"]["sae-a"]["cert"], ...
        net.request_keys("sae-a", "sae-c", rate=1000)

Networks started by the fixture are stopped at the end of the test, whatever happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sdqkd.harness.sync import RunningNetwork, start_inprocess, start_processes


@pytest.fixture
def sdqkd_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningNetwork]]:
    started: list[RunningNetwork] = []

    def start(topology: Any, mode: str = "inprocess", timeout: float = 120.0, workers: int = 0) -> RunningNetwork:
        if mode not in ("inprocess", "processes"):
            raise ValueError(f"mode must be 'inprocess' or 'processes', got {mode!r}")
        if workers and mode != "inprocess":
            raise ValueError("workers= shares an in-process network's nodes out; mode='processes' has one per node")
        state = tmp_path_factory.mktemp("sdqkd-net")
        if mode == "inprocess":
            net = start_inprocess(topology, state, timeout, workers)
        else:
            net = start_processes(topology, state, timeout)
        started.append(net)
        return net

    yield start
    for net in reversed(started):
        net.stop()
