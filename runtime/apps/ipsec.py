"""IPsec without IKE (I2NSF IKE-less, RFC 9061 style): the NSF endpoint agent and its data model.

An `IpsecNsf` is one Network Security Function: it protects traffic of one network namespace and
takes its SAD/SPD entries from a security controller (`sdqkd.controller.ipsec`), never from IKE.
Key bytes never pass through the controller: each SAD entry carries a QKD key *reference*
(`QkdKeyRef`) instead of RFC 9061's `key` leaf. The master NSF fetches fresh keys with ETSI 014
`enc_keys` and hands the controller only the key_IDs; the slave NSF fetches the same keys with
`dec_keys`. One 256-bit QKD key per SA (per direction); the RFC 4106 KEYMAT (32-byte AES key and
4-byte salt) is HKDF-SHA256(QKD key, info = label || SPI) — see `keymat`.

Data plane, chosen at start (`backend="auto"`): the kernel's xfrm (`ipsec_xfrm.KernelXfrm`) when
the kernel accepts an rfc4106(gcm(aes)) ESP state in that namespace, otherwise a userspace ESP
implementation over a TUN device (`ipsec_esp.UserspaceEsp`, scapy's `SecurityAssociation`).
Without IKE there is no kernel acquire/expire daemon, so lifetimes are watched here
(`sa_state`: byte/packet counters and SA age against the soft/hard limits) and the controller
polls them to rekey — the RFC 9061 sadb-expire notification, pulled rather than pushed."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sdqkd.apps.keyclient import Etsi014Client, Key, SaeIdentity
from sdqkd.errors import SdqkdError

log = logging.getLogger("sdqkd.apps.ipsec")

Mode = Literal["tunnel", "transport"]
Direction = Literal["inbound", "outbound"]
Role = Literal["master", "slave"]

ENCR_AES_GCM_16 = 20  # IANA IKEv2 transform type 1 ID, the value RFC 9061's encryption-algorithm takes
QKD_KEY_BITS = 256  # one ETSI 014 key of the pool's native size per SA
KEYMAT_BYTES = 36  # RFC 4106 s8.1: 32-byte AES-256 key followed by the 4-byte salt
ICV_BITS = 128
SEQ_MAX = 2**32 - 1  # no extended sequence numbers: an SA must be replaced before this
_KEYMAT_INFO = b"sdqkd ipsec esp rfc4106(gcm(aes)) aes256 keymat spi="


class IpsecError(SdqkdError, RuntimeError):
    """An NSF or controller operation failed; the message names the SA or step (never a key)."""


def keymat(qkd_key: bytes, spi: int) -> bytes:
    """RFC 4106 KEYMAT for one SA from its 256-bit QKD key: HKDF-SHA256, info = label || SPI.

    Why derive rather than ask the KMS for 288 bits: the LKMS builds non-native sizes from whole
    256-bit link keys, so a 288-bit key would burn 512 bits of QKD key; HKDF stretches one
    uniformly random 256-bit key into key + salt at full strength. Binding the SPI means a key
    installed under the wrong SPI yields a different key, never a silently shared one."""
    if len(qkd_key) * 8 < QKD_KEY_BITS:
        raise IpsecError(f"QKD key too short for AES-256: {len(qkd_key) * 8} bits, need {QKD_KEY_BITS}")
    return HKDF(hashes.SHA256(), KEYMAT_BYTES, salt=None,
                info=_KEYMAT_INFO + spi.to_bytes(4, "big")).derive(qkd_key)


@dataclass(frozen=True)
class Lifetime:
    """RFC 9061 sa-lifetime-soft / sa-lifetime-hard; 0 means no limit for that measure."""

    seconds: int = 0
    bytes: int = 0
    packets: int = 0

    def reached(self, age_s: float, nbytes: int, packets: int) -> bool:
        return ((self.seconds > 0 and age_s >= self.seconds) or (self.bytes > 0 and nbytes >= self.bytes)
                or (self.packets > 0 and packets >= self.packets))

    def to_ikeless(self) -> dict[str, int]:
        return {"time": self.seconds, "bytes": self.bytes, "packets": self.packets, "idle": 0}


@dataclass(frozen=True)
class QkdKeyRef:
    """Where an SA's key comes from, in place of RFC 9061's key leaf: the master NSF fetches with
    enc_keys (key_id None until it did), the slave with dec_keys under the master's key_id."""

    role: Role
    peer_sae: str
    key_id: str | None = None


