"""One key block end to end, as two message-driven parties.

    Bob   -> Alice  DETECT    slots (Rice-coded gaps) and bases of his detections
    Alice -> Bob    SIFT      her bases, intensity classes of the matched events, sample seed
    Bob   -> Alice  SAMPLE    his bits of the disclosed sample
    Alice -> Bob    ESTIMATE  sample errors per basis and intensity  (or ABORT: QBER / no key)
    Bob  <-> Alice  CASCADE   error-correction requests and replies (sdqkd.engine.cascade)
    Bob   -> Alice  VERIFY    random hash key, tag of his corrected key, parity bits leaked
    Alice -> Bob    CONFIRM   secret length and Toeplitz seed       (or ABORT: mismatch / no key)
    Bob   -> Alice  DONE      Bob holds the key; how many of its bits both ends keep (a whole
                              key unless Bob was told to keep less: a key pool with less room)

Every frame is Wegman-Carter authenticated (auth.py); Cascade frames by default through the tag
of the next non-Cascade frame (VERIFY covers all of them, and no key is output before).  A block whose sample QBER exceeds the
abort threshold, whose bounds leave no key, or whose verification or authentication fails ends
with status "aborted" or "discarded" and a reason, and never yields key.  `run_local` drives
both parties in one process; `serve_alice` / `drive_bob` run them over any Transport (send/recv
of bytes), e.g. the in-process LoopbackTransport or, later, gRPC.
"""

from __future__ import annotations

import math
import os
import queue
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from sdqkd.engine import estimate, keyrate, pa, profiles, sift, sim, verify
from sdqkd.engine.auth import HEADER_BYTES, AuthenticationError, Authenticator
from sdqkd.engine.estimate import Estimate, Tally
from sdqkd.errors import SdqkdError


class Msg(IntEnum):
    """Message kinds (first byte of every authenticated frame)."""

    DETECT = 1
    SIFT = 2
    SAMPLE = 3
    ESTIMATE = 4
    ABORT = 5
    CASCADE = 6
    VERIFY = 7
    CONFIRM = 8
    DONE = 9


DETECT, SIFT, SAMPLE, ESTIMATE, ABORT, CASCADE, VERIFY, CONFIRM, DONE = Msg
_U64 = struct.Struct(">Q")

Rng = Callable[[int], bytes]


class ProtocolError(SdqkdError, ValueError):
    """A message that is malformed or arrives out of order."""


CASCADE_SCHEDULES = ("serial", "balanced", "parallel")  # Bob's order of bisections (runtime/engine/cascade.py)


@dataclass(frozen=True)
class BlockConfig:
    """What both ends agree on for one block (the link's configuration plus a block seed)."""

    profile: str
    loss_db: float
    n_pulses: int
    seed: int  # per-block seed of the shared simulated quantum channel
    qber_abort: float = 0.11
    sample_fraction: float = 0.1
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    cascade_variant: str = "optimized"
    cascade_schedule: str = "serial"  # Bob's order of bisections (cascade.py); Alice is not affected
    defer_cascade_auth: bool = True  # Cascade frames covered by the next tag (auth.py), not one each

    def __post_init__(self) -> None:
        profiles.get(self.profile)
        keyrate.check_loss(self.loss_db)
        for name, v, lo, hi in (("n_pulses", self.n_pulses, 1, 2**62), ("seed", self.seed, 0, sim.U64)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}), got {v!r}")
        for name, x, xlo, xhi in (
            ("qber_abort", self.qber_abort, 0.0, 0.5),
            ("sample_fraction", self.sample_fraction, 0.0, 1.0),
            ("eps_sec", self.eps_sec, 0.0, 1.0),
            ("eps_cor", self.eps_cor, 0.0, 1.0),
        ):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not (xlo < x < xhi or x == xhi == 0.5):
                raise ValueError(f"{name} must be a number in ({xlo}, {xhi}), got {x!r}")
        verify.check_eps_cor(self.eps_cor, self.n_pulses)  # keys never exceed the pulse count
        if self.cascade_schedule not in CASCADE_SCHEDULES:
            raise ValueError(f"cascade_schedule must be one of {', '.join(CASCADE_SCHEDULES)}, got {self.cascade_schedule!r}")

    @property
    def duration_s(self) -> float:
        """Simulated link time of the block."""
        return self.n_pulses / profiles.get(self.profile).clock_hz


