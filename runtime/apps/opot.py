"""Ordered proof of transit (OPoT): the node side.

Proof of transit (IETF draft-ietf-sfc-proof-of-transit) lets the egress of a service function
chain check that a packet went through every node: the controller splits a SECRET with Shamir's
scheme — a secret polynomial POLY-1 of degree n-1 over GF(p), one point (x_i, y_i) per node — and
gives every node the public part of a second polynomial POLY-2 whose constant term RND the ingress
picks per packet. Each node adds its Lagrange-weighted share of POLY-1 + POLY-2 to a cumulative
value in the packet:

    CML += LPC_i * (y_i + POLY-2(x_i))   (mod p),   LPC_i = prod_{j != i} x_j / (x_j - x_i)

and the verifier accepts iff CML == SECRET + RND (mod p): all n shares are needed to interpolate
POLY-1 + POLY-2 at 0, so a skipped node (or a node without the share) fails.

Plain PoT does not see order (addition commutes). The ordered variant (OPoT, the seed papers'
scheme; "ordered POT" in the draft) masks RND and CML on every hop with a mask known only to the
two consecutive nodes: node i removes the upstream mask (shared with node i-1) and adds the
downstream one (shared with node i+1). A node visited out of order removes a mask that was never
added, and the verifier sees garbage. Here the masks come from QKD: each consecutive pair holds
one 256-bit QKD key, delivered by ETSI GS QKD 014 (the master's `enc_keys`, the slave's
`dec_keys` by key_ID; the controller only relays the key_ID), and the mask of packet `seq` is

    HMAC-SHA256(K_hop, "sdqkd-opot-v1" || profile_id || seq)  ->  (mask_RND, mask_CML) in GF(p)^2

so every packet gets fresh mask material from a keyed PRF: one pad is never used twice (the
ingress never repeats a sequence number; the verifier rejects replays with a 64-packet window).
Masking is addition mod p, which keeps masked values in the field.

Field: p = 2^64 - 59, the 64-bit prime that keeps RND and CML at the 64 bits the draft's
in-band (IOAM) POT option carries. Wire form of the metadata: profile_id u32, seq u64,
RND u64, CML u64 (`OpotMeta.pack`, 28 bytes).

Shares, the secret and hop keys are kept out of reprs and logs; only key_IDs are shown."""

from __future__ import annotations

import hmac
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sdqkd.errors import SdqkdError

from .keyclient import Key

log = logging.getLogger("sdqkd.apps.opot")

PRIME = 2**64 - 59
MAX_SEQ = 2**64 - 1
REPLAY_WINDOW = 64
_LABEL = b"sdqkd-opot-v1"
_WIRE = struct.Struct(">IQQQ")

Role = Literal["ingress", "transit", "egress"]
Side = Literal["up", "down"]


class OpotError(SdqkdError, RuntimeError):
    """A node cannot process a packet or a provisioning step (unknown profile, missing hop key)."""


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class NodeProfile:
    """What the controller installs in one node of a chain (the classical, public-key-free setup
    of the draft). `y` (the node's Shamir share) and `secret` (egress only) stay out of repr."""

    profile_id: int
    index: int
    length: int
    x: int
    lpc: int  # Lagrange basis polynomial at 0 for this node
    public: int  # POLY-2(x) without its constant term (RND)
    y: int = field(repr=False)
    secret: int | None = field(default=None, repr=False)
    prime: int = PRIME
    ordered: bool = True
    upstream: str | None = None  # SAE of the previous / next node (for key relationships)
    downstream: str | None = None

    @property
    def role(self) -> Role:
        return "ingress" if self.index == 0 else "egress" if self.index == self.length - 1 else "transit"