@dataclass(frozen=True)
class SadEntry:
    """One SA as the NSF that receives the entry sees it (`local` is this NSF's outer address).

    Tunnel mode: `local`/`remote` are the tunnel endpoints and the prefixes the protected inner
    traffic. Transport mode: the prefixes are the two hosts' addresses (/32)."""

    name: str
    reqid: int
    spi: int
    direction: Direction
    mode: Mode
    local: str
    remote: str
    local_prefix: str
    remote_prefix: str
    soft: Lifetime
    hard: Lifetime
    qkd: QkdKeyRef
    replay_window: int = 64

    def __post_init__(self) -> None:
        if not 256 <= self.spi <= 0xFFFFFFFF:
            raise IpsecError(f"SA {self.name}: SPI {self.spi} outside 256..2^32-1 (0..255 are reserved)")
        if self.direction not in ("inbound", "outbound") or self.mode not in ("tunnel", "transport"):
            raise IpsecError(f"SA {self.name}: bad direction {self.direction!r} or mode {self.mode!r}")
        for a in (self.local, self.remote):
            ipaddress.ip_address(a)
        for p in (self.local_prefix, self.remote_prefix):
            ipaddress.ip_network(p)

    @property
    def src(self) -> str:
        return self.local if self.direction == "outbound" else self.remote

    @property
    def dst(self) -> str:
        return self.remote if self.direction == "outbound" else self.local

    def to_ikeless(self) -> dict[str, Any]:
        """This entry as an RFC 9061 ietf-i2nsf-ikeless sad-entry (RFC 7951 JSON), with our
        augmentation `sdqkd-ipsec:qkd-key` standing where the `key` leaf would be."""
        return {
            "name": self.name, "reqid": self.reqid,
            "ipsec-sa-config": {
                "spi": self.spi, "ext-seq-num": False, "seq-overflow": False,
                "anti-replay-window-size": self.replay_window,
                "traffic-selector": {"local-prefix": self.local_prefix, "remote-prefix": self.remote_prefix,
                                     "inner-protocol": "any"},
                "protocol-parameters": "esp", "mode": self.mode,
                "esp-sa": {"encryption": {"encryption-algorithm": ENCR_AES_GCM_16, "key-length": 256,
                                          "sdqkd-ipsec:qkd-key": {"role": self.qkd.role,
                                                                  "peer-sae": self.qkd.peer_sae,
                                                                  "key-id": self.qkd.key_id}}},
                "sa-lifetime-hard": self.hard.to_ikeless(),
                "sa-lifetime-soft": {**self.soft.to_ikeless(), "action": "replace"},
                "tunnel": {"local": self.local, "remote": self.remote} if self.mode == "tunnel" else None,
                "sdqkd-ipsec:direction": self.direction,
            },
        }


@dataclass(frozen=True)
class SpdEntry:
    """One policy: traffic between the prefixes in `direction` is protected by SAs of `reqid`."""

    name: str
    reqid: int
    direction: Direction
    mode: Mode
    local: str
    remote: str
    local_prefix: str
    remote_prefix: str

    def to_ikeless(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "reqid": self.reqid, "ipsec-policy-config": {
            "traffic-selector": {"local-prefix": self.local_prefix, "remote-prefix": self.remote_prefix,
                                 "inner-protocol": "any"},
            "processing-info": {"action": "protect", "ipsec-sa-cfg": {
                "mode": self.mode, "protocol-parameters": "esp",
                "tunnel": {"local": self.local, "remote": self.remote} if self.mode == "tunnel" else None}}}}


@dataclass(frozen=True)
class Counters:
    """What a backend measured for one SA (kernel: `ip -s xfrm state`; userspace: its own)."""

    bytes: int = 0
    packets: int = 0
    integrity_failed: int = 0
    replay_dropped: int = 0
    present: bool = True  # False once the backend no longer holds it (e.g. kernel hard expiry)


