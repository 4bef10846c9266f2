"""The SQLite key store on its own: deterministic cutting, reservation protocol, recovery,
durability settings and erasure."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from sdqkd.lkms.keys import derive_key_ids
from sdqkd.lkms.store import SqliteKeyStore
from sdqkd.lkms.store_api import KeyState, PendingVoid

Q = str(uuid.uuid4())


async def _pair(tmp: Path, nkeys: int = 64, bits: int = 256, **kw: int) -> tuple[SqliteKeyStore, SqliteKeyStore, bytes]:
    a, b = SqliteKeyStore(tmp / "a.sqlite", **kw), SqliteKeyStore(tmp / "b.sqlite", **kw)
    mat = os.urandom(nkeys * bits // 8)
    for s in (a, b):
        await s.open()
        await s.ensure_pool(Q, "PHYS")
        await s.add_block(Q, mat, bits, "blk-0")
    return a, b, mat


def test_add_block_cuts_identically_and_ignores_repeats(tmp_path: Path) -> None:
    async def go() -> None:
        a, b, mat = await _pair(tmp_path, nkeys=10)
        assert await a.key_states(Q) == await b.key_states(Q)
        ids = derive_key_ids(Q, "blk-0", 10)
        assert set(await a.key_states(Q)) == set(ids)
        # A trailing partial key is dropped; a repeated block ID adds nothing.
        assert len(await a.add_block(Q, os.urandom(32 * 3 + 5), 256, "blk-1")) == 3
        assert await a.add_block(Q, mat, 256, "blk-0") == ids
        st = a.pool_stats(Q)
        assert st is not None and st.available_keys == 13 and st.available_bits == 13 * 256
        # Keys taken (delivered, erased) never come back by re-adding their block.
        taken = await a.take_next(Q, 10, from_back=False)
        assert [k.key_id for k in taken] == ids and taken[0].material == mat[:32]
        await a.add_block(Q, mat, 256, "blk-0")
        assert not set(ids) & set(await a.key_states(Q))
        assert "material" not in repr(taken[0]) and mat[:32].hex() not in repr(taken[0])
        await a.close()
        await b.close()

    asyncio.run(go())


def test_gone_names_only_keys_that_can_never_arrive(tmp_path: Path) -> None:
    """A key of a block this pool stored and no longer holds is gone for good; a key it never saw
    may still arrive (the peer stored it first), a busy one is here; a malformed ID never comes."""
    async def go() -> None:
        a, b, _mat = await _pair(tmp_path, nkeys=4)
        ids = derive_key_ids(Q, "blk-0", 4)
        await a.take_keys(Q, ids[:1])
        assert await a.erase_available(Q, ids[1:2]) == 1
        assert (await a.reserve_out(Q, "t1", [1], 256, from_back=True))[0] is not None  # ids[3] busy
        later = derive_key_ids(Q, "blk-1", 1)[0]  # a block the peer may store first
        relayed = str(uuid.uuid4())  # a relay's random ID
        assert await a.gone(Q, [*ids, later, relayed, "not-a-uuid"]) == [ids[0], ids[1], "not-a-uuid"]
        assert await a.missing(Q, ids) == ([ids[0], ids[1]], [ids[3]])
        assert await a.gone(str(uuid.uuid4()), ids) == []  # no such pool: nothing is known gone
        assert await b.gone(Q, ids) == []
        # a dropped pool forgets its blocks with its keys: created again, its keys may come again
        await a.drop_pool(Q)
        await a.ensure_pool(Q, "PHYS")
        assert await a.gone(Q, ids) == []
        await a.close()
        await b.close()

    asyncio.run(go())


def test_reservation_roundtrip_with_composite_sizes(tmp_path: Path) -> None:
    async def go() -> None:
        a, b, _ = await _pair(tmp_path)
        for bits, nparts in ((256, 1), (512, 2), (128, 1), (264, 2)):
            txn = str(uuid.uuid4())
            got = await a.reserve_out(Q, txn, [2], bits, from_back=False)
            keys = got[0]
            assert keys is not None and all(len(k.parts) == nparts and len(k.material) * 8 == bits for k in keys)
            parts = [p for k in keys for p in k.parts]
            assert (await b.reserve_in(Q, txn, parts, bits, "m", ["s"])).ok
            assert await a.commit_out(txn) == 2 * nparts
            back = await b.take_in("m", "s", [k.key_id for k in keys])
            assert back is not None and [k.material for k in back] == [k.material for k in keys]
            assert await b.take_in("m", "s", [keys[0].key_id]) is None  # once
        assert await a.key_states(Q) == await b.key_states(Q)
        st_a, st_b = a.pool_stats(Q), b.pool_stats(Q)
        assert st_a == st_b and st_a is not None and st_a.delivered_keys == 12 and st_a.reserved_keys == 0
        assert [o.kind for o in await a.outbox()] == ["confirm"] * 4
        await a.close()
        await b.close()

    asyncio.run(go())


def test_multicast_pending_and_other_pairs(tmp_path: Path) -> None:
    async def go() -> None:
        a, b, _ = await _pair(tmp_path, nkeys=4)
        txn = str(uuid.uuid4())
        keys = (await a.reserve_out(Q, txn, [1], 256, from_back=True))[0]
        assert keys is not None
        kid = keys[0].key_id
        assert (await b.reserve_in(Q, txn, keys[0].parts, 256, "m", ["s1", "s2"])).ok
        assert await b.take_in("m", "x", [kid]) is None  # not a slave of this key
        assert await b.take_in("x", "s1", [kid]) is None  # another master
        assert await b.take_in("m", "s1", [kid, str(uuid.uuid4())]) is None  # all or nothing
        assert (await b.take_in("m", "s1", [kid]))[0].material == keys[0].material  # type: ignore[index]
        assert await b.take_in("m", "s1", [kid]) is None
        assert (await b.take_in("m", "s2", [kid]))[0].material == keys[0].material  # type: ignore[index]
        assert kid not in await b.key_states(Q)
        await a.close()
        await b.close()

    asyncio.run(go())


def test_refusal_release_and_tombstone(tmp_path: Path) -> None:
    async def go() -> None:
        a, b, _ = await _pair(tmp_path, nkeys=8)
        t1 = str(uuid.uuid4())
        k1 = (await a.reserve_out(Q, t1, [2], 256, from_back=False))[0]
        assert k1 is not None
        # The peer took one of them itself meanwhile: refused, nothing reserved there.
        t0 = str(uuid.uuid4())
        assert (await b.reserve_in(Q, t0, [k1[0].parts[0]], 256, "m", ["s"])).ok
        res = await b.reserve_in(Q, t1, [p for k in k1 for p in k.parts], 256, "m", ["s"])
        assert not res.ok and res.busy == (k1[0].key_id,) and not res.unknown
        await a.abort_out(t1, erase=[])
        assert all(s == KeyState.AVAILABLE for s in (await a.key_states(Q)).values())
        # Release erases the peer's reservation and forbids a late Reserve of the same txn.
        assert await b.release(t0) == 1
        assert not (await b.reserve_in(Q, t0, [k1[1].parts[0]], 256, "m", ["s"])).ok
        # Unknown key IDs are named as such.
        res = await b.reserve_in(Q, str(uuid.uuid4()), [(str(uuid.uuid4()), 256)], 256, "m", ["s"])
        assert not res.ok and len(res.unknown) == 1
        await a.close()
        await b.close()

    asyncio.run(go())


def test_recovery_erases_interrupted_reservations(tmp_path: Path) -> None:
    async def go() -> None:
        a, b, _ = await _pair(tmp_path, nkeys=8)
        txn = str(uuid.uuid4())
        keys = (await a.reserve_out(Q, txn, [3], 256, from_back=False))[0]
        assert keys is not None
        await a.close()  # as after a crash: the reservation is on disk, delivery never happened
        a2 = SqliteKeyStore(tmp_path / "a.sqlite")
        await a2.open()
        assert not {k.key_id for k in keys} & set(await a2.key_states(Q))
        assert [(o.txn, o.kind) for o in await a2.outbox()] == [(txn, "release")]
        st = a2.pool_stats(Q)
        assert st is not None and st.available_keys == 5 and st.reserved_keys == 0
        await a2.close()
        await b.close()

    asyncio.run(go())


def test_voids_still_owed_survive_a_reopen_until_done(tmp_path: Path) -> None:
    async def go() -> None:
        s = SqliteKeyStore(tmp_path / "v.sqlite")
        await s.open()
        ids = tuple(str(uuid.uuid4()) for _ in range(3))
        ext = PendingVoid("external", "vendorx", ids, "sae-a", ("sae-b", "sae-c"), 1e10)
        relay = PendingVoid("relay", Q, ids[:1], "sae-a", (), 2e10, '{"path": ["n1", "n2"]}')
        v1, v2 = await s.add_void(ext), await s.add_void(relay)
        await s.close()
        s = SqliteKeyStore(tmp_path / "v.sqlite")
        await s.open()
        assert await s.pending_voids("external") == [dataclasses.replace(ext, vid=v1)]
        assert await s.pending_voids("relay") == [dataclasses.replace(relay, vid=v2)]
        await s.voids_done([v1])
        await s.voids_done([])
        assert await s.pending_voids("external") == [] and [v.vid for v in await s.pending_voids("relay")] == [v2]
        await s.close()

    asyncio.run(go())


def test_durability_settings_and_erasure_on_disk(tmp_path: Path) -> None:
    async def go() -> None:
        s = SqliteKeyStore(tmp_path / "k.sqlite", max_key_count=16)
        await s.open()
        await s.ensure_pool(Q, "PHYS")
        mat = os.urandom(16 * 32)
        assert s.room_keys(Q) == 16 and s.has_room(Q)
        await s.add_block(Q, mat[:10 * 32], 256, "a")
        assert s.room_keys(Q) == 6  # what the engine's next block may keep
        await s.take_next(Q, 10, from_back=False)
        assert s.room_keys(Q) == 16
        await s.add_block(Q, mat, 256, "b")
        assert not s.has_room(Q) and s.room_keys(Q) == 0  # back-pressure flag at max_key_count
        conn = s._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        await s.take_next(Q, 16, from_back=False)
        assert s.has_room(Q)
        await s.close()  # checkpoints and truncates the WAL
        raw = (tmp_path / "k.sqlite").read_bytes()
        wal = tmp_path / "k.sqlite-wal"
        raw += wal.read_bytes() if wal.exists() else b""
        assert all(mat[i:i + 32] not in raw for i in range(0, len(mat), 32))
        with sqlite3.connect(tmp_path / "k.sqlite") as c:
            assert c.execute("SELECT COUNT(*) FROM all_keys").fetchone()[0] == 0

    asyncio.run(go())


def test_ends_pick_from_opposite_ends(tmp_path: Path) -> None:
    async def go() -> None:
        a, b, _ = await _pair(tmp_path, nkeys=4)
        ids = derive_key_ids(Q, "blk-0", 4)
        assert [k.key_id for k in await a.take_next(Q, 1, from_back=False)] == ids[:1]
        assert [k.key_id for k in await a.take_next(Q, 1, from_back=True)] == ids[3:]
        assert await a.take_next(Q, 3, from_back=True) == []  # fewer than asked: nothing taken
        assert len(await a.key_states(Q)) == 2
        await a.close()
        await b.close()

    asyncio.run(go())


def test_key_id_conversions_match_uuid() -> None:
    from sdqkd.lkms.store import _b, _s

    for _ in range(2000):
        raw = os.urandom(16)
        u = uuid.UUID(bytes=raw)
        assert _s(raw) == str(u) and _b(str(u)) == raw and _b(str(u).upper()) == raw
    for s in ("{12345678-1234-1234-1234-123456789abc}", "12345678123412341234123456789abc",
              "urn:uuid:12345678-1234-1234-1234-123456789abc"):
        assert _b(s) == uuid.UUID(s).bytes  # other spellings uuid accepts still work
    for bad in ("x" * 36, "12345678-1234-1234-1234-12345678 abc", "12345678-1234-1234-1234-123456789ab-", ""):
        try:
            _b(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{bad!r} accepted")


@pytest.mark.parametrize("count", [0, 1, 2, 255, 256, 257, 5350, 65535, 65536, 65537, 70001])
def test_derived_key_ids_are_uuidv8_with_the_index_in_their_last_48_bits(count: int) -> None:
    from sdqkd.lkms.keys import derive_key_blobs, key_id_prefix, key_id_strings

    prefix = key_id_prefix(Q, "sess:7", count)
    want = [uuid.UUID(bytes=prefix + i.to_bytes(6, "big")) for i in range(count)]
    assert derive_key_blobs(Q, "sess:7", count) == b"".join(u.bytes for u in want)
    assert derive_key_ids(Q, "sess:7", count) == [str(u) for u in want]
    assert all(u.version == 8 and u.variant == uuid.RFC_4122 for u in want[:3])
    assert derive_key_ids(Q, "sess:8", 1) != derive_key_ids(Q, "sess:7", 1)
    raw = os.urandom(16 * count)  # any IDs, not only one block's
    assert key_id_strings(raw) == [str(uuid.UUID(bytes=raw[i:i + 16])) for i in range(0, len(raw), 16)]


def test_reserve_out_marks_exactly_the_run_taken(tmp_path: Path) -> None:
    """reserve_out marks the keys it took with one range UPDATE: exactly those, from either end,
    also with keys missing in between (taken earlier) and with a request that runs dry."""
    async def go() -> None:
        a, _b_store, _ = await _pair(tmp_path, nkeys=40)
        ids = derive_key_ids(Q, "blk-0", 40)
        await a.take_keys(Q, [ids[3], ids[5], ids[36]])  # holes at both ends
        got = await a.reserve_out(Q, "t1", [4, 2], 256, from_back=False)
        first = [k.key_id for ks in got for k in ks or []]
        assert first == [ids[i] for i in (0, 1, 2, 4, 6, 7)]
        got = await a.reserve_out(Q, "t2", [3], 256, from_back=True)
        back = [k.key_id for k in got[0] or []]
        assert back == [ids[i] for i in (39, 38, 37)]
        got = await a.reserve_out(Q, "t3", [2, 1000], 256, from_back=True)  # the second runs dry
        assert got[1] is None and [k.key_id for k in got[0] or []] == [ids[35], ids[34]]
        st = await a.key_states(Q)
        reserved = {k for k, s in st.items() if s == KeyState.RESERVED_OUT}
        assert reserved == set(first) | set(back) | {ids[35], ids[34]}
        assert a.pool_stats(Q).reserved_keys == len(reserved)  # type: ignore[union-attr]
        await a.close()
        await _b_store.close()

    asyncio.run(go())


def test_an_open_cancelled_while_it_connects_leaves_nothing_running(tmp_path: Path, monkeypatch) -> None:
    """A network stopped while it starts cancels its stores' opens, then removes its state
    directory. The connection is made in a thread that a cancelled await does not stop: it went on
    to create the data directory and the file after the removal (an example's state left in /tmp,
    test_examples.py failed once). Now the cancelled open waits for it and closes it."""
    data = tmp_path / "state" / "data"
    connect = SqliteKeyStore._connect

    def slow_connect(self: SqliteKeyStore) -> sqlite3.Connection:
        time.sleep(0.3)  # the thread is still connecting when the open is cancelled
        return connect(self)

    monkeypatch.setattr(SqliteKeyStore, "_connect", slow_connect)

    async def go() -> None:
        store = SqliteKeyStore(data / "keys.sqlite")
        opening = asyncio.ensure_future(store.open())
        await asyncio.sleep(0.05)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        shutil.rmtree(tmp_path / "state", ignore_errors=True)  # what the network's stop does next
        await asyncio.sleep(0.5)

    asyncio.run(go())
    assert not (tmp_path / "state").exists()
