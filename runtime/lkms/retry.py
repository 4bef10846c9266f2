"""Background retries towards another KMS (a relay hop, another vendor's KMS), at one pace: wait
0.5 s, doubling up to 10 s, before each try, for as long as reservations live
(`Limits.unconfirmed_ttl_s`); which refused void is worth sending again; and the key store's
record of the voids being sent again, so that a restart sends them too."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sdqkd.lkms.store_api import KeyStore, PendingVoid, StoreError

log = logging.getLogger(__name__)

_NOT_READY = frozenset({"invalid_routing", "no_known_route"})  # a hop restarting, before its routes are back


async def backoff(ttl_s: float) -> AsyncIterator[None]:
    """Yields before each try: 0.5 s after the start, then at doubling intervals up to 10 s,
    until `ttl_s` has passed."""
    deadline = time.monotonic() + ttl_s
    delay = 0.5
    while time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
        yield


def void_again_after(status: int, body: Any) -> bool:
    """A refused void worth sending again: a time-out or a server error along the path, or a hop
    that does not know the route yet; not a request the far end cannot understand."""
    if status == 408 or status >= 500:
        return True
    details = body.get("details") if isinstance(body, dict) else None
    return status == 400 and isinstance(details, list) and any(
        isinstance(d, dict) and _NOT_READY & set(d) for d in details)


async def record_void(store: KeyStore, void: PendingVoid) -> PendingVoid:
    """The void as recorded in the store (its `vid` set); as it is if the store fails (logged: a
    restart would forget it, the retries in this process still go on)."""
    try:
        return dataclasses.replace(void, vid=await store.add_void(void))
    except StoreError as e:
        log.error("void of %d keys to %s not recorded (%s): a restart would forget it", len(void.ids), void.to, e)
        return void


async def settle_voids(store: KeyStore, voids: Sequence[PendingVoid]) -> None:
    """These voids need no more tries: out of the store (a store failure leaves their rows, so a
    restart sends them once more: a void is safe to repeat). The write is shielded: the caller
    has already let go of them (`ExternalPeers` took them out of memory), so a task cancelled
    meanwhile (a peer configured again, the node stopping) must not leave their rows behind."""
    vids = [v.vid for v in voids if v.vid]
    if not vids:  # none was recorded (the store had failed): nothing to take out
        return
    write = asyncio.ensure_future(store.voids_done(vids))
    try:
        with contextlib.suppress(StoreError):
            await asyncio.shield(write)
    except asyncio.CancelledError:
        write.add_done_callback(_failure_seen)
        raise


def _failure_seen(write: asyncio.Future[None]) -> None:
    """A shielded write whose caller was cancelled: its StoreError, if any, is retrieved here
    (its rows stay, as settle_voids says), not reported as never retrieved."""
    if not write.cancelled():
        write.exception()
