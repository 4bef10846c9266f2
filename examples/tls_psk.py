"""TLS with QKD keys: a PSK TLS echo between two applications whose nodes share no link.

Starts a small in-process QKD network (A - B - C, 10 km links, real gRPC/HTTPS on loopback),
has the controller set up key delivery for sae-a (on A) and sae-c (on C) over a trusted-node
relay through B, then runs TLS 1.3 and TLS 1.2 echo sessions: the client (master SAE) takes a
key with ETSI 014 enc_keys and offers its key_ID as PSK identity, the server (slave SAE) gets
the same key with dec_keys. Prints key IDs and a SHA-256 prefix of each key, never the key.

    python examples/tls_psk.py
    python examples/tls_psk.py --endpoints lab/endpoints.json --master sae-a --slave sae-c

With --endpoints it runs against a network you started (`sdqkd net up`, docs/endpoints.md)
instead: the pair's first request registers it (docs/key-delivery.md).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from sdqkd.apps.keyclient import Etsi014Client, SaeIdentity
from sdqkd.apps.tls_psk import PskTlsClient, PskTlsConnection, PskTlsServer
from sdqkd.harness.sync import run_script, start_inprocess

TOPOLOGY = {
    "nodes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
    "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}],
    "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}],
}


def echo_server(server: PskTlsServer, listener: socket.socket, sessions: int, log: list[PskTlsConnection]) -> None:
    for _ in range(sessions):
        with server.accept(listener) as conn:
            log.append(conn)
            while data := conn.recv():
                conn.sendall(data)


@contextlib.contextmanager
def network(endpoints: str | None, t0: float) -> Iterator[Any]:
    """The endpoints of the network to use: the given file's, or an in-process network's."""
    if endpoints is not None:
        yield endpoints
        return
    print("starting an in-process QKD network A - B - C ...", flush=True)
    net = start_inprocess(TOPOLOGY, None, timeout=120.0)
    try:
        route = net.request_keys("sae-a", "sae-c", rate=1000)
        print(f"[{time.monotonic() - t0:4.1f} s] controller: sae-a <-> sae-c over {' - '.join(route['path'])} "
              f"({'relayed' if route['virtual'] else 'direct'})")
        yield net.endpoints
    finally:
        net.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", metavar="FILE", help="a running network's endpoints.json (default: start one here)")
    ap.add_argument("--master", default="sae-a", help="the client's SAE (default sae-a)")
    ap.add_argument("--slave", default="sae-c", help="the server's SAE (default sae-c)")
    args = ap.parse_args()
    if args.endpoints is None and (args.master, args.slave) != ("sae-a", "sae-c"):
        ap.error("--master and --slave name SAEs of the network given with --endpoints")
    try:
        return run(args.endpoints, args.master, args.slave)
    except (OSError, KeyError) as e:
        print(f"tls_psk: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


def run(endpoints: str | None, master: str, slave: str) -> int:
    t0 = time.monotonic()
    with network(endpoints, t0) as eps, Etsi014Client(SaeIdentity.from_endpoints(eps, master)) as kms_m, \
            Etsi014Client(SaeIdentity.from_endpoints(eps, slave)) as kms_s:
        for version in ("1.3", "1.2"):
            if not one_session(kms_m, kms_s, master, slave, version):
                return 1
        many_sessions(kms_m, kms_s, master, slave, 20)
    print(f"each session used its own key; no resumption (stateless tickets and session cache off) "
          f"({time.monotonic() - t0:.1f} s)")
    return 0


def one_session(kms_m: Etsi014Client, kms_s: Etsi014Client, master: str, slave: str, version: str) -> bool:
    """One echo over TLS `version`: the same key ID and key at both ends, the message back."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[PskTlsConnection] = []
    server = PskTlsServer.from_kms(kms_s, master, version=version)
    th = threading.Thread(target=echo_server, args=(server, listener, 1, seen), daemon=True)
    th.start()
    client = PskTlsClient.from_kms(kms_m, slave, version=version, retry_s=60)
    message = f"hello over TLS {version} with a QKD key".encode()
    with client.connect(listener.getsockname()) as conn:
        conn.sendall(message)
        echoed = conn.recv_exactly(len(message))
    th.join(30)
    listener.close()
    srv = seen[0]
    print(f"\nTLS {version}: {conn.version} {conn.cipher}")
    print(f"  client {master} (enc_keys): PSK identity {conn.key_id}  key sha256 {conn.key_fingerprint}...")
    print(f"  server {slave} (dec_keys): PSK identity {srv.key_id}  key sha256 {srv.key_fingerprint}...")
    print(f"  echo: {echoed.decode()!r} ({'ok' if echoed == message else 'MISMATCH'})")
    return echoed == message and conn.key_id == srv.key_id and conn.key_fingerprint == srv.key_fingerprint


def many_sessions(kms_m: Etsi014Client, kms_s: Etsi014Client, master: str, slave: str, n: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[PskTlsConnection] = []
    th = threading.Thread(target=echo_server, args=(PskTlsServer.from_kms(kms_s, master), listener, n, seen),
                          daemon=True)
    th.start()
    client = PskTlsClient.from_kms(kms_m, slave, retry_s=60)
    t1 = time.monotonic()
    ids = set()
    for _ in range(n):
        with client.connect(listener.getsockname()) as conn:
            conn.sendall(b"ping")
            conn.recv_exactly(4)
            ids.add(conn.key_id)
    dt = time.monotonic() - t1
    th.join(30)
    listener.close()
    print(f"\n{n} TLS 1.3 sessions in {dt:.2f} s ({1000 * dt / n:.0f} ms each: enc_keys, dec_keys, "
          f"handshake, echo), {len(ids)} distinct keys")


if __name__ == "__main__":
    run_script(main)  # SIGTERM, as Ctrl-C, stops its network and removes its state
