"""TLS with QKD keys: a PSK TLS echo between two applications whose nodes share no link.

Starts a small in-process QKD network (A - B - C, 10 km links, real gRPC/HTTPS on loopback),
has the controller set up key delivery for sae-a (on A) and sae-c (on C) over a trusted-node
relay through B, then runs TLS 1.3 and TLS 1.2 echo sessions: the client (master SAE) takes a
key with ETSI 014 enc_keys and offers its key_ID as PSK identity, the server (slave SAE) gets
the same key with dec_keys. Prints key IDs and a SHA-256 prefix of each key, never the key.

    python examples/tls_psk.py
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from sdqkd.apps.keyclient import Etsi014Client, SaeIdentity
from sdqkd.apps.tls_psk import PskTlsClient, PskTlsConnection, PskTlsServer
from sdqkd.harness.sync import start_inprocess

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


def main() -> int:
    t0 = time.monotonic()
    print("starting an in-process QKD network A - B - C ...", flush=True)
    net = start_inprocess(TOPOLOGY, None, timeout=120.0)
    try:
        route = net.request_keys("sae-a", "sae-c", rate=1000)
        print(f"[{time.monotonic() - t0:4.1f} s] controller: sae-a <-> sae-c over {' - '.join(route['path'])} "
              f"({'relayed' if route['virtual'] else 'direct'})")
        with Etsi014Client(SaeIdentity.from_endpoints(net.endpoints, "sae-a")) as kms_a, \
                Etsi014Client(SaeIdentity.from_endpoints(net.endpoints, "sae-c")) as kms_c:
            for version in ("1.3", "1.2"):
                listener = socket.create_server(("127.0.0.1", 0))
                seen: list[PskTlsConnection] = []
                server = PskTlsServer.from_kms(kms_c, "sae-a", version=version)
                th = threading.Thread(target=echo_server, args=(server, listener, 1, seen), daemon=True)
                th.start()
                client = PskTlsClient.from_kms(kms_a, "sae-c", version=version, retry_s=60)
                message = f"hello over TLS {version} with a QKD key".encode()
                with client.connect(listener.getsockname()) as conn:
                    conn.sendall(message)
                    echoed = conn.recv_exactly(len(message))
                th.join(30)
                listener.close()
                srv = seen[0]
                print(f"\nTLS {version}: {conn.version} {conn.cipher}")
                print(f"  client sae-a (enc_keys at A): PSK identity {conn.key_id}  key sha256 {conn.key_fingerprint}...")
                print(f"  server sae-c (dec_keys at C): PSK identity {srv.key_id}  key sha256 {srv.key_fingerprint}...")
                print(f"  echo: {echoed.decode()!r} ({'ok' if echoed == message else 'MISMATCH'})")
                if echoed != message or conn.key_id != srv.key_id or conn.key_fingerprint != srv.key_fingerprint:
                    return 1
            n = 20
            listener = socket.create_server(("127.0.0.1", 0))
            seen = []
            th = threading.Thread(target=echo_server, args=(PskTlsServer.from_kms(kms_c, "sae-a"), listener, n, seen),
                                  daemon=True)
            th.start()
            client = PskTlsClient.from_kms(kms_a, "sae-c", retry_s=60)
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
            print(f"\n{n} TLS 1.3 sessions in {dt:.2f} s ({1000 * dt / n:.0f} ms each: enc_keys at A, dec_keys at C, "
                  f"handshake, echo), {len(ids)} distinct keys")
        print(f"each session used its own key; no resumption (stateless tickets and session cache off) "
              f"({time.monotonic() - t0:.1f} s)")
        return 0
    finally:
        net.stop()


if __name__ == "__main__":
    sys.exit(main())
