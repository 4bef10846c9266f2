"""Runs: a block's available keys kept as rows of many keys, the SQLite key store's bulk form.

Why. A block of ~5,350 keys written as a row per key costs ~19 ms of CPU per block and node
(the rows, the ID index, the pick index): ~35 ms per block for both ends of a link, about a
quarter of what a link spends beyond the in-process pipeline (docs/link-cpu.md). As runs of
`RUN_KEYS` keys the same block is ~20 rows (2.4 ms of CPU against 17.7 for the store's one-
statement insert of a row per key). A key gets a row of its own in `keys` only when an operation
needs it as one (below).

Model (tables in store.SCHEMA). A run holds consecutive keys of one block, all AVAILABLE:
- `seq`: the position of its first key in the store's order; its keys take seq .. seq + n - 1,
  a range no row of `keys` uses (new keys always get a seq after every row and run: `next_seq`);
- `kids`, `material`: the n IDs (16 bytes each) and the n keys (`size` bytes each), concatenated;
- `prefix`, `first`: what finds a key by ID. A block's IDs are prefix || index (the index 6
  bytes big-endian, keys.derive_key_blobs), so a run's IDs are prefix || first .. first + n - 1.

Invariant: an available key is either a row or a member of one run, never both. All in the
transaction of the operation that needs it:
- `explode` turns a whole run into rows (AVAILABLE, with the same seq, ID, material and creation
  time) when one of its keys is reserved, taken by position or named by a put: a reservation's
  state lives in its row, and whole runs (one statement each) keep one-key requests from
  rewriting a run's blobs at every request;
- `cut` takes keys named by ID (a take, an erasure) out of their run without any row and keeps
  the others as runs, when those taken are at least half the run (else the run becomes rows:
  `take`).
The view `all_keys` shows rows and run members alike, for tools and tests that read the file.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from collections.abc import Iterable, Iterator

from sdqkd.lkms.keys import KEY_ID_PREFIX_BYTES

# Keys per run: a block is a few rows, and one key taken makes at most 256 rows. It may grow in a
# later version, never shrink: lookups assume no stored run holds more (`find`, `available`, the view).
RUN_KEYS = 256

SCHEMA = f"""
-- the blobs last: a column after them is read through their overflow pages
CREATE TABLE IF NOT EXISTS runs(
  seq INTEGER PRIMARY KEY, pid INTEGER NOT NULL, prefix BLOB NOT NULL, first INTEGER NOT NULL,
  n INTEGER NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL, kids BLOB NOT NULL,
  material BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS runs_pick ON runs(pid, seq);
CREATE INDEX IF NOT EXISTS runs_id ON runs(prefix, first);
-- a join with the member positions, not a recursion carrying the blobs (2.5x faster to read)
CREATE VIEW IF NOT EXISTS all_keys(seq, pid, kid, bits, state, material, created) AS
  WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < {RUN_KEYS})
  SELECT seq, pid, kid, bits, state, material, created FROM keys
  UNION ALL
  SELECT r.seq + i.n, r.pid, substr(r.kids, i.n * 16 + 1, 16), r.size * 8, 0,
         substr(r.material, i.n * r.size + 1, r.size), r.created FROM runs r JOIN i ON i.n < r.n;
