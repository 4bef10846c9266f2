"""Address plans for networks that run beyond one machine, and the checks of their input.

Each node gets an address of its own (a host, a container, a pod), so every node uses the same
fixed ports (`build.FIXED_PORTS`) and binds all interfaces (with TLS; a node without TLS binds
loopback only). What differs per target is how the others name it:

- bundle: the host name or IP given per node (`--host NAME=ADDR`, else the topology's `host`);
- containerlab: its management IPv4 address (given, or the next free one of the subnet);
- kubernetes: the DNS name of its Service, `NAME.NAMESPACE.svc.CLUSTER_DOMAIN`.

Names become directory names, container names and Kubernetes object names, so they are checked
here first: every problem is listed, naming the node and the field, before anything is written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sdqkd.controller.topology import Topology
from sdqkd.harness.build import FIXED_PORTS, SERVICES, NodePlan
from sdqkd.harness.network import HarnessError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$")
SAFE_FILE = re.compile(r"^[A-Za-z0-9][-._A-Za-z0-9]*$")  # also a valid key of a Kubernetes Secret
# a StatefulSet's pods carry the label controller-revision-hash=NAME-<10 chars>, at most 63
MAX_K8S_NODE_NAME = 52
CONTAINER_DATA = "/var/lib/sdqkd"  # the node image's writable data directory
IMAGE_UID = 10001  # the node image's user (Containerfile); not root
CONTROLLER_NAME = "controller"
CONTROLLER_API = "127.0.0.1:8080"  # the controller's northbound API in exports: loopback, a known port


class ExportError(HarnessError):
    """Input that cannot be exported; the message names every problem."""


@dataclass(frozen=True)
class ExportOptions:
    hosts: Mapping[str, str]  # node -> host name or IP (command line; wins over the topology)
    listen_host: str = "0.0.0.0"
    namespace: str = ""
    cluster_domain: str = "cluster.local"
    mgmt_subnet: str = "172.20.20.0/24"
    image: str = "sdqkd:0.1.0"
    log_format: str = "json"


def join(host: str, port: int) -> str:
    """host:port, with an IPv6 address in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def _plan(host: str, listen_host: str, sans: tuple[str, ...], data_dir: str) -> NodePlan:
    return NodePlan(listen={s: join(listen_host, FIXED_PORTS[s]) for s in SERVICES},
                    advertise={s: join(host, FIXED_PORTS[s]) for s in SERVICES},
                    sans=(*sans, "localhost", "127.0.0.1"), data_dir=data_dir)


def check_names(topo: Topology, fmt: str, problems: list[str]) -> None:
    """Node and SAE names usable as directory names everywhere, and as DNS labels where they
    name containers or Kubernetes objects."""
    for i, name in enumerate(topo.nodes):
        where = f"nodes[{i}] ({name}): name"
        if fmt in ("containerlab", "kubernetes"):
            if not DNS_LABEL.match(name):
                problems.append(f"{where} is not a DNS label (lowercase letters, digits and '-', "
                                f"starting and ending with a letter or digit, at most 63): needed for {fmt}")
            elif fmt == "kubernetes" and len(name) > MAX_K8S_NODE_NAME:
                problems.append(f"{where} is longer than {MAX_K8S_NODE_NAME} characters (StatefulSet name)")
            elif name == CONTROLLER_NAME:
                problems.append(f"{where} {CONTROLLER_NAME!r} is taken by the controller")
        elif not SAFE_FILE.match(name):
            problems.append(f"{where} must be letters, digits, '-', '_' or '.' (it names a directory)")
    for i, sae in enumerate(topo.saes):
        if fmt == "kubernetes" and not DNS_LABEL.match(sae):
            problems.append(f"saes[{i}] ({sae}): name is not a DNS label (it names the Secret sae-{sae})")
        elif not SAFE_FILE.match(sae):
            problems.append(f"saes[{i}] ({sae}): name must be letters, digits, '-', '_' or '.' "
                            "(it names certificate files and Secret keys)")


LISTEN_CHOICES = ("0.0.0.0", "::", "host")  # bundle: what every node binds


