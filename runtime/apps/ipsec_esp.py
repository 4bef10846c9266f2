"""Userspace ESP data plane for the IPsec NSF, for kernels without ESP (xfrm refuses the state).

ESP itself (RFC 4303 with AES-GCM-16 per RFC 4106: encapsulation, padding, AAD, ICV) is scapy's
`scapy.layers.ipsec.SecurityAssociation`. Why scapy: it is the one well-kept, widely used Python
package that implements ESP with AES-GCM (through `cryptography`), in tunnel and transport mode,
and its packets interoperate with the Linux kernel's. What scapy leaves out, this module adds:
the anti-replay window (RFC 4303 s3.4.3), counter-based IVs (RFC 4106 s3.1: unique per key; the
sequence number is unique per SA since no SA outlives 2^32-1 packets), lifetimes, and the SPD/SAD
lookups around it.

Wiring in the protected namespace: a TUN device carries the inner (protected) packets — routes to
the remote prefixes point at it — and a raw IPPROTO_ESP socket carries ESP on the wire, so the
packets between the two namespaces are real ESP (IP protocol 50). Tunnel mode only: a TUN device
sees whole inner packets, which is exactly what tunnel mode encapsulates; transport mode needs the
kernel's hooks. One thread moves packets; management calls take the same lock."""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any

from sdqkd.apps.ipsec import SEQ_MAX, Counters, IpsecError, SadEntry, SpdEntry
from sdqkd.apps.ipsec_netns import ip, run_in, socket_in
from sdqkd.errors import MissingExtra

log = logging.getLogger("sdqkd.apps.ipsec.esp")

TUN_NAME = "sdqesp0"
TUN_MTU = 1400  # leaves room for outer IPv4 (20) + ESP header/IV (16) + pad/trailer (<=5) + ICV (16)
_TUNSETIFF, _IFF_TUN, _IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
_IPPROTO_ESP = 50


def _scapy() -> Any:
    """Import scapy lazily and quietly (it is only needed on this fallback path)."""
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    try:
        from scapy.layers import inet, ipsec
    except ModuleNotFoundError:
        raise MissingExtra("userspace ESP (kernel without ESP)", "ipsec", "scapy") from None

    return inet, ipsec


class EspIntegrityError(IpsecError):
    """ICV check failed: wrong key, or the packet was altered."""


class EspReplayError(IpsecError):
    """Sequence number already seen or left of the anti-replay window."""


class ReplayWindow:
    """RFC 4303 s3.4.3 sliding window over received sequence numbers (size 0 disables it)."""

    def __init__(self, size: int) -> None:
        self.size, self.top, self._bits = size, 0, 0

    def fresh(self, seq: int) -> bool:
        if self.size == 0:
            return seq != 0
        if seq == 0:
            return False
        if seq > self.top:
            return True
        off = self.top - seq
        return off < self.size and not (self._bits >> off) & 1

    def mark(self, seq: int) -> None:
        """Record `seq`; call only after the packet's ICV verified."""
        if self.size == 0:
            return
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)