def pulses_for(profile: str, loss_db: float, sifted_bits: float) -> int:
    """Block length (pulses) expected to give about `sifted_bits` sifted bits."""
    link = sim.link_params(profile, loss_db)
    per_pulse = link.p_det / (1 + link.p_det * link.dead_slots) / 2
    return max(int(math.ceil(sifted_bits / per_pulse)), 1) if per_pulse > 0 else 2**62 - 1


@dataclass
class BlockResult:
    """Outcome of one block at one end; `key` only when status == "ok"."""

    role: str
    status: str = "running"  # running | ok | aborted | discarded
    reason: str = ""
    alarm: bool = False  # QBER above threshold: possible eavesdropper or broken fibre
    key: bytes | None = field(default=None, repr=False)  # never in logs, errors or state
    key_bits: int = 0
    cut_bits: int = 0  # of the final key, cut away at DONE: the key pool had no room for them
    duration_s: float = 0.0
    detections: int = 0
    sifted_bits: int = 0
    sample_bits: int = 0
    ec_bits: int = 0  # bits entering error correction
    qber: float = math.nan
    leak_ec: int = 0
    channel_uses: int = 0
    auth_bits: int = 0
    estimate: Estimate | None = None
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    # CPU seconds per stage, of the thread that ran it (a step runs on one thread): what a stage
    # costs when others compete for the cores. "auth" is the sealing of outgoing messages but
    # Cascade's (counted in "cascade"). Two reads of the thread's CPU clock per step (~0.7 us
    # each, a system call): ~2 ms of a block's ~1,300 Cascade steps
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate_bps(self) -> float:
        return self.key_bits / self.duration_s if self.duration_s else 0.0


def _fields(*parts: bytes) -> bytes:
    return b"".join(_U64.pack(len(p)) + p for p in parts)


def _unfields(data: bytes, n: int) -> list[bytes]:
    out, pos = [], 0
    for _ in range(n):
        if pos + 8 > len(data):
            raise ProtocolError("message truncated")
        (ln,) = _U64.unpack_from(data, pos)
        pos += 8
        if ln > len(data) - pos:
            raise ProtocolError("message field runs past the end")
        out.append(data[pos : pos + ln])
        pos += ln
    if pos != len(data):
        raise ProtocolError("trailing bytes after the last message field")
    return out


def _u64s(data: bytes, n: int) -> tuple[int, ...]:
    if len(data) != 8 * n:
        raise ProtocolError(f"expected {n} 64-bit integers, got {len(data)} bytes")
    return struct.unpack(f">{n}Q", data)


def _default_reconciler() -> Any:
    try:
        from sdqkd.engine import cascade
    except ImportError as exc:  # pragma: no cover - depends on the Cascade module being present
        raise RuntimeError("sdqkd.engine.cascade is not available; pass reconciler=") from exc
    return cascade


