"""The key store's runs (store_runs.py): blocks kept as rows of many keys behave exactly as a row
per key would, through every operation that reads, takes, reserves or erases available keys,
and across a restart."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import uuid
from pathlib import Path

from sdqkd.lkms import store_runs
from sdqkd.lkms.keys import derive_key_ids
from sdqkd.lkms.store import SqliteKeyStore
from sdqkd.lkms.store_api import KeyState

Q = str(uuid.uuid4())
R = store_runs.RUN_KEYS


def _tables(path: Path) -> tuple[int, int]:
    """(rows in keys, rows in runs) of the store file."""
    with sqlite3.connect(path) as c:
        return c.execute("SELECT COUNT(*) FROM keys").fetchone()[0], c.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def _view(path: Path) -> list[tuple[bytes, int, bytes]]:
    """(ID, state, material) of every key, in seq order, through the all_keys view."""
    with sqlite3.connect(path) as c:
        return [(bytes(k), s, bytes(m)) for k, s, m in
                c.execute("SELECT kid, state, material FROM all_keys ORDER BY seq")]


async def _store(tmp: Path) -> SqliteKeyStore:
    s = SqliteKeyStore(tmp / "k.sqlite", max_key_count=10**6)
    await s.open()
    await s.ensure_pool(Q, "PHYS")
    return s


def test_a_block_is_a_few_runs_whose_keys_become_rows_only_when_needed(tmp_path: Path) -> None:
    async def go() -> None:
        s = await _store(tmp_path)
        n = 2 * R + 10
        mat = os.urandom(n * 32)
        ids = await s.add_block(Q, mat, 256, "blk-0")
        assert _tables(tmp_path / "k.sqlite") == (0, 3)
        assert await s.key_states(Q) == dict.fromkeys(ids, KeyState.AVAILABLE)
        # the first key from the front, the last from the back: their runs become rows
        front = await s.take_next(Q, 1, from_back=False)
        back = await s.take_next(Q, 1, from_back=True)
        assert [k.key_id for k in front + back] == [ids[0], ids[-1]]
        assert front[0].material == mat[:32] and back[0].material == mat[-32:]
        assert _tables(tmp_path / "k.sqlite") == (R - 1 + 9, 1)
        # most of a run by ID: cut out of it, the rest two runs, no row
        most = ids[R + 5:R + 5 + R // 2] + ids[R + 10 + R // 2:2 * R]
        got = await s.take_keys(Q, most)
        assert got is not None and [k.material for k in got] == [
            mat[i * 32:i * 32 + 32] for i in [*range(R + 5, R + 5 + R // 2), *range(R + 10 + R // 2, 2 * R)]]
        assert _tables(tmp_path / "k.sqlite") == (R - 1 + 9, 2)
        # one key of a run by ID: the run becomes rows (a cut would rewrite the rest of it)
        one = await s.take_keys(Q, [ids[R + 2]])
        assert one is not None and one[0].material == mat[(R + 2) * 32:(R + 3) * 32]
        assert _tables(tmp_path / "k.sqlite") == (R - 1 + 9 + 4, 1)
        gone = {ids[0], ids[-1], ids[R + 2], *most}
        left = [i for i in ids if i not in gone]
        assert [(uuid.UUID(bytes=k).hex, st) for k, st, _ in _view(tmp_path / "k.sqlite")] == [
            (uuid.UUID(i).hex, 0) for i in left]
        st = s.pool_stats(Q)
        assert st is not None and st.available_keys == n - len(gone)
        await s.close()
        # the counts are loaded from the runs again
        s2 = SqliteKeyStore(tmp_path / "k.sqlite")
        await s2.open()
        st = s2.pool_stats(Q)
        assert st is not None and (st.available_keys, st.available_bits) == (len(left), len(left) * 256)
        assert set(await s2.key_states(Q)) == set(left)
        await s2.close()

    asyncio.run(go())


def test_run_members_are_held_not_missing_and_not_gone(tmp_path: Path) -> None:
    async def go() -> None:
        s = await _store(tmp_path)
        ids = await s.add_block(Q, os.urandom(20 * 32), 256, "blk-0")
        other = derive_key_ids(Q, "blk-1", 3)  # a block not stored (yet)
        assert await s.missing(Q, ids + other) == (other, [])
        assert await s.gone(Q, ids + other) == []
        assert _tables(tmp_path / "k.sqlite") == (0, 1)  # looking changed nothing
        assert await s.take_keys(Q, ids[3:5]) is not None
        assert await s.gone(Q, ids) == ids[3:5]
        # a key of another pool is unknown here, whether a row or a run holds it
        await s.ensure_pool("other", "PHYS")
        ids2 = await s.add_block("other", os.urandom(5 * 32), 256, "blk-0")
        assert (await s.missing(Q, ids2))[0] == ids2
        assert (await s.missing("other", ids[:1] + ids2))[0] == ids[:1]
        await s.close()

    asyncio.run(go())


def test_a_put_of_an_id_a_run_holds_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def go() -> None:
        s = await _store(tmp_path)
        mat = os.urandom(10 * 32)
        ids = await s.add_block(Q, mat, 256, "blk-0")
        before = _view(tmp_path / "k.sqlite")
        try:
            await s.put_key(Q, ids[4], os.urandom(32), 256)
        except Exception as e:  # noqa: BLE001 - the store's refusal
            assert "already stored" in str(e)
        else:
            raise AssertionError("a put of a stored ID was accepted")
        assert _tables(tmp_path / "k.sqlite") == (0, 1)  # the run it turned into rows is one run again
        assert await s.put_keys(Q, [(ids[2], os.urandom(32)), (str(uuid.uuid4()), os.urandom(32))]) == [False, True]
        after = _view(tmp_path / "k.sqlite")
        assert after[:10] == before and len(after) == 11 and after[2][2] == mat[64:96]
        await s.close()

    asyncio.run(go())


def test_reserve_out_joins_smaller_put_keys_with_run_members_in_order(tmp_path: Path) -> None:
    async def go() -> None:
        s = await _store(tmp_path)
        small = [(str(uuid.uuid4()), os.urandom(16)) for _ in range(4)]
        assert await s.put_keys(Q, small) == [True] * 4
        mat = os.urandom(2 * R * 32)
        ids = await s.add_block(Q, mat, 256, "blk-0")
        out = await s.reserve_out(Q, "t1", [3], 256, from_back=False)
        keys = out[0]
        assert keys is not None and len(keys) == 3
        assert [p[0] for p in keys[0].parts] == [small[0][0], small[1][0]]
        assert [p[0] for p in keys[1].parts] == [small[2][0], small[3][0]]
        assert keys[2].key_id == ids[0] and keys[2].material == mat[:32]
        # from the back: the block's last keys, the last first
        out = await s.reserve_out(Q, "t2", [2], 256, from_back=True)
        assert [k.key_id for k in out[0] or []] == [ids[-1], ids[-2]]
        # more than the pool holds: refused, and every key still there
        assert (await s.reserve_out(Q, "t3", [10**4], 256, from_back=False)) == [None]
        st = s.pool_stats(Q)
        assert st is not None and st.available_keys == 2 * R - 3
        await s.close()

    asyncio.run(go())


def test_every_operation_agrees_with_a_row_per_key_model(tmp_path: Path) -> None:
    """Random operations on a store and on a plain ordered list of its available keys: after each,
    the store holds exactly the list's keys, in its order, with their material."""
    async def go() -> None:
        rnd = random.Random(20261207)
        s = await _store(tmp_path)
        model: list[tuple[str, bytes]] = []  # available keys in seq order
        blocks = 0
        for step in range(150):
            op = rnd.choice(["block", "block", "front", "back", "ids", "erase", "put", "reserve", "page"])
            if op == "block" or not model:
                n = rnd.choice([1, 5, R - 1, R, R + 1, 3 * R + 7])
                mat = os.urandom(n * 32)
                ids = await s.add_block(Q, mat, 256, f"blk-{blocks}")
                blocks += 1
                model += [(i, mat[j * 32:j * 32 + 32]) for j, i in enumerate(ids)]
            elif op in ("front", "back"):
                n = rnd.randint(1, min(len(model), 2 * R))
                got = await s.take_next(Q, n, from_back=op == "back")
                want = model[:n] if op == "front" else model[::-1][:n]
                assert [(k.key_id, k.material) for k in got] == want, step
                model = model[n:] if op == "front" else model[:-n]
            elif op in ("ids", "erase"):
                pick = rnd.sample(model, rnd.randint(1, min(len(model), 40)))
                if op == "ids":
                    got2 = await s.take_keys(Q, [k for k, _ in pick])
                    assert got2 is not None and [(k.key_id, k.material) for k in got2] == pick, step
                else:
                    assert await s.erase_available(Q, [k for k, _ in pick]) == len(pick), step
                model = [m for m in model if m not in pick]
            elif op == "put":
                new = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(rnd.randint(1, 5))]
                assert await s.put_keys(Q, new) == [True] * len(new)
                model += new
            elif op == "reserve":
                n = rnd.randint(1, min(len(model), 30))
                back = rnd.random() < 0.5
                got3 = (await s.reserve_out(Q, f"t{step}", [n], 256, from_back=back))[0]
                want = model[:n] if not back else model[::-1][:n]
                assert got3 is not None and [(k.key_id, k.material) for k in got3] == want, step
                await s.commit_out(f"t{step}")  # delivered: erased
                model = model[n:] if not back else model[:-n]
            else:
                page = rnd.randint(1, 300)
                ids, cursor = [], 0
                while True:
                    got4, cursor = await s.available_ids(Q, 1e18, cursor, page)
                    ids += got4
                    if len(got4) < page:
                        break
                assert ids == [k for k, _ in model], step
            st = s.pool_stats(Q)
            assert st is not None and st.available_keys == len(model), (step, op)
        assert await s.key_states(Q) == {k: KeyState.AVAILABLE for k, _ in model}
        await s.close()
        assert [(str(uuid.UUID(bytes=k)), m) for k, st_, m in _view(tmp_path / "k.sqlite")] == model
        s2 = SqliteKeyStore(tmp_path / "k.sqlite")
        await s2.open()
        st = s2.pool_stats(Q)
        assert st is not None and st.available_keys == len(model)
        assert await s2.drop_pool(Q) == len(model)
        assert _tables(tmp_path / "k.sqlite") == (0, 0)
        await s2.close()

    asyncio.run(go())


