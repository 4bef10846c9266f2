"""SQLite key store: the embedded default `KeyStore` (see store_api.py for the model).

Durability: WAL journal with synchronous=FULL (every commit is fsynced before the awaitable
returns) and secure_delete=ON (deleted rows are overwritten with zeros in the pages SQLite
writes). The WAL file is truncated at each checkpoint so old page images do not linger there.

Files: the data directory is 0700 and keys.sqlite 0600 whatever the umask; SQLite gives the
-wal and -shm files the database file's mode.

Failures: a full disk, a read-only directory or an I/O error fails the operations of the group
that met it with `StoreUnavailable` naming cause and directory (logged once per episode); the
writer thread never dies, so the next operation simply tries again and succeeds once space is
back. Opening a store in a directory that cannot be written is refused with the same message.

Speed: one writer thread owns the connection and commits *groups* of queued operations in one
transaction (one fsync for everything that arrived meanwhile); each operation runs in its own
SAVEPOINT so one failure never spoils its neighbours. Counts per pool are kept in memory
(loaded once at open), so status calls never scan. Key IDs are stored as 16-byte blobs; the
index (pool, state, seq) serves "next available key" from either end in O(log n).

Runs: a block's keys go in as runs of many keys (store_runs.py: ~20 rows for ~5,350 keys, 2.4
ms of CPU per block where a row per key cost 17.7); a key gets a row of its own only when an
operation needs one (store_runs.py says which). Every operation below sees rows and runs alike;
the view `all_keys` shows both to whoever reads the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sdqkd.lkms import store_runs as runs
from sdqkd.lkms.keys import (
    KEY_ID_PREFIX_BYTES,
    AppKey,
    LinkKey,
    derive_key_blobs,
    group_parts,
    join_parts,
    key_id_strings,
)
from sdqkd.lkms.store_api import (
    KeyState,
    OutboxItem,
    PendingVoid,
    PoolStats,
    ReserveResult,
    StoreError,
    StoreUnavailable,
)
from sdqkd.private import FILE_MODE, private_dir, private_file

log = logging.getLogger(__name__)

AVAILABLE, OUT, IN = int(KeyState.AVAILABLE), int(KeyState.RESERVED_OUT), int(KeyState.RESERVED_IN)
_SEP = "\x1f"  # separates pending slave SAE IDs (IDs are URIs/UUIDs, never contain it)
_MAX_GROUP = 512  # operations committed together at most
_WAL_MAX = 16 << 20  # checkpoint when the WAL grows beyond this
_IN_BATCH = 500  # key IDs per "IN (...)" (SQLite allows 32766 parameters)


class _Rollback(Exception):
    """Raised by an operation to undo its changes and still answer `value`."""

    def __init__(self, value: Any) -> None:
        super().__init__("rollback")
        self.value = value

SCHEMA = """
CREATE TABLE IF NOT EXISTS pools(
  pid INTEGER PRIMARY KEY, qkdl_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
  added_keys INTEGER NOT NULL DEFAULT 0, added_bits INTEGER NOT NULL DEFAULT 0,
  delivered_keys INTEGER NOT NULL DEFAULT 0, delivered_bits INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS keys(
  seq INTEGER PRIMARY KEY,          -- insertion order, shared with runs (store_runs.py)
  pid INTEGER NOT NULL,
  kid BLOB NOT NULL UNIQUE,         -- 16-byte UUID, same at both ends
  bits INTEGER NOT NULL,
  state INTEGER NOT NULL,
  material BLOB NOT NULL,
  created REAL NOT NULL,
  txn TEXT, master TEXT, pending TEXT, reserved_at REAL, confirmed INTEGER,
  grp BLOB, grp_pos INTEGER, grp_bits INTEGER);
CREATE INDEX IF NOT EXISTS keys_pick ON keys(pid, state, seq);
CREATE INDEX IF NOT EXISTS keys_txn ON keys(txn) WHERE txn IS NOT NULL;
CREATE INDEX IF NOT EXISTS keys_grp ON keys(grp, grp_pos) WHERE grp IS NOT NULL;
CREATE INDEX IF NOT EXISTS keys_unconfirmed ON keys(reserved_at) WHERE state = 2 AND confirmed = 0;
CREATE TABLE IF NOT EXISTS blocks(pid INTEGER NOT NULL, block_id TEXT NOT NULL, PRIMARY KEY(pid, block_id));
-- the ID prefix of each block stored (keys.KEY_ID_PREFIX_BYTES): a key of such a block that is
-- not in the pool was taken or erased here and can never arrive (see `gone`); stores made before
-- this table have no rows for their older blocks, whose keys are then treated as still to come
CREATE TABLE IF NOT EXISTS block_prefixes(prefix BLOB NOT NULL, pid INTEGER NOT NULL,
  PRIMARY KEY(prefix, pid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox(txn TEXT NOT NULL, kind TEXT NOT NULL, qkdl_id TEXT NOT NULL,
  created REAL NOT NULL, PRIMARY KEY(txn, kind));
CREATE TABLE IF NOT EXISTS tombstones(txn TEXT PRIMARY KEY, t REAL NOT NULL);
-- voids no one answered for certain yet (store_api.PendingVoid); key and SAE IDs as JSON
CREATE TABLE IF NOT EXISTS voids_owed(vid INTEGER PRIMARY KEY, via TEXT NOT NULL, dest TEXT NOT NULL,
  master TEXT NOT NULL, slaves TEXT NOT NULL, ids TEXT NOT NULL, hop TEXT NOT NULL, expires REAL NOT NULL);
"""


def _b(key_id: str) -> bytes:
    """16-byte form of a key ID; ValueError (TypeError) for anything `uuid.UUID` rejects."""
    if len(key_id) == 36 and key_id[8] == key_id[13] == key_id[18] == key_id[23] == "-":
        try:  # the canonical form, 3x faster than uuid.UUID (the stream path converts thousands)
            b = bytes.fromhex(key_id.replace("-", ""))
        except ValueError:
            b = b""
        if len(b) == 16:
            return b
    return uuid.UUID(key_id).bytes


def _distinct_ids(key_ids: Sequence[str]) -> list[bytes] | None:
    """Key IDs as stored (16-byte blobs), or None if one is malformed or repeated."""
    try:
        blobs = [_b(k) for k in key_ids]
    except (ValueError, TypeError):
        return None
    return blobs if len(set(blobs)) == len(blobs) else None


def _insert_keys(conn: sqlite3.Connection, rows: list[tuple[int, bytes, int, bytes, float]]) -> None:
    """INSERT available keys (pid, kid, bits, material, created), in order, after every key there is."""
    seq = runs.next_seq(conn)
    if len(rows) > 1 and len({(r[0], r[2], len(r[3]), r[4]) for r in rows}) == 1:
        pid, _, bits, m, now = rows[0]
        conn.execute(runs.INSERT_ROWS, (len(rows), seq, pid, b"".join(r[1] for r in rows), bits,
                                        b"".join(r[3] for r in rows), len(m), len(m), now))
    else:
        conn.executemany("INSERT INTO keys(seq, pid, kid, bits, state, material, created) VALUES(?,?,?,?,0,?,?)",
                         [(seq + i, *r) for i, r in enumerate(rows)])


def _canonical_or(key_id: str, kid: bytes) -> str:
    """`key_id` if it is already the canonical form of `kid` (the usual case: no re-formatting)."""
    if len(key_id) == 36 and key_id[8] == key_id[13] == key_id[18] == key_id[23] == "-" and key_id == key_id.lower():
        return key_id
    return _s(kid)


def _s(kid: bytes) -> str:
    """Canonical string of a 16-byte key ID (as str(uuid.UUID(bytes=kid)), 3x faster)."""
    if len(kid) != 16:
        raise ValueError("key IDs are 16 bytes")
    h = kid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pick(rows: Iterator[tuple[int, bytes, int, bytes]], counts: list[int], bits: int
          ) -> tuple[list[list[AppKey] | None], list[tuple[int]], int, int, bool]:
    """Reserve_out's choice: for each count, that many keys of `bits` from the available rows in
    order (link keys joined when smaller), or None once the rows run out. Also the seqs taken,
    their keys and bits, and whether the rows ran out."""
    out: list[list[AppKey] | None] = []
    updates: list[tuple[int]] = []
    exhausted = False
    taken_k = taken_b = 0
    nbytes = bits // 8
    for n in counts:
        if exhausted or n <= 0:
            out.append(None if n > 0 else [])
            continue
        got: list[AppKey] = []
        pend: list[tuple[int]] = []
        tb = 0
        for _ in range(n):
            row = next(rows, None)
            if row is None:
                exhausted = True
                break
            if row[2] >= bits:  # one link key makes the key (the usual case)
                seq, kid, pbits, m = row
                pend.append((seq,))
                tb += pbits
                sid = _s(kid)
                got.append(AppKey(sid, bits, ((sid, pbits),), m if pbits == bits else m[:nbytes]))
                continue
            parts: list[tuple[int, bytes, int, bytes]] = [row]
            acc = row[2]
            while acc < bits:
                row = next(rows, None)
                if row is None:
                    exhausted = True
                    break
                parts.append(row)
                acc += row[2]
            if exhausted:
                break
            for seq, _kid, pb, _m in parts:
                pend.append((seq,))
                tb += pb
            got.append(AppKey(_s(parts[0][1]), bits, tuple((_s(p[1]), p[2]) for p in parts),
                              join_parts([p[3] for p in parts], bits)))
        if exhausted:
            out.append(None)
            continue
        out.append(got)
        updates.extend(pend)
        taken_k += len(pend)
        taken_b += tb
    return out, updates, taken_k, taken_b, exhausted


def _nearer(seq: int, other: int, from_back: bool) -> bool:
    """Whether `seq` comes before `other` in the pool's order read from that end."""
    return seq > other if from_back else seq < other


class _Counts:
    __slots__ = ("pid", "qkdl_id", "kind", "av_k", "av_b", "rs_k", "rs_b", "dl_k", "dl_b", "ad_k", "ad_b")

    def __init__(self, pid: int, qkdl_id: str, kind: str) -> None:
        self.pid, self.qkdl_id, self.kind = pid, qkdl_id, kind
        self.av_k = self.av_b = self.rs_k = self.rs_b = 0
        self.dl_k = self.dl_b = self.ad_k = self.ad_b = 0


class _Tx:
    """What one operation sees: the connection and a list of count changes, applied to the
    in-memory counts only if the group commits."""

    __slots__ = ("conn", "deltas", "changed", "store", "after")

    def __init__(self, store: SqliteKeyStore, conn: sqlite3.Connection) -> None:
        self.store, self.conn = store, conn
        self.deltas: list[tuple[int, str, int]] = []
        self.changed: set[str] = set()
        self.after: list[Callable[[], None]] = []  # run after the commit, before the deltas

    def d(self, pid: int, **kw: int) -> None:
        for k, v in kw.items():
            if v:
                self.deltas.append((pid, k, v))

    def pid(self, qkdl_id: str) -> int:
        c = self.store._by_id.get(qkdl_id)
        if c is not None:
            return c.pid
        row = self.conn.execute("SELECT pid FROM pools WHERE qkdl_id=?", (qkdl_id,)).fetchone()
        if row is None:
            raise StoreError(f"no pool for link {qkdl_id}")
        return int(row[0])


class SqliteKeyStore:
    """`KeyStore` on one SQLite file (`<data_dir>/keys.sqlite`)."""

    def __init__(self, path: Path | str, max_key_count: int = 100_000) -> None:
        self.path = Path(path)
        self._wal = f"{self.path}-wal"
        self.max_key_count = max_key_count
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._by_id: dict[str, _Counts] = {}
        self._by_pid: dict[int, _Counts] = {}
        self._callbacks: list[Callable[[set[str]], None]] = []
        self._ops_since_ckpt = 0
        self._trouble: str | None = None  # the cause of the current failure episode, if any

    # --- plumbing --------------------------------------------------------------------------
    def _unavailable(self, e: BaseException) -> StoreUnavailable:
        """The clear form of a disk-level failure: cause and directory."""
        d = self.path.parent
        text = str(e).lower()
        errno_ = getattr(e, "errno", None)
        if errno_ == 28 or "full" in text:
            return StoreUnavailable(f"disk is full: {d}")
        if errno_ == 30 or "readonly" in text or "read-only" in text:
            return StoreUnavailable(f"data directory is read-only: {d}")
        if errno_ == 13 or "permission" in text:
            return StoreUnavailable(f"data directory is not writable: {d}")
        return StoreUnavailable(f"key store I/O error ({type(e).__name__}: {e}): {d}")

    def _connect(self) -> sqlite3.Connection:
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            for extra in (self._wal, f"{self.path}-shm"):  # left by an older version: tighten them too
                if os.path.exists(extra):
                    os.chmod(extra, FILE_MODE)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA secure_delete=ON")
                conn.execute("PRAGMA temp_store=MEMORY")
                conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the pick index of 10^6 keys fits
                conn.execute("PRAGMA wal_autocheckpoint=0")  # we checkpoint (and truncate) ourselves
                conn.executescript(SCHEMA + runs.SCHEMA)
            except BaseException:
                conn.close()
                raise
        except (OSError, sqlite3.Error) as e:
            raise self._unavailable(e) from None
        return conn

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            item = self._q.get()
            if item is None:
                break
            group = [item]
            stop = False
            while len(group) < _MAX_GROUP:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            try:
                self._run_group(conn, group)
            except BaseException as e:  # never let the writer die: every later call would wait forever
                log.error("key store: unexpected %s; the group is failed", type(e).__name__)
                err = StoreError(f"key store error: {type(e).__name__}")
                for _fn, _args, fut, loop in group:
                    loop.call_soon_threadsafe(_resolve, fut, None, err)
            if stop:
                break
        self._checkpoint(conn)
        conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Checkpoint and truncate the WAL; on a full disk it is simply tried again later."""
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            self._trouble_seen(self._unavailable(e))

    def _trouble_seen(self, err: StoreUnavailable) -> None:
        if self._trouble != str(err):
            self._trouble = str(err)
            log.error("key store: %s (operations fail with 503 until this is fixed)", err)

    def _trouble_over(self) -> None:
        if self._trouble is not None:
            log.warning("key store: writable again (%s is over)", self._trouble)
            self._trouble = None

    def _run_group(self, conn: sqlite3.Connection, group: list[Any]) -> None:
        done: list[tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Any, BaseException | None, _Tx | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, fut, loop in group:
                tx = _Tx(self, conn)
                conn.execute("SAVEPOINT op")
                try:
                    res = fn(tx, *args)
                    conn.execute("RELEASE op")
                    done.append((fut, loop, res, None, tx))
                except _Rollback as r:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    done.append((fut, loop, r.value, None, None))
                except sqlite3.OperationalError:
                    raise  # the disk (full, read-only, I/O): the whole group fails below
                except Exception as e:  # handed to the awaiting task
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    done.append((fut, loop, None, e, None))
            conn.execute("COMMIT")
            self._trouble_over()
        except Exception as e:  # the commit failed: nothing of the group happened
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolls a failed transaction back itself
            err: StoreError
            if isinstance(e, sqlite3.OperationalError):
                unavailable = self._unavailable(e)
                self._trouble_seen(unavailable)
                err = unavailable
            else:
                log.error("key store commit failed: %s", type(e).__name__)
                err = StoreError(f"commit failed: {type(e).__name__}")
            done = [(fut, loop, None, err, None) for _fn, _args, fut, loop in group]
        changed: set[str] = set()
        for _fut, _loop, _res, _exc, done_tx in done:
            if done_tx is None:
                continue
            for action in done_tx.after:
                action()
            for pid, k, v in done_tx.deltas:
                c = self._by_pid.get(pid)
                if c is not None:
                    setattr(c, k, getattr(c, k) + v)
            changed |= done_tx.changed
        for fut, loop, res, exc, _tx in done:
            loop.call_soon_threadsafe(_resolve, fut, res, exc)
        if changed and self._callbacks:
            loop = group[0][3]
            for cb in self._callbacks:
                loop.call_soon_threadsafe(cb, changed)
        self._ops_since_ckpt += len(group)
        if self._ops_since_ckpt >= 1000 or self._wal_bytes() > _WAL_MAX:
            # Checkpoint and truncate the WAL: old page images (key material) leave it soon, and
            # readers never wade through a long WAL (a 10^6-key fill would make every op slower).
            self._ops_since_ckpt = 0
            self._checkpoint(conn)

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._thread is None:
            raise StoreError("key store is not open")
        if not self._thread.is_alive():
            raise StoreUnavailable(f"key store writer stopped: {self.path.parent}")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((fn, args, fut, loop))
        return fut

    # --- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        """Opens the file and starts the writer thread. An open that fails or is cancelled (a
        network stopped while it starts) closes what it opened before it returns: no thread of
        it goes on creating or writing files in a directory its owner is about to remove."""
        if self._thread is not None:
            return
        connecting = asyncio.ensure_future(asyncio.to_thread(self._connect))
        try:
            self._conn = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            with contextlib.suppress(StoreError):  # the thread runs on: wait for it, then close
                (await connecting).close()
            raise
        self._thread = threading.Thread(target=self._run, name=f"keystore:{self.path.name}", daemon=True)
        self._thread.start()
        try:
            await self._submit(self._load)
            erased = await self._submit(self._recover)
        except BaseException:
            await asyncio.shield(self.close())
            raise
        if erased:
            log.warning("key store recovery: erased %d keys of interrupted reservations", erased)

    async def close(self) -> None:
        if self._thread is None:
            return
        self._q.put(None)
        t, self._thread = self._thread, None
        await asyncio.to_thread(t.join)
        self._conn = None

    def on_change(self, callback: Callable[[set[str]], None]) -> None:
        self._callbacks.append(callback)

    def _load(self, tx: _Tx) -> None:
        self._by_id.clear()
        self._by_pid.clear()
        for pid, qkdl_id, kind, ak, ab, dk, db in tx.conn.execute(
                "SELECT pid, qkdl_id, kind, added_keys, added_bits, delivered_keys, delivered_bits FROM pools"):
            c = _Counts(pid, qkdl_id, kind)
            c.ad_k, c.ad_b, c.dl_k, c.dl_b = ak, ab, dk, db
            self._by_id[qkdl_id] = self._by_pid[pid] = c
        for pid, state, n, bits in tx.conn.execute(
                "SELECT pid, state, COUNT(*), TOTAL(bits) FROM keys GROUP BY pid, state"):
            counts = self._by_pid.get(pid)
            if counts is None:
                continue
            if state == AVAILABLE:
                counts.av_k, counts.av_b = n, int(bits)
            else:
                counts.rs_k += n
                counts.rs_b += int(bits)
        for pid, n, bits in runs.counts(tx.conn):
            counts = self._by_pid.get(pid)
            if counts is not None:
                counts.av_k += n
                counts.av_b += bits

    def _recover(self, tx: _Tx) -> int:
        # RESERVED_OUT keys were never handed out (delivery erases them in the same commit).
        rows = tx.conn.execute(
            "SELECT DISTINCT txn, pid FROM keys WHERE state=? AND txn IS NOT NULL", (OUT,)).fetchall()
        erased = 0
        for txn, pid in rows:
            c = self._by_pid.get(pid)
            erased += self._erase_txn(tx, txn, OUT)
            if c is not None:
                tx.conn.execute("INSERT OR IGNORE INTO outbox VALUES(?,?,?,?)", (txn, "release", c.qkdl_id, time.time()))
        return erased

    # --- pools -----------------------------------------------------------------------
    async def ensure_pool(self, qkdl_id: str, kind: str) -> None:
        if qkdl_id not in self._by_id:
            await self._submit(self._ensure_pool, qkdl_id, kind)

    def _ensure_pool(self, tx: _Tx, qkdl_id: str, kind: str) -> None:
        if qkdl_id in self._by_id:
            return
        tx.conn.execute("INSERT OR IGNORE INTO pools(qkdl_id, kind) VALUES(?,?)", (qkdl_id, kind))
        pid = tx.conn.execute("SELECT pid FROM pools WHERE qkdl_id=?", (qkdl_id,)).fetchone()[0]

        def register() -> None:
            c = _Counts(pid, qkdl_id, kind)
            self._by_id[qkdl_id] = self._by_pid[pid] = c

        tx.after.append(register)

    async def drop_pool(self, qkdl_id: str) -> int:
        if qkdl_id not in self._by_id:
            return 0
        return int(await self._submit(self._drop_pool, qkdl_id))

    def _drop_pool(self, tx: _Tx, qkdl_id: str) -> int:
        c = self._by_id.get(qkdl_id)
        if c is None:
            return 0
        n = tx.conn.execute("DELETE FROM keys WHERE pid=?", (c.pid,)).rowcount + runs.drop(tx.conn, c.pid)
        tx.conn.execute("DELETE FROM blocks WHERE pid=?", (c.pid,))
        tx.conn.execute("DELETE FROM block_prefixes WHERE pid=?", (c.pid,))
        tx.conn.execute("DELETE FROM pools WHERE pid=?", (c.pid,))
        # the link is gone for good: nothing of it is left to confirm or release
        tx.conn.execute("DELETE FROM outbox WHERE qkdl_id=?", (qkdl_id,))

        def unregister() -> None:
            self._by_id.pop(qkdl_id, None)
            self._by_pid.pop(c.pid, None)

        tx.after.append(unregister)
        tx.changed.add(qkdl_id)
        return n

    def pools(self) -> list[str]:
        return list(self._by_id)

    def pool_stats(self, qkdl_id: str) -> PoolStats | None:
        c = self._by_id.get(qkdl_id)
        if c is None:
            return None
        return PoolStats(c.qkdl_id, c.kind, c.av_k, c.av_b, c.rs_k, c.rs_b, c.dl_k, c.dl_b, c.ad_k, c.ad_b)

    def has_room(self, qkdl_id: str) -> bool:
        return self.room_keys(qkdl_id) > 0

    def room_keys(self, qkdl_id: str) -> int:
        c = self._by_id.get(qkdl_id)
        return self.max_key_count if c is None else max(0, self.max_key_count - c.av_k)

    # --- filling ---------------------------------------------------------------------
    async def add_block(self, qkdl_id: str, material: bytes, key_size_bits: int, block_id: str) -> list[str]:
        if key_size_bits <= 0 or key_size_bits % 8:
            raise StoreError("key_size_bits must be a positive multiple of 8")
        if not block_id:
            raise StoreError("block_id must not be empty")
        size = key_size_bits // 8
        count = len(material) // size
        kids = derive_key_blobs(qkdl_id, block_id, count)
        await self._submit(self._add_block, qkdl_id, bytes(material[:count * size]), size, block_id, kids)
        return key_id_strings(kids)

    def _add_block(self, tx: _Tx, qkdl_id: str, material: bytes, size: int, block_id: str, kids: bytes) -> None:
        pid = tx.pid(qkdl_id)
        cur = tx.conn.execute("INSERT OR IGNORE INTO blocks VALUES(?,?)", (pid, block_id))
        if cur.rowcount == 0:
            return  # seen before: never resurrect keys that may have been delivered and erased
        n = len(kids) // 16
        if not n:
            return
        prefix = kids[:KEY_ID_PREFIX_BYTES]
        tx.conn.execute("INSERT OR IGNORE INTO block_prefixes VALUES(?,?)", (prefix, pid))
        bits = size * 8
        if runs.block_free(tx.conn, prefix):
            runs.add(tx.conn, pid, kids, material, size, time.time())  # a few rows, not one per key
        else:  # a put stored one of these IDs (never in practice): rows, and the ID index refuses it
            tx.conn.execute(runs.INSERT_ROWS, (n, runs.next_seq(tx.conn), pid, kids, bits, material, size, size,
                                               time.time()))
        tx.conn.execute("UPDATE pools SET added_keys=added_keys+?, added_bits=added_bits+? WHERE pid=?",
                        (n, n * bits, pid))
        tx.d(pid, av_k=n, av_b=n * bits, ad_k=n, ad_b=n * bits)
        tx.changed.add(qkdl_id)

    async def put_key(self, qkdl_id: str, key_id: str, material: bytes, bits: int) -> None:
        if bits <= 0 or bits % 8 or len(material) * 8 != bits:
            raise StoreError("bad key size")
        await self._submit(self._put_key, qkdl_id, key_id, bytes(material), bits)

    def _put_key(self, tx: _Tx, qkdl_id: str, key_id: str, material: bytes, bits: int) -> None:
        pid = tx.pid(qkdl_id)
        kid = _b(key_id)
        runs.materialize_ids(tx.conn, [kid])  # so that the ID index sees it if a run holds it
        try:
            tx.conn.execute("INSERT INTO keys(seq, pid, kid, bits, state, material, created) VALUES(?,?,?,?,0,?,?)",
                            (runs.next_seq(tx.conn), pid, kid, bits, material, time.time()))
        except sqlite3.IntegrityError:
            raise StoreError("key ID already stored") from None
        tx.conn.execute("UPDATE pools SET added_keys=added_keys+1, added_bits=added_bits+? WHERE pid=?", (bits, pid))
        tx.d(pid, av_k=1, av_b=bits, ad_k=1, ad_b=bits)
        tx.changed.add(qkdl_id)

    async def put_keys(self, qkdl_id: str, keys: Sequence[tuple[str, bytes]]) -> list[bool]:
        if any(not m or len(m) * 8 <= 0 for _, m in keys):
            raise StoreError("bad key size")
        try:
            rows = [(_b(k), bytes(m)) for k, m in keys]
        except (ValueError, TypeError):
            raise StoreError("bad key ID") from None
        return list(await self._submit(self._put_keys, qkdl_id, rows))

    def _put_keys(self, tx: _Tx, qkdl_id: str, rows: list[tuple[bytes, bytes]]) -> list[bool]:
        pid = tx.pid(qkdl_id)
        now = time.time()
        runs.materialize_ids(tx.conn, [kid for kid, _ in rows])  # IDs runs hold are then rows, seen below
        if self._put_all_fresh(tx, pid, rows, now):
            bits = sum(len(m) for _, m in rows) * 8
            tx.conn.execute("UPDATE pools SET added_keys=added_keys+?, added_bits=added_bits+? WHERE pid=?",
                            (len(rows), bits, pid))
            tx.d(pid, av_k=len(rows), av_b=bits, ad_k=len(rows), ad_b=bits)
            tx.changed.add(qkdl_id)
            return [True] * len(rows)
        taken: set[bytes] = set()  # IDs stored already (a repeated relay): one query per batch, not per key
        for i in range(0, len(rows), _IN_BATCH):
            part = [kid for kid, _ in rows[i:i + _IN_BATCH]]
            taken.update(k for (k,) in tx.conn.execute(
                f"SELECT kid FROM keys WHERE kid IN ({','.join('?' * len(part))})", part))
        out: list[bool] = []
        new: list[tuple[int, bytes, int, bytes, float]] = []
        for kid, material in rows:
            fresh = kid not in taken
            out.append(fresh)
            if fresh:
                taken.add(kid)
                new.append((pid, kid, len(material) * 8, material, now))
        _insert_keys(tx.conn, new)
        n, bits = len(new), sum(r[2] for r in new)
        if n:
            tx.conn.execute("UPDATE pools SET added_keys=added_keys+?, added_bits=added_bits+? WHERE pid=?",
                            (n, bits, pid))
            tx.d(pid, av_k=n, av_b=bits, ad_k=n, ad_b=bits)
            tx.changed.add(qkdl_id)
        return out

    @staticmethod
    def _put_all_fresh(tx: _Tx, pid: int, rows: list[tuple[bytes, bytes]], now: float) -> bool:
        """The usual case of put_keys in one statement: every ID new and every key of one size.
        False (and nothing changed) otherwise, for the per-key path."""
        if len(rows) < 2 or len({len(m) for _, m in rows}) != 1 or len({k for k, _ in rows}) != len(rows):
            return False
        size = len(rows[0][1])
        tx.conn.execute("SAVEPOINT put_keys")
        n = tx.conn.execute(runs.INSERT_NEW_ROWS, (
            len(rows), runs.next_seq(tx.conn), pid, b"".join(k for k, _ in rows), size * 8,
            b"".join(m for _, m in rows), size, size, now)).rowcount
        if n != len(rows):  # some ID was stored already (a repeated relay)
            tx.conn.execute("ROLLBACK TO put_keys")
        tx.conn.execute("RELEASE put_keys")
        return n == len(rows)

    # --- master side -------------------------------------------------------------------
    async def reserve_out(self, qkdl_id: str, txn: str, counts: Sequence[int], bits: int,
                          from_back: bool) -> list[list[AppKey] | None]:
        if bits <= 0 or bits % 8:
            raise StoreError("bits must be a positive multiple of 8")
        return await self._submit(self._reserve_out, qkdl_id, txn, list(counts), bits, from_back)

    def _reserve_out(self, tx: _Tx, qkdl_id: str, txn: str, counts: list[int], bits: int,
                     from_back: bool) -> list[list[AppKey] | None]:
        pid = tx.pid(qkdl_id)
        order = "DESC" if from_back else "ASC"
        need = 0
        while True:
            cur = tx.conn.execute(
                f"SELECT seq, kid, bits, material FROM keys WHERE pid=? AND state=0 ORDER BY seq {order}", (pid,))
            out, updates, taken_k, taken_b, exhausted = _pick(iter(cur), counts, bits)
            cur.close()
            near = runs.nearest(tx.conn, pid, from_back)
            if near is None or not exhausted and (not updates or _nearer(updates[-1][0], near[0], from_back)):
                break  # the rows picked come before every run
            # a run comes before the last row picked, or the rows ran out: rows of its keys, pick again
            want = len(updates) if not exhausted else sum(max(n, 0) for n in counts) * -(-bits // (8 * near[1]))
            need = max(2 * need, want, 1)
            runs.materialize_end(tx.conn, pid, need, from_back)
        if updates:
            # The master side needs no group columns: it erases by txn and knows the grouping.
            # The rows taken are a run of consecutive available rows in seq order (the SELECT's
            # order; an exhausted request ends the run): one range UPDATE marks them all.
            lo, hi = updates[0][0], updates[-1][0]
            if from_back:
                lo, hi = hi, lo
            n = tx.conn.execute("UPDATE keys SET state=1, txn=?, reserved_at=? WHERE pid=? AND state=0 "
                                "AND seq BETWEEN ? AND ?", (txn, time.time(), pid, lo, hi)).rowcount
            if n != len(updates):  # cannot happen; the operation is rolled back if it does
                raise StoreError("reservation run changed while reserving")
            tx.d(pid, av_k=-taken_k, av_b=-taken_b, rs_k=taken_k, rs_b=taken_b)
            tx.changed.add(qkdl_id)
        return out

    async def commit_out(self, txn: str, confirm: bool = True) -> int:
        return int(await self._submit(self._commit_out, txn, confirm))

    def _commit_out(self, tx: _Tx, txn: str, confirm: bool) -> int:
        rows = tx.conn.execute("DELETE FROM keys WHERE txn=? AND state=1 RETURNING pid, bits", (txn,)).fetchall()
        self._count_delivered(tx, rows, reserved=True)
        if rows and confirm:
            c = self._by_pid.get(rows[0][0])
            if c is not None:
                tx.conn.execute("INSERT OR IGNORE INTO outbox VALUES(?,?,?,?)", (txn, "confirm", c.qkdl_id, time.time()))
        return len(rows)

    def _count(self, tx: _Tx, rows: list[tuple[int, int]], reserved: bool, delivered: bool) -> None:
        """Count erased rows (pid, bits) out of the reserved or available figures; `delivered`
        also counts them as delivered to applications (in memory and in the pools table)."""
        per: dict[int, list[int]] = {}
        for pid, bits in rows:
            a = per.setdefault(pid, [0, 0])
            a[0] += 1
            a[1] += bits
        for pid, (k, b) in per.items():
            if reserved:
                tx.d(pid, rs_k=-k, rs_b=-b)
            else:
                tx.d(pid, av_k=-k, av_b=-b)
            if delivered:
                tx.conn.execute("UPDATE pools SET delivered_keys=delivered_keys+?, delivered_bits=delivered_bits+? "
                                "WHERE pid=?", (k, b, pid))
                tx.d(pid, dl_k=k, dl_b=b)
            c = self._by_pid.get(pid)
            if c is not None:
                tx.changed.add(c.qkdl_id)

    def _count_delivered(self, tx: _Tx, rows: list[tuple[int, int]], reserved: bool) -> None:
        self._count(tx, rows, reserved, delivered=True)

    def _count_erased(self, tx: _Tx, rows: list[tuple[int, int]], reserved: bool) -> None:
        self._count(tx, rows, reserved, delivered=False)

    def _erase_txn(self, tx: _Tx, txn: str, state: int | None = None) -> int:
        # counted per pool first, then deleted: two statements of one step each, not one step
        # (and one GIL hand-over) per erased row as DELETE ... RETURNING would take
        where = "txn=?" if state is None else "txn=? AND state=?"
        args = (txn,) if state is None else (txn, state)
        per = tx.conn.execute(f"SELECT pid, COUNT(*), TOTAL(bits) FROM keys WHERE {where} GROUP BY pid",
                              args).fetchall()
        if not per:
            return 0
        tx.conn.execute(f"DELETE FROM keys WHERE {where}", args)
        n = 0
        for pid, k, b in per:
            tx.d(pid, rs_k=-k, rs_b=-int(b))
            n += k
            c = self._by_pid.get(pid)
            if c is not None:
                tx.changed.add(c.qkdl_id)
        return int(n)

    async def abort_out(self, txn: str, *, erase: Sequence[str] = (), erase_all: bool = False,
                        release: bool = False) -> None:
        await self._submit(self._abort_out, txn, list(erase), erase_all, release)

    def _abort_out(self, tx: _Tx, txn: str, erase: list[str], erase_all: bool, release: bool) -> None:
        row = tx.conn.execute("SELECT pid FROM keys WHERE txn=? LIMIT 1", (txn,)).fetchone()
        if release and row is not None:
            c = self._by_pid.get(row[0])
            if c is not None:
                tx.conn.execute("INSERT OR IGNORE INTO outbox VALUES(?,?,?,?)", (txn, "release", c.qkdl_id, time.time()))
        if erase_all:
            self._erase_txn(tx, txn, OUT)
            return
        if erase:
            rows = []
            for k in erase:
                rows += tx.conn.execute("DELETE FROM keys WHERE kid=? AND txn=? AND state=1 RETURNING pid, bits",
                                        (_b(k), txn)).fetchall()
            self._count_erased(tx, rows, reserved=True)
        back = tx.conn.execute(
            "UPDATE keys SET state=0, txn=NULL, reserved_at=NULL, grp=NULL, grp_pos=NULL, grp_bits=NULL "
            "WHERE txn=? AND state=1 RETURNING pid, bits", (txn,)).fetchall()
        per: dict[int, list[int]] = {}
        for pid, bits in back:
            a = per.setdefault(pid, [0, 0])
            a[0] += 1
            a[1] += bits
        for pid, (nk, nb) in per.items():
            tx.d(pid, rs_k=-nk, rs_b=-nb, av_k=nk, av_b=nb)
            c = self._by_pid.get(pid)
            if c is not None:
                tx.changed.add(c.qkdl_id)

    # --- peer side -----------------------------------------------------------------------
    async def reserve_in(self, qkdl_id: str, txn: str, parts: Sequence[tuple[str, int]], bits: int,
                         master: str, slaves: Sequence[str]) -> ReserveResult:
        if bits <= 0 or bits % 8 or not parts or not slaves:
            return ReserveResult(False, reason="bad reservation")
        try:
            blobs = [(_b(k), int(b)) for k, b in parts]
        except (ValueError, TypeError):
            return ReserveResult(False, reason="malformed key ID")
        return await self._submit(self._reserve_in, qkdl_id, txn, blobs, bits, master, list(slaves))

    def _reserve_in(self, tx: _Tx, qkdl_id: str, txn: str, parts: list[tuple[bytes, int]], bits: int,
                    master: str, slaves: list[str]) -> ReserveResult:
        if qkdl_id not in self._by_id:
            return ReserveResult(False, reason="unknown link")
        if tx.conn.execute("SELECT 1 FROM tombstones WHERE txn=?", (txn,)).fetchone():
            return ReserveResult(False, reason="transaction released")
        if tx.conn.execute("SELECT 1 FROM keys WHERE txn=? LIMIT 1", (txn,)).fetchone():
            return ReserveResult(False, reason="transaction exists")
        pid = self._by_id[qkdl_id].pid
        runs.materialize_ids(tx.conn, [kid for kid, _ in parts])
        unknown: list[str] = []
        busy: list[str] = []
        seqs: list[int] = []
        seen: set[bytes] = set()
        for kid, b in parts:
            row = tx.conn.execute("SELECT seq, pid, bits, state FROM keys WHERE kid=?", (kid,)).fetchone()
            if row is None or row[1] != pid or kid in seen:
                unknown.append(_s(kid))
            elif row[3] != AVAILABLE or row[2] != b:
                busy.append(_s(kid))
            else:
                seqs.append(row[0])
            seen.add(kid)
        if unknown or busy:
            return ReserveResult(False, tuple(unknown), tuple(busy), "keys not available")
        sizes = [b for _, b in parts]
        groups = group_parts(sizes, bits)
        if sum(groups) != len(parts):
            return ReserveResult(False, reason="parts do not form whole keys")
        now = time.time()
        pending = _SEP.join(dict.fromkeys(slaves))
        upd = []
        i = 0
        for g in groups:
            grp = parts[i][0]
            for pos in range(g):
                upd.append((txn, master, pending, now, grp, pos, bits, seqs[i]))
                i += 1
        tx.conn.executemany("UPDATE keys SET state=2, txn=?, master=?, pending=?, reserved_at=?, confirmed=0, "
                            "grp=?, grp_pos=?, grp_bits=? WHERE seq=?", upd)
        tb = sum(sizes)
        tx.d(pid, av_k=-len(parts), av_b=-tb, rs_k=len(parts), rs_b=tb)
        tx.changed.add(qkdl_id)
        return ReserveResult(True)

    async def take_in(self, master: str, slave: str, key_ids: Sequence[str],
                      missing: list[str] | None = None) -> list[AppKey] | None:
        blobs = _distinct_ids(key_ids)
        if blobs is None:
            return None
        return await self._submit(self._take_in, master, slave, blobs, missing)

    def _take_in(self, tx: _Tx, master: str, slave: str, blobs: list[bytes],
                 missing: list[str] | None = None) -> list[AppKey] | None:
        found = []
        absent: list[str] = []
        for grp in blobs:
            rows = tx.conn.execute(
                "SELECT seq, pid, kid, bits, material, pending, grp_bits FROM keys "
                "WHERE grp=? AND state=2 AND master=? ORDER BY grp_pos", (grp, master)).fetchall()
            if not rows or slave not in rows[0][5].split(_SEP):
                absent.append(_s(grp))  # unknown or another pair's: the caller cannot tell which
                if missing is None:
                    return None
                continue
            found.append((grp, rows))
        if absent:
            if missing is not None:
                missing += absent
            return None
        out: list[AppKey] = []
        erased: list[tuple[int, int]] = []
        for grp, rows in found:
            bits = rows[0][6]
            out.append(AppKey(_s(grp), bits, tuple((_s(r[2]), r[3]) for r in rows),
                              join_parts([r[4] for r in rows], bits)))
            left = [s for s in rows[0][5].split(_SEP) if s != slave]
            if left:
                tx.conn.executemany("UPDATE keys SET pending=? WHERE seq=?",
                                    [(_SEP.join(left), r[0]) for r in rows])
            else:
                tx.conn.executemany("DELETE FROM keys WHERE seq=?", [(r[0],) for r in rows])
                erased += [(r[1], r[3]) for r in rows]
        self._count_delivered(tx, erased, reserved=True)
        return out

    async def release(self, txn: str) -> int:
        return int(await self._submit(self._release, txn))

    def _release(self, tx: _Tx, txn: str) -> int:
        tx.conn.execute("INSERT OR REPLACE INTO tombstones VALUES(?,?)", (txn, time.time()))
        return self._erase_txn(tx, txn)

    async def confirm(self, txn: str) -> int:
        return int(await self._submit(self._confirm, txn))

    def _confirm(self, tx: _Tx, txn: str) -> int:
        return tx.conn.execute("UPDATE keys SET confirmed=1 WHERE txn=? AND state=2", (txn,)).rowcount

    async def expire(self, unconfirmed_before: float) -> int:
        return int(await self._submit(self._expire, unconfirmed_before))

    def _expire(self, tx: _Tx, before: float) -> int:
        rows = tx.conn.execute("DELETE FROM keys WHERE state=2 AND confirmed=0 AND reserved_at<? "
                               "RETURNING pid, bits", (before,)).fetchall()
        self._count_erased(tx, rows, reserved=True)
        # Tombstones only need to outlive any Reserve still in flight.
        tx.conn.execute("DELETE FROM tombstones WHERE t<?", (before - 86400,))
        return len(rows)

    # --- raw link keys --------------------------------------------------------------------
    async def take_next(self, qkdl_id: str, n: int, from_back: bool) -> list[LinkKey]:
        return await self._submit(self._take_next, qkdl_id, n, from_back)

    def _take_next(self, tx: _Tx, qkdl_id: str, n: int, from_back: bool) -> list[LinkKey]:
        pid = tx.pid(qkdl_id)
        order = "DESC" if from_back else "ASC"
        while True:
            rows = tx.conn.execute(f"SELECT seq, kid, bits, material FROM keys WHERE pid=? AND state=0 "
                                   f"ORDER BY seq {order} LIMIT ?", (pid, n)).fetchall()
            near = runs.nearest(tx.conn, pid, from_back)
            if near is None or len(rows) == n and _nearer(rows[-1][0], near[0], from_back):
                break  # the rows come before every run
            runs.materialize_end(tx.conn, pid, n, from_back)
        if len(rows) < n:
            return []
        tx.conn.executemany("DELETE FROM keys WHERE seq=?", [(r[0],) for r in rows])
        self._count_erased(tx, [(pid, r[2]) for r in rows], reserved=False)
        return [LinkKey(_s(r[1]), r[2], r[3]) for r in rows]

    async def take_keys(self, qkdl_id: str, key_ids: Sequence[str], delivered: bool = False) -> list[LinkKey] | None:
        blobs = _distinct_ids(key_ids)
        if blobs is None:
            return None
        return await self._submit(self._take_keys, qkdl_id, list(key_ids), blobs, delivered)

    def _take_keys(self, tx: _Tx, qkdl_id: str, key_ids: Sequence[str], blobs: list[bytes], delivered: bool
                   ) -> list[LinkKey] | None:
        c = self._by_id.get(qkdl_id)
        if c is None:
            return None
        found = {kid: (len(m) * 8, m) for kid, m in runs.take(tx.conn, c.pid, blobs).items()}
        rest = [kid for kid in blobs if kid not in found]
        for i in range(0, len(rest), _IN_BATCH):  # one DELETE ... RETURNING per batch of IDs
            part = rest[i:i + _IN_BATCH]
            marks = ",".join("?" * len(part))
            for kid, bits, material in tx.conn.execute(
                    f"DELETE FROM keys WHERE kid IN ({marks}) AND +pid=? AND +state=0 RETURNING kid, bits, material",
                    (*part, c.pid)):
                found[kid] = (bits, material)
        if len(found) != len(blobs):
            raise _Rollback(None)  # some key is missing: undo the deletes, take nothing
        counted = [(c.pid, b) for b, _ in found.values()]
        if delivered:
            self._count_delivered(tx, counted, reserved=False)
        else:
            self._count_erased(tx, counted, reserved=False)
        return [LinkKey(_canonical_or(sid, k), *found[k]) for sid, k in zip(key_ids, blobs, strict=True)]

    async def missing(self, qkdl_id: str, key_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        return await self._submit(self._missing, qkdl_id, list(key_ids))

    def _missing(self, tx: _Tx, qkdl_id: str, key_ids: list[str]) -> tuple[list[str], list[str]]:
        c = self._by_id.get(qkdl_id)
        unknown: list[str] = []
        busy: list[str] = []
        in_runs: list[tuple[bytes, str]] = []  # not a row: perhaps a run's member
        for k in key_ids:
            try:
                kid = _b(k)
            except ValueError:
                unknown.append(k)
                continue
            r = tx.conn.execute("SELECT pid, state FROM keys WHERE kid=?", (kid,)).fetchone()
            if r is None:
                in_runs.append((kid, k))
            elif c is None or r[0] != c.pid:
                unknown.append(k)
            elif r[1] != AVAILABLE:
                busy.append(k)
        held = runs.find(tx.conn, [kid for kid, _ in in_runs])
        unknown += [k for kid, k in in_runs if c is None or runs.owner(held, kid) != c.pid]
        return unknown, busy

    async def gone(self, qkdl_id: str, key_ids: Sequence[str]) -> list[str]:
        return await self._submit(self._gone, qkdl_id, list(key_ids))

    def _gone(self, tx: _Tx, qkdl_id: str, key_ids: list[str]) -> list[str]:
        c = self._by_id.get(qkdl_id)
        out: list[str] = []
        kids: dict[str, bytes | None] = {}
        for k in key_ids:
            try:
                kids[k] = _b(k)
            except (ValueError, TypeError):
                kids[k] = None
        held = runs.find(tx.conn, [kid for kid in kids.values() if kid is not None])  # one query per block
        for k in key_ids:
            kid = kids[k]
            if kid is None:
                out.append(k)  # a malformed ID never arrives
                continue
            if c is None or tx.conn.execute("SELECT 1 FROM keys WHERE kid=? AND pid=?", (kid, c.pid)).fetchone():
                continue
            if runs.owner(held, kid) == c.pid:  # a run member here
                continue
            if tx.conn.execute("SELECT 1 FROM block_prefixes WHERE prefix=? AND pid=?",
                               (kid[:KEY_ID_PREFIX_BYTES], c.pid)).fetchone():
                out.append(k)
        return out

    # --- reconciliation --------------------------------------------------------------------
    async def available_ids(self, qkdl_id: str, created_before: float, after: int, limit: int
                            ) -> tuple[list[str], int]:
        return await self._submit(self._available_ids, qkdl_id, created_before, after, limit)

    def _available_ids(self, tx: _Tx, qkdl_id: str, before: float, after: int, limit: int) -> tuple[list[str], int]:
        c = self._by_id.get(qkdl_id)
        if c is None:
            return [], after
        rows = tx.conn.execute("SELECT seq, kid FROM keys WHERE pid=? AND state=0 AND seq>? AND created<? "
                               "ORDER BY seq LIMIT ?", (c.pid, after, before, limit)).fetchall()
        rows = sorted(rows + runs.available(tx.conn, c.pid, after, before, limit))[:limit]
        return [_s(r[1]) for r in rows], (rows[-1][0] if rows else after)

    async def erase_available(self, qkdl_id: str, key_ids: Sequence[str]) -> int:
        blobs = _distinct_ids(key_ids)
        if blobs is None:
            raise StoreError("malformed or repeated key ID")
        return int(await self._submit(self._erase_available, qkdl_id, blobs))

    def _erase_available(self, tx: _Tx, qkdl_id: str, blobs: list[bytes]) -> int:
        c = self._by_id.get(qkdl_id)
        if c is None:
            return 0
        rows = [(c.pid, len(m) * 8) for m in runs.take(tx.conn, c.pid, blobs).values()]
        for i in range(0, len(blobs), _IN_BATCH):
            part = blobs[i:i + _IN_BATCH]
            marks = ",".join("?" * len(part))
            rows += tx.conn.execute(f"DELETE FROM keys WHERE kid IN ({marks}) AND +pid=? AND +state=0 "
                                    "RETURNING pid, bits", (*part, c.pid)).fetchall()
        self._count_erased(tx, rows, reserved=False)
        return len(rows)

    async def txn_link(self, txn: str) -> str | None:
        return await self._submit(self._txn_link, txn)

    def _txn_link(self, tx: _Tx, txn: str) -> str | None:
        r = tx.conn.execute("SELECT pid FROM keys WHERE txn=? LIMIT 1", (txn,)).fetchone()
        c = self._by_pid.get(r[0]) if r else None
        return c.qkdl_id if c else None

    # --- outbox ------------------------------------------------------------------------
    async def outbox(self) -> list[OutboxItem]:
        return await self._submit(self._outbox)

    def _outbox(self, tx: _Tx) -> list[OutboxItem]:
        return [OutboxItem(t, q, k) for t, k, q in
                tx.conn.execute("SELECT txn, kind, qkdl_id FROM outbox ORDER BY created")]

    async def outbox_done(self, txn: str, kind: str) -> None:
        await self._submit(self._outbox_done, txn, kind)

    def _outbox_done(self, tx: _Tx, txn: str, kind: str) -> None:
        tx.conn.execute("DELETE FROM outbox WHERE txn=? AND kind=?", (txn, kind))

    # --- voids still to be delivered ---------------------------------------------------
    async def add_void(self, void: PendingVoid) -> int:
        return await self._submit(self._add_void, void)

    def _add_void(self, tx: _Tx, v: PendingVoid) -> int:
        cur = tx.conn.execute(
            "INSERT INTO voids_owed(via, dest, master, slaves, ids, hop, expires) VALUES(?,?,?,?,?,?,?)",
            (v.via, v.to, v.master, json.dumps(list(v.slaves)), json.dumps(list(v.ids)), v.hop, v.expires))
        return int(cur.lastrowid or 0)

    async def pending_voids(self, via: str) -> list[PendingVoid]:
        return await self._submit(self._pending_voids, via)

    def _pending_voids(self, tx: _Tx, via: str) -> list[PendingVoid]:
        rows = tx.conn.execute("SELECT vid, dest, master, slaves, ids, hop, expires FROM voids_owed WHERE via=?"
                               " ORDER BY vid", (via,))
        return [PendingVoid(via, to, tuple(json.loads(ids)), master, tuple(json.loads(slaves)), expires, hop, vid)
                for vid, to, master, slaves, ids, hop, expires in rows]

    async def voids_done(self, vids: Sequence[int]) -> None:
        if vids:
            await self._submit(self._voids_done, list(vids))

    def _voids_done(self, tx: _Tx, vids: list[int]) -> None:
        tx.conn.executemany("DELETE FROM voids_owed WHERE vid=?", [(v,) for v in vids])

    # --- inspection ---------------------------------------------------------------------
    async def key_states(self, qkdl_id: str) -> dict[str, KeyState]:
        return await self._submit(self._key_states, qkdl_id)

    def _key_states(self, tx: _Tx, qkdl_id: str) -> dict[str, KeyState]:
        c = self._by_id.get(qkdl_id)
        if c is None:
            return {}
        states = {_s(k): KeyState(s) for k, s in tx.conn.execute("SELECT kid, state FROM keys WHERE pid=?", (c.pid,))}
        states.update((_s(k), KeyState.AVAILABLE) for k in runs.members(tx.conn, c.pid))
        return states


def _resolve(fut: asyncio.Future[Any], res: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(res)
