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

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest


class _Running:
    """A network as the fixture hands it out: `endpoints`, `request_keys`, `stop`."""

    def __init__(self, mode: str, endpoints: dict[str, Any], stopper: Any, requester: Any, state: Path):
        self.mode, self.endpoints, self._stop, self._request, self.state = mode, endpoints, stopper, requester, state

    def request_keys(self, master: str, slave: str, rate: float = 0.0) -> dict[str, Any]:
        return self._request(master, slave, rate)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def _inprocess(topology: Any, state: Path, timeout: float, workers: int = 0) -> _Running:
    """The in-process network runs its own event loop in a thread, so sync tests can use it."""
    from runtime.controller import topology as tp
    from runtime.harness.inprocess import start_network

    topo = tp.load(topology) if isinstance(topology, (str, Path)) else tp.parse(topology)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    net = asyncio.run_coroutine_threadsafe(start_network(topo, state, timeout=timeout, workers=workers),
                                           loop).result(timeout + 30)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(net.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def request(master: str, slave: str, rate: float) -> dict[str, Any]:
        from dataclasses import asdict

        assert net.controller is not None
        route = asyncio.run_coroutine_threadsafe(net.controller.request_keys(master, slave, rate), loop).result(60)
        return asdict(route)

    return _Running("inprocess", net.endpoints, stop, request, state)


def _processes(topology: Any, state: Path, timeout: float) -> _Running:
    from runtime.harness import network

    eps = network.up(topology, state, timeout=timeout)
    api = json.loads((state / "controller-status.json").read_text())["api"]

    def request(master: str, slave: str, rate: float) -> dict[str, Any]:
        req = urllib.request.Request(f"http://{api}/apps", data=json.dumps(
            {"master": master, "slave": slave, "rate": rate}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    return _Running("processes", eps, lambda: network.down(state), request, state)


@pytest.fixture
def sdqkd_network(tmp_path_factory: pytest.TempPathFactory):
    started: list[_Running] = []

    def start(topology: Any, mode: str = "inprocess", timeout: float = 120.0, workers: int = 0) -> _Running:
        if mode not in ("inprocess", "processes"):
            raise ValueError(f"mode must be 'inprocess' or 'processes', got {mode!r}")
        if workers and mode != "inprocess":
            raise ValueError("workers= shares an in-process network's nodes out; mode='processes' has one per node")
        state = tmp_path_factory.mktemp("sdqkd-net")
        if mode == "inprocess":
            net = _inprocess(topology, state, timeout, workers)
        else:
            net = _processes(topology, state, timeout)
        started.append(net)
        return net

    yield start
    for net in reversed(started):
        net.stop()