class _Party:
    """State shared by both ends: config, authenticated framing, result bookkeeping."""

    role = ""

    def __init__(self, config: BlockConfig, auth: Authenticator, rng: Rng | None, reconciler: Any) -> None:
        self.config = config
        self.profile = profiles.get(config.profile)
        self.link = sim.link_params(self.profile, config.loss_db)
        self.auth = auth
        self.rng = rng or os.urandom
        self._reconciler = reconciler
        self.result = BlockResult(self.role, duration_s=config.duration_s)
        self._expect: frozenset[int] = frozenset()
        self._mark()

    @property
    def reconciler(self) -> Any:
        if self._reconciler is None:
            self._reconciler = _default_reconciler()
        return self._reconciler

    def _mark(self) -> None:
        """A step begins: stages are timed from here (each step runs wholly on one thread)."""
        self._t0, self._c0 = time.perf_counter(), time.thread_time()

    def _lap(self, stage: str) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        r = self.result
        r.timings[stage] = r.timings.get(stage, 0.0) + now - self._t0
        r.cpu[stage] = r.cpu.get(stage, 0.0) + cpu - self._c0
        self._t0, self._c0 = now, cpu

    def _frame(self, kind: int, payload: bytes = b"") -> bytes:
        defer = kind == CASCADE and self.config.defer_cascade_auth
        frame = self.auth.seal(bytes([kind]) + payload, defer=defer)
        self.result.auth_bits = self.auth.consumed_bits
        self._lap("cascade" if kind == CASCADE else "auth")  # a Cascade step ends with its message
        return frame

    @property
    def finished(self) -> bool:
        """No further message is expected (the block ended, with or without key)."""
        return not self._expect

    def _open(self, frame: bytes | bytearray) -> tuple[int, bytes]:
        if self.finished:
            raise ProtocolError("block already finished")
        self._mark()
        data = self.auth.open(frame)
        self.result.auth_bits = self.auth.consumed_bits
        if not data:
            raise ProtocolError("empty message")
        kind, payload = data[0], data[1:]
        if kind != CASCADE and not self.auth.last_tagged:
            raise AuthenticationError(f"message type {kind} arrived without its own tag")
        if kind != ABORT and kind not in self._expect:
            want = " or ".join(Msg(k).name for k in sorted(self._expect))
            raise ProtocolError(f"expected {want}, got message type {kind}")
        return kind, payload

    def _end(self, status: str, reason: str, alarm: bool = False) -> None:
        self.result.status, self.result.reason, self.result.alarm = status, reason, alarm
        self.result.key, self.result.key_bits = None, 0
        self._expect = frozenset()

    def _stop(self, status: str, reason: str, alarm: bool = False) -> bytes:
        """End the block without key and tell the peer why."""
        self._end(status, reason, alarm)
        code = {"aborted": 0, "discarded": 2}[status] + int(alarm)
        return self._frame(ABORT, bytes([code]) + reason.encode())

    def abandon(self, reason: str) -> bytes:
        """End the block here without key (whatever step it reached) and give the ABORT frame
        that tells the peer; a key computed but not yet confirmed to the peer is dropped."""
        self._mark()  # a step of its own, on whichever thread calls it
        return self._stop("discarded", reason)

    def _on_abort(self, payload: bytes) -> None:
        code = payload[0] if payload else 2
        reason = "peer: " + payload[1:].decode(errors="replace")
        self._end("discarded" if code >= 2 else "aborted", reason, alarm=code == 1)

    def _dispatch(self, frame: bytes | bytearray, handlers: dict[int, Callable[[bytes], bytes | None]]) -> bytes | None:
        try:
            kind, payload = self._open(frame)
            if kind == ABORT:
                self._on_abort(payload)
                return None
            return handlers[kind](payload)
        except AuthenticationError as exc:
            return self._stop("discarded", f"authentication failure: {exc}")
        except ProtocolError as exc:
            if self.finished and self.result.status != "running":
                raise
            return self._stop("discarded", f"protocol failure: {exc}")

    def _reconcile(self, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Cascade rejects malformed messages with ValueError: a protocol failure, not a crash."""
        try:
            return call(*args, **kw)
        except ValueError as exc:
            raise ProtocolError(f"error correction: {exc}") from exc

    def _estimate(self, key: Tally, test: Tally) -> Estimate:
        c = self.config
        est = estimate.finite_key(self.profile, key, test, c.eps_sec, c.eps_cor)
        self.result.estimate = est
        return est

    def _cascade_qber(self) -> float:
        q = self.result.qber
        return min(max(q, 1e-3), 0.25)


class AliceBlock(_Party):
    """Alice's end: answers Bob's messages; handle() returns the reply frame or None."""

    role = "alice"

    def __init__(
        self, config: BlockConfig, auth: Authenticator, rng: Rng | None = None, reconciler: Any = None
    ) -> None:
        super().__init__(config, auth, rng, reconciler)
        self._expect = frozenset({DETECT})

    def handle(self, frame: bytes | bytearray) -> bytes | None:
        return self._dispatch(
            frame,
            {
                DETECT: self._on_detect,
                SAMPLE: self._on_sample,
                CASCADE: self._on_cascade,
                VERIFY: self._on_verify,
                DONE: self._on_done,
            },
        )

    def _on_detect(self, payload: bytes) -> bytes:
        head, code, bases_b = _unfields(payload, 3)
        n_pulses, n_det, rice_k = _u64s(head, 3)
        c = self.config
        if n_pulses != c.n_pulses or rice_k > 62 or len(bases_b) != (n_det + 7) // 8:
            raise ProtocolError("DETECT does not match the block configuration")
        try:
            view = sim.alice_view(self.link, c.seed, c.n_pulses, n_det, rice_k, code)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc
        self._lap("sim")
        mask = sift.match_mask(view.bases, bases_b, n_det)
        s = sift.keep(view.bits, view.bases, view.classes, mask, n_det)
        seed = self.rng(16)
        self._key, self._test = sift.split(s, sift.sample_mask(seed, s.n, c.sample_fraction))
        r = self.result
        r.detections, r.sifted_bits, r.sample_bits, r.ec_bits = n_det, s.n, self._test.n, self._key.n
        self._lap("sift")
        self._expect = frozenset({SAMPLE})
        return self._frame(SIFT, _fields(view.bases, sift.pack_classes(s.classes), seed))

    def _on_sample(self, payload: bytes) -> bytes:
        bob_test = payload
        if len(bob_test) != (self._test.n + 7) // 8:
            raise ProtocolError("SAMPLE has the wrong length")
        test = self._test.tally(sift.xor(self._test.bits, bob_test, self._test.n))
        r = self.result
        r.qber = test.qber()
        if r.qber > self.config.qber_abort:
            return self._stop(
                "aborted", f"QBER {r.qber:.4f} above the abort threshold {self.config.qber_abort}", True
            )
        est = self._estimate(self._key.tally(), test)
        # even a Shannon-limit error correction could not leave key: stop before Cascade
        if est.secret_length(int(self._key.n * keyrate.h2(r.qber))) <= 0:
            return self._stop("aborted", "no secret key: finite-key bounds leave nothing for this block size")
        self._cascade = self._reconcile(
            self.reconciler.CascadeAlice,
            self._key.bits,
            self._key.n,
            self._cascade_qber(),
            variant=self.config.cascade_variant,
            seed=self.config.seed & 0x7FFFFFFF,
        )
        self._lap("estimate")
        self._expect = frozenset({CASCADE})
        return self._frame(ESTIMATE, struct.pack(">6Q", *(test.errors[0] + test.errors[1])))

    def _on_cascade(self, payload: bytes) -> bytes:
        reply = self._reconcile(self._cascade.handle, payload)
        self.result.channel_uses += 1
        self._expect = frozenset({CASCADE, VERIFY})  # Bob continues Cascade or moves on
        return self._frame(CASCADE, reply)

    def _on_verify(self, payload: bytes) -> bytes:
        hash_key, tag, leak_raw = _unfields(payload, 3)
        (leak_bob,) = _u64s(leak_raw, 1)
        if len(hash_key) != verify.HASH_KEY_BYTES or len(tag) != verify.TAG_BITS // 8:
            raise ProtocolError("VERIFY has the wrong field sizes")
        r = self.result
        r.leak_ec = max(int(self._cascade.leaked_bits), int(leak_bob))
        ok = verify.same(verify.tag(hash_key, self._key.bits, self._key.n), tag)
        self._lap("verify")
        if not ok:
            return self._stop("discarded", "verification failed: keys differ after error correction")
        length = r.estimate.secret_length(r.leak_ec) if r.estimate else 0
        if length <= 0:
            return self._stop("aborted", f"no secret key after error correction (leaked {r.leak_ec} bits)")
        seed = self.rng((pa.seed_bits(self._key.n, length) + 7) // 8)
        self._final = pa.toeplitz(self._key.bits, self._key.n, length, seed)
        self._length = length
        self._lap("pa")
        self._expect = frozenset({DONE})
        return self._frame(CONFIRM, _fields(_U64.pack(length), seed))

    def _on_done(self, payload: bytes) -> None:
        keep = self._length
        if payload:
            (keep,) = _u64s(payload, 1)
            if keep > self._length or (keep < self._length and keep % 8):
                raise ProtocolError(f"DONE keeps {keep} bits of a {self._length}-bit key")
        r = self.result
        r.status, r.key, r.key_bits = "ok", _cut(self._final, self._length, keep), keep
        r.cut_bits = self._length - keep
        self._expect = frozenset()


class BobBlock(_Party):
    """Bob's end: start() opens the exchange; handle() returns the next frame or None."""

    role = "bob"

    def __init__(
        self,
        config: BlockConfig,
        auth: Authenticator,
        rng: Rng | None = None,
        reconciler: Any = None,
        eve: float = 0.0,
    ) -> None:
        super().__init__(config, auth, rng, reconciler)
        self.eve = eve
        # bits of the key both ends keep (a multiple of 8), set before CONFIRM is handled; None: all
        self.keep_bits: int | None = None

    def start(self) -> bytes:
        c = self.config
        self._mark()
        self._view = sim.bob_view(self.link, c.seed, c.n_pulses, self.eve)
        self.result.detections = self._view.n_det
        self._lap("sim")
        self._expect = frozenset({SIFT})
        v = self._view
        return self._frame(
            DETECT, _fields(struct.pack(">3Q", v.n_pulses, v.n_det, v.rice_k), v.slot_code, v.bases)
        )

    def handle(self, frame: bytes | bytearray) -> bytes | None:
        return self._dispatch(
            frame,
            {
                SIFT: self._on_sift,
                ESTIMATE: self._on_estimate,
                CASCADE: self._on_cascade,
                CONFIRM: self._on_confirm,
            },
        )

    def _on_sift(self, payload: bytes) -> bytes:
        bases_a, classes_packed, seed = _unfields(payload, 3)
        v = self._view
        if len(bases_a) != (v.n_det + 7) // 8 or len(seed) != 16:
            raise ProtocolError("SIFT has the wrong field sizes")
        mask = sift.match_mask(bases_a, v.bases, v.n_det)
        bits, bases, n = sift.select(v.bits, v.bases, mask, v.n_det)
        if len(classes_packed) != (n + 3) // 4:
            raise ProtocolError("SIFT carries the wrong number of intensity classes")
        classes = sift.unpack_classes(classes_packed, n)
        if classes.find(3) != -1:  # 2-bit codes; 3 is no intensity class
            raise ProtocolError("SIFT carries an unknown intensity class")
        s = sift.Sifted(n, bits, bases, classes)
        self._key, self._test = sift.split(s, sift.sample_mask(seed, n, self.config.sample_fraction))
        r = self.result
        r.sifted_bits, r.sample_bits, r.ec_bits = n, self._test.n, self._key.n
        del self._view
        self._lap("sift")
        self._expect = frozenset({ESTIMATE})
        return self._frame(SAMPLE, self._test.bits)

    def _on_estimate(self, payload: bytes) -> bytes:
        errors = _u64s(payload, 6)
        try:
            test = Tally.from_flat(self._test.tally().flat()[:6], errors)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc
        self.result.qber = test.qber()
        self._estimate(self._key.tally(), test)
        self._cascade = self._reconcile(
            self.reconciler.CascadeBob,
            self._key.bits,
            self._key.n,
            self._cascade_qber(),
            variant=self.config.cascade_variant,
            seed=self.config.seed & 0x7FFFFFFF,
            # a reconciler of its own (run_local's reconciler=) need not know schedules
            **({} if self.config.cascade_schedule == "serial" else {"schedule": self.config.cascade_schedule}),
        )
        request = self._reconcile(self._cascade.start)
        self._expect = frozenset({CASCADE})
        return self._frame(CASCADE, request)

    def _on_cascade(self, payload: bytes) -> bytes:
        nxt = self._reconcile(self._cascade.handle, payload)
        if nxt is not None:
            return self._frame(CASCADE, nxt)
        r = self.result
        corrected = self._cascade.corrected
        self._corrected = corrected() if callable(corrected) else corrected  # attribute per the contract
        r.leak_ec = int(self._cascade.leaked_bits)
        r.channel_uses = int(getattr(self._cascade, "channel_uses", 0))
        self._lap("cascade")
        hash_key = self.rng(verify.HASH_KEY_BYTES)
        tag = verify.tag(hash_key, self._corrected, self._key.n)
        self._lap("verify")
        self._expect = frozenset({CONFIRM})
        return self._frame(VERIFY, _fields(hash_key, tag, _U64.pack(r.leak_ec)))

    def key_bound_bits(self) -> int:
        """After VERIFY: the longest key CONFIRM may give (Alice's length is refused above it)."""
        r = self.result
        return r.estimate.secret_length(r.leak_ec) if r.estimate else 0

    def _on_confirm(self, payload: bytes) -> bytes:
        raw_len, seed = _unfields(payload, 2)
        (length,) = _u64s(raw_len, 1)
        r = self.result
        mine = self.key_bound_bits()
        # Alice's leak may be larger if her Cascade counted more; never accept a longer key
        if length > mine or length <= 0:
            raise ProtocolError(f"CONFIRM length {length} disagrees with the local bound {mine}")
        if len(seed) != (pa.seed_bits(self._key.n, length) + 7) // 8:
            raise ProtocolError("CONFIRM seed has the wrong length")
        key = pa.toeplitz(self._corrected, self._key.n, length, seed)
        self._lap("pa")
        keep = length if self.keep_bits is None else min(length, self.keep_bits)
        if keep < length and keep % 8:
            raise ValueError(f"keep_bits must be a multiple of 8, not {keep}")
        r.status, r.key, r.key_bits = "ok", _cut(key, length, keep), keep
        r.cut_bits = length - keep
        self._expect = frozenset()
        return self._frame(DONE, b"" if keep == length else _U64.pack(keep))


def _cut(key: bytes, length: int, keep: int) -> bytes:
    """The first `keep` bits of a `length`-bit key (whole bytes when cut)."""
    return key if keep == length else key[: keep // 8]


def run_local(
    config: BlockConfig,
    alice_auth: Authenticator,
    bob_auth: Authenticator,
    *,
    eve: float = 0.0,
    rng_alice: Rng | None = None,
    rng_bob: Rng | None = None,
    reconciler: Any = None,
) -> tuple[BlockResult, BlockResult]:
    """Run one block with both parties in this process (tests, benchmarks)."""
    alice = AliceBlock(config, alice_auth, rng_alice, reconciler)
    bob = BobBlock(config, bob_auth, rng_bob, reconciler, eve)
    msg: bytes | None = bob.start()
    while msg is not None:
        reply = alice.handle(msg)
        if reply is None:
            break
        msg = bob.handle(reply)
    return alice.result, bob.result


def light(frame: bytes) -> bool:
    """Whether a frame (as sent, before authentication) is a Cascade message. Handling one is a
    few bisection steps in C, cheap enough for an event loop thread; every other step
    (simulation, sifting, estimation, privacy amplification) can take tens of milliseconds.
    Only a scheduling hint: the frame is authenticated and checked as usual when handled."""
    return len(frame) > HEADER_BYTES and frame[HEADER_BYTES] == CASCADE


class Transport(Protocol):
    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float | None = None) -> bytes: ...


class LoopbackTransport:
    """In-process transport; `pair()` gives two connected ends."""

    def __init__(self, inbox: queue.Queue[bytes], outbox: queue.Queue[bytes]) -> None:
        self._in, self._out = inbox, outbox

    @classmethod
    def pair(cls) -> tuple[LoopbackTransport, LoopbackTransport]:
        a: queue.Queue[bytes] = queue.Queue()
        b: queue.Queue[bytes] = queue.Queue()
        return cls(a, b), cls(b, a)

    def send(self, data: bytes) -> None:
        self._out.put(bytes(data))

    def recv(self, timeout: float | None = None) -> bytes:
        try:
            return self._in.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no message from the peer") from None


def serve_alice(alice: AliceBlock, transport: Transport, timeout: float | None = 60.0) -> BlockResult:
    while not alice.finished:
        reply = alice.handle(transport.recv(timeout))
        if reply is not None:
            transport.send(reply)
    return alice.result


def drive_bob(bob: BobBlock, transport: Transport, timeout: float | None = 60.0) -> BlockResult:
    transport.send(bob.start())
    while not bob.finished:
        nxt = bob.handle(transport.recv(timeout))
        if nxt is not None:
            transport.send(nxt)
    return bob.result