@dataclass(frozen=True)
class SaState:
    """RFC 9061 ipsec-sa-state of one SA plus the expiry flags the controller rekeys on."""

    name: str
    spi: int
    direction: Direction
    key_id: str | None
    age_s: float
    counters: Counters
    soft_expired: bool
    hard_expired: bool


class Backend(Protocol):
    """A data plane the agent drives: kernel xfrm or userspace ESP."""

    kind: str
    modes: tuple[str, ...]

    def setup(self) -> None: ...
    def add_sa(self, sa: SadEntry, keymat: bytes) -> None: ...
    def del_sa(self, sa: SadEntry) -> None: ...
    def add_policy(self, sp: SpdEntry) -> None: ...
    def del_policy(self, sp: SpdEntry) -> None: ...
    def counters(self, sa: SadEntry) -> Counters: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


@dataclass
class _Installed:
    entry: SadEntry
    since: float = field(default_factory=time.monotonic)


class IpsecNsf:
    """The NSF endpoint agent: one SAE identity (to fetch keys), one namespace (to protect).

    It runs in the management namespace (where its KMS is reachable) and drives the data plane
    of `netns`. `outer` is its address on the protected link; `inner` (tunnel mode) the address
    of the protected host side. Controller-facing calls: `prepare`, `activate`, `remove`,
    `set_policies`, `remove_policies`, `sa_state`, `stats`."""

    def __init__(self, name: str, netns: str, sae: SaeIdentity, *, outer: str, inner: str | None = None,
                 backend: str = "auto", key_retry_s: float = 30.0) -> None:
        if backend not in ("auto", "kernel", "userspace"):
            raise ValueError(f"backend must be auto, kernel or userspace, got {backend!r}")
        self.name, self.netns, self.sae, self.outer, self.inner = name, netns, sae, outer, inner
        self.key_retry_s = key_retry_s
        self._want = backend
        self.backend: Backend | None = None
        self.fallback_reason: str | None = None  # why the kernel path was not taken, when it was not
        self._kms = Etsi014Client(sae)
        self._staged: dict[str, tuple[SadEntry, Key]] = {}
        self._sad: dict[str, _Installed] = {}
        self._spd: dict[str, SpdEntry] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> IpsecNsf:
        from sdqkd.apps import ipsec_xfrm

        if self.backend is not None:
            return self
        reason = ipsec_xfrm.kernel_esp_unavailable(self.netns) if self._want != "userspace" else "not asked for"
        if self._want == "kernel" and reason:
            raise IpsecError(f"NSF {self.name}: kernel ESP unavailable in {self.netns}: {reason}")
        if reason is None:
            backend: Backend = ipsec_xfrm.KernelXfrm(self.netns, self.outer, self.inner)
        else:
            from sdqkd.apps.ipsec_esp import UserspaceEsp

            self.fallback_reason = reason
            if self._want == "auto":
                log.info("NSF %s: kernel ESP unavailable (%s); using userspace ESP", self.name, reason)
            backend = UserspaceEsp(self.netns, self.outer, self.inner)
        backend.setup()
        self.backend = backend
        return self

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self._staged.clear()
        self._sad.clear()
        self._spd.clear()
        self._kms.close()

    def __enter__(self) -> IpsecNsf:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def kind(self) -> str:
        return self._be().kind

    @property
    def modes(self) -> tuple[str, ...]:
        return self._be().modes

    def _be(self) -> Backend:
        if self.backend is None:
            raise IpsecError(f"NSF {self.name} is not started")
        return self.backend

    # ------------------------------------------------------------------ controller-facing
    def prepare(self, entries: list[SadEntry]) -> dict[str, str]:
        """Fetch one QKD key per entry and hold it until `activate`; returns {SA name: key_ID}.

        Master entries (key_id None) -> one ETSI 014 enc_keys call for all of them; slave entries
        (key_id set by the controller from the master's answer) -> one dec_keys call."""
        if not entries:
            return {}
        roles = {e.qkd.role for e in entries}
        peers = {e.qkd.peer_sae for e in entries}
        if len(roles) != 1 or len(peers) != 1:
            raise IpsecError(f"NSF {self.name}: one prepare call serves one role and one peer SAE, "
                             f"got roles {sorted(roles)} peers {sorted(peers)}")
        peer = peers.pop()
        if roles.pop() == "master":
            if any(e.qkd.key_id for e in entries):
                raise IpsecError(f"NSF {self.name}: master entries must not name key IDs (the KMS assigns them)")
            keys = self._kms.enc_keys(peer, number=len(entries), size=QKD_KEY_BITS, retry_s=self.key_retry_s)
        else:
            ids = [e.qkd.key_id for e in entries]
            if not all(ids):
                missing = [e.name for e in entries if not e.qkd.key_id]
                raise IpsecError(f"NSF {self.name}: slave entries without key_ID: {missing}")
            keys = self._kms.dec_keys(peer, [str(i) for i in ids])
            if [k.key_id for k in keys] != ids:
                raise IpsecError(f"NSF {self.name}: KMS answered key IDs other than those asked for")
        with self._lock:
            for e, k in zip(entries, keys, strict=True):
                self._staged[e.name] = (replace(e, qkd=replace(e.qkd, key_id=k.key_id)), k)
        log.info("NSF %s: %d QKD key(s) fetched as %s for %s", self.name, len(keys), "master"
                 if entries[0].qkd.role == "master" else "slave", ", ".join(e.name for e in entries))
        return {e.name: k.key_id for e, k in zip(entries, keys, strict=True)}

    def activate(self, names: list[str]) -> None:
        """Install prepared SAs into the data plane (the staged key is dropped once installed)."""
        be = self._be()
        with self._lock:
            missing = [n for n in names if n not in self._staged]
            if missing:
                raise IpsecError(f"NSF {self.name}: SA(s) {missing} were not prepared")
            for n in names:
                entry, key = self._staged.pop(n)
                if entry.mode not in be.modes:
                    raise IpsecError(f"NSF {self.name}: {be.kind} backend cannot do {entry.mode} mode")
                be.add_sa(entry, keymat(key.key, entry.spi))
                self._sad[n] = _Installed(entry)
                log.info("NSF %s: SA %s installed (%s spi 0x%08x key_ID %s)", self.name, n, entry.direction,
                         entry.spi, entry.qkd.key_id)

    def remove(self, names: list[str]) -> None:
        """Delete SAs (unknown names are ignored: removal is idempotent)."""
        be = self._be()
        with self._lock:
            for n in names:
                self._staged.pop(n, None)
                inst = self._sad.pop(n, None)
                if inst is not None:
                    be.del_sa(inst.entry)
                    log.info("NSF %s: SA %s removed", self.name, n)

    def set_policies(self, entries: list[SpdEntry]) -> None:
        be = self._be()
        with self._lock:
            for sp in entries:
                if sp.name in self._spd:
                    if self._spd[sp.name] == sp:
                        continue
                    be.del_policy(self._spd.pop(sp.name))
                if sp.mode not in be.modes:
                    raise IpsecError(f"NSF {self.name}: {be.kind} backend cannot do {sp.mode} mode")
                be.add_policy(sp)
                self._spd[sp.name] = sp

    def remove_policies(self, names: list[str]) -> None:
        be = self._be()
        with self._lock:
            for n in names:
                sp = self._spd.pop(n, None)
                if sp is not None:
                    be.del_policy(sp)

    def sa_state(self, names: list[str] | None = None) -> dict[str, SaState]:
        """Current state of installed SAs (all, or those named), with soft/hard expiry flags."""
        be = self._be()
        now = time.monotonic()
        with self._lock:
            items = [(n, i) for n, i in self._sad.items() if names is None or n in names]
        out: dict[str, SaState] = {}
        for n, inst in items:
            e, c = inst.entry, be.counters(inst.entry)
            age = now - inst.since
            hard = not c.present or e.hard.reached(age, c.bytes, c.packets) or c.packets >= SEQ_MAX
            out[n] = SaState(n, e.spi, e.direction, e.qkd.key_id, age, c,
                             soft_expired=hard or e.soft.reached(age, c.bytes, c.packets), hard_expired=hard)
        return out

    def installed(self) -> dict[str, SadEntry]:
        with self._lock:
            return {n: i.entry for n, i in self._sad.items()}

    def stats(self) -> dict[str, int]:
        """Namespace-wide counters named as in /proc/net/xfrm_stat (XfrmInStateProtoError, ...)."""
        return self._be().stats()
