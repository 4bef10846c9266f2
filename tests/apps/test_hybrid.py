"""Hybrid X25519 + QKD keys for the management plane, against the shared in-process network:
the combiner's properties, both ends of a real handshake (QKD key via ETSI 014 enc_keys/dec_keys
on the C-B link, pair sae-c2 -> sae-b1), the classical-only fallback and its refusal, real gNMI
Get/Set through the tunnel in front of node B's agent, tampering, and no key bytes in logs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import socket
import struct

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sdqkd.apps import hybrid as hy
from sdqkd.apps.keyclient import Key, SaeIdentity
from sdqkd.generated.client import ModelClient

MASTER, SLAVE = "sae-c2", "sae-b1"
LOC = "/qkd_node/qkdn_location_id"


@pytest.fixture(scope="module")
def pair(apps_net):
    apps_net.request_keys(MASTER, SLAVE, rate=1000)
    return SaeIdentity.from_endpoints(apps_net.endpoints, MASTER), SaeIdentity.from_endpoints(apps_net.endpoints, SLAVE)


class Recording:
    """A key source that remembers the keys it handed out (to look for them in the logs)."""

    def __init__(self, inner: hy.KeySource):
        self.inner, self.seen = inner, []

    def new_key(self, slave: str) -> Key:
        k = self.inner.new_key(slave)
        self.seen.append(k)
        return k

    def key_by_id(self, master: str, key_id: str) -> Key:
        k = self.inner.key_by_id(master, key_id)
        self.seen.append(k)
        return k


def _sources(pair, **kw):
    c, s = pair
    return hy.Etsi014KeySource(c, retry_s=60, **kw), hy.Etsi014KeySource(s, **kw)


def _dead_kms(me: SaeIdentity) -> SaeIdentity:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return dataclasses.replace(me, etsi014=f"127.0.0.1:{port}")


async def _handshake(pair, ckeys, skeys, *, client_fallback=True, server_fallback=True):
    """One handshake over loopback; returns (client session or exception, server session or exception)."""
    c, s = pair
    server_result: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_conn(r, w):
        try:
            server_result.set_result(await hy.server_handshake(r, w, hy.Credentials.from_identity(s), skeys, {c.sae_id},
                                                               allow_fallback=server_fallback))
        except Exception as e:  # noqa: BLE001 - handed to the test
            server_result.set_result(e)
            w.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        client = await hy.client_handshake(r, w, hy.Credentials.from_identity(c), ckeys, s.sae_id,
                                           allow_fallback=client_fallback)
    except Exception as e:  # noqa: BLE001
        client = e
        w.close()  # the server sees the end of the handshake
    server = await asyncio.wait_for(server_result, 30)
    for sess in (client, server):
        if isinstance(sess, hy.HybridSession):
            sess.close()
    w.close()
    srv.close()
    await srv.wait_closed()
    return client, server


# ------------------------------------------------------------------ the combiner


def test_combiner_binds_both_inputs_and_the_context():
    ss, qk, ctx = bytes(range(32)), bytes(range(100, 132)), b"transcript-hash"
    base = hy.combine(ss, qk, ctx, key_id="k1")
    assert base == hy.combine(ss, qk, ctx, key_id="k1") and len(base) == 32
    variants = [hy.combine(bytes([1]) + ss[1:], qk, ctx, key_id="k1"),  # classical input changed
                hy.combine(ss, bytes([1]) + qk[1:], ctx, key_id="k1"),  # QKD key changed
                hy.combine(ss, qk, b"other-transcript", key_id="k1"),  # public keys / roles / nonces
                hy.combine(ss, qk, ctx, key_id="k2"),  # key_ID
                hy.combine(ss, None, ctx, key_id="k1")]  # classical-only
    assert len({base, *variants}) == 6
    alone = [HKDF(hashes.SHA256(), 32, salt, info).derive(ikm) for ikm in (ss, qk)
             for salt, info in ((None, None), (hy.SALT, hy._info("hybrid", "k1", ctx)))]
    assert base not in alone
    sec = hy.hybrid_secret(ss, Key("k1", qk), ctx)
    assert sec.mode == "hybrid" and sec.secret == base and qk.hex() not in repr(sec) and base.hex() not in repr(sec)
    assert hy.hybrid_secret(ss, None, ctx).mode == "classical-only"
    with pytest.raises(ValueError, match="32-byte X25519"):
        hy.combine(ss[:16], qk, ctx)
    with pytest.raises(ValueError, match="at least 128 bits"):
        hy.combine(ss, qk[:8], ctx)


# ------------------------------------------------------------------ handshakes on the network


def test_both_sides_derive_the_same_hybrid_secret_from_etsi014_keys(pair):
    ck, sk = _sources(pair)
    ckr, skr = Recording(ck), Recording(sk)
    client, server = asyncio.run(_handshake(pair, ckr, skr))
    ck.close(), sk.close()
    assert isinstance(client, hy.HybridSession), client
    assert isinstance(server, hy.HybridSession), server
    assert client.mode == server.mode == "hybrid"
    assert client.secret.key_id == server.secret.key_id == ckr.seen[0].key_id
    assert ckr.seen[0].key == skr.seen[0].key  # enc_keys at C, dec_keys at B: same QKD key
    assert client.secret.secret == server.secret.secret and client.secret.context == server.secret.context
    # the QKD key really went in: the X25519-only secret for the same transcript would differ
    assert client.secret.secret != hy.combine(b"\0" * 32, ckr.seen[0].key, client.secret.context,
                                              key_id=client.secret.key_id)


def test_fallback_to_classical_only_is_flagged_and_can_be_refused(pair, caplog):
    c, s = pair
    dead_c = hy.Etsi014KeySource(_dead_kms(c))  # the client's KMS is unreachable
    _, sk = _sources(pair)
    with caplog.at_level(logging.WARNING, logger="sdqkd.apps.hybrid"):
        client, server = asyncio.run(_handshake(pair, dead_c, sk))
    assert isinstance(client, hy.HybridSession) and isinstance(server, hy.HybridSession)
    assert client.mode == server.mode == "classical-only" and client.secret.key_id is None
    assert client.secret.secret == server.secret.secret
    assert "CLASSICAL-ONLY" in caplog.text and "unreachable" in caplog.text

    # the client refuses before it even connects
    client, server = asyncio.run(_handshake(pair, dead_c, sk, client_fallback=False))
    assert isinstance(client, hy.HybridRefused) and "fallback is not allowed" in str(client)
    assert isinstance(server, hy.HandshakeError) and "closed the connection" in str(server)
    # the server refuses a client that has no QKD key
    client, server = asyncio.run(_handshake(pair, dead_c, sk, server_fallback=False))
    assert isinstance(client, hy.HybridRefused) and "does not allow classical-only" in str(client)
    assert isinstance(server, hy.HybridRefused)
    # the client got a key, the server's KMS is unreachable: it proposes classical-only, client refuses
    ck, _ = _sources(pair)
    dead_s = hy.Etsi014KeySource(_dead_kms(s))
    client, server = asyncio.run(_handshake(pair, ck, dead_s, client_fallback=False))
    assert isinstance(client, hy.HybridRefused) and "fallback is not allowed" in str(client)
    assert isinstance(server, hy.HybridRefused) and "does not allow classical-only" in str(server)
    for k in (dead_c, sk, ck, dead_s):
        k.close()


# ------------------------------------------------------------------ the gNMI tunnel


class TamperProxy:
    """A TCP relay between tunnel ends that, when armed, flips one bit of the next frame of type
    `armed` going client -> server."""

    def __init__(self, remote: str):
        self.remote, self.armed, self.flipped = remote, 0, 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, cr, cw):
        host, port = self.remote.rsplit(":", 1)
        sr, sw = await asyncio.open_connection(host, int(port))

        async def up():
            while True:
                hdr = await cr.readexactly(5)
                typ, n = struct.unpack(">BI", hdr)
                body = bytearray(await cr.readexactly(n))
                if typ == self.armed:
                    body[len(body) // 2] ^= 0x01
                    self.armed, self.flipped = 0, self.flipped + 1
                sw.write(hdr + bytes(body))
                await sw.drain()

        async def down():
            while data := await sr.read(65536):
                cw.write(data)
                await cw.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cw.close(), sw.close()


def test_gnmi_get_and_set_through_the_hybrid_tunnel_and_tampering_breaks_it(apps_net, pair, caplog):
    c, s = pair
    node_b = apps_net.endpoints["B"]
    pki = apps_net.state / "pki"
    ca, cert, key = (pki / "ca.pem").read_bytes(), (pki / "controller" / "sdqkd-controller.pem").read_bytes(), \
        (pki / "controller" / "sdqkd-controller.key").read_bytes()

    async def run():
        ck, sk = _sources(pair)
        ckr, skr = Recording(ck), Recording(sk)
        async with hy.HybridTunnelServer(s, node_b["gnmi"], {c.sae_id}, keys=skr) as srv:
            proxy = TamperProxy(srv.address)
            async with hy.HybridTunnelClient(c, await proxy.start(), s.sae_id, keys=ckr) as cli:
                ch = grpc.aio.secure_channel(cli.address, grpc.ssl_channel_credentials(ca, key, cert))
                gnmi = ModelClient(ch)
                assert await gnmi.get_value("/qkd_node/qkdn_id") == node_b["id"]
                before = await gnmi.get_value(LOC)
                await gnmi.set(update=[(LOC, "site-B via hybrid tunnel")])
                assert await gnmi.get_value(LOC) == "site-B via hybrid tunnel"
                await gnmi.set(update=[(LOC, before or "")])
                st_c, st_s = cli.status(), srv.status()
                assert st_c["counters"]["hybrid"] == st_s["counters"]["hybrid"] == 1
                assert st_s["sessions"][0]["mode"] == "hybrid" and st_s["sessions"][0]["bytes_received"] > 0
                assert st_s["sessions"][0]["key_id"] == ckr.seen[0].key_id

                proxy.armed = hy.T_DATA  # one flipped bit in the next request record
                with pytest.raises(grpc.aio.AioRpcError):
                    await gnmi.get_value("/qkd_node/qkdn_id")
                assert proxy.flipped == 1 and srv.counters["record_failures"] == 1
                assert srv.status()["sessions"][0]["state"] == "failed"
                assert "failed authentication" in srv.status()["sessions"][0]["reason"]
                # gRPC reconnects: a new session, with a new QKD key. The channel may still hold
                # the broken connection for one call (UNAVAILABLE, broken pipe) on a loaded machine:
                # a client retries that, as gRPC's own retry policy would.
                for attempt in range(5):
                    try:
                        assert await gnmi.get_value("/qkd_node/qkdn_id") == node_b["id"]
                        break
                    except grpc.aio.AioRpcError as e:
                        if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                            raise
                        await asyncio.sleep(0.2)
                assert srv.counters["hybrid"] >= 2 and len({k.key_id for k in ckr.seen}) == srv.counters["hybrid"]
                await ch.close()

                # a flipped bit in a client hello: the server rejects it, the client is told
                proxy.armed = hy.T_HELLO
                with pytest.raises(hy.HybridRefused, match="refused the session"):
                    await cli.connect()
                assert proxy.flipped == 2 and srv.counters["handshake_failures"] == 1
            await proxy.stop()
        ck.close(), sk.close()
        return ckr.seen + skr.seen, srv, cli

    with caplog.at_level(logging.DEBUG):
        keys, srv, cli = asyncio.run(run())
    text = caplog.text + repr(srv.status()) + repr(cli.status())
    assert "established with QKD key_ID" in text
    for k in keys:
        for form in (k.key.hex(), k.key.hex().upper(), base64.b64encode(k.key).decode()):
            assert form not in text
