"""The channel's TLS through memory BIOs (runtime/node/tls_bio.py): records that wait in the
kernel are taken with one recv, not two system calls per record as ssl.SSLSocket makes."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from sdqkd import pki
from sdqkd.node.channel import Frame, FrameConnection, Kind, client_context, server_context
from sdqkd.node.tls_bio import handshake


class _Counting(socket.socket):
    """A socket that counts its reads."""

    reads = 0

    def recv_into(self, *args: object) -> int:  # type: ignore[override]
        self.reads += 1
        return super().recv_into(*args)  # type: ignore[arg-type]


def _files(tmp: Path) -> tuple[pki.TlsFiles, pki.TlsFiles]:
    ca, ca_path = pki.write_ca(tmp)
    return (pki.write_identity(ca, ca_path, tmp, "node-a", server=True),
            pki.write_identity(ca, ca_path, tmp, "node-b", server=True))


def test_many_records_waiting_are_read_with_a_few_recvs(tmp_path: Path) -> None:
    srv, cli = _files(tmp_path)

    async def main() -> None:
        x, y = socket.socketpair()
        a, b = _Counting(fileno=x.detach()), socket.socket(fileno=y.detach())
        for s in (a, b):
            s.setblocking(False)
        ta, tb = await asyncio.gather(handshake(a, server_context(srv), server_side=True),
                                      handshake(b, client_context(cli), server_side=False))
        alice, bob = FrameConnection(a, limit=1 << 20, tls=ta), FrameConnection(b, limit=1 << 20, tls=tb)
        assert alice.peer_cn == "node-b" and bob.peer_cn == "node-a"
        for n in range(200):  # one TLS record each: a frame per event-loop turn
            bob.send(Kind.DATA, n, bytes([n % 256]) * 300)
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # all of them in the kernel before Alice reads
        a.reads = 0
        got: list[Frame] = [await alice.recv() for _ in range(200)]
        assert [(f.block, f.payload) for f in got] == [(n, bytes([n % 256]) * 300) for n in range(200)]
        # ssl.SSLSocket: a header and a body per record, ~400 reads
        assert a.reads <= 3, a.reads
        await alice.close()
        await bob.close()

    asyncio.run(main())


def test_a_peer_of_another_ca_fails_the_handshake_at_both_ends(tmp_path: Path) -> None:
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    srv, _ = _files(tmp_path / "ours")
    _, other = _files(tmp_path / "theirs")

    async def main() -> None:
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
        server = asyncio.ensure_future(handshake(a, server_context(srv), server_side=True))
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(handshake(b, client_context(other), server_side=False), 10)
        # the client's alert reaches the server, which fails too rather than wait for more
        with pytest.raises(ssl.SSLError, match="UNKNOWN_CA|unknown ca"):
            await asyncio.wait_for(server, 10)
        a.close()
        b.close()

    asyncio.run(main())


def test_the_records_in_memory_are_read_together_then_the_peers_close(tmp_path: Path) -> None:
    """One recv_into call returns every whole record the BIO holds that fits (not one record per
    call), and the peer's close_notify behind them reads as EOF (0) on the next call."""
    srv, cli = _files(tmp_path)

    async def main() -> None:
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
        ta, tb = await asyncio.gather(handshake(a, server_context(srv), server_side=True),
                                      handshake(b, client_context(cli), server_side=False))
        records = [bytes([i]) * 1000 for i in range(3)]
        wire = b"".join(tb.encrypt(r) for r in records)  # a record per write
        with pytest.raises(ssl.SSLWantReadError):
            tb._obj.unwrap()  # close_notify out; it would wait for ours
        b.sendall(wire + tb.outgoing())
        await asyncio.sleep(0.05)
        buf = memoryview(bytearray(10_000))
        assert ta.recv_into(buf) == 3000 and bytes(buf[:3000]) == b"".join(records)
        assert ta.recv_into(buf) == 0
        a.close()
        b.close()

    asyncio.run(main())