def test_a_store_written_before_runs_opens_and_serves_its_rows_first(tmp_path: Path) -> None:
    """A file with the schema of before (no runs: a row per key) needs no migration: its keys stay
    rows, new blocks come as runs after them, and both are served in storage order."""
    from sdqkd.lkms.keys import derive_key_blobs
    from sdqkd.lkms.store import SCHEMA

    old = os.urandom(10 * 32)
    kids = derive_key_blobs(Q, "old", 10)
    with sqlite3.connect(tmp_path / "k.sqlite") as c:
        c.executescript(SCHEMA)
        c.execute("INSERT INTO pools(qkdl_id, kind, added_keys, added_bits) VALUES(?, 'PHYS', 10, 2560)", (Q,))
        c.execute("INSERT INTO blocks VALUES(1, 'old')")
        c.execute("INSERT INTO keys(pid, kid, bits, state, material, created) "
                  "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n+1 FROM i WHERE n+1<10) "
                  "SELECT 1, substr(?, n*16+1, 16), 256, 0, substr(?, n*32+1, 32), 0 FROM i", (kids, old))

    async def go() -> None:
        s = SqliteKeyStore(tmp_path / "k.sqlite")
        await s.open()
        st = s.pool_stats(Q)
        assert st is not None and st.available_keys == 10
        new = os.urandom(5 * 32)
        ids = await s.add_block(Q, new, 256, "new")
        assert _tables(tmp_path / "k.sqlite") == (10, 1)
        got = await s.take_next(Q, 12, from_back=False)
        assert [k.material for k in got] == [old[i * 32:i * 32 + 32] for i in range(10)] + [new[:32], new[32:64]]
        back = await s.take_next(Q, 3, from_back=True)
        assert [k.key_id for k in back] == ids[::-1][:3]
        await s.close()

    asyncio.run(go())
