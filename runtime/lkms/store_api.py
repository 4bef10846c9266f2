"""The key-store interface of the LKMS. `SqliteKeyStore` (store.py) is the embedded default;
anything implementing `KeyStore` can replace it (the LKMS only talks to this Protocol).

Model. One pool per key association link (physical or virtual), keyed by its qkdl_id. A key
is in one of three states:

- AVAILABLE: usable by either end for anything (application keys, relay pads, stream chunks);
- RESERVED_OUT: this node, as the master side, set it aside under a transaction `txn` and is
  asking the peer to do the same; it is erased when the master delivers it, or on abort;
- RESERVED_IN: the peer (master side) reserved it here for an SAE pair; it waits for the
  slave SAE(s) (`pending`), each may take it once; erased when the last one has it.

Every method is one atomic, durable transaction: when the awaitable returns, the change is on
disk (a crash afterwards does not undo it). Keys are erased by deleting them, never by
flagging. Methods never log, raise or repr key material.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from sdqkd.errors import SdqkdError
from sdqkd.lkms.keys import AppKey, LinkKey


class KeyState(IntEnum):
    AVAILABLE = 0
    RESERVED_OUT = 1
    RESERVED_IN = 2


class StoreError(SdqkdError):
    """A request the store refuses (bad arguments); the store is unchanged."""


class StoreUnavailable(StoreError):
    """The store cannot write now (disk full, read-only, I/O error); the message names the cause
    and the directory, e.g. "disk is full: /var/lib/sdqkd". Nothing of the request happened;
    the same request succeeds once the cause is gone (no restart needed)."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    qkdl_id: str
    kind: str
    available_keys: int
    available_bits: int
    reserved_keys: int
    reserved_bits: int
    delivered_keys: int  # link keys erased after delivery to applications (counter)
    delivered_bits: int
    added_keys: int  # link keys ever added (counter)
    added_bits: int

    @property
    def stored_keys(self) -> int:
        return self.available_keys + self.reserved_keys

    @property
    def stored_bits(self) -> int:
        return self.available_bits + self.reserved_bits


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """Outcome of reserve_in. On failure nothing changed; `unknown` are key IDs this store has
    never had (or has erased), `busy` are key IDs that exist but are not available."""

    ok: bool
    unknown: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A KeySync message owed to a peer that must survive a restart (Release or Confirm)."""

    txn: str
    qkdl_id: str
    kind: str  # "release" | "confirm"


@dataclass(frozen=True, slots=True)
class PendingVoid:
    """A void no one answered for certain, to send again (after a restart too) until it is
    answered or `expires` (wall clock) passes: to another vendor's KMS (`via` "external", `to`
    its name; external.py) or along a virtual link (`via` "relay", `to` its qkdl_id, `hop` the
    hop extension as JSON; relay.py). `vid`: its row. Key IDs and SAE IDs only, no key."""

    via: str
    to: str
    ids: tuple[str, ...]
    master: str
    slaves: tuple[str, ...]
    expires: float
    hop: str = ""
    vid: int = 0


class KeyStore(Protocol):
    max_key_count: int

    async def open(self) -> None:
        """Open (creating if needed) and recover: keys left RESERVED_OUT by a crash were never
        handed out here; they are erased and a Release for their txn is put in the outbox."""

    async def close(self) -> None: ...

    def on_change(self, callback: Callable[[set[str]], None]) -> None:
        """`callback(qkdl_ids)` runs on the event loop after each commit that changed pools."""

    # --- pools -----------------------------------------------------------------------
    async def ensure_pool(self, qkdl_id: str, kind: str) -> None: ...

    async def drop_pool(self, qkdl_id: str) -> int:
        """Erase every key of the pool and the pool; returns the number of keys erased."""

    def pools(self) -> list[str]: ...

    def pool_stats(self, qkdl_id: str) -> PoolStats | None: ...

    def has_room(self, qkdl_id: str) -> bool:
        """False once the pool holds max_key_count AVAILABLE keys: the engine should pause. Keys
        reserved for a slave SAE do not count: they are no longer the link's to share, and the
        two ends' decisions must agree (the master erases its copies at delivery)."""

    def room_keys(self, qkdl_id: str) -> int:
        """AVAILABLE keys the pool takes before it holds max_key_count (0: full); the engine
        keeps no more of a block's key than that."""

    # --- filling ---------------------------------------------------------------------
    async def add_block(self, qkdl_id: str, material: bytes, key_size_bits: int, block_id: str) -> list[str]:
        """Cut `material` into keys of `key_size_bits` (a trailing partial key is dropped) with
        IDs derived from (qkdl_id, block_id, index). A block_id seen before is ignored (its
        keys may have been delivered and erased; they must never come back)."""

    async def put_key(self, qkdl_id: str, key_id: str, material: bytes, bits: int) -> None:
        """Store one key under a given ID (a relayed key at an end of a virtual link)."""

    async def put_keys(self, qkdl_id: str, keys: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Store keys (ID, material; whole bytes) in one commit; per key True if stored, False
        if that ID is stored already (nothing changes for it: a repeated relay)."""

    # --- master side (enc_keys, stream owner) --------------------------------------------
    async def reserve_out(self, qkdl_id: str, txn: str, counts: Sequence[int], bits: int,
                          from_back: bool) -> list[list[AppKey] | None]:
        """Reserve AVAILABLE keys for several requests at once: request i gets counts[i]
        application keys of `bits` each, in order, until the pool runs short; requests that
        cannot be filled get None (and reserve nothing). `from_back` picks the newest keys
        first (the two ends of a link take from opposite ends to avoid collisions)."""

    async def commit_out(self, txn: str, confirm: bool = True) -> int:
        """The master delivered the keys of `txn`: erase them (and queue a Confirm)."""

    async def abort_out(self, txn: str, *, erase: Sequence[str] = (), erase_all: bool = False,
                        release: bool = False) -> None:
        """The reservation failed: erase the listed (or all) keys of `txn`, put the rest back to
        AVAILABLE; `release` queues a Release for the peer (when it may have reserved)."""

    # --- peer side (dec_keys) ----------------------------------------------------------
    async def reserve_in(self, qkdl_id: str, txn: str, parts: Sequence[tuple[str, int]], bits: int,
                         master: str, slaves: Sequence[str]) -> ReserveResult:
        """Set AVAILABLE keys aside for (master, slaves), grouped into application keys of
        `bits` (same grouping as the master's). All or nothing."""

    async def take_in(self, master: str, slave: str, key_ids: Sequence[str],
                      missing: list[str] | None = None) -> list[AppKey] | None:
        """dec_keys: the application keys `key_ids` reserved for (master, slave); each slave
        gets each key once. None (and no change) if any is unknown or not this pair's; then
        `missing`, if given, is extended with those IDs (unknown and other pairs' alike)."""

    async def release(self, txn: str) -> int:
        """Erase every key of `txn` (any reserved state); later reserve_in of `txn` is refused."""

    async def confirm(self, txn: str) -> int:
        """The master delivered `txn`: its RESERVED_IN keys no longer expire as unconfirmed."""

    async def expire(self, unconfirmed_before: float) -> int:
        """Erase RESERVED_IN keys reserved before the time given and never confirmed."""

    # --- raw link keys (relay pads, stream chunks) -----------------------------------------
    async def take_next(self, qkdl_id: str, n: int, from_back: bool) -> list[LinkKey]:
        """Erase and return the next `n` AVAILABLE keys ([] if fewer)."""

    async def take_keys(self, qkdl_id: str, key_ids: Sequence[str], delivered: bool = False) -> list[LinkKey] | None:
        """Erase and return these AVAILABLE keys, in the order given; None if any is missing.
        `delivered` counts them as delivered to an application (stream chunks), else as used
        internally (relay pads)."""

    async def missing(self, qkdl_id: str, key_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """(unknown, busy): which of these keys the pool does not have / has but not AVAILABLE."""

    async def gone(self, qkdl_id: str, key_ids: Sequence[str]) -> list[str]:
        """Which of these keys the pool does not have and never will: keys of a block it stored
        (add_block) that were taken or erased since, and malformed IDs. Any other key it does
        not have may still arrive (the peer stored the block first)."""

    # --- reconciliation (both ends converge to the same pool) ------------------------------
    async def available_ids(self, qkdl_id: str, created_before: float, after: int, limit: int
                            ) -> tuple[list[str], int]:
        """Up to `limit` IDs of AVAILABLE keys stored before `created_before`, in storage order
        after the cursor `after` (0 to start); returns them and the next cursor."""

    async def erase_available(self, qkdl_id: str, key_ids: Sequence[str]) -> int:
        """Erase those of `key_ids` that are AVAILABLE in the pool (the peer no longer has
        them); others are left alone. Returns the number erased."""

    async def txn_link(self, txn: str) -> str | None:
        """The pool (qkdl_id) of a reservation, None if no key of it is stored."""

    # --- outbox ------------------------------------------------------------------------
    async def outbox(self) -> list[OutboxItem]: ...

    async def outbox_done(self, txn: str, kind: str) -> None: ...

    # --- voids still to be delivered (external KMSs, virtual links) -----------------------
    async def add_void(self, void: PendingVoid) -> int:
        """Record a void still to be delivered; returns its `vid`."""

    async def pending_voids(self, via: str) -> list[PendingVoid]:
        """The voids recorded `via` that route and not yet done, oldest first."""

    async def voids_done(self, vids: Sequence[int]) -> None:
        """Forget these voids (delivered, refused for good, expired or their peer gone)."""

    # --- inspection (tests, consistency checks) ---------------------------------------------
    async def key_states(self, qkdl_id: str) -> dict[str, KeyState]: ...
