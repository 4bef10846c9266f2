"""Networks for synchronous code (tests, examples, scripts): `start_inprocess` runs an in-process
network's event loop on a thread of its own; `start_processes` runs `sdqkd net up`. Both return a
`RunningNetwork` with `endpoints`, `request_keys(master, slave, rate)` and `stop()`.
`run_script(main)` runs a script's main so that `kill` cleans up as Ctrl-C does."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from sdqkd.interrupts import as_ctrl_c


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


def run_script(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s code, SIGTERM (`kill`, a time-out's) handled as Ctrl-C: the
    KeyboardInterrupt unwinds `main`, whose `finally` stops the network it started and removes
    its temporary state directory (CA key, SAE keys, key stores), then "NAME: interrupted" and
    exit 130. By default SIGTERM ends a process at once and leaves that directory in /tmp."""
    signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"{Path(sys.argv[0]).stem}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def start_inprocess(topology: Any, state: Path | None, timeout: float, workers: int = 0) -> RunningNetwork:
    """The in-process network runs its own event loop in a thread, so sync tests can use it.
    With `state` None it lives in a temporary directory removed when it stops (examples: no
    private keys or key stores left behind; run the script with `run_script` so that SIGTERM,
    too, lets it stop)."""
    from sdqkd.controller import topology as tp
    from sdqkd.harness.inprocess import start_network

    topo = tp.load(topology) if isinstance(topology, (str, Path)) else tp.parse(topology)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    starting: list[asyncio.Task[Any]] = []

    async def start() -> Any:
        task = asyncio.current_task()
        assert task is not None
        starting.append(task)
        return await start_network(topo, state, timeout=timeout, workers=workers)

    def end_loop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    try:
        net = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout + 30)
    except BaseException:  # Ctrl-C or SIGTERM (run_script) while it starts, or too slow a start
        _cancel_and_wait(loop, starting)  # start_network then stops what it started, state included
        end_loop()
        raise

    def stop() -> None:
        _through_interrupts(asyncio.run_coroutine_threadsafe(net.stop(), loop), 60)
        end_loop()

    def request(master: str, slave: str, rate: float) -> dict[str, Any]:
        from dataclasses import asdict

        assert net.controller is not None
        route = asyncio.run_coroutine_threadsafe(net.controller.request_keys(master, slave, rate), loop).result(60)
        return asdict(route)

    return RunningNetwork("inprocess", net.endpoints, stop, request, net.state)


def _through_interrupts(fut: concurrent.futures.Future[Any], timeout: float) -> Any:
    """`fut`'s result. An interrupt (Ctrl-C, or SIGTERM with run_script) while it runs waits for
    it too, then is raised: a network's stop cut short would leave its state directory (CA key,
    key stores) behind, its event loop's daemon thread ending with the process."""
    end = time.monotonic() + timeout
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            result = fut.result(max(0.0, end - time.monotonic()))
            break
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted
    return result


def _cancel_and_wait(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]], wait_s: float = 60.0) -> None:
    """Cancel the starting task (if any yet) in its loop's thread and wait until it has unwound;
    a start that completed meanwhile (the interrupt came as it returned) is stopped instead."""
    unwound = threading.Event()

    def cancel() -> None:
        if not tasks:
            unwound.set()
            return
        task = tasks[0]
        if not task.done():
            task.add_done_callback(lambda _: unwound.set())
            task.cancel()  # start_network stops what it started, state included
        elif task.cancelled() or task.exception() is not None:
            unwound.set()
        else:
            stopping = loop.create_task(task.result().stop())
            stopping.add_done_callback(lambda _: unwound.set())

    loop.call_soon_threadsafe(cancel)
    unwound.wait(wait_s)


def start_processes(topology: Any, state: Path, timeout: float) -> RunningNetwork:
    from sdqkd.harness import network
    from sdqkd.harness.northbound import post_app

    eps = network.up(topology, state, timeout=timeout)

    def request(master: str, slave: str, rate: float) -> dict[str, Any]:
        return post_app(state, master, slave, rate)

    return RunningNetwork("processes", eps, lambda: network.down(state), request, state)