"""

# Rows of equal size in one statement: the IDs and the material travel as two concatenated
# blobs that a recursive CTE cuts apart. One sqlite3_step instead of one per row: each step
# releases and retakes the GIL, which under a busy event loop cost far more than the insert.
# (INSERT first, WITH inside: sqlite3 reports a rowcount only for statements that begin with INSERT)
# Parameters: count, first seq, pid, IDs, bits, material, size, size, created.
_INSERT_ROWS = """INSERT {}INTO keys(seq, pid, kid, bits, state, material, created)
WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n+1 FROM i WHERE n+1<?)
SELECT ?+n, ?, substr(?, n*16+1, 16), ?, 0, substr(?, n*?+1, ?), ? FROM i"""
INSERT_ROWS = _INSERT_ROWS.format("")
INSERT_NEW_ROWS = _INSERT_ROWS.format("OR IGNORE ")  # IDs stored already are left out

_COLUMNS = "seq, pid, prefix, first, n, size, created, kids, material"
_INSERT_RUN = f"INSERT INTO runs({_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?)"


def next_seq(conn: sqlite3.Connection) -> int:
    """The seq after every row and every run (a new key's)."""
    row = conn.execute("SELECT MAX(seq) FROM keys").fetchone()[0] or 0
    run = conn.execute("SELECT seq + n - 1 FROM runs ORDER BY seq DESC LIMIT 1").fetchone()
    return max(row, run[0] if run else 0) + 1


def _index(kid: bytes) -> int:
    return int.from_bytes(kid[KEY_ID_PREFIX_BYTES:], "big")


def block_free(conn: sqlite3.Connection, prefix: bytes) -> bool:
    """No row holds an ID of the block with this prefix (so its keys can go in as runs)."""
    pad = 16 - KEY_ID_PREFIX_BYTES
    lo, hi = prefix + bytes(pad), prefix + b"\xff" * pad
    return conn.execute("SELECT 1 FROM keys WHERE kid BETWEEN ? AND ? LIMIT 1", (lo, hi)).fetchone() is None


def add(conn: sqlite3.Connection, pid: int, kids: bytes, material: bytes, size: int, created: float) -> None:
    """Store a block's keys as runs after every key there is. `kids` are one block's IDs in index
    order (keys.derive_key_blobs), `material` their keys, `size` bytes each."""
    n = len(kids) // 16
    seq = next_seq(conn)
    prefix, first = kids[:KEY_ID_PREFIX_BYTES], _index(kids[:16])
    conn.executemany(_INSERT_RUN, [
        (seq + a, pid, prefix, first + a, min(n, a + RUN_KEYS) - a, size, created,
         kids[a * 16:min(n, a + RUN_KEYS) * 16], material[a * size:min(n, a + RUN_KEYS) * size])
        for a in range(0, n, RUN_KEYS)])


def explode(conn: sqlite3.Connection, seq: int) -> None:
    """The run at `seq` becomes rows."""
    pid, n, size, kids, material, created = conn.execute(
        "DELETE FROM runs WHERE seq=? RETURNING pid, n, size, kids, material, created", (seq,)).fetchone()
    conn.execute(INSERT_ROWS, (n, seq, pid, kids, size * 8, material, size, size, created))


def cut(conn: sqlite3.Connection, seq: int, positions: set[int]) -> dict[int, bytes]:
    """Take members out of the run at `seq` without making rows of them (a take or an erasure):
    their material by position; the others stay as runs."""
    pid, prefix, first, n, size, created, kids, material = conn.execute(
        "DELETE FROM runs WHERE seq=? RETURNING pid, prefix, first, n, size, created, kids, material", (seq,)).fetchone()
    keep, start = [], None
    for i in range(n + 1):
        if i < n and i not in positions:
            start = i if start is None else start
        elif start is not None:
            keep.append((seq + start, pid, prefix, first + start, i - start, size, created,
                         kids[start * 16:i * 16], material[start * size:i * size]))
            start = None
    conn.executemany(_INSERT_RUN, keep)
    return {p: material[p * size:p * size + size] for p in positions}


def take(conn: sqlite3.Connection, pid: int, kids: Iterable[bytes]) -> dict[bytes, bytes]:
    """Take the keys with these IDs that the pool's runs hold out of them: ID -> material. A run
    losing less than half its keys becomes rows instead (what it held stays available; the
    caller takes the rows it wants): cutting a key or two at a time would rewrite the rest of
    the run every time (an ETSI 020 hop's pads come two at a time)."""
    by_run: dict[int, list[tuple[int, bytes]]] = {}
    sizes: dict[int, int] = {}
    for kid, (seq, pos, owner, n) in find(conn, kids).items():
        if owner == pid:
            by_run.setdefault(seq, []).append((pos, kid))
            sizes[seq] = n
    out: dict[bytes, bytes] = {}
    for seq, members in by_run.items():
        if 2 * len(members) < sizes[seq]:
            explode(conn, seq)
            continue
        material = cut(conn, seq, {pos for pos, _ in members})
        out.update((kid, material[pos]) for pos, kid in members)
    return out


def find(conn: sqlite3.Connection, kids: Iterable[bytes]) -> dict[bytes, tuple[int, int, int, int]]:
    """The IDs that runs hold: ID -> (the run's seq, the member's position, pid, the run's keys)."""
    by_prefix: dict[bytes, list[bytes]] = {}
    for kid in kids:
        by_prefix.setdefault(kid[:KEY_ID_PREFIX_BYTES], []).append(kid)
    out: dict[bytes, tuple[int, int, int, int]] = {}
    for prefix, ids in by_prefix.items():  # one query per block named, not per ID
        idx = [_index(kid) for kid in ids]  # runs never hold more than RUN_KEYS: those that can hold these
        runs = conn.execute("SELECT first, n, seq, pid FROM runs WHERE prefix=? AND first BETWEEN ? AND ? "
                            "ORDER BY first", (prefix, min(idx) - RUN_KEYS + 1, max(idx))).fetchall()
        firsts = [r[0] for r in runs]
        for kid in ids:
            i = _index(kid)
            j = bisect_right(firsts, i) - 1
            if j >= 0 and i < firsts[j] + runs[j][1]:
                out[kid] = (runs[j][2], i - firsts[j], runs[j][3], runs[j][1])
    return out


def owner(hits: dict[bytes, tuple[int, int, int, int]], kid: bytes) -> int | None:
    """The pid of the run that holds `kid` among `find`'s hits, None if no run does."""
    hit = hits.get(kid)
    return None if hit is None else hit[2]


def materialize_ids(conn: sqlite3.Connection, kids: Iterable[bytes]) -> None:
    """Make rows of the keys with these IDs that runs hold (their runs become rows)."""
    for seq in {hit[0] for hit in find(conn, kids).values()}:
        explode(conn, seq)


def materialize_end(conn: sqlite3.Connection, pid: int, need: int, from_back: bool) -> None:
    """Make rows of the first `need` available keys of the pool in seq order (the last `need`
    if from_back), or of all of them if it holds fewer."""
    order, beyond = ("DESC", ">") if from_back else ("ASC", "<")
    while need > 0:
        run = conn.execute(f"SELECT seq, n FROM runs WHERE pid=? ORDER BY seq {order} LIMIT 1", (pid,)).fetchone()
        if run is None:
            return
        seq, n = run
        edge = seq + n - 1 if from_back else seq
        ahead = conn.execute(  # rows nearer the end than this run, counted up to `need`
            f"SELECT COUNT(*) FROM (SELECT 1 FROM keys WHERE pid=? AND state=0 AND seq {beyond} ? LIMIT ?)",
            (pid, edge, need)).fetchone()[0]
        if ahead >= need:
            return
        explode(conn, seq)


def nearest(conn: sqlite3.Connection, pid: int, from_back: bool) -> tuple[int, int] | None:
    """The seq of the run member nearest that end of the pool's order, and its key size (bytes);
    None if the pool has no run."""
    row = conn.execute(f"SELECT seq, n, size FROM runs WHERE pid=? ORDER BY seq {'DESC' if from_back else 'ASC'} "
                       "LIMIT 1", (pid,)).fetchone()
    return None if row is None else (row[0] + row[1] - 1 if from_back else row[0], row[2])


def available(conn: sqlite3.Connection, pid: int, after: int, before: float, limit: int) -> list[tuple[int, bytes]]:
    """(seq, ID) of the pool's run members after seq `after`, created before `before`, in seq
    order, at most `limit`."""
    out: list[tuple[int, bytes]] = []
    # runs never grow, so one holding a seq after `after` begins after `after - RUN_KEYS`
    for seq, n, kids in conn.execute("SELECT seq, n, kids FROM runs WHERE pid=? AND seq>? AND created<? "
                                     "ORDER BY seq", (pid, after - RUN_KEYS, before)):
        for i in range(max(0, after + 1 - seq), n):
            out.append((seq + i, kids[i * 16:i * 16 + 16]))
            if len(out) >= limit:
                return out
    return out


def members(conn: sqlite3.Connection, pid: int) -> Iterator[bytes]:
    """Every ID the pool's runs hold."""
    for n, kids in conn.execute("SELECT n, kids FROM runs WHERE pid=?", (pid,)):
        for i in range(n):
            yield kids[i * 16:i * 16 + 16]


def counts(conn: sqlite3.Connection) -> Iterator[tuple[int, int, int]]:
    """(pid, keys, bits) that each pool's runs hold."""
    for pid, n, bits in conn.execute("SELECT pid, SUM(n), SUM(n * size * 8) FROM runs GROUP BY pid"):
        yield pid, int(n), int(bits)


def drop(conn: sqlite3.Connection, pid: int) -> int:
    """Delete the pool's runs; the number of keys they held."""
    return sum(n for (n,) in conn.execute("DELETE FROM runs WHERE pid=? RETURNING n", (pid,)).fetchall())
