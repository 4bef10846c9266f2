"""Hybrid (X25519 + QKD) keys protecting the management plane: gNMI from the controller's site
to node B's agent through a hybrid tunnel.

Starts a small in-process QKD network (A - B - C, 10 km links). The controller's site C has an
application identity sae-ctl; node B's management side has sae-mgmt-b. The controller sets up
key delivery for the pair over the B-C link. A `HybridTunnelServer` (sae-mgmt-b) sits in front of
node B's gNMI port, a `HybridTunnelClient` (sae-ctl) gives the controller a local port; each TCP
connection through it is keyed by HKDF(X25519 || QKD key) with the QKD key drawn by ETSI 014
enc_keys at C and taken by dec_keys at B. The generated gNMI client (`ModelClient`, what the
controller uses) then runs Capabilities, Get and Set through it, its own mutual TLS inside, and
a monitoring `Controller` instance watches node B (STREAM subscription) through the tunnel.
Finally the client's KMS is made unreachable: the next session is flagged classical-only, and a
client that does not allow fallback is refused. Key bytes are never printed.

    python examples/hybrid_gnmi.py
    python examples/hybrid_gnmi.py --endpoints lab/endpoints.json --node B --client-sae sae-c --server-sae sae-b

With --endpoints it runs against a network you started (`sdqkd net up`, docs/endpoints.md):
the tunnel server (--server-sae, an SAE of --node) in front of that node's gNMI port, the client
(--client-sae) on the controller's side, the pair registered by its first request
(docs/key-delivery.md); gNMI runs with the network's management identity and login.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from sdqkd.apps import hybrid as hy
from sdqkd.apps.keyclient import ManagementIdentity, SaeIdentity
from sdqkd.controller.controller import Controller, NodeEndpoint
from sdqkd.controller.topology import parse
from sdqkd.errors import SdqkdError
from sdqkd.generated.client import ModelClient
from sdqkd.harness.sync import run_script, start_inprocess
from sdqkd.tls import grpc_channel_credentials

TOPOLOGY = {
    "nodes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
    "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}],
    "saes": [{"name": "sae-ctl", "node": "C"}, {"name": "sae-mgmt-b", "node": "B"}],
}
LOC = "/qkd_node/qkdn_location_id"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@dataclass
class Site:
    """What the example manages: a network's endpoints, the node behind the tunnel, the two SAEs,
    the node's management identity (TLS files, gNMI login) and the topology a monitoring
    controller reads."""
    endpoints: dict[str, Any]
    node: str
    client_sae: str
    server_sae: str
    mgmt: ManagementIdentity
    topology: dict[str, Any]


def inprocess_site(net: Any) -> Site:
    return Site(net.endpoints, "B", "sae-ctl", "sae-mgmt-b", ManagementIdentity.from_endpoints(net.endpoints, "B"),
                TOPOLOGY)


def endpoints_site(path: str, node: str, client_sae: str, server_sae: str) -> Site:
    """A `net up` network's endpoints.json: its management identity, login and nodes."""
    eps = json.loads(Path(path).read_text())
    mgmt = ManagementIdentity.from_endpoints(eps, node)
    if server_sae not in eps[node].get("saes", {}):
        raise KeyError(f"--server-sae {server_sae!r} is not attached to node {node} in {path}")
    return Site(eps, node, client_sae, server_sae, mgmt, {"nodes": [{"name": n} for n in eps]})


