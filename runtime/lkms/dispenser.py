"""Master side of ETSI 014 enc_keys: reserve keys locally, reserve the same key IDs at the peer
LKMS (KeySync Reserve), and only then hand them out.

Protocol (per transaction `txn`, durable at every step):
1. reserve_out: the master marks the keys RESERVED_OUT under `txn` (a crash from here on is
   recovered at restart: the keys are erased and a Release goes to the peer).
2. Reserve RPC: the peer marks the same IDs RESERVED_IN for the SAE pair; from now on the
   slave may fetch them with dec_keys.
3. commit_out: the master erases its copies (delivery) in one commit, then answers the SAE.
   A Confirm goes to the peer from the outbox (the peer then never expires those keys).
If the peer refuses, the keys go back to the pool (minus those the peer does not know, which
are erased); if the outcome is unknown (timeout, peer down) the master erases its copies and
queues a Release, so a key can never end up delivered at one end and reusable at the other.
A peer that never recorded the transaction still holds those keys: the Release finds nothing
there, so the link is also reconciled (reconcile.py) and the peer erases them.

Speed: concurrent requests for the same (link, pair, size) are coalesced into one
transaction (one Reserve RPC and two group commits for the lot), with two transactions in
flight per pair.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from sdqkd.errors import SdqkdError
from sdqkd.generated.proto.sdqkd import kms_pb2
from sdqkd.lkms.core import Core
from sdqkd.lkms.keys import AppKey
from sdqkd.lkms.registry import EXT, Link
from sdqkd.lkms.store_api import StoreUnavailable
from sdqkd.lkms.syncmsg import KEY_BITS_MD, key_refs, parse_refusal

if TYPE_CHECKING:
    from sdqkd.lkms.external import ExternalPeers
    from sdqkd.lkms.relay import Relay

log = logging.getLogger(__name__)

MAX_BATCH_KEYS = 2048
MAX_INFLIGHT = 2
ATTEMPTS = 3


class KeyUnavailable(SdqkdError):
    """No keys for this request now (ETSI 014: 503). The message is safe to show."""


class _Pair:
    def __init__(self, owner: Dispensers, link: Link, master: str, slaves: tuple[str, ...], bits: int) -> None:
        self.owner, self.link, self.master, self.slaves, self.bits = owner, link, master, slaves, bits
        self.pending: deque[tuple[int, asyncio.Future[list[AppKey]]]] = deque()
        self.inflight = 0

    def kick(self) -> None:
        if self.owner.closed:
            while self.pending:
                _, fut = self.pending.popleft()
                if not fut.done():
                    fut.set_exception(KeyUnavailable("key management system shutting down"))
            return
        while self.inflight < MAX_INFLIGHT and self.pending:
            batch: list[tuple[int, asyncio.Future[list[AppKey]]]] = []
            n = 0
            while self.pending and (not batch or n + self.pending[0][0] <= MAX_BATCH_KEYS):
                c, fut = self.pending.popleft()
                if not fut.done():
                    batch.append((c, fut))
                    n += c
            if not batch:
                return
            self.inflight += 1
            task = asyncio.get_running_loop().create_task(self._cycle(batch))
            self.owner.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.owner.tasks.discard(task)
        self.inflight -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("key reservation failed: %s", type(task.exception()).__name__)
        self.kick()

    async def _cycle(self, batch: list[tuple[int, asyncio.Future[list[AppKey]]]]) -> None:
        try:
            await self._serve(batch)
        except BaseException as e:  # also on cancellation (shutdown): nobody may wait forever
            # a store that cannot write says why (e.g. "disk is full: DIR"); that is safe to show
            msg = str(e) if isinstance(e, StoreUnavailable) else "key reservation failed"
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(KeyUnavailable(msg))
            if isinstance(e, StoreUnavailable):
                return  # answered (503); not a bug to report as one
            raise

    async def _serve(self, batch: list[tuple[int, asyncio.Future[list[AppKey]]]]) -> None:
        core, link = self.owner.core, self.link
        for attempt in range(ATTEMPTS):
            need_bits = sum(c for c, _ in batch) * self.bits
            relay = self.owner.relay
            st = core.store.pool_stats(link.qkdl_id)
            if relay is not None and link.is_relay_source and (st is None or st.available_bits < need_bits):
                await relay.topup(link, need_bits, timeout=core.limits.rpc_timeout_s)
            txn = str(uuid.uuid4())
            got = await core.store.reserve_out(link.qkdl_id, txn, [c for c, _ in batch], self.bits,
                                               core.from_back(link))
            served: list[tuple[asyncio.Future[list[AppKey]], list[AppKey]]] = []
            for (_c, fut), keys in zip(batch, got, strict=True):
                if keys is None:
                    fut.set_exception(KeyUnavailable("insufficient key material for this SAE pair"))
                else:
                    served.append((fut, keys))
            if not served:
                return
            keys_all = [k for _, ks in served for k in ks]
            req = kms_pb2.ReserveRequest(txn_id=txn, qkdl_id=link.qkdl_id, keys=key_refs(keys_all),
                                         master_sae_id=self.master, slave_sae_ids=list(self.slaves))
            try:
                resp = await core.peers.stub(link.peer_kms_address).Reserve(
                    req, timeout=core.limits.rpc_timeout_s, metadata=((KEY_BITS_MD, str(self.bits)),))
            except grpc.aio.AioRpcError as e:
                # Outcome unknown: the peer may hold a reservation. Erase ours, Release theirs.
                log.warning("Reserve txn %s to %s failed: %s", txn, link.peer_node_id, e.code().name)
                await core.store.abort_out(txn, erase_all=True, release=True)
                core.outbox_wakeup.set()
                core.uncertain(link.qkdl_id)  # if the peer never recorded it, only a reconcile frees its copies
                self._fail(served, "peer KMS unreachable")
                return
            if not resp.ok:
                unknown, busy = parse_refusal(resp.reason)
                log.info("peer refused Reserve txn %s: %d unknown, %d busy key IDs", txn, len(unknown), len(busy))
                await core.store.abort_out(txn, erase=unknown)
                if (unknown or busy) and attempt + 1 < ATTEMPTS:
                    batch = [(len(ks), fut) for fut, ks in served]
                    if busy:  # the peer is using them right now; give its transaction a moment
                        await asyncio.sleep(0.01 * (attempt + 1))
                    continue
                # (an unknown/busy refusal lists key IDs: named by count above, not to the SAE)
                why = "" if unknown or busy else f": {resp.reason}"
                self._fail(served, f"peer KMS refused the reservation{why}")
                return
            if core.fault == "pause_after_reserve":
                log.warning("fault injection: paused after Reserve txn %s keys %s", txn,
                            ",".join(k.key_id for k in keys_all))
                await asyncio.Event().wait()
            await core.store.commit_out(txn)
            core.outbox_wakeup.set()
            log.debug("txn %s delivered %d keys to %s", txn, len(keys_all), self.master)
            for fut, ks in served:
                if not fut.done():
                    fut.set_result(ks)
            return

    @staticmethod
    def _fail(served: Sequence[tuple[asyncio.Future[list[AppKey]], list[AppKey]]], msg: str) -> None:
        for fut, _ in served:
            if not fut.done():
                fut.set_exception(KeyUnavailable(msg))


class Dispensers:
    def __init__(self, core: Core, relay: Relay | None = None) -> None:
        self.core = core
        self.relay = relay
        self.external: ExternalPeers | None = None  # EXT links: keys made on demand (external.py)
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._pairs: dict[tuple[str, str, tuple[str, ...], int], _Pair] = {}

    async def get(self, link: Link, master: str, slaves: Sequence[str], bits: int, count: int) -> list[AppKey]:
        """`count` keys of `bits` for master -> slaves from `link`'s pool, reserved at the peer."""
        if link.kind == EXT and self.external is not None:
            from sdqkd.lkms.external import PeerRefused

            try:
                return await self.external.dispense(link, master, tuple(slaves), bits, count)
            except PeerRefused as e:
                raise KeyUnavailable(str(e)) from None
        if link.exit_peer is not None and self.relay is not None:  # relayed to another vendor's KMS on demand
            from sdqkd.lkms.relay import RelayError

            try:
                return await self.relay.dispense_exit(link, master, tuple(slaves), bits, count)
            except RelayError as e:
                raise KeyUnavailable(str(e)) from None
        k = (link.qkdl_id, master, tuple(slaves), bits)
        p = self._pairs.get(k)
        if p is None or p.link is not link:
            p = self._pairs[k] = _Pair(self, link, master, tuple(slaves), bits)
        fut: asyncio.Future[list[AppKey]] = asyncio.get_running_loop().create_future()
        p.pending.append((count, fut))
        p.kick()
        return await fut

    def drop_link(self, qkdl_id: str) -> None:
        for k in [k for k in self._pairs if k[0] == qkdl_id]:
            p = self._pairs.pop(k)
            while p.pending:
                _, fut = p.pending.popleft()
                if not fut.done():
                    fut.set_exception(KeyUnavailable("key association link removed"))

    async def close(self) -> None:
        self.closed = True
        for p in self._pairs.values():
            p.kick()  # fails what is still queued
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
