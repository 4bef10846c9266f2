"""TLS-PSK with QKD keys, for real: Python server <-> `openssl s_client`, `openssl s_server` <->
Python client and Python <-> Python, TLS 1.3 and TLS 1.2, keys from ETSI 014 over the A - C
relay path (master sae-a3 on A, slave sae-c3 on C)."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sdqkd.apps.keyclient import Etsi014Client, Key, SaeIdentity
from sdqkd.apps.tls_psk import PskHandshakeError, PskTlsClient, PskTlsConnection, PskTlsServer

MASTER, SLAVE = "sae-a3", "sae-c3"
VERSIONS = ["1.3", "1.2"]
OPENSSL_FLAG = {"1.3": ["-tls1_3"], "1.2": ["-tls1_2", "-cipher", "PSK-AES256-GCM-SHA384"]}

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command line tool not installed")


@pytest.fixture(scope="module")
def kms(apps_net: Any) -> Iterator[tuple[Etsi014Client, Etsi014Client]]:
    apps_net.request_keys(MASTER, SLAVE, rate=1000)
    with Etsi014Client(SaeIdentity.from_endpoints(apps_net.endpoints, MASTER)) as m, \
            Etsi014Client(SaeIdentity.from_endpoints(apps_net.endpoints, SLAVE)) as s:
        m.enc_keys(SLAVE, retry_s=60)  # wait until the relay fills the virtual link's pool
        yield m, s


class Serve:
    """Run a PskTlsServer for `n` sessions in a thread; each session echoes one message upper-cased."""

    def __init__(self, server: PskTlsServer, n: int = 1,
                 handler: Callable[[PskTlsConnection], None] = lambda c: c.sendall(c.recv().upper())) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sessions: list[PskTlsConnection] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(server, n), daemon=True)
        self.thread.start()

    def _run(self, server: PskTlsServer, n: int) -> None:
        self.listener.settimeout(30)
        for _ in range(n):
            try:
                with server.accept(self.listener, timeout=30) as conn:
                    self.sessions.append(conn)
                    self.handler(conn)
            except (PskHandshakeError, OSError) as e:
                self.errors.append(e)

    def join(self) -> Serve:
        self.thread.join(60)
        self.listener.close()
        return self


def s_client(port: int, version: str, *args: str, data: bytes = b"quantum hello\n") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *OPENSSL_FLAG[version],
                           "-ign_eof", *args], input=data, capture_output=True, timeout=30)


def psk_args(key: Key) -> list[str]:
    return ["-psk_identity", key.key_id, "-psk", key.key.hex()]


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_python_server_with_openssl_s_client(kms, version):
    master, slave = kms
    key = master.enc_keys(SLAVE, retry_s=30)[0]  # the master SAE's key, handed to s_client
    srv = Serve(PskTlsServer.from_kms(slave, MASTER, version=version))
    out = s_client(srv.port, version, *psk_args(key))
    srv.join()
    assert not srv.errors, srv.errors
    assert out.returncode == 0, out.stderr.decode()[-500:]
    assert b"QUANTUM HELLO" in out.stdout
    (conn,) = srv.sessions
    assert conn.key_id == key.key_id and conn.version == f"TLSv{version}"
    assert ("PSK" in conn.cipher) if version == "1.2" else conn.cipher.endswith("SHA256")


def _s_server(key: Key, version: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-nocert", *OPENSSL_FLAG[version],
                             *psk_args(key), "-naccept", "1", "-rev"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for line in proc.stdout:  # s_server prints ACCEPT once it listens
        if line.startswith(b"ACCEPT"):
            return proc, port
    raise AssertionError("openssl s_server did not start")


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_s_server_with_python_client(kms, version):
    master, slave = kms
    key = master.enc_keys(SLAVE, retry_s=30)[0]
    server_key = Key(key.key_id, slave.dec_key(MASTER, key.key_id))  # the slave SAE's dec_keys, for s_server
    proc, port = _s_server(server_key, version)
    try:
        with PskTlsClient(lambda: key, version).connect(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"qkd\n")
            assert conn.recv_exactly(4) == b"dkq\n"  # s_server -rev echoes each line reversed
            assert conn.key_id == key.key_id and conn.version == f"TLSv{version}"
    finally:
        proc.wait(30)


@pytest.mark.parametrize("version", VERSIONS)
def test_python_to_python_each_session_takes_a_new_key(kms, version):
    master, slave = kms
    srv = Serve(PskTlsServer.from_kms(slave, MASTER, version=version), n=2)
    client = PskTlsClient.from_kms(master, SLAVE, version=version, retry_s=30)
    mine = []
    for i in range(2):
        with client.connect(("127.0.0.1", srv.port)) as conn:
            conn.sendall(f"session {i}".encode())
            assert conn.recv_exactly(9) == f"SESSION {i}".encode()
            mine.append(conn)
    srv.join()
    assert not srv.errors, srv.errors
    assert [c.key_id for c in srv.sessions] == [c.key_id for c in mine]
    assert [c.key_fingerprint for c in srv.sessions] == [c.key_fingerprint for c in mine]
    assert mine[0].key_id != mine[1].key_id and mine[0].key_fingerprint != mine[1].key_fingerprint
    assert all(str(c.key_id) in repr(c) and c.key_fingerprint not in repr(c) for c in mine)


def test_a_megabyte_crosses_both_ways(kms):
    master, slave = kms
    blob = secrets.token_bytes(1 << 20)
    srv = Serve(PskTlsServer.from_kms(slave, MASTER), handler=lambda c: c.sendall(c.recv_exactly(len(blob))[::-1]))
    with PskTlsClient.from_kms(master, SLAVE).connect(("127.0.0.1", srv.port)) as conn:
        conn.sendall(blob)
        assert conn.recv_exactly(len(blob)) == blob[::-1]
        assert conn.recv() == b""  # the server closed with close_notify
    srv.join()
    assert not srv.errors, srv.errors


def _handshake_pair(server: PskTlsServer, client: PskTlsClient) -> tuple[BaseException | None, BaseException | None]:
    srv = Serve(server)
    with pytest.raises(PskHandshakeError) as cli_err:
        client.connect(("127.0.0.1", srv.port), timeout=20)
    srv.join()
    return (srv.errors[0] if srv.errors else None), cli_err.value


@pytest.mark.parametrize("version", VERSIONS)
def test_server_with_a_different_key_fails_the_handshake(kms, version):
    master, slave = kms
    other = master.enc_keys(SLAVE, retry_s=30)[0]
    wrong = slave.dec_key(MASTER, other.key_id)  # a real QKD key, but not the one for the identity

    def wrong_key(key_id: str) -> bytes:
        slave.dec_key(MASTER, key_id)  # consume the right one so it cannot linger
        return wrong

    srv_err, cli_err = _handshake_pair(PskTlsServer(wrong_key, version),
                                       PskTlsClient.from_kms(master, SLAVE, version=version))
    assert isinstance(srv_err, PskHandshakeError)
    assert "handshake failed for PSK identity" in str(srv_err)
    assert "handshake failed" in str(cli_err)
    assert wrong.hex() not in str(srv_err) + str(cli_err)


@needs_openssl
@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_identity_fails_and_names_it(kms, version):
    _, slave = kms
    bogus = Key(str(uuid.uuid4()), secrets.token_bytes(32))
    srv = Serve(PskTlsServer.from_kms(slave, MASTER, version=version))
    out = s_client(srv.port, version, *psk_args(bogus))
    srv.join()
    assert out.returncode != 0 and b"QUANTUM" not in out.stdout
    (err,) = srv.errors
    assert f"no key for PSK identity {bogus.key_id!r}" in str(err) and "HTTP 400" in str(err)


@needs_openssl
def test_missing_identity_fails(kms):
    _, slave = kms
    srv = Serve(PskTlsServer.from_kms(slave, MASTER, version="1.3"))
    out = s_client(srv.port, "1.3")  # no -psk: the client offers no PSK at all
    srv.join()
    assert out.returncode != 0 and b"QUANTUM" not in out.stdout
    assert len(srv.errors) == 1 and "handshake failed" in str(srv.errors[0])


def test_client_reports_why_it_had_no_key(kms):
    master, slave = kms
    srv = Serve(PskTlsServer.from_kms(slave, MASTER))
    client = PskTlsClient.from_kms(master, "sae-nope")  # the KMS refuses: no such slave SAE
    with pytest.raises(PskHandshakeError, match="ETSI 014 POST .*sae-nope.*HTTP 4"):
        client.connect(("127.0.0.1", srv.port), timeout=20)
    srv.join()


@pytest.mark.parametrize("version", VERSIONS)
def test_an_interrupt_while_the_client_fetches_its_key_is_raised_not_lost(version):
    """Ctrl-C (or SIGTERM under run_script) while the key source runs inside OpenSSL's callback:
    the callback must not let it cross into OpenSSL, and the handshake then raises it, rather
    than a handshake failure (an example interrupted there exited 2 instead of 130)."""
    key = Key(str(uuid.uuid4()), secrets.token_bytes(32))
    srv = Serve(PskTlsServer(lambda kid: key.key, version))

    def interrupted() -> Key:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        PskTlsClient(interrupted, version).connect(("127.0.0.1", srv.port), timeout=20)
    srv.join()
    assert len(srv.errors) == 1  # the server saw the handshake fail


@needs_openssl
def test_no_resumption_with_the_servers_ticket(kms, tmp_path):
    """TLS 1.3: the binding lacks SSL_CTX_set_num_tickets, so OpenSSL still sends a stateful
    ticket; with the session cache off it names nothing, so resuming with it fails, and its
    binary ID is never sent to the KMS as a key_ID."""
    master, slave = kms
    key = master.enc_keys(SLAVE, retry_s=30)[0]
    lookups: list[str] = []
    dec: Callable[[str], bytes] = lambda kid: (lookups.append(kid), slave.dec_key(MASTER, kid))[1]  # noqa: E731
    srv = Serve(PskTlsServer(dec, "1.3"), n=2)
    sess = tmp_path / "sess.pem"
    first = s_client(srv.port, "1.3", *psk_args(key), "-sess_out", str(sess))
    assert first.returncode == 0 and b"QUANTUM HELLO" in first.stdout
    again = s_client(srv.port, "1.3", "-sess_in", str(sess))
    srv.join()
    assert again.returncode != 0 and b"QUANTUM" not in again.stdout
    assert lookups == [key.key_id]
    assert len(srv.errors) == 1 and "PSK identity" in str(srv.errors[0])  # the ticket ID is not a key_ID


@needs_openssl
def test_identity_that_is_not_a_key_id_never_reaches_the_kms(kms):
    lookups: list[str] = []
    srv = Serve(PskTlsServer(lambda kid: (lookups.append(kid), b"")[1], "1.2"))
    out = s_client(srv.port, "1.2", "-psk_identity", "../../admin", "-psk", "00" * 32)
    srv.join()
    assert out.returncode != 0 and lookups == []
    assert "is not an ETSI 014 key_ID" in str(srv.errors[0])


def test_bad_version_is_a_clear_error():
    with pytest.raises(ValueError, match="TLS version must be"):
        PskTlsClient(lambda: Key("x", b"k"), version="1.1")  # type: ignore[arg-type]
