"""One session of an engine link over its classical channel (channel.py): several key blocks in
flight, so that the link's rate does not fall with the channel's round-trip time.

Blocks. The receiver (Bob) starts block n (sends its DETECT) once (a) the link's simulated
clock allows its batch: never before session start + m * block duration, m the batch's last block
(batches 1-4, 5-8, ... after the lone block 0), (b) block n - W has ended at
his end, its key stored on both sides (W = the session's window), (c) his key store has room.
The transmitter (Alice) creates block n on its first frame; it must be the next number and block
n - W must have ended at her end (on an ordered stream it has, in a correct peer). Each block
is one pipeline state machine (runtime/engine/pipeline.py); its DATA frames carry the block
number, so frames of independent blocks interleave on the one connection and those written in
the same event-loop turn leave together (their Cascade rounds batched into one TLS record).
Cascade, DONE and ABORT messages are handled inline; the heavy steps go to the engine threads.
Bob holds a block's first Cascade request until no other block is in its heavy steps, so the
blocks of a batch run Cascade in step: each round's frames share one TLS record each way. On a
line so slow that DETECTs alone would keep it busy most of the clock's time, he also holds each
new block's DETECT while blocks are in Cascade (the line's rate: how fast the peer's big frames
arrive), so that Cascade's rounds do not queue behind megabytes on the line.

Authentication keys. Block n is authenticated with 1 KiB set aside from the key of block
n - W when that block succeeded, else with the next unused 1 KiB slice of the session key
(HKDF of the bootstrap secret with the session ID). Both ends decide in block order and know
block n - W's outcome before block n starts, so they always pick the same bytes.

Room. A key pool holds at most max_key_count keys. Bob starts a block only while his pool has
room beyond the keys the blocks in flight will bring (those past CONFIRM: what they keep; the
others: as many as the last whole block gave), and as CONFIRM arrives he tells the block to keep
no more than the room left after the blocks before it; DONE carries that cut to Alice, so both
ends keep the same bits. The 1 KiB authentication reserve is always kept.

Commit. Bob computes the key on CONFIRM and answers DONE; Alice, on DONE, stores her key and
answers STORED; Bob stores his on STORED. A block whose connection is lost earlier is discarded
by Alice (no DONE seen) and kept pending by Bob; the next session's HELLO lists the blocks
Alice stored in the previous session, and Bob stores exactly those pending blocks and drops the
rest, so both stores hold the same keys and none twice (the store ignores a repeated block ID).

Ending. Lost connection, a peer silent for RECV_TIMEOUT (PINGs keep an idle channel alive), a
frame that breaks this protocol: the session ends, every block in flight is discarded at both
ends. `drain` (link disabled or deleted, node stopping) starts no more blocks and says BYE; from
then on (or from the peer's BYE) Bob answers every block's next message with ABORT instead of
continuing it, so only blocks whose DONE has already left complete (their STORED is one round
trip away), and the connection closes once none is left: a graceful stop leaves no key at one
end only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sdqkd.engine import pipeline
from sdqkd.engine.auth import HEADER_BYTES, Authenticator, BufferKeySource

from .channel import ChannelError, Frame, FrameConnection, Kind

if TYPE_CHECKING:
    from .links import EngineLink

log = logging.getLogger("sdqkd.engine")

AUTH_SLICE = 1024  # authentication key per block (a block tags ~8 messages: ~150 B)
KEY_BYTES = 32  # the links' keys in the store: 256 bits
FALLBACK_SLICES = 64  # session-key slices for blocks whose predecessor n - W failed
RECV_TIMEOUT = 30.0  # seconds without any frame from the peer before the session ends
PING_S = 2.0  # an idle end sends a PING this often
WINDOW_TICK_S = 0.1  # how often a full window looks again at the latency estimate
# Blocks start in batches of BATCH_BLOCKS, each batch when the clock allows its last block: their
# heavy steps share the engine threads and their Cascade rounds then run side by side, so frames of
# several blocks leave in one TLS record and one system call each way. On a fast channel a lone
# block's ~2 x 2,000 messages cost the nodes about as much CPU as the rest of the block; a batch
# of 4 pays that per-record cost once for all of them (latency: up to 3 block durations more).
BATCH_BLOCKS = 4
CPU_BLOCKS = BATCH_BLOCKS  # blocks in flight beyond those the channel's latency needs
# a 4e6-bit block's Cascade round trips, the estimate until a block has ended: "optimized" per
# schedule (runtime/engine/cascade.py), "original" under any
TYPICAL_ROUND_TRIPS = {"serial": 2400, "balanced": 700, "parallel": 1400}
TYPICAL_ROUND_TRIPS_ORIGINAL = 100
# Bob holds a new block's DETECT while blocks are in Cascade where DETECTs alone would keep the line
# busy more than this share of the clock's time per block (Session._hold). The link through a relay
# of that rate (4e6-bit blocks, 1.45 s each, 9.8 MB DETECTs; docs/channel.md#bandwidth): at 100
# Mbit/s (0.54 of the time) 0.90-0.98x of the clock sent at once against 0.99-1.00x held; at 150
# Mbit/s (0.36) 1.00x sent at once.
HOLD_LINE_SHARE = 0.5
_INLINE = frozenset({pipeline.CASCADE, pipeline.DONE, pipeline.ABORT})


def session_auth_key(bootstrap: bytes, qkdl_id: str, session: str, length: int) -> bytes:
    """HKDF to a session key, then SHAKE-256 as the XOF that stretches it (HKDF stops at 8160 B)."""
    prk = HKDF(algorithm=hashes.SHA256(), length=32, salt=session.encode(),
               info=f"sdqkd classical channel {qkdl_id}".encode()).derive(bootstrap)
    return hashlib.shake_256(prk).digest(length)


def batch_end(n: int) -> int:
    """The last block of block n's batch: the batch starts when the clock allows that one. Block 0
    (a session's small first block) is alone, so that a new link has key soon."""
    return 0 if n == 0 else ((n - 1) // BATCH_BLOCKS + 1) * BATCH_BLOCKS


def block_seed(qkdl_id: str, session: str, n: int) -> int:
    h = hashlib.sha256(f"{qkdl_id}|{session}|{n}".encode()).digest()
    return int.from_bytes(h[:8], "big") or 1


@dataclass
class Carry:
    """What a link keeps across its sessions (and across being disabled and enabled again):
    Bob's keys waiting for Alice's STORED, Alice's record of what she stored."""

    pending: dict[tuple[str, int], bytes] = field(default_factory=dict)  # Bob: (session, n) -> key
    session: str = ""  # Alice: her last session
    stored: deque[int] = field(default_factory=lambda: deque(maxlen=2 * 128))  # Alice: blocks stored in it
    resolved: int = 0  # Bob: pending keys stored at a later HELLO
    dropped: int = 0  # Bob: pending keys dropped at a later HELLO (Alice never stored them)
    skr: float = 0.0  # the link's last measured rate: what a paused link (no block runs) says


@dataclass
class _Block:
    n: int
    party: pipeline.AliceBlock | pipeline.BobBlock
    started: float
    busy: bool = False
    sent_at: float = 0.0  # Bob: when the block's last frame left
    rtt: float = math.inf  # Bob: the block's fastest request-reply time (the channel's round trip)
    on_network: bool = False  # Bob: past its heavy first steps, in Cascade (waiting on the channel)
    net_since: float = 0.0  # Bob: when it went on the network


class Session:
    """Runs blocks with the peer over one FrameConnection until it fails, is drained or stopped."""

    def __init__(self, link: EngineLink, conn: FrameConnection, session_id: str, window: int):
        self.link, self.conn, self.sid, self.window = link, conn, session_id, window
        p = link.p
        self.alice = p.role == "alice"
        self._key = session_auth_key(link.bootstrap, p.qkdl_id, session_id, (window + FALLBACK_SLICES) * AUTH_SLICE)
        self._slice = 0
        self._reserves: dict[int, bytes] = {}
        self._blocks: dict[int, _Block] = {}
        self._next = 0
        self._trips = 0.0  # Bob: round trips per block (moving average)
        self._rtt = 0.0  # Bob: the channel's round-trip time (moving average of per-block minima)
        self._rtt_seen = math.inf  # Bob: the fastest reply of the session so far
        self._net_s = 0.0  # Bob: seconds a block spends on the network, Cascade to its end (moving average)
        self._early: dict[int, Authenticator] = {}  # Alice: keys of blocks whose first frame is still to come
        self._tasks: set[asyncio.Task[None]] = set()  # block steps under way
        self._stores: set[asyncio.Task[None]] = set()  # key stores under way: never cancelled
        self._bob_done: dict[int, tuple[pipeline.BlockResult, float]] = {}
        self._parked: dict[int, bytes] = {}  # Bob: first Cascade requests waiting for their batch
        self._held: dict[int, bytes] = {}  # Bob: DETECTs held while blocks run Cascade on a slow line
        self.detects_held = 0  # Bob: DETECTs held so far (_hold)
        self._kept: dict[int, int] = {}  # Bob: keys the blocks past CONFIRM keep, until stored here
        self._changed = asyncio.Event()  # a block ended or the peer said BYE
        self._failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.draining = False
        self.peer_bye = False
        self.started = time.monotonic()

    # ------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Until the connection fails (ChannelError / TimeoutError) or the session is drained."""
        self.conn.deliver(self._on_frame, self.fail)
        tasks = [asyncio.create_task(self._keepalive())]
        if not self.alice:
            tasks.append(asyncio.create_task(self._start_blocks()))
        try:
            await self._failure
        finally:
            for t in (*tasks, *self._tasks):
                t.cancel()
            for t in (*tasks, *self._tasks, *self._stores):  # a store that began completes and is recorded
                with contextlib.suppress(BaseException):
                    await t
            self._discard_in_flight()
            await self.conn.close()

    def fail(self, exc: BaseException) -> None:
        if not self._failure.done():
            self._failure.set_exception(exc)

    def _finish(self) -> None:
        if not self._failure.done():
            self._failure.set_result(None)

    async def drain(self, timeout: float) -> None:
        """Start no more blocks, say BYE, wait for those in flight (and their stores), close."""
        self.draining = True
        with contextlib.suppress(ChannelError):
            self._release_parked(force=True)
            self._release_held(force=True)
            self.conn.send(Kind.BYE)
        deadline = time.monotonic() + timeout
        while (self._blocks or self._stores) and not self._failure.done():
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        for t in list(self._stores):
            with contextlib.suppress(BaseException):
                await t
        self._finish()

    def _discard_in_flight(self) -> None:
        for b in self._blocks.values():
            if b.n in self._bob_done:
                continue  # Bob's key waits in the link's carry for the next session's HELLO
            if b.party.result.status == "running":
                b.party.result.status, b.party.result.reason = "discarded", "classical channel session ended"
            self.link.report(b.party.result, 0, time.monotonic() - b.started, lost=True)
        self._blocks.clear()

    # ------------------------------------------------------------ frames

    def _on_frame(self, f: Frame) -> None:
        """Called by the connection for each frame as it is read (FrameConnection.deliver); an
        exception ends the session."""
        if f.kind == Kind.DATA:
            self._on_data(f.block, f.payload)
        elif f.kind == Kind.STORED and not self.alice:
            self._on_stored(f.block)
        elif f.kind == Kind.BYE:
            self.peer_bye = True
            self._release_parked(force=True)
            self._release_held(force=True)
            self._changed.set()
        elif f.kind != Kind.PING:
            raise ChannelError(f"unexpected {f.kind.name} frame in a running session")

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(PING_S, RECV_TIMEOUT / 2))
            now = loop.time()
            if now - self.conn.last_received > RECV_TIMEOUT:
                self.fail(TimeoutError(f"no message from the peer for {RECV_TIMEOUT:.0f} s"))
                return
            if now - self.conn.last_sent >= PING_S:
                try:
                    self.conn.send(Kind.PING)
                except ChannelError as e:
                    self.fail(e)
                    return

    def _on_data(self, n: int, payload: bytes | bytearray) -> None:
        block = self._blocks.get(n)
        first = block is None
        if block is not None and block.sent_at:
            block.rtt = min(block.rtt, time.monotonic() - block.sent_at)
            self._rtt_seen = min(self._rtt_seen, block.rtt)
        if block is None and n < self._next and n not in self._early:
            return  # a block that already ended here (say, discarded after a bad frame): its peer catches up
        if block is None:
            if not self.alice:
                raise ChannelError(f"frame for block {n}, which was never started")
            block = self._open_alice_block(n)
        if block.busy:
            raise ChannelError(f"a second frame for block {n} while its previous one is still handled")
        kind = payload[HEADER_BYTES] if len(payload) > HEADER_BYTES else -1
        if kind == pipeline.CONFIRM and isinstance(block.party, pipeline.BobBlock):
            self._keep(block.n, block.party)
        if kind in _INLINE and not first:
            self._step(block, block.party.handle(payload))
        else:
            block.busy = True
            self._spawn(self._heavy(block, payload, first))

    def _spawn(self, step: Coroutine[Any, Any, None], store: bool = False) -> None:
        tasks = self._stores if store else self._tasks
        task = asyncio.create_task(step)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _heavy(self, block: _Block, payload: bytes | bytearray, first: bool) -> None:
        try:
            if first:
                await self.link.wait_room(self.link.p.qkdl_id)  # Alice's key store back-pressure
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(self.link.pool(), block.party.handle, payload)
            block.busy = False
            self._step(block, reply)
            await self.conn.flush()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - any failure of a block step ends the session
            self.fail(e)

    def _step(self, block: _Block, reply: bytes | None) -> None:
        stopping = self.draining or self.peer_bye
        if reply is not None and not self.alice and stopping:
            # stopping: a block whose DONE has not left is abandoned at its next step (Alice then
            # stores nothing); only those already DONE wait for STORED, one round trip
            reply = block.party.abandon("link stopping")
        if reply is not None:
            kind = reply[HEADER_BYTES] if len(reply) > HEADER_BYTES else -1
            # Cascade replies are answered inline: their delay is the channel's, not the CPU's
            cascade = kind == pipeline.CASCADE
            if cascade and not block.on_network and not self.alice:
                self._parked[block.n] = reply  # Bob's first Cascade request waits for its batch
            elif kind == pipeline.DETECT and not self.alice and self._hold(block, len(reply)):
                self._held[block.n] = reply
                self.detects_held += 1
            else:
                self.conn.send(Kind.DATA, block.n, reply)
                block.sent_at = time.monotonic() if cascade else 0.0
        if block.party.finished:
            self._ended(block)
        self._release_parked(force=stopping)
        self._release_held(force=stopping)

    def _release_parked(self, force: bool = False) -> None:
        """Bob: send the held first Cascade requests once no other block is still in its heavy
        steps, so that the blocks started together run Cascade in step: each round's requests
        (and Alice's replies) then leave in one TLS record, one system call."""
        if not self._parked:
            return
        if not force and any(not b.on_network and b.n not in self._bob_done and b.n not in self._parked
                             and b.n not in self._held for b in self._blocks.values()):
            return
        now = time.monotonic()
        for n in sorted(self._parked):
            frame = self._parked.pop(n)
            block = self._blocks.get(n)
            if block is not None:
                self.conn.send(Kind.DATA, n, frame)
                block.sent_at = block.net_since = now
                block.on_network = True
        self._changed.set()

    def _in_cascade(self) -> bool:
        """Bob: a block is on the network and has not yet computed its key (Cascade, VERIFY, CONFIRM)."""
        return any(b.on_network and b.n not in self._bob_done for b in self._blocks.values())

    def _hold(self, block: _Block, detect_bytes: int) -> bool:
        """Bob: hold this block's DETECT until no block is in Cascade? Yes once one is held (they
        leave together, in order), and while blocks are in Cascade on a line so slow that DETECTs
        alone would keep it busy more than HOLD_LINE_SHARE of the time the clock gives a block.
        Sent beside Cascade, those megabytes would keep a queue on the line (the senders'
        buffers, a router's) in front of every round's frames, and the window would read that
        wait as latency and start still more blocks (docs/channel.md#bandwidth). On a faster
        line the queue drains between DETECTs, and a DETECT sent at once overlaps Cascade's
        rounds, as latency hiding needs where the round trip is long."""
        if self._held:
            return True
        rate = self.conn.line_rate
        if not rate or not self._in_cascade():
            return False
        return detect_bytes / rate > HOLD_LINE_SHARE * block.party.config.duration_s / self.link.p.clock_scale

    def _release_held(self, force: bool = False) -> None:
        """Bob: the held DETECTs leave, in block order, once no block is in Cascade (or the session stops)."""
        if not self._held or (not force and self._in_cascade()):
            return
        held, self._held = self._held, {}
        for n in sorted(held):
            if n in self._blocks:
                self.conn.send(Kind.DATA, n, held[n])

    def _keep(self, n: int, party: pipeline.BobBlock) -> None:
        """Bob, as a block's CONFIRM arrives: it keeps no more keys than its pool takes beyond
        those the blocks before it keep (DONE tells Alice), and always its authentication reserve.
        It counts as its most keys (the bound CONFIRM's length must meet) until it ends: counting
        the pool's whole room for it would leave none to a block whose CONFIRM comes meanwhile."""
        most = max(0, (party.key_bound_bits() // 8 - AUTH_SLICE) // KEY_BYTES)
        keys = max(0, min(most, self.link.room_keys() - sum(self._kept.values())))
        party.keep_bits = None if keys == most else (AUTH_SLICE + keys * KEY_BYTES) * 8
        self._kept[n] = keys

    def _keys_ahead(self) -> int:
        """Bob: keys the blocks in flight will bring to his pool (before they are stored)."""
        guess = self.link.keys_per_block
        return sum(self._kept.values()) + guess * sum(1 for n in self._blocks if n not in self._kept)

    def _open_alice_block(self, n: int) -> _Block:
        """Bob starts blocks in order, but their first frames (DETECT, computed on the engine
        threads) may overtake each other: authentication keys are assigned in block order up to
        n, those of blocks not seen yet kept for their first frame."""
        if n >= self._next + self.window:
            raise ChannelError(f"block {n} started more than the window ahead of block {self._next}")
        while self._next <= n:
            m = self._next
            if m - self.window in self._blocks or m - self.window in self._early:
                raise ChannelError(f"block {m} started while block {m - self.window} is still in flight")
            self._early[m] = self._auth(m)
            self._next += 1
        auth = self._early.pop(n, None)
        if auth is None:
            raise ChannelError(f"block {n} started twice")
        party = pipeline.AliceBlock(self.link.block_config(self.sid, n), auth)
        block = self._blocks[n] = _Block(n, party, time.monotonic())
        return block

    def _auth(self, n: int) -> Authenticator:
        key = self._reserves.pop(n - self.window, None)
        if key is None:
            if self._slice >= self.window + FALLBACK_SLICES:
                raise ChannelError("the session's authentication key ran low; a new session starts")
            key = self._key[self._slice * AUTH_SLICE:(self._slice + 1) * AUTH_SLICE]
            self._slice += 1
        return Authenticator(BufferKeySource(key), self.link.p.role,
                             context=f"{self.link.p.qkdl_id}|{self.sid}|{n}".encode())

    # ------------------------------------------------------------ block ends

    def _ended(self, block: _Block) -> None:
        """The block's state machine finished here: set aside the next blocks' authentication
        key, then Alice stores and acknowledges, Bob waits for the acknowledgement."""
        r = block.party.result
        key = b""
        whole = r.key[: r.key_bits // 8] if r.key else b""  # a last partial byte's padding is no key
        if r.status == "ok" and whole and (len(whole) > AUTH_SLICE or (r.cut_bits and len(whole) == AUTH_SLICE)):
            self._reserves[block.n] = whole[:AUTH_SLICE]  # both ends cut the same bytes
            key = whole[AUTH_SLICE:]
            key = key[: len(key) // KEY_BYTES * KEY_BYTES]
            if not r.cut_bits:
                self.link.keys_per_block = len(key) // KEY_BYTES
        elif r.status == "ok":
            r.status, r.reason = "aborted", "block too short to leave key after the authentication reserve"
        wall = time.monotonic() - block.started
        if not self.alice:
            self._learn(block)
        if self.alice:
            del self._blocks[block.n]
            self._changed.set()
            if not key:
                self.link.report(r, 0, wall)
                return
            self._spawn(self._alice_store(block.n, key, r, wall), store=True)
        elif key:
            self._kept[block.n] = len(key) // KEY_BYTES
            self.link.carry.pending[(self.sid, block.n)] = key
            block.party.result.key = None  # the pending copy is the one that will be stored
            self._bob_done[block.n] = (r, wall)
        else:
            self._kept.pop(block.n, None)
            del self._blocks[block.n]
            self._changed.set()
            self.link.report(r, 0, wall)

    async def _alice_store(self, n: int, key: bytes, r: pipeline.BlockResult, wall: float) -> None:
        try:
            await self.link.store(f"{self.sid}:{n}", key)
            carry = self.link.carry
            if carry.session != self.sid:
                carry.session = self.sid
                carry.stored.clear()
            carry.stored.append(n)
            self.link.report(r, len(key) * 8, wall)
            self.conn.send(Kind.STORED, n)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - a store failure ends the session
            self.fail(e)
        finally:
            self._changed.set()

    def _on_stored(self, n: int) -> None:
        key = self.link.carry.pending.pop((self.sid, n), None)
        done = self._bob_done.pop(n, None)
        if key is None or done is None:
            raise ChannelError(f"STORED for block {n}, which has no key waiting here")
        self._spawn(self._bob_store(n, key, *done), store=True)

    async def _bob_store(self, n: int, key: bytes, r: pipeline.BlockResult, wall: float) -> None:
        try:
            await self.link.store(f"{self.sid}:{n}", key)
            self.link.report(r, len(key) * 8, wall)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001
            self.fail(e)
        finally:
            self._blocks.pop(n, None)
            self._kept.pop(n, None)
            self._changed.set()

    # ------------------------------------------------------------ Bob starts blocks

    async def _start_blocks(self) -> None:
        p = self.link.p
        try:
            while not (self.draining or self.peer_bye):
                n = self._next
                # block n - W still in flight or unacknowledged, enough blocks to hide the latency,
                # or enough in their heavy first steps to keep the CPU busy (more would share it
                # out so that every block ends late: none would end while the CPU is short)
                while (n - self.window in self._blocks or len(self._blocks) >= self._wanted_in_flight()
                       or self._computing() >= CPU_BLOCKS):
                    self._changed.clear()
                    # a block's end wakes this at once; a new latency estimate within a tick
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), WINDOW_TICK_S)
                    if self.draining or self.peer_bye:
                        return
                cfg = self.link.block_config(self.sid, n)
                wait = self.started + batch_end(n) * cfg.duration_s / p.clock_scale - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.link.wait_room(p.qkdl_id, self._keys_ahead)
                if self.draining or self.peer_bye:
                    return
                party = pipeline.BobBlock(cfg, self._auth(n), eve=p.eve)
                self._next += 1
                block = self._blocks[n] = _Block(n, party, time.monotonic(), busy=True)
                self._spawn(self._bob_first(block))
        except BaseException as e:
            self.fail(e)
            raise

    @property
    def in_flight(self) -> int:
        """Blocks started and not yet ended (Bob: and not yet acknowledged) at this end."""
        return len(self._blocks)

    @property
    def ended(self) -> int:
        """Blocks of this session that ended at this end: Alice's once their exchange ended (her
        store may still be under way), Bob's once acknowledged and stored."""
        return self._next - len(self._early) - len(self._blocks)

    @property
    def round_trips(self) -> float:
        """Bob: request-reply exchanges per block (moving average; 0 before the first block)."""
        return self._trips

    @property
    def rtt_s(self) -> float:
        """Bob: the channel's round-trip time as the blocks see it (moving average of minima)."""
        return self._rtt

    def _wanted_in_flight(self) -> int:
        """Blocks in flight that hide the channel: a block spends some time on the network (its
        round trips, each the channel's round-trip time plus the peers' turns at handling the
        frames of every block in flight), during which the clock allows that many more blocks;
        CPU_BLOCKS more keep the CPU busy. More would only queue for the CPU, adding latency and
        memory but no key. That time is measured on the blocks that ended (Cascade to the end);
        before one has, it is a variant's typical round trips x the fastest reply seen so far."""
        if self._net_s:
            net = self._net_s
        else:
            p = self.link.p
            trips = TYPICAL_ROUND_TRIPS_ORIGINAL if p.variant == "original" else TYPICAL_ROUND_TRIPS[p.schedule]
            net = trips * (self._rtt_seen if math.isfinite(self._rtt_seen) else 0.0)
        d = self.link.block_config(self.sid, self._next).duration_s / self.link.p.clock_scale
        return CPU_BLOCKS + math.ceil(net / max(d, 1e-6))

    def _computing(self) -> int:
        """Bob: blocks still in their heavy first steps (simulation, sifting, estimation)."""
        return sum(1 for b in self._blocks.values() if not b.on_network and b.n not in self._bob_done)

    def _learn(self, block: _Block) -> None:
        """Bob, at a block's end: its round trips, the channel's round-trip time, its time on the network."""
        trips = block.party.result.channel_uses
        if trips and math.isfinite(block.rtt):
            a = 0.3 if self._trips else 1.0
            self._trips += a * (trips - self._trips)
            self._rtt += a * (block.rtt - self._rtt)
        if block.on_network:
            a = 0.3 if self._net_s else 1.0
            self._net_s += a * (time.monotonic() - block.net_since - self._net_s)

    async def _bob_first(self, block: _Block) -> None:
        try:
            loop = asyncio.get_running_loop()
            assert isinstance(block.party, pipeline.BobBlock)
            frame = await loop.run_in_executor(self.link.pool(), block.party.start)
            block.busy = False
            self._step(block, frame)
            await self.conn.flush()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001
            self.fail(e)


def resolve_pending(carry: Carry, prev_session: str, stored: tuple[int, ...]) -> list[tuple[str, int, bytes]]:
    """Bob at a new session: the pending keys Alice says she stored (to store now); the rest
    are dropped."""
    done = set(stored)
    keep = [(s, n, k) for (s, n), k in carry.pending.items() if s == prev_session and n in done]
    carry.dropped += len(carry.pending) - len(keep)
    carry.resolved += len(keep)
    carry.pending.clear()
    return keep


StoreFn = Callable[[str, bytes], Awaitable[None]]
