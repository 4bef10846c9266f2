"""Network-namespace plumbing for the IPsec adapter: run code or open sockets inside a named
namespace from this process, run `ip` there (secrets on stdin, never on the command line), and
build the two-namespace testbed (one veth pair) that the tests and the example use.

Why threads and setns rather than `ip netns exec` subprocesses: a socket or TUN device belongs to
the namespace of the thread that created it and keeps working from any thread afterwards, so the
NSF agent can stay one process in the management (host) namespace — where it reaches its KMS —
while its data plane lives in the namespace it protects. setns(CLONE_NEWNET) moves only the
calling thread, so a short-lived helper thread does it and the rest of the process is untouched.
Reuses `sdqkd.netns.available` for the "can we make namespaces here" probe."""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sdqkd.netns import NetnsError, available

__all__ = ["Capture", "IpCommandError", "NetnsError", "NsPair", "available", "ip", "ping", "run_in", "socket_in",
           "tcp_exchange", "udp_exchange"]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_HEX_SECRET = re.compile(r"0x[0-9a-fA-F]{16,}")


def _enter(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # Python >= 3.12
            os.setns(fd, CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into network namespace {ns!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)` on a fresh thread that has entered namespace `ns`; return or raise its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _enter(ns)
            box["value"] = fn(*args)
        except BaseException as e:  # handed back to the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def socket_in(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside namespace `ns` (usable from any thread afterwards)."""
    return run_in(ns, socket.socket, family, kind, proto)


class IpCommandError(NetnsError):
    """An `ip` command failed; `detail` is iproute2's own message (scrubbed of key-like hex)."""

    def __init__(self, argv: list[str], detail: str) -> None:
        super().__init__(f"{' '.join(argv)}: {detail}")
        self.detail = detail


def ip(ns: str | None, *args: str, stdin: str | None = None) -> str:
    """Run `ip [-n ns] args...` and return stdout; NetnsError names the command on failure.

    Commands that carry key material go through `ip -batch -` with the text on `stdin`, so the key
    is never in any process' argv (/proc/*/cmdline); error text is scrubbed of long hex strings."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines()
                 if ln.strip() and not ln.startswith("Command failed")]
        why = _HEX_SECRET.sub("0x<redacted>", "; ".join(lines)) or f"exit status {r.returncode}"
        raise IpCommandError(argv, why)
    return r.stdout


@dataclass
class NsPair:
    """Two namespaces joined by one veth pair: left <-> right, outer addresses on a /30.

    Names carry a random token so parallel runs and leftovers never collide; `destroy` is
    idempotent and removes everything (the veth pair goes with its namespaces)."""

    left: str
    right: str
    left_if: str
    right_if: str
    left_addr: str
    right_addr: str

    @classmethod
    def create(cls, prefix: str = "10.199.0") -> NsPair:
        tok = secrets.token_hex(3)
        pair = cls(f"sdqipsL{tok}", f"sdqipsR{tok}", f"sdqL{tok}", f"sdqR{tok}", f"{prefix}.1", f"{prefix}.2")
        try:
            for ns in (pair.left, pair.right):
                ip(None, "netns", "add", ns)
                ip(ns, "link", "set", "lo", "up")
            ip(None, "link", "add", pair.left_if, "netns", pair.left, "type", "veth",
               "peer", "name", pair.right_if, "netns", pair.right)
            for ns, dev, addr in ((pair.left, pair.left_if, pair.left_addr),
                                  (pair.right, pair.right_if, pair.right_addr)):
                ip(ns, "addr", "add", f"{addr}/30", "dev", dev)
                ip(ns, "link", "set", dev, "up")
        except BaseException:
            pair.destroy()
            raise
        return pair

    def destroy(self) -> None:
        for ns in (self.left, self.right):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self) -> NsPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


# ---------------------------------------------------------------------- traffic, for tests and demos
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(ns: str, dst: str, payload: bytes = b"sdqkd-ping", timeout: float = 2.0) -> float | None:
    """One ICMP echo from namespace `ns` to `dst`; the round-trip time in s, or None on timeout.

    A raw socket rather than the `ping` binary, which not every machine has."""
    ident, seq = secrets.randbelow(0xFFFF) + 1, 1
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    msg = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), ident, seq) + payload
    with socket_in(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        start = time.monotonic()
        s.sendto(msg, (dst, 0))
        while (left := timeout - (time.monotonic() - start)) > 0:
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except TimeoutError:
                return None
            icmp = data[(data[0] & 0x0F) * 4:]
            if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq) and icmp[8:] == payload:
                return time.monotonic() - start
    return None


def udp_exchange(client_ns: str, server_ns: str, server_addr: str, request: bytes, reply: bytes,
                 port: int = 40400, timeout: float = 2.0) -> tuple[bytes | None, bytes | None]:
    """Send `request` over UDP from one namespace to the other and `reply` back.

    Returns (what the server got, what the client got), None where nothing arrived in time."""
    with socket_in(server_ns, socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            socket_in(client_ns, socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind((server_addr, port))
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        cli.sendto(request, (server_addr, port))
        try:
            got, peer = srv.recvfrom(65535)
        except TimeoutError:
            return None, None
        srv.sendto(reply, peer)
        try:
            return got, cli.recv(65535)
        except TimeoutError:
            return got, None


def tcp_exchange(client_ns: str, server_ns: str, server_addr: str, request: bytes, reply: bytes,
                 port: int = 40401, timeout: float = 3.0) -> tuple[bytes, bytes]:
    """One TCP connection between the namespaces: `request` one way, `reply` the other.

    Single-threaded: the kernel completes the handshake before accept(). Raises on timeout."""
    with socket_in(server_ns, socket.AF_INET, socket.SOCK_STREAM) as srv, \
            socket_in(client_ns, socket.AF_INET, socket.SOCK_STREAM) as cli:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((server_addr, port))
        srv.listen(1)
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        cli.connect((server_addr, port))
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(timeout)
            cli.sendall(request)
            got = _recv_exact(conn, len(request))
            conn.sendall(reply)
            back = _recv_exact(cli, len(reply))
        return got, back


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


class Capture:
    """Frames seen on interface `dev` of namespace `ns` (AF_PACKET), while the context is open.

    `ip_protocols()` lists the IPv4 protocol numbers seen; `contains(b)` whether any frame held
    those bytes — what a tcpdump on the wire would show, without needing tcpdump."""

    def __init__(self, ns: str, dev: str) -> None:
        self.frames: list[bytes] = []
        self._sock = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self._sock.bind((dev, 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self._sock.recv(65535))
            except TimeoutError:
                continue

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def ip_protocols(self) -> list[int]:
        return [f[23] for f in self.frames if len(f) > 34 and f[12:14] == b"\x08\x00"]

    def contains(self, needle: bytes) -> bool:
        return any(needle in f for f in self.frames)
