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
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import socket
import sys
import time

import grpc

from sdqkd.apps import hybrid as hy
from sdqkd.apps.keyclient import SaeIdentity
from sdqkd.controller.controller import Controller, NodeEndpoint
from sdqkd.controller.topology import parse
from sdqkd.generated.client import ModelClient
from sdqkd.harness.sync import start_inprocess
from sdqkd.pki import TlsFiles
from sdqkd.tls import grpc_channel_credentials, tls_files

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


async def manage(net, t0: float) -> int:
    ctl = SaeIdentity.from_endpoints(net.endpoints, "sae-ctl")
    mgmt = SaeIdentity.from_endpoints(net.endpoints, "sae-mgmt-b")
    node_b = net.endpoints["B"]
    pki = net.state / "pki"
    creds = grpc_channel_credentials(tls_files(pki / "ca.pem", pki / "controller" / "sdqkd-controller.pem",
                                               pki / "controller" / "sdqkd-controller.key"))
    skeys, ckeys = hy.Etsi014KeySource(mgmt), hy.Etsi014KeySource(ctl, retry_s=60)
    async with hy.HybridTunnelServer(mgmt, node_b["gnmi"], {"sae-ctl"}, keys=skeys) as srv:
        print(f"[{time.monotonic() - t0:4.1f} s] tunnel server (sae-mgmt-b) on {srv.address} -> "
              f"node B gNMI {node_b['gnmi']}")
        async with hy.HybridTunnelClient(ctl, srv.address, "sae-mgmt-b", keys=ckeys) as cli:
            print(f"[{time.monotonic() - t0:4.1f} s] tunnel client (sae-ctl) on {cli.address}")
            async with grpc.aio.secure_channel(cli.address, creds) as ch:
                gnmi = ModelClient(ch)
                caps = await gnmi.capabilities()
                print(f"  Capabilities: gNMI {caps.gNMI_version}, "
                      f"{', '.join(m.name for m in caps.supported_models[:3])}, ...")
                print(f"  Get qkdn_id: {await gnmi.get_value('/qkd_node/qkdn_id')}")
                links = await gnmi.list_qkd_link()
                print(f"  Get qkd_links: {len(links)} link(s) on node B")
                before = await gnmi.get_value(LOC)
                await gnmi.set(update=[(LOC, "site B (managed over a hybrid tunnel)")])
                print(f"  Set + Get qkdn_location_id: {await gnmi.get_value(LOC)!r}")
                await gnmi.set(update=[(LOC, before or "")])
            # the SDN controller itself (a monitoring instance: no provisioning) reaches node B only
            # through the tunnel: its ON_CHANGE STREAM subscription runs over a hybrid session
            eps = {n: NodeEndpoint(n, e["id"], cli.address if n == "B" else e["gnmi"], "")
                   for n, e in net.endpoints.items()}
            ctl_tls = TlsFiles(pki / "ca.pem", pki / "controller" / "sdqkd-controller.pem",
                               pki / "controller" / "sdqkd-controller.key")
            monitor = Controller(parse(TOPOLOGY), eps, tls=ctl_tls)
            await monitor.start(provision=False)
            for _ in range(100):
                if monitor.nodes["B"].up and any("skr" in v for v in monitor.nodes["B"].links.values()):
                    break
                await asyncio.sleep(0.1)
            skr = [v.get("skr") for v in monitor.nodes["B"].links.values() if "skr" in v]
            print(f"  Controller watch of node B via the tunnel: up={monitor.nodes['B'].up}, "
                  f"link skr {skr[0] if skr else '?'} bit/s")
            await monitor.stop()
            for s in srv.status()["sessions"]:
                print(f"  session with {s['peer']}: mode {s['mode'].upper()}, QKD key_ID {s['key_id']}, "
                      f"{s['bytes_received']} B in / {s['bytes_sent']} B out")

        print("\nthe controller's KMS becomes unreachable:")
        dead = dataclasses.replace(ctl, etsi014=_closed_port())
        for allow in (True, False):
            async with hy.HybridTunnelClient(dead, srv.address, "sae-mgmt-b", allow_fallback=allow) as cli:
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
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    print("starting an in-process QKD network A - B - C ...", flush=True)
    net = start_inprocess(TOPOLOGY, None, timeout=120.0)
    try:
        route = net.request_keys("sae-ctl", "sae-mgmt-b", rate=1000)
        print(f"[{time.monotonic() - t0:4.1f} s] controller: sae-ctl <-> sae-mgmt-b over {' - '.join(route['path'])}")
        return asyncio.run(manage(net, t0))
    finally:
        net.stop()


if __name__ == "__main__":
    sys.exit(main())
