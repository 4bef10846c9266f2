"""Networks for synchronous code (tests, examples, scripts): `start_inprocess` runs an in-process
network's event loop on a thread of its own; `start_processes` runs `sdqkd net up`. Both return a
`RunningNetwork` with `endpoints`, `request_keys(master, slave, rate)` and `stop()`."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any


class RunningNetwork:
    """A network as the fixture hands it out: `endpoints`, `request_keys`, `stop`."""

    def __init__(self, mode: str, endpoints: dict[str, Any], stopper: Any, requester: Any, state: Path):
        self.mode, self.endpoints, self._stop, self._request, self.state = mode, endpoints, stopper, requester, state

    def request_keys(self, master: str, slave: str, rate: float = 0.0) -> dict[str, Any]:
        return self._request(master, slave, rate)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def start_inprocess(topology: Any, state: Path | None, timeout: float, workers: int = 0) -> RunningNetwork:
    """The in-process network runs its own event loop in a thread, so sync tests can use it.
    With `state` None it lives in a temporary directory removed when it stops (examples: no
    private keys or key stores left behind)."""
    from sdqkd.controller import topology as tp
    from sdqkd.harness.inprocess import start_network

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

    return RunningNetwork("inprocess", net.endpoints, stop, request, net.state)


def start_processes(topology: Any, state: Path, timeout: float) -> RunningNetwork:
    from sdqkd.harness import network
    from sdqkd.harness.northbound import post_app

    eps = network.up(topology, state, timeout=timeout)

    def request(master: str, slave: str, rate: float) -> dict[str, Any]:
        return post_app(state, master, slave, rate)

    return RunningNetwork("processes", eps, lambda: network.down(state), request, state)
