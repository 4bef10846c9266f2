"""Pool reconciliation: after any uncertainty both ends of a link converge to the same pool.

Why. A key may be erased at one end only: a Reserve whose outcome is unknown (the master
erases its copies; the peer may never have recorded the transaction, so the Release finds
nothing), a node killed between storing a block and its peer storing it, a relay pad used at
one end before a failed send. Such a key is *stale* at the end that still holds it: it can
never be used (the other end refuses it), yet it takes room, and a full pool pauses the engine.

Protocol (KeySync `Reconcile`, per link, run by the end that wants to clean its own copy):
1. list the pool's AVAILABLE key IDs stored more than `reconcile_grace_s` ago (by then the
   peer has stored the same block, or never will), in pages of `_PAGE` IDs, in storage order;
2. send each page to the peer, which answers the IDs it does not hold in any state;
3. erase those that are still AVAILABLE here. Keys are erased but never re-created (block IDs
   are remembered), so an ID the peer lacks is gone there for good: erasing is always safe
   (it can cost a key, never reuse one). A key that became reserved or was taken meanwhile is
   left alone.
`reverse` asks the peer to run the same pass over its own copy, so one trigger cleans both
ends; a pass the peer asked for does not ask back (no ping-pong).

Triggers: a link (re)provisioned (after either end restarts), a Reserve with an unknown
outcome, a pool the engine finds full (Lkms._reconcile_full: once, once more after the grace,
then only after the pool changed), and every `reconcile_interval_s`. A pass for a link
runs at most once per `reconcile_min_gap_s`; a failed pass (peer unreachable) is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from sdqkd.generated.proto.sdqkd import kms_pb2
from sdqkd.lkms.core import Core
from sdqkd.lkms.registry import EXT, Link

log = logging.getLogger(__name__)

_PAGE = 4096  # key IDs per Reconcile call (about 150 kB)


class Reconciler:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._due: dict[str, bool] = {}  # qkdl_id -> ask the peer to reverse
        self._last: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.erased_total = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def request(self, qkdl_id: str, reverse: bool = True) -> None:
        """Reconcile this link's pool soon (at most once per min gap)."""
        self._due[qkdl_id] = self._due.get(qkdl_id, False) or reverse
        self._wake.set()

    def request_all(self) -> None:
        for link in self.core.registry.links.values():
            if _reconcilable(link):
                self.request(link.qkdl_id)

    async def _run(self) -> None:
        lim = self.core.limits
        next_sweep = time.monotonic() + lim.reconcile_interval_s
        while True:
            try:
                async with asyncio.timeout(max(0.05, min(lim.reconcile_min_gap_s, next_sweep - time.monotonic()))):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + lim.reconcile_interval_s
                self.request_all()
            for qkdl_id in list(self._due):
                if time.monotonic() - self._last.get(qkdl_id, -1e9) < lim.reconcile_min_gap_s:
                    continue  # ran a moment ago; stays due, runs after the gap
                reverse = self._due.pop(qkdl_id)
                self._last[qkdl_id] = time.monotonic()
                try:
                    done = await self._pass(qkdl_id, reverse)
                except Exception as e:  # noqa: BLE001 - e.g. the store cannot write now: retry later
                    log.warning("reconcile of link %s failed: %s: %s", qkdl_id, type(e).__name__, e)
                    done = False
                if not done:
                    self._due[qkdl_id] = self._due.get(qkdl_id, False) or reverse  # retry later

    async def _pass(self, qkdl_id: str, reverse: bool) -> bool:
        """One reconciliation of this end's copy of the pool; False if the peer did not answer."""
        core = self.core
        link = core.registry.links.get(qkdl_id)
        if link is None or not _reconcilable(link) or qkdl_id not in core.store.pools():
            return True  # nothing to reconcile (any more)
        stub = core.peers.stub(link.peer_kms_address)
        before = time.time() - core.limits.reconcile_grace_s
        cursor, erased, checked = 0, 0, 0
        while True:
            ids, cursor = await core.store.available_ids(qkdl_id, before, cursor, _PAGE)
            if not ids and not reverse:
                break
            try:
                resp = await stub.Reconcile(kms_pb2.ReconcileRequest(qkdl_id=qkdl_id, key_ids=ids, reverse=reverse),
                                            timeout=core.limits.rpc_timeout_s)
            except grpc.aio.AioRpcError as e:
                log.info("reconcile of link %s with %s not done: %s", qkdl_id, link.peer_node_id, e.code().name)
                return False
            if not resp.ok:
                log.info("reconcile of link %s refused by %s: %s", qkdl_id, link.peer_node_id, resp.reason)
                return False
            reverse = False  # asked once per pass
            checked += len(ids)
            asked = set(ids)
            stale = [k for k in dict.fromkeys(resp.unknown) if k in asked]  # only what we asked about
            if stale:
                erased += await core.store.erase_available(qkdl_id, stale)
            if len(ids) < _PAGE:
                break
        self.erased_total += erased
        if erased:
            log.warning("reconcile of link %s: erased %d stale keys the peer no longer holds (%d checked)",
                        qkdl_id, erased, checked)
        else:
            log.debug("reconcile of link %s: %d keys checked, pools agree", qkdl_id, checked)
        return True

    async def answer(self, qkdl_id: str, key_ids: list[str], reverse: bool) -> list[str]:
        """The peer's side of a page: the IDs this pool does not hold in any state."""
        unknown, _busy = await self.core.store.missing(qkdl_id, key_ids)
        if reverse:
            self.request(qkdl_id, reverse=False)
        return unknown


def _reconcilable(link: Link) -> bool:
    """Pools this node shares with a peer LKMS of ours (EXT links end at another vendor's KMS,
    which speaks ETSI 020, not KeySync)."""
    return link.is_endpoint and link.kind != EXT
