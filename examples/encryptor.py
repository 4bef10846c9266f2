"""Encryptor key streams: AES-GCM rekeyed every N bytes from an ETSI 004 key stream, with key
consumption shown against the link's secret key rate, and what happens when demand exceeds
supply.

Starts a small in-process QKD network (A - B, 10 km, real gRPC/HTTPS on loopback), has the
controller set up key delivery for sae-a / sae-b, reads the link's SKR from node A's gNMI
state (ETSI 015 qkdl_performance/skr), then:
  1. an unpaced stream: encrypt + decrypt for a few seconds, rekeying every N bytes;
  2. a stream whose QoS max_bps is far below the encryptor's demand: the KMS answers GET_KEY
     with status 6, the encryptor raises KeyStarved and holds frames back, never reusing key;
  3. a stream asking a min_bps above the link's rate: refused with status 7.
No key byte is printed.

    python examples/encryptor.py [--seconds 3] [--rekey-bytes 4096] [--frame 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sdqkd.apps.encryptor import (
    Decryptor,
    Encryptor,
    KeyStarved,
    KeyStream,
    KeyStreamError,
    StreamQoS,
    parse_header,
    read_link_skr,
)
from sdqkd.apps.keyclient import Etsi004Client, SaeIdentity
from sdqkd.harness.sync import start_inprocess

TOPOLOGY = {
    "nodes": [{"name": "A"}, {"name": "B"}],
    "links": [{"a": "A", "b": "B", "km": 10}],
    "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-b", "node": "B"}],
}


def run(a: Etsi004Client, b: Etsi004Client, qos: StreamQoS, seconds: float, rekey: int, frame: int,
        skr: float | None) -> None:
    tx = KeyStream.open(a, "sae-b", qos)
    rx = KeyStream.open(b, "sae-a", StreamQoS(chunk_size=qos.chunk_size, timeout_ms=20000),
                        key_stream_id=tx.key_stream_id)
    enc, dec = Encryptor(tx, rekey_bytes=rekey), Decryptor(rx, rekey_bytes=rekey)
    payload = os.urandom(frame)
    held_back, last_status = 0, None
    slots: set[tuple[int, int]] = set()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            try:
                f = enc.seal(payload)
            except KeyStarved as e:
                held_back += 1
                last_status = e.status
                time.sleep(0.01)  # back off; the frame is not sent
                continue
            slot = parse_header(f)
            assert slot not in slots, "key/nonce reuse"
            slots.add(slot)
            assert dec.open(f) == payload
        use = enc.consumption()
        print(f"  {use.report(skr)}")
        if held_back:
            print(f"  demand above supply: {held_back} seal attempts refused with KeyStarved (ETSI 004 status "
                  f"{last_status}), nothing sent for them; {use.frames} frames sent, each (key index, nonce) "
                  f"used once ({len(slots)} distinct)")
    finally:
        tx.close()
        rx.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rekey-bytes", type=int, default=4096, help="plaintext bytes per AES-GCM key (N)")
    ap.add_argument("--frame", type=int, default=1024, help="plaintext bytes per frame")
    args = ap.parse_args()
    print("starting an in-process QKD network A - B (10 km) ...", flush=True)
    net = start_inprocess(TOPOLOGY, None, timeout=120.0)  # a temporary state dir, removed at stop
    state = net.state
    try:
        route = net.request_keys("sae-a", "sae-b", rate=1000)
        ep = net.endpoints["A"]
        mgmt = state / "pki" / "controller"  # a management identity: gNMI is the operator's door
        time.sleep(2.0)  # let the link report a few key blocks
        skr = read_link_skr(ep["gnmi"], route["qkdl_id"], ep["ca"], str(mgmt / "sdqkd-controller.pem"),
                            str(mgmt / "sdqkd-controller.key"))
        print(f"link A-B ({route['qkdl_id'][:8]}...): secret key rate {skr or 0:.0f} bit/s (gNMI, node A)")
        with Etsi004Client(SaeIdentity.from_endpoints(net.endpoints, "sae-a")) as a, \
                Etsi004Client(SaeIdentity.from_endpoints(net.endpoints, "sae-b")) as b:
            print(f"\n1. unpaced stream, AES-256-GCM rekeyed every {args.rekey_bytes} B, {args.frame} B frames:")
            run(a, b, StreamQoS(chunk_size=32, timeout_ms=5000), args.seconds, args.rekey_bytes, args.frame, skr)
            cap = 2560
            print(f"\n2. the same encryptor on a stream granted max_bps {cap} (10 keys/s), GET_KEY timeout 50 ms:")
            run(a, b, StreamQoS(chunk_size=32, max_bps=cap, timeout_ms=50), args.seconds, args.rekey_bytes,
                args.frame, skr)
            print("\n3. a stream that asks min_bps above what the link produces:")
            try:
                KeyStream.open(a, "sae-b", StreamQoS(chunk_size=32, min_bps=2**32 - 1)).close()
                print("  granted (the link's rate was not measured yet)")
            except KeyStreamError as e:
                print(f"  refused: {e}")
        return 0
    finally:
        net.stop()


if __name__ == "__main__":
    sys.exit(main())
