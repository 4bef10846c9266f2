"""containerlab: one `kind: linux` node per QKD node and one for the controller, all from the
node image, on the lab's management network with fixed IPv4 addresses (the names the node
certificates carry); each fibre link of the topology as a data link (eth1, eth2, ... in link
order). The classical channel, key sync and gNMI run over the management network: those are
the addresses in the configs and certificates; the data links show the fibre plant, as a QKD
link's quantum channel carries no IP.

Binds: a node's bundle directory read-only at /etc/sdqkd; its key store lives in the container
(/var/lib/sdqkd). gNMI listens on 57400 inside every node, the port containerlab users expect.
"""

from __future__ import annotations

from typing import Any

import yaml

from sdqkd.controller.topology import Topology
from sdqkd.harness.build import FIXED_PORTS, File, NetworkBuild

from .plan import CONTROLLER_API, CONTROLLER_NAME, ExportOptions


def lab_file(net: NetworkBuild, lab: str, mgmt: dict[str, str], opts: ExportOptions) -> dict[str, Any]:
    topo = net.topo
    nodes: dict[str, Any] = {
        CONTROLLER_NAME: {
            "kind": "linux", "image": opts.image, "mgmt-ipv4": mgmt[CONTROLLER_NAME],
            "binds": [f"{net.layout.controller_dir}:/etc/sdqkd:ro"],
            "cmd": f"controller --config /etc/sdqkd/network.json --state-dir /var/lib/sdqkd "
                   f"--api {CONTROLLER_API} --log-format {opts.log_format}",
            "labels": {"sdqkd.role": "controller"},
        }
    }
    for name, node in topo.nodes.items():
        nodes[name] = {
            "kind": "linux", "image": opts.image, "mgmt-ipv4": mgmt[name],
            "binds": [f"{net.layout.node_dir(name)}:/etc/sdqkd:ro"],
            "cmd": "node --config /etc/sdqkd/node.yaml",
            "labels": {"sdqkd.role": "node", "sdqkd.node-id": node.id, "sdqkd.gnmi-port": str(FIXED_PORTS["gnmi"])},
        }
    return {
        "name": lab,
        "mgmt": {"network": f"clab-{lab}", "ipv4-subnet": opts.mgmt_subnet},
        "topology": {"nodes": nodes, "links": data_links(topo)},
    }


def data_links(topo: Topology) -> list[dict[str, Any]]:
    """Each fibre link as a point-to-point data link; interfaces numbered per node from eth1."""
    next_if = {n: 1 for n in topo.nodes}
    out = []
    for link in topo.links:
        ends = []
        for n in (link.a, link.b):
            ends.append(f"{n}:eth{next_if[n]}")
            next_if[n] += 1
        out.append({"endpoints": ends})
    return out


def files(net: NetworkBuild, lab: str, mgmt: dict[str, str], opts: ExportOptions) -> dict[str, File]:
    doc = yaml.safe_dump(lab_file(net, lab, mgmt, opts), sort_keys=False)
    return {f"{lab}.clab.yml": File(doc.encode())}