@dataclass
class EspSa:
    """One SA in userspace: scapy does ESP; we keep sequence numbers, replay window, counters."""

    entry: SadEntry
    keymat: bytes = field(repr=False)
    since: float = field(default_factory=time.monotonic)
    seq: int = 0
    nbytes: int = 0
    packets: int = 0
    integrity_failed: int = 0
    replay_dropped: int = 0

    def __post_init__(self) -> None:
        if self.entry.mode != "tunnel":
            raise IpsecError(f"SA {self.entry.name}: userspace ESP does tunnel mode only")
        inet, ipsec = _scapy()
        self._ip, self._esp, self._integrity = inet.IP, ipsec.ESP, ipsec.IPSecIntegrityError
        self._sa = ipsec.SecurityAssociation(
            ipsec.ESP, spi=self.entry.spi, crypt_algo="AES-GCM", crypt_key=self.keymat, auth_algo="NULL",
            tunnel_header=inet.IP(src=self.entry.src, dst=self.entry.dst))
        self._window = ReplayWindow(self.entry.replay_window)

    def expired(self, hard: bool = True) -> bool:
        life = self.entry.hard if hard else self.entry.soft
        return life.reached(time.monotonic() - self.since, self.nbytes, self.packets) or (
            hard and self.seq >= SEQ_MAX)

    def seal(self, inner: bytes) -> bytes:
        """Inner IP packet -> outer IP + ESP packet (bytes), next sequence number as IV."""
        if self.entry.direction != "outbound":
            raise IpsecError(f"SA {self.entry.name} is inbound; cannot seal")
        if self.seq >= SEQ_MAX:
            raise IpsecError(f"SA {self.entry.name}: sequence numbers exhausted; it must be replaced")
        self.seq += 1
        out = bytes(self._sa.encrypt(self._ip(inner), seq_num=self.seq, iv=self.seq.to_bytes(8, "big")))
        self.nbytes += len(inner)
        self.packets += 1
        return out

    def open(self, wire: bytes) -> bytes:
        """Outer IP + ESP packet -> inner IP packet; raises EspReplayError / EspIntegrityError."""
        pkt = self._ip(wire)
        if self._esp not in pkt or pkt[self._esp].spi != self.entry.spi:
            raise IpsecError(f"SA {self.entry.name}: not an ESP packet for spi 0x{self.entry.spi:08x}")
        seq = pkt[self._esp].seq
        if not self._window.fresh(seq):
            self.replay_dropped += 1
            raise EspReplayError(f"SA {self.entry.name}: replayed or too old sequence number {seq}")
        try:
            inner = bytes(self._sa.decrypt(pkt))
        except self._integrity:
            self.integrity_failed += 1
            raise EspIntegrityError(f"SA {self.entry.name}: ICV check failed (wrong key or altered packet)") \
                from None
        self._window.mark(seq)
        self.nbytes += len(inner)
        self.packets += 1
        return inner


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _net(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix)