@dataclass(frozen=True, slots=True)
class OpotMeta:
    """The per-packet proof-of-transit metadata as it travels (RND and CML masked in OPoT)."""

    profile_id: int
    seq: int
    rnd: int
    cml: int

    def pack(self) -> bytes:
        return _WIRE.pack(self.profile_id, self.seq, self.rnd, self.cml)

    @classmethod
    def unpack(cls, data: bytes) -> OpotMeta:
        if len(data) != _WIRE.size:
            raise ValueError(f"OPoT metadata must be {_WIRE.size} bytes, got {len(data)}")
        return cls(*_WIRE.unpack(data))


@dataclass(frozen=True)
class Verdict:
    """The egress' answer for one packet; truthy when the packet verified."""

    ok: bool
    seq: int
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class Kms(Protocol):
    """The ETSI 014 calls a node needs (`sdqkd.apps.keyclient.Etsi014Client` has them)."""

    def enc_keys(self, slave_sae_id: str, number: int = 1, size: int = 256, **kw: Any) -> list[Key]: ...

    def dec_keys(self, master_sae_id: str, key_ids: list[str]) -> list[Key]: ...


# ---------------------------------------------------------------------------- masks


def masks(key: bytes, profile_id: int, seq: int, prime: int = PRIME) -> tuple[int, int]:
    """(mask of RND, mask of CML) for packet `seq`: 128 PRF bits per mask reduced mod p (bias
    2^-64). Public so that tests and the benchmark use the very function the nodes use."""
    d = hmac.digest(key, _LABEL + struct.pack(">IQ", profile_id, seq), "sha256")
    return int.from_bytes(d[:16], "big") % prime, int.from_bytes(d[16:], "big") % prime


class _HopKey:
    __slots__ = ("key_id", "peer", "_key", "_prefix")

    def __init__(self, key: Key, peer: str, profile_id: int):
        if len(key.key) < 16:
            raise OpotError(f"hop key {key.key_id} has {len(key.key) * 8} bits; at least 128 needed")
        self.key_id, self.peer, self._key = key.key_id, peer, key.key
        self._prefix = _LABEL + struct.pack(">I", profile_id)

    def __repr__(self) -> str:
        return f"_HopKey(key_ID={self.key_id!r}, peer={self.peer!r})"

    def masks(self, seq: int, prime: int) -> tuple[int, int]:
        d = hmac.digest(self._key, self._prefix + seq.to_bytes(8, "big"), "sha256")
        return int.from_bytes(d[:16], "big") % prime, int.from_bytes(d[16:], "big") % prime


class _State:
    """One installed profile in one node: precomputed constants, hop keys, counters."""

    def __init__(self, prof: NodeProfile):
        self.prof = prof
        self.c = prof.lpc * (prof.y + prof.public) % prof.prime  # CML += c + lpc * RND
        self.up: _HopKey | None = None
        self.down: _HopKey | None = None
        self.next_seq = 1
        self.high = 0  # egress replay window: highest seq seen and a bitmap below it
        self.window = 0
        self.counts = {"processed": 0, "verified": 0, "failed": 0, "replayed": 0}


# ---------------------------------------------------------------------------- the node


