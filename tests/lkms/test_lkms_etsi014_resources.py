"""ETSI 014 server resources (issue 18, security 5), with bounded connection floods: at most
`etsi014_max_connections` connections stay open, idle and slow-header (slowloris) connections
are closed after `etsi014_idle_timeout_s`, a TCP connection that never does its TLS handshake
after `etsi014_handshake_timeout_s`; service resumes for legitimate clients afterwards."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lkmsnet import LoopThread, Net, Pki, net_ab, wait_until

from sdqkd.lkms.core import Limits

CAP = 8
LIMITS = Limits(etsi014_max_connections=CAP, etsi014_idle_timeout_s=1.0, etsi014_handshake_timeout_s=1.0)


@pytest.fixture
def net(lt: LoopThread, tpki: Pki, tmp_path: Path) -> Iterator[Net]:
    n = net_ab(lt, tpki, tmp_path, limits=LIMITS, keys=64)
    yield n
    n.close()


def _tls(net: Net) -> tuple[ssl.SSLContext, str, int]:
    files = net.pki.sae("a1")
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    host, port = net.nodes["A"].addresses["etsi014"].rsplit(":", 1)
    return ctx, host, int(port)


def closed_by_server(s: socket.socket) -> bool:
    """True once the server closed the connection (EOF or reset), without blocking."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:
        return True



def test_connection_cap_and_idle_timeout_under_a_bounded_flood(net: Net) -> None:
    ctx, host, port = _tls(net)
    flood: list[ssl.SSLSocket] = []
    try:
        for _ in range(3 * CAP):  # handshake, then silence
            flood.append(ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host))
        wait_until(lambda: sum(not closed_by_server(s) for s in flood) <= CAP, "connections beyond the cap to close")
        opened, refused = net.nodes["A"].etsi014_connections()
        assert opened <= CAP and refused >= 2 * CAP
        # the idle ones go after the idle timeout, and the port serves again
        wait_until(lambda: all(closed_by_server(s) for s in flood), "idle connections to close")
        wait_until(lambda: net.nodes["A"].etsi014_connections()[0] == 0, "their slots to be free again")
        r = net.client("a1").get(net.url("A") + "/b1/status")
        assert r.status_code == 200
    finally:
        for s in flood:
            with contextlib.suppress(OSError):
                s.close()


def test_slow_request_head_and_missing_handshake_are_cut_off(net: Net) -> None:
    ctx, host, port = _tls(net)
    slow = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)
    raw = socket.create_connection((host, port), timeout=10)  # TCP only: no TLS handshake ever
    try:
        slow.sendall(b"GET /api/v1/keys/b1/status HTTP/1.1\r\nHost: x\r\n")
        end = time.monotonic() + 20
        cut = False
        while time.monotonic() < end and not cut:  # one more header byte every 0.2 s: never a full head
            try:
                slow.sendall(b"X")
            except OSError:
                cut = True
                break
            time.sleep(0.2)
            cut = closed_by_server(slow)
            slow.setblocking(True)
        assert cut, "a request head trickling in byte by byte kept its connection"
        wait_until(lambda: closed_by_server(raw), "the connection without a handshake to close")
        slow.close()
        raw.close()
        # neither keeps its slot (a failed handshake never reaches the application protocol)
        wait_until(lambda: net.nodes["A"].etsi014_connections()[0] == 0, "both slots to be free again")
    finally:
        slow.close()
        raw.close()
