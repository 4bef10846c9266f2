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
    python examples/encryptor.py --endpoints lab/endpoints.json --master sae-a --slave sae-b

With --endpoints it runs against a network you started (`sdqkd net up`, docs/endpoints.md): the
pair is registered by its first request (docs/key-delivery.md), and the SKR is that of the link
between the two SAEs' nodes, read with the network's management identity (none when their keys
are relayed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from sdqkd.apps.encryptor import (
    Decryptor,
    Encryptor,
    KeyStarved,
    KeyStream,
    KeyStreamError,
    StreamQoS,
    link_to,
    parse_header,
    read_link_skr,
)
from sdqkd.apps.keyclient import Etsi004Client, ManagementIdentity, SaeIdentity
from sdqkd.errors import SdqkdError
from sdqkd.harness.sync import run_script, start_inprocess

TOPOLOGY = {
    "nodes": [{"name": "A"}, {"name": "B"}],
    "links": [{"a": "A", "b": "B", "km": 10}],
    "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-b", "node": "B"}],
}


def run(a: Etsi004Client, b: Etsi004Client, slave: str, master: str, qos: StreamQoS, seconds: float, rekey: int,
        frame: int, skr: float | None) -> None:
    tx = KeyStream.open(a, slave, qos)
    rx = KeyStream.open(b, master, StreamQoS(chunk_size=qos.chunk_size, timeout_ms=20000),
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rekey-bytes", type=int, default=4096, help="plaintext bytes per AES-GCM key (N)")
    ap.add_argument("--frame", type=int, default=1024, help="plaintext bytes per frame")
    ap.add_argument("--endpoints", metavar="FILE", help="a running network's endpoints.json (default: start one here)")
    ap.add_argument("--master", default="sae-a", help="the encrypting SAE (default sae-a)")
    ap.add_argument("--slave", default="sae-b", help="the decrypting SAE (default sae-b)")
    args = ap.parse_args()
    if args.endpoints is None and (args.master, args.slave) != ("sae-a", "sae-b"):
        ap.error("--master and --slave name SAEs of the network given with --endpoints")
    try:
        with network(args.endpoints, args.master, args.slave) as (eps, skr):
            with Etsi004Client(SaeIdentity.from_endpoints(eps, args.master)) as a, \
                    Etsi004Client(SaeIdentity.from_endpoints(eps, args.slave)) as b:
                streams(a, b, args.slave, args.master, args, skr)
        return 0
    except json.JSONDecodeError as e:
        print(f"encryptor: {args.endpoints}: not the JSON of endpoints.json: {e}", file=sys.stderr)
        return 2
    except (OSError, KeyError, SdqkdError) as e:  # the KMS's answers, files, SAE names
        print(f"encryptor: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:  # gNMI's read of the link's rate (a wrong login, say) or ETSI 004's transport
        print(f"encryptor: gRPC: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def network(endpoints: str | None, master: str, slave: str) -> Iterator[tuple[Any, float | None]]:
    """The endpoints to use and the pair's link SKR: the given file's network, or an in-process one
    whose controller sets up sae-a / sae-b."""
    if endpoints is not None:
        eps = json.loads(Path(endpoints).read_text())  # read once: the clients and the SKR's lookup
        yield eps, endpoint_skr(eps, endpoints, master, slave)
        return
    print("starting an in-process QKD network A - B (10 km) ...", flush=True)
    net = start_inprocess(TOPOLOGY, None, timeout=120.0)  # a temporary state dir, removed at stop
    try:
        route = net.request_keys("sae-a", "sae-b", rate=1000)
        mgmt = ManagementIdentity.from_endpoints(net.endpoints, "A")  # gNMI is the operator's door
        time.sleep(2.0)  # let the link report a few key blocks
        skr = read_link_skr(mgmt, route["qkdl_id"])
        print(f"link A-B ({route['qkdl_id'][:8]}...): secret key rate {skr or 0:.0f} bit/s (gNMI, node A)")
        yield net.endpoints, skr
    finally:
        net.stop()


def endpoint_skr(eps: dict[str, Any], endpoints: str, master: str, slave: str) -> float | None:
    """The SKR of the link between the SAEs' nodes, by gNMI with endpoints.json's management identity."""
    node_of = {sae: name for name, ep in eps.items() for sae in ep.get("saes", {})}
    for sae in (master, slave):
        if sae not in node_of:
            raise KeyError(f"SAE {sae!r} is not attached to any node of {endpoints}")
    mn, sn = node_of[master], node_of[slave]
    mgmt = ManagementIdentity.from_endpoints(eps, mn)
    qkdl_id = link_to(mgmt, eps[sn]["id"]) if mn != sn else None
    if qkdl_id is None:
        print(f"{master} on {mn}, {slave} on {sn}: no link between them (keys relayed or local), no single SKR")
        return None
    skr = read_link_skr(mgmt, qkdl_id)
    print(f"link {mn}-{sn} ({qkdl_id[:8]}...): secret key rate {skr or 0:.0f} bit/s (gNMI, node {mn})")
    return skr


def streams(a: Etsi004Client, b: Etsi004Client, slave: str, master: str, args: argparse.Namespace,
            skr: float | None) -> None:
    """The three cases of the module docstring."""
    print(f"\n1. unpaced stream, AES-256-GCM rekeyed every {args.rekey_bytes} B, {args.frame} B frames:")
    run(a, b, slave, master, StreamQoS(chunk_size=32, timeout_ms=5000), args.seconds, args.rekey_bytes, args.frame,
        skr)
    cap = 2560
    print(f"\n2. the same encryptor on a stream granted max_bps {cap} (10 keys/s), GET_KEY timeout 50 ms:")
    run(a, b, slave, master, StreamQoS(chunk_size=32, max_bps=cap, timeout_ms=50), args.seconds, args.rekey_bytes,
        args.frame, skr)
    print("\n3. a stream that asks min_bps above what the link produces:")
    try:
        KeyStream.open(a, slave, StreamQoS(chunk_size=32, min_bps=2**32 - 1)).close()
        print("  granted (the link's rate was not measured yet)")
    except KeyStreamError as e:
        print(f"  refused: {e}")


if __name__ == "__main__":
    run_script(main)  # SIGTERM, as Ctrl-C, stops its network and removes its state