async def manage(site: Site, t0: float) -> int:
    ctl = SaeIdentity.from_endpoints(site.endpoints, site.client_sae)
    mgmt = SaeIdentity.from_endpoints(site.endpoints, site.server_sae)
    node = site.endpoints[site.node]
    tls = site.mgmt.tls()
    creds = grpc_channel_credentials(tls)
    user, password = site.mgmt.login() or (None, None)
    skeys, ckeys = hy.Etsi014KeySource(mgmt), hy.Etsi014KeySource(ctl, retry_s=60)
    async with hy.HybridTunnelServer(mgmt, node["gnmi"], {site.client_sae}, keys=skeys) as srv:
        print(f"[{time.monotonic() - t0:4.1f} s] tunnel server ({site.server_sae}) on {srv.address} -> "
              f"node {site.node} gNMI {node['gnmi']}")
        async with hy.HybridTunnelClient(ctl, srv.address, site.server_sae, keys=ckeys) as cli:
            print(f"[{time.monotonic() - t0:4.1f} s] tunnel client ({site.client_sae}) on {cli.address}")
            async with grpc.aio.secure_channel(cli.address, creds) as ch:
                gnmi = ModelClient(ch, username=user, password=password)
                caps = await gnmi.capabilities()
                print(f"  Capabilities: gNMI {caps.gNMI_version}, "
                      f"{', '.join(m.name for m in caps.supported_models[:3])}, ...")
                print(f"  Get qkdn_id: {await gnmi.get_value('/qkd_node/qkdn_id')}")
                links = await gnmi.list_qkd_link()
                print(f"  Get qkd_links: {len(links)} link(s) on node {site.node}")
                before = await gnmi.get_value(LOC)
                await gnmi.set(update=[(LOC, f"site {site.node} (managed over a hybrid tunnel)")])
                print(f"  Set + Get qkdn_location_id: {await gnmi.get_value(LOC)!r}")
                await gnmi.set(update=[(LOC, before or "")])
            # the SDN controller itself (a monitoring instance: no provisioning) reaches the node only
            # through the tunnel: its ON_CHANGE STREAM subscription runs over a hybrid session
            eps = {n: NodeEndpoint(n, e["id"], cli.address if n == site.node else e["gnmi"], "")
                   for n, e in site.endpoints.items()}
            monitor = Controller(parse(site.topology), eps, tls=tls, credentials=site.mgmt.login())
            await monitor.start(provision=False)
            watched = monitor.nodes[site.node]
            for _ in range(100):
                if watched.up and any("skr" in v for v in watched.links.values()):
                    break
                await asyncio.sleep(0.1)
            skr = [v.get("skr") for v in watched.links.values() if "skr" in v]
            print(f"  Controller watch of node {site.node} via the tunnel: up={watched.up}, "
                  f"link skr {skr[0] if skr else '?'} bit/s")
            await monitor.stop()
            for s in srv.status()["sessions"]:
                print(f"  session with {s['peer']}: mode {s['mode'].upper()}, QKD key_ID {s['key_id']}, "
                      f"{s['bytes_received']} B in / {s['bytes_sent']} B out")

        print("\nthe controller's KMS becomes unreachable:")
        dead = dataclasses.replace(ctl, etsi014=_closed_port())
        for allow in (True, False):
            async with hy.HybridTunnelClient(dead, srv.address, site.server_sae, allow_fallback=allow) as cli:
                try:
                    session = await cli.connect()
                    print(f"  allow_fallback={allow}: session mode {session.mode.upper()} "
                          f"(client status counters: {cli.status()['counters']})")
                    await session.send_close()
                    session.close()
                except hy.HybridRefused as e:
                    print(f"  allow_fallback={allow}: refused: {e}")
        print(f"  server counters: {srv.status()['counters']}")
    skeys.close(), ckeys.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", metavar="FILE", help="a running network's endpoints.json (default: start one here)")
    ap.add_argument("--node", default="B", help="the node managed through the tunnel (default B)")
    ap.add_argument("--client-sae", default="sae-ctl", help="the controller side's SAE (default sae-ctl)")
    ap.add_argument("--server-sae", default="sae-mgmt-b", help="the managed node's SAE (default sae-mgmt-b)")
    args = ap.parse_args()
    if args.endpoints is None and (args.node, args.client_sae, args.server_sae) != ("B", "sae-ctl", "sae-mgmt-b"):
        ap.error("--node, --client-sae and --server-sae name a network given with --endpoints")
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    try:
        if args.endpoints is not None:
            return asyncio.run(manage(endpoints_site(args.endpoints, args.node, args.client_sae, args.server_sae), t0))
        print("starting an in-process QKD network A - B - C ...", flush=True)
        net = start_inprocess(TOPOLOGY, None, timeout=120.0)
        try:
            route = net.request_keys("sae-ctl", "sae-mgmt-b", rate=1000)
            print(f"[{time.monotonic() - t0:4.1f} s] controller: sae-ctl <-> sae-mgmt-b over {' - '.join(route['path'])}")
            return asyncio.run(manage(inprocess_site(net), t0))
        finally:
            net.stop()
    except json.JSONDecodeError as e:
        print(f"hybrid_gnmi: {args.endpoints}: not the JSON of endpoints.json: {e}", file=sys.stderr)
        return 2
    except (OSError, KeyError, SdqkdError) as e:  # the KMS's answers, files, SAE and node names
        print(f"hybrid_gnmi: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:  # gNMI through the tunnel (a wrong login, say)
        print(f"hybrid_gnmi: gNMI: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    run_script(main)  # SIGTERM, as Ctrl-C, stops its network and removes its state
