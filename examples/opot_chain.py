"""Ordered proof of transit along a service chain, with hop masks from QKD keys.

Starts a small in-process QKD network (a line A - B - C - D, 10 km links) with one service
function (an SAE) per node: sf-a (ingress), sf-b, sf-c (transit), sf-d (egress, verifier). The
controller-side provisioner generates the Shamir profiles, has the SDN controller set up key
delivery for each consecutive pair, and lets the upstream SAE draw a key (ETSI 014 enc_keys)
whose key_ID it hands to the downstream SAE (dec_keys); it never sees a key. Then packets go
through the chain in order, and through a skipped, a swapped and a tampered path. Plain PoT
(no QKD masks) is shown to miss the swap. Key bytes are never printed.

    python examples/opot_chain.py
    python examples/opot_chain.py --endpoints lab/endpoints.json --chain sae-a,sae-b,sae-c

With --endpoints it runs against a network you started (`sdqkd net up`, docs/endpoints.md),
along the SAEs --chain names (ingress first, egress last, at least two): each hop's pair is
registered by its first request (docs/key-delivery.md), and the attacks are those the chain's
length allows (a skip needs a transit node, a swap two).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from sdqkd.apps.keyclient import Etsi014Client, SaeIdentity
from sdqkd.apps.opot import OpotMeta, OpotNode, run_chain
from sdqkd.controller.opot import OpotProvisioner
from sdqkd.errors import SdqkdError
from sdqkd.harness.sync import run_script, start_inprocess

NODES = ["A", "B", "C", "D"]
TOPOLOGY = {
    "nodes": [{"name": n} for n in NODES],
    "links": [{"a": a, "b": b, "km": 10} for a, b in zip(NODES, NODES[1:])],
    "saes": [{"name": f"sf-{n.lower()}", "node": n} for n in NODES],
}
CHAIN = [f"sf-{n.lower()}" for n in NODES]
PACKETS = 10000


@contextlib.contextmanager
def network(endpoints: str | None) -> Iterator[tuple[Any, OpotProvisioner]]:
    """The endpoints to use and a provisioner: the given file's network, whose pairs register on
    their first request, or an in-process network whose controller is asked for each hop."""
    if endpoints is not None:
        yield json.loads(Path(endpoints).read_text()), OpotProvisioner()  # read once for every SAE
        return
    print("starting an in-process QKD network A - B - C - D ...", flush=True)
    net = start_inprocess(TOPOLOGY, None, timeout=120.0)
    try:
        yield net.endpoints, OpotProvisioner(lambda m, s: net.request_keys(m, s, rate=1000))
    finally:
        net.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", metavar="FILE", help="a running network's endpoints.json (default: start one here)")
    ap.add_argument("--chain", metavar="SAE,SAE,...", help=f"the service chain's SAEs, ingress first (default "
                    f"{','.join(CHAIN)}; with --endpoints, SAEs of that network)")
    args = ap.parse_args()
    chain = args.chain.split(",") if args.chain else CHAIN
    if args.endpoints is None and chain != CHAIN:
        ap.error("--chain names SAEs of the network given with --endpoints")
    if len(chain) < 2 or any(a == b for a, b in zip(chain, chain[1:])):
        ap.error(f"--chain: at least two SAEs, no SAE twice in a row (got {args.chain!r})")
    try:
        return run(args.endpoints, chain)
    except json.JSONDecodeError as e:
        print(f"opot_chain: {args.endpoints}: not the JSON of endpoints.json: {e}", file=sys.stderr)
        return 2
    except (OSError, KeyError, SdqkdError, httpx.HTTPError) as e:  # the network's answers, files, SAE names
        print(f"opot_chain: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


def run(endpoints: str | None, saes: list[str]) -> int:
    t0 = time.monotonic()
    with network(endpoints) as (eps, prov), contextlib.ExitStack() as stack:
        clients = [stack.enter_context(Etsi014Client(SaeIdentity.from_endpoints(eps, s))) for s in saes]
        chain = [OpotNode(c.me.sae_id, c) for c in clients]
        tp = time.monotonic()
        rec = prov.provision(chain)
        print(f"[{time.monotonic() - t0:4.1f} s] OPoT profile {rec.profile_id} on {' -> '.join(rec.saes)} "
              f"(provisioned in {time.monotonic() - tp:.2f} s)")
        for h in rec.hops:
            print(f"  hop {h.index}: {h.master} enc_keys -> key_ID {h.key_id} -> {h.slave} dec_keys")
        pid = rec.profile_id

        t = time.perf_counter()
        ok = sum(bool(run_chain(chain, pid)) for _ in range(PACKETS))
        dt = time.perf_counter() - t
        where = "one process that also runs the QKD network" if endpoints is None else "this process"
        print(f"\ncorrect order: {ok}/{PACKETS} packets verified "
              f"({PACKETS / dt:,.0f} packets/s through all {len(chain)} nodes, {where})")
        attacks(chain, pid)
        if len(chain) >= 4:
            plain = [OpotNode(f"pot-{i}") for i in range(len(chain))]
            ppid = OpotProvisioner().provision(plain, ordered=False).profile_id
            swapped = [plain[0], plain[2], plain[1], *plain[3:]]
            print(f"\nplain PoT (no QKD masks): swap {saes[1]}/{saes[2]} -> "
                  f"{'VERIFIED (order not enforced)' if run_chain(swapped, ppid) else 'rejected'}")

        rec2 = prov.refresh_keys(chain, rec)
        print("\nrekeyed (new QKD key on every hop, same shares):")
        for old, new in zip(rec.hops, rec2.hops):
            print(f"  hop {new.index}: key_ID {old.key_id} -> {new.key_id}")
        print(f"  chain verifies: {bool(run_chain(chain, pid))}")
        print(f"egress counters: {chain[-1].status()[pid]}  ({time.monotonic() - t0:.1f} s)")
        return 0 if ok == PACKETS else 1


def attacks(chain: list[OpotNode], pid: int) -> None:
    """One packet per attack the chain's length allows: skip a transit node, swap two, tamper
    with each field, replay."""
    first, *transit, last = chain
    print("\nattacks (each one packet):")
    paths = [(f"skip {n.sae_id}", [p for p in chain if p is not n]) for n in transit]
    if len(transit) >= 2:
        paths.append((f"swap {transit[0].sae_id}/{transit[1].sae_id}", [first, transit[1], transit[0], *transit[2:], last]))
    for label, path in paths:
        v = run_chain(path, pid)
        print(f"  {label:<16} -> {'VERIFIED' if v else 'rejected'}: {v.reason}")

    def through(meta: OpotMeta) -> OpotMeta:
        for n in transit:
            meta = n.transit(meta)
        return meta

    for field in ("rnd", "cml", "seq"):
        meta = first.stamp(pid)
        meta = dataclasses.replace(meta, **{field: getattr(meta, field) ^ 1})
        v = last.verify(through(meta))
        print(f"  tampered {field.upper():<7} -> {'VERIFIED' if v else 'rejected'}")
    good = through(first.stamp(pid))
    last.verify(good)
    v = last.verify(good)
    print(f"  replayed packet  -> {'VERIFIED' if v else 'rejected'}: {v.reason}")


if __name__ == "__main__":
    run_script(main)  # SIGTERM, as Ctrl-C, stops its network and removes its state