class UserspaceEsp:
    """The data plane of one namespace: TUN in, ESP out, and back (tunnel mode)."""

    kind = "userspace"
    modes: tuple[str, ...] = ("tunnel",)

    def __init__(self, netns: str, outer: str, inner: str | None) -> None:
        if not inner:
            raise IpsecError("userspace ESP needs an inner (protected) address: it runs tunnel mode")
        self.netns, self.outer, self.inner = netns, outer, inner
        self._sas: dict[str, EspSa] = {}
        self._policies: dict[str, SpdEntry] = {}
        self._stats: Tally[str] = Tally()
        self._lock = threading.Lock()
        self._tun = -1
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    def setup(self) -> None:
        _scapy()  # import now, not on the first packet
        self._tun = run_in(self.netns, _open_tun, TUN_NAME)
        try:
            ip(self.netns, "addr", "add", f"{self.inner}/32", "dev", TUN_NAME)
            ip(self.netns, "link", "set", TUN_NAME, "mtu", str(TUN_MTU), "up")
            self._sock = socket_in(self.netns, socket.AF_INET, socket.SOCK_RAW, _IPPROTO_ESP)
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        except BaseException:
            self.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"esp-{self.netns}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ management
    def add_sa(self, sa: SadEntry, keymat: bytes) -> None:
        with self._lock:
            if any(s.entry.spi == sa.spi and s.entry.dst == sa.dst for s in self._sas.values()):
                raise IpsecError(f"SA {sa.name}: spi 0x{sa.spi:08x} to {sa.dst} already installed")
            self._sas[sa.name] = EspSa(sa, keymat)

    def del_sa(self, sa: SadEntry) -> None:
        with self._lock:
            self._sas.pop(sa.name, None)

    def add_policy(self, sp: SpdEntry) -> None:
        with self._lock:
            self._policies[sp.name] = sp
        if sp.direction == "outbound":
            ip(self.netns, "route", "replace", sp.remote_prefix, "dev", TUN_NAME, "src", self.inner)

    def del_policy(self, sp: SpdEntry) -> None:
        with self._lock:
            self._policies.pop(sp.name, None)
        if sp.direction == "outbound":
            ip(self.netns, "route", "del", sp.remote_prefix, "dev", TUN_NAME)

    def counters(self, sa: SadEntry) -> Counters:
        with self._lock:
            s = self._sas.get(sa.name)
            if s is None:
                return Counters(present=False)
            return Counters(s.nbytes, s.packets, s.integrity_failed, s.replay_dropped)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(5)
            self._thread = None
        for fd in (self._wake_r, self._wake_w, self._tun):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = self._tun = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            self._sas.clear()  # drops the keys

    # ------------------------------------------------------------------ packets
    def _run(self) -> None:
        assert self._sock is not None
        sel = selectors.DefaultSelector()
        sel.register(self._tun, selectors.EVENT_READ, "out")
        sel.register(self._sock, selectors.EVENT_READ, "in")
        sel.register(self._wake_r, selectors.EVENT_READ, "stop")
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    try:
                        if key.data == "out":
                            self._outbound(os.read(self._tun, 65535))
                        else:
                            self._inbound(self._sock.recv(65535))
                    except Exception as e:  # one bad packet must not stop the data plane
                        self._count("XfrmOutError" if key.data == "out" else "XfrmInError")
                        log.debug("ESP %s %s packet dropped: %s", self.netns, key.data, type(e).__name__)
        finally:
            sel.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self._stats[what] += 1

    def _outbound(self, inner: bytes) -> None:
        if len(inner) < 20 or inner[0] >> 4 != 4:
            return  # IPv4 only on this device
        src, dst = ipaddress.IPv4Address(inner[12:16]), ipaddress.IPv4Address(inner[16:20])
        with self._lock:
            pol = next((p for p in self._policies.values() if p.direction == "outbound"
                        and src in _net(p.local_prefix) and dst in _net(p.remote_prefix)), None)
            if pol is None:
                self._stats["XfrmOutPolBlock"] += 1
                return
            live = [s for s in self._sas.values() if s.entry.direction == "outbound"
                    and s.entry.reqid == pol.reqid and not s.expired()]
            if not live:
                self._stats["XfrmOutNoStates"] += 1
                return
            # like the kernel: prefer SAs not past their soft lifetime, then the newest
            sa = max(live, key=lambda s: (not s.expired(hard=False), s.since))
            wire = sa.seal(inner)
        assert self._sock is not None
        self._sock.sendto(wire, (sa.entry.dst, 0))

    def _inbound(self, wire: bytes) -> None:
        if len(wire) < 28 or wire[9] != _IPPROTO_ESP:
            return
        ihl = (wire[0] & 0x0F) * 4
        spi = int.from_bytes(wire[ihl:ihl + 4], "big")
        dst = str(ipaddress.IPv4Address(wire[16:20]))
        with self._lock:
            sa = next((s for s in self._sas.values() if s.entry.direction == "inbound"
                       and s.entry.spi == spi and s.entry.dst == dst), None)
            if sa is None:
                self._stats["XfrmInNoStates"] += 1
                return
            if sa.expired():
                self._stats["XfrmInStateExpired"] += 1
                return
            try:
                inner = sa.open(wire)
            except EspReplayError:
                self._stats["XfrmInStateSeqError"] += 1
                return
            except EspIntegrityError:
                self._stats["XfrmInStateProtoError"] += 1
                return
            pol = next((p for p in self._policies.values() if p.direction == "inbound"
                        and p.reqid == sa.entry.reqid), None)
            i_src, i_dst = ipaddress.IPv4Address(inner[12:16]), ipaddress.IPv4Address(inner[16:20])
            if pol is None or i_src not in _net(pol.remote_prefix) or i_dst not in _net(pol.local_prefix):
                self._stats["XfrmInTmplMismatch"] += 1  # RFC 4301: inner headers must match the SA's selectors
                return
        os.write(self._tun, inner)