class OpotNode:
    """One service function of a chain: an SAE that takes its hop keys from its KMS (ETSI 014)
    and stamps (ingress), updates (transit) or verifies (egress) OPoT metadata."""

    def __init__(self, sae_id: str, kms: Kms | None = None, name: str = "", *, retry_s: float = 30.0):
        """`retry_s`: how long enc_keys retries a 503 (a key relationship the controller has
        just set up may need a moment before its first key)."""
        self.sae_id, self.kms, self.name, self.retry_s = sae_id, kms, name or sae_id, retry_s
        self._profiles: dict[int, _State] = {}

    def __repr__(self) -> str:
        return f"OpotNode({self.name!r}, sae={self.sae_id!r}, profiles={sorted(self._profiles)})"

    # -- southbound, called by the controller's provisioner -----------------------------------

    def install(self, profile: NodeProfile) -> None:
        """Install (or replace) a profile; hop keys must then be set up again."""
        if not 0 <= profile.index < profile.length:
            raise OpotError(f"profile {profile.profile_id}: index {profile.index} outside a chain of {profile.length}")
        if profile.role == "egress" and profile.secret is None:
            raise OpotError(f"profile {profile.profile_id}: the egress needs the secret to verify")
        self._profiles[profile.profile_id] = _State(profile)

    def hop_key_master(self, profile_id: int, side: Side, peer_sae: str) -> str:
        """Take a fresh QKD key shared with `peer_sae` (ETSI 014 enc_keys, we are master) for the
        hop on `side`; returns only its key_ID, for the controller to hand to the peer."""
        st = self._state(profile_id)
        kms = self._kms()
        key = kms.enc_keys(peer_sae, number=1, size=256, retry_s=self.retry_s)[0]
        self._set(st, side, _HopKey(key, peer_sae, profile_id))
        return key.key_id

    def hop_key_slave(self, profile_id: int, side: Side, peer_sae: str, key_id: str) -> None:
        """Take the key `key_id` that master `peer_sae` drew (ETSI 014 dec_keys)."""
        st = self._state(profile_id)
        key = self._kms().dec_keys(peer_sae, [key_id])[0]
        if key.key_id != key_id:
            raise OpotError(f"KMS returned key {key.key_id} for requested key_ID {key_id}")
        self._set(st, side, _HopKey(key, peer_sae, profile_id))

    def _kms(self) -> Kms:
        if self.kms is None:
            raise OpotError(f"{self.name}: no KMS client, cannot take QKD keys")
        return self.kms

    def _set(self, st: _State, side: Side, hk: _HopKey) -> None:
        if side not in ("up", "down"):
            raise OpotError(f"side must be 'up' or 'down', got {side!r}")
        want = st.prof.upstream if side == "up" else st.prof.downstream
        if want != hk.peer:
            raise OpotError(f"{self.name}: {side}stream hop of profile {st.prof.profile_id} is with {want!r}, "
                            f"not {hk.peer!r}")
        setattr(st, side, hk)
        log.info("%s: profile %d %sstream hop key %s (with %s)", self.name, st.prof.profile_id, side, hk.key_id,
                 hk.peer)

    def status(self) -> dict[int, dict[str, Any]]:
        """Per profile: role, position, key_IDs of the hop keys, counters (no shares, no keys)."""
        return {pid: {"role": st.prof.role, "index": st.prof.index, "ordered": st.prof.ordered,
                      "upstream": st.prof.upstream, "downstream": st.prof.downstream,
                      "up_key_ID": st.up.key_id if st.up else None,
                      "down_key_ID": st.down.key_id if st.down else None, **st.counts}
                for pid, st in self._profiles.items()}

    def _state(self, profile_id: int) -> _State:
        st = self._profiles.get(profile_id)
        if st is None:
            raise OpotError(f"{self.name}: no OPoT profile {profile_id} installed "
                            f"(installed: {sorted(self._profiles) or 'none'})")
        return st

    def _hop(self, st: _State, side: Side) -> _HopKey:
        hk = st.up if side == "up" else st.down
        if hk is None:
            raise OpotError(f"{self.name}: profile {st.prof.profile_id} has no {side}stream hop key yet")
        return hk

    # -- data path ------------------------------------------------------------------------------

    def stamp(self, profile_id: int) -> OpotMeta:
        """Ingress: a new sequence number and RND, our share in CML, masked for the next hop."""
        st = self._state(profile_id)
        prof = st.prof
        if prof.role != "ingress":
            raise OpotError(f"{self.name}: stamp() is for the ingress; this node is {prof.role} of "
                            f"profile {profile_id}")
        seq = st.next_seq
        if seq > MAX_SEQ:
            raise OpotError(f"{self.name}: profile {profile_id} sequence numbers exhausted; re-provision")
        st.next_seq = seq + 1
        p = prof.prime
        rnd = int.from_bytes(os.urandom(16), "big") % p
        cml = (st.c + prof.lpc * rnd) % p
        st.counts["processed"] += 1
        if prof.ordered:
            mr, mc = self._hop(st, "down").masks(seq, p)
            rnd, cml = (rnd + mr) % p, (cml + mc) % p
        return OpotMeta(profile_id, seq, rnd, cml)

    def transit(self, meta: OpotMeta) -> OpotMeta:
        """Transit: remove the upstream mask, add our share, add the downstream mask."""
        st = self._state(meta.profile_id)
        prof = st.prof
        if prof.role != "transit":
            raise OpotError(f"{self.name}: transit() on the {prof.role} of profile {meta.profile_id}")
        rnd, cml = self._update(st, meta)
        if prof.ordered:
            mr, mc = self._hop(st, "down").masks(meta.seq, prof.prime)
            rnd, cml = (rnd + mr) % prof.prime, (cml + mc) % prof.prime
        return OpotMeta(meta.profile_id, meta.seq, rnd, cml)

    def verify(self, meta: OpotMeta) -> Verdict:
        """Egress: remove the upstream mask, add our share, check CML == SECRET + RND (mod p) and
        that the sequence number is new (64-packet anti-replay window). Anything wrong with the
        packet is a failed Verdict; a node that is not this profile's egress raises OpotError."""
        st = self._profiles.get(meta.profile_id)
        if st is None:
            return Verdict(False, meta.seq, f"unknown profile {meta.profile_id}")
        prof = st.prof
        if prof.role != "egress":
            raise OpotError(f"{self.name}: verify() on the {prof.role} of profile {meta.profile_id}")
        if not (0 <= meta.rnd < prof.prime and 0 <= meta.cml < prof.prime and 0 < meta.seq <= MAX_SEQ):
            st.counts["failed"] += 1
            return Verdict(False, meta.seq, "metadata out of range")
        replay = self._replayed(st, meta.seq)
        if replay:
            st.counts["replayed"] += 1
            return Verdict(False, meta.seq, replay)
        rnd, cml = self._update(st, meta)
        assert prof.secret is not None
        want = (prof.secret + rnd) % prof.prime
        if not hmac.compare_digest(cml.to_bytes(8, "big"), want.to_bytes(8, "big")):
            st.counts["failed"] += 1
            return Verdict(False, meta.seq, "CML does not match SECRET + RND: a node was skipped, visited "
                                            "out of order, or the metadata was altered")
        self._accept(st, meta.seq)
        st.counts["verified"] += 1
        return Verdict(True, meta.seq)

    def _update(self, st: _State, meta: OpotMeta) -> tuple[int, int]:
        prof = st.prof
        p = prof.prime
        if not (0 <= meta.rnd < p and 0 <= meta.cml < p and 0 < meta.seq <= MAX_SEQ):
            raise OpotError(f"{self.name}: metadata of profile {meta.profile_id} out of range (seq {meta.seq})")
        rnd, cml = meta.rnd, meta.cml
        if prof.ordered:
            mr, mc = self._hop(st, "up").masks(meta.seq, p)
            rnd, cml = (rnd - mr) % p, (cml - mc) % p
        st.counts["processed"] += 1
        return rnd, (cml + st.c + prof.lpc * rnd) % p

    @staticmethod
    def _replayed(st: _State, seq: int) -> str:
        if seq > st.high:
            return ""
        if st.high - seq >= REPLAY_WINDOW:
            return f"sequence number {seq} is older than the replay window (highest {st.high})"
        if st.window >> (st.high - seq) & 1:
            return f"sequence number {seq} was already verified (replay)"
        return ""

    @staticmethod
    def _accept(st: _State, seq: int) -> None:
        if seq > st.high:
            st.window = ((st.window << (seq - st.high)) | 1) & ((1 << REPLAY_WINDOW) - 1)
            st.high = seq
        else:
            st.window |= 1 << (st.high - seq)


def run_chain(path: list[OpotNode], profile_id: int) -> Verdict:
    """Send one packet along `path` (ingress first, egress last): what the data plane does."""
    meta = path[0].stamp(profile_id)
    for node in path[1:-1]:
        meta = node.transit(meta)
    return path[-1].verify(meta)
