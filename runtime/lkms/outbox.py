"""Delivers the KeySync messages the store owes peers (Confirm after a delivery, Release after
an aborted or crashed reservation). The outbox is durable, so a message survives a restart; it
is retried until the peer answers.

An item whose link is not (yet) in the registry waits: right after a restart the registry is
empty until the agent re-provisions the links, and dropping the item then would let the peer
expire keys the master already delivered. It is dropped only when its link is definitively
gone, i.e. its pool no longer exists (`drop_pool` removes the pool's outbox items with it)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from sdqkd.generated.proto.sdqkd import kms_pb2
from sdqkd.lkms.core import Core
from sdqkd.lkms.store_api import OutboxItem

log = logging.getLogger(__name__)


class OutboxSender:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self.core.outbox_wakeup.set()  # recovery may have left Releases to send
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        core = self.core
        backoff = 0.5
        while not self._closed:
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a
                # cancellation that races with the event being set (the loop then never ends).
                async with asyncio.timeout(backoff):
                    await core.outbox_wakeup.wait()
            except TimeoutError:
                pass
            core.outbox_wakeup.clear()
            await asyncio.sleep(0.02)  # let a burst of deliveries queue up behind one read
            items = await core.store.outbox()
            if not items:
                backoff = 5.0
                continue
            results = await asyncio.gather(*(self._send(i) for i in items[:256]))
            backoff = 0.5 if all(results) else min(backoff * 2, 10.0)
            if len(items) > 256:
                core.outbox_wakeup.set()

    async def _send(self, item: OutboxItem) -> bool:
        core = self.core
        link = core.registry.links.get(item.qkdl_id)
        if link is None:
            if item.qkdl_id in core.store.pools():
                return False  # not provisioned yet (after a restart): keep it; set_link wakes us
            await core.store.outbox_done(item.txn, item.kind)  # pool erased: nothing left to confirm
            return True
        stub = core.peers.stub(link.peer_kms_address)
        rpc = stub.Release if item.kind == "release" else stub.Confirm
        try:
            resp = await rpc(kms_pb2.TxnRequest(txn_id=item.txn), timeout=core.limits.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            log.debug("%s of txn %s not delivered: %s", item.kind, item.txn, e.code().name)
            return False
        if resp.ok:
            await core.store.outbox_done(item.txn, item.kind)
        return bool(resp.ok)
