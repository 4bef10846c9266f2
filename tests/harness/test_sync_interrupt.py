"""An interrupt (Ctrl-C, or SIGTERM under run_script) that meets an in-process network as it
starts or stops (runtime/harness/sync.py): the network still stops and its state goes. An
example interrupted as its network stopped left the state directory (CA key, key stores)
behind: the stop was cut short and its event loop's daemon thread ended with the process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
from typing import Any

import pytest

from sdqkd.harness.sync import _cancel_and_wait, _through_interrupts


def test_an_interrupt_while_a_network_stops_waits_for_the_stop_then_is_raised() -> None:
    stop: concurrent.futures.Future[str] = concurrent.futures.Future()

    def stopping() -> None:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the main thread, as Ctrl-C
        time.sleep(0.3)
        stop.set_result("stopped")

    threading.Thread(target=stopping, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _through_interrupts(stop, 10)
    assert stop.done()  # raised only once the stop had finished


class _Net:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        await asyncio.sleep(0.1)
        self.stopped = True


def _in_loop(fn: Any) -> Any:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        return fn(loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_start_that_completed_as_the_interrupt_came_is_stopped() -> None:
    net = _Net()

    def run(loop: asyncio.AbstractEventLoop) -> None:
        async def start() -> _Net:
            return net

        task = asyncio.run_coroutine_threadsafe(_task_of(start()), loop).result(5)
        while not task.done():
            time.sleep(0.01)
        _cancel_and_wait(loop, [task], wait_s=5)

    _in_loop(run)
    assert net.stopped


def test_a_start_still_running_is_cancelled_and_left_to_unwind() -> None:
    unwound: list[str] = []

    def run(loop: asyncio.AbstractEventLoop) -> None:
        async def start() -> _Net:
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(0.1)  # start_network stopping what it started
                unwound.append("unwound")
            return _Net()

        task = asyncio.run_coroutine_threadsafe(_task_of(start()), loop).result(5)
        _cancel_and_wait(loop, [task], wait_s=5)

    _in_loop(run)
    assert unwound == ["unwound"]


async def _task_of(coro: Any) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)