def _valid_host(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return bool(HOSTNAME.match(h))


def _given_hosts(topo: Topology, opts: ExportOptions, problems: list[str], *, from_topology: bool = True
                 ) -> dict[str, str]:
    """Per node the address given on the command line (or in the topology), checked and unique."""
    for name in opts.hosts:
        if name not in topo.nodes:
            problems.append(f"--host {name}=...: no node {name!r} in the topology")
    hosts: dict[str, str] = {}
    seen: dict[str, str] = {}
    for i, (name, node) in enumerate(topo.nodes.items()):
        h = opts.hosts.get(name) or (node.host if from_topology else "")
        if not h:
            continue
        where = f"--host {name}" if name in opts.hosts else f"nodes[{i}] ({name}).host"
        if not _valid_host(h):
            problems.append(f"{where}: {h!r} is neither an IP address nor a host name")
            continue
        key = h.lower()
        if key in seen:
            problems.append(f"{where}: address {h} is already the address of node {seen[key]}")
            continue
        seen[key] = name
        hosts[name] = h
    return hosts


def bundle_plans(topo: Topology, opts: ExportOptions, problems: list[str]) -> dict[str, NodePlan]:
    hosts = _given_hosts(topo, opts, problems)
    for i, (name, node) in enumerate(topo.nodes.items()):
        if not (opts.hosts.get(name) or node.host):  # (a bad one given is reported as such)
            problems.append(f"nodes[{i}] ({name}): no host address: give `host:` in the topology "
                            f"or --host {name}=ADDR")
    # one address for every node would be another host's for all but one of them
    if opts.listen_host not in LISTEN_CHOICES:
        problems.append(f"--listen {opts.listen_host!r}: expected one of {', '.join(LISTEN_CHOICES)} "
                        "(host: each node its own address)")
    plans = {}
    for name, h in hosts.items():
        listen = h if opts.listen_host == "host" else opts.listen_host
        plans[name] = _plan(h, listen, (h,), "data")
    return plans


def containerlab_plans(topo: Topology, lab: str, opts: ExportOptions, problems: list[str]
                       ) -> tuple[dict[str, NodePlan], dict[str, str]]:
    """Plans and management IPv4 addresses (nodes and the controller)."""
    try:
        net = ipaddress.ip_network(opts.mgmt_subnet)
    except ValueError as e:
        problems.append(f"--mgmt-subnet: {e}")
        return {}, {}
    if net.version != 4 or net.num_addresses < 16:
        problems.append(f"--mgmt-subnet {net}: expected an IPv4 subnet of /28 or larger")
        return {}, {}
    # the topology's `host` names machines (bundles); management addresses come from --host only
    hosts = _given_hosts(topo, opts, problems, from_topology=False)
    gateway = next(net.hosts())  # containerlab's bridge takes the first address
    for name, h in hosts.items():
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            problems.append(f"host of {name}: {h!r} is not an IPv4 address (containerlab management address)")
            continue
        if ip not in net or ip in (net.network_address, net.broadcast_address, gateway):
            problems.append(f"host of {name}: {h} is not a usable address of the management subnet {net}")
    taken = set(hosts.values())
    free = (str(a) for a in net.hosts() if a != gateway and int(a) - int(net.network_address) >= 10
            and str(a) not in taken)
    mgmt: dict[str, str] = {}
    for name in [CONTROLLER_NAME, *topo.nodes]:
        if name in hosts:
            mgmt[name] = hosts[name]
            continue
        a = next(free, None)
        if a is None:
            problems.append(f"--mgmt-subnet {net}: no free address left for {name}")
            return {}, {}
        mgmt[name] = a
    plans = {n: _plan(mgmt[n], "0.0.0.0", (mgmt[n], n, f"clab-{lab}-{n}"), CONTAINER_DATA) for n in topo.nodes}
    return plans, mgmt


def kubernetes_plans(topo: Topology, namespace: str, opts: ExportOptions, problems: list[str]
                     ) -> dict[str, NodePlan]:
    if opts.hosts:
        problems.append("--host: not used with --format kubernetes (nodes are reached by their Service names)")
    if not DNS_LABEL.match(namespace):
        problems.append(f"namespace {namespace!r} is not a DNS label")
    if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", opts.cluster_domain):
        problems.append(f"--cluster-domain {opts.cluster_domain!r} is not a DNS name")
    plans = {}
    for n in topo.nodes:
        fqdn = f"{n}.{namespace}.svc.{opts.cluster_domain}"
        plans[n] = _plan(fqdn, "0.0.0.0", (n, f"{n}.{namespace}", f"{n}.{namespace}.svc", fqdn), CONTAINER_DATA)
    return plans
