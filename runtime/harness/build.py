"""The build of a network from its topology: the one place that turns a `Topology` and an address
plan into everything the processes of the network need. `sdqkd net up` (network.py) writes the
build into its state dir; `sdqkd net export` (runtime/deploy) writes the same build as bundles,
containerlab files or Kubernetes manifests. Nothing else makes certificates, bootstrap secrets,
node configs or the controller's network description.

What a build holds, all in memory until `write_tree`:
- the PKI: one CA; per node a certificate with the node ID as CN (server and client use; peers
  authorise KeySync calls by that CN) whose SANs are the names others dial it by; one client
  certificate per SAE; one for the controller; a gNMI password the controller presents;
- one 32-byte bootstrap secret per fibre link, a file at both ends (it authenticates the link's
  first key block);
- per node its `node.yaml`, every path in it relative to the node's directory, so that a node
  directory can be moved to any host and run with `sdqkd node --config DIR/node.yaml`;
- the controller's network description (`network.json`), paths relative to its own directory;
- the topology's external peers (other vendors' KMSs, ETSI 020) everywhere they are needed: in
  network.json (the controller routes to them), in every node's `applications.sae_nodes` (their
  SAEs are SAEs of the network) and, with a `url`, in the gateway's config; a peer's `ca` file,
  named relative to the topology file, is copied into the gateway's and the controller's
  directories (`etsi020/NAME-ca.pem`) and named there.

Every file is marked public or secret: `write_tree` writes secrets 0600 and every directory it
makes 0700; exporters put secret files only into Kubernetes Secrets.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdqkd.controller.topology import Topology, TopologyError
from sdqkd.pki import Ca, create_ca, issue
from sdqkd.schemas import EngineSettings, ExternalPeerEntry

SERVICES = ("gnmi", "etsi014", "etsi004", "peer", "etsi020", "channel", "restconf")
# Ports of a node where each node has an address of its own (other hosts, namespaces, containers,
# pods): gNMI on the port gNMI devices conventionally use (containerlab, OpenConfig), the rest
# above 1024 so that a non-root process can bind them.
FIXED_PORTS: dict[str, int] = {"gnmi": 57400, "etsi014": 8443, "etsi004": 50051, "peer": 50052,
                               # services other branches add (engine channel, RESTCONF, ETSI 020)
                               "channel": 50053, "restconf": 8040, "etsi020": 7020}
GNMI_USER = "sdqkd"
CONTROLLER_CN = "sdqkd-controller"


@dataclass(frozen=True)
class File:
    """One file of a build: its bytes and whether it is secret (private key, password, bootstrap)."""

    data: bytes
    secret: bool = False


@dataclass(frozen=True)
class NodePlan:
    """Where one node listens, how the others reach it, and what its certificate names."""

    listen: Mapping[str, str]  # service -> host:port it binds
    advertise: Mapping[str, str]  # service -> host:port the controller and peers dial
    sans: tuple[str, ...]  # DNS names / IPs in its certificate
    data_dir: str = "data"  # relative to the node's directory, or absolute (containers)


@dataclass(frozen=True)
class TreeLayout:
    """Where each part of a build goes, relative to the root it is written to."""

    ca_dir: str
    controller_dir: str  # holds network.json; "" = the root
    controller_pki: str  # controller certificate, key and gNMI password
    saes_dir: str
    sae_subdirs: bool  # one directory per SAE (with its own ca.pem), movable on its own
    nodes_dir: str = "nodes"

    def node_dir(self, name: str) -> str:
        return posixpath.join(self.nodes_dir, name)

    def sae_dir(self, name: str) -> str:
        return posixpath.join(self.saes_dir, name) if self.sae_subdirs else self.saes_dir


# `sdqkd net up`: the state dir as it always was (one pki/ tree; network.json at the root)
HARNESS_LAYOUT = TreeLayout(ca_dir="pki", controller_dir="", controller_pki="pki/controller",
                            saes_dir="pki/saes", sae_subdirs=False)
# `sdqkd net export`: one self-contained directory per node, for the controller and per SAE
BUNDLE_LAYOUT = TreeLayout(ca_dir="ca", controller_dir="controller", controller_pki="controller",
                           saes_dir="saes", sae_subdirs=True)


@dataclass
class NetworkBuild:
    topo: Topology
    layout: TreeLayout
    files: dict[str, File] = field(default_factory=dict)  # relative path -> file
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> node.yaml content
    desc: dict[str, Any] = field(default_factory=dict)  # network.json, paths relative to its dir
    node_certs: dict[str, str] = field(default_factory=dict)  # node -> file name stem of its cert

    def node_files(self, name: str) -> dict[str, File]:
        """The files of one node, relative to its directory."""
        prefix = self.layout.node_dir(name) + "/"
        return {p[len(prefix):]: f for p, f in self.files.items() if p.startswith(prefix)}

    def controller_files(self) -> dict[str, File]:
        """The files the controller reads (network.json, CA, its identity, the gNMI password),
        relative to the directory of network.json."""
        lay = self.layout
        base = lay.controller_dir or "."
        wanted = [posixpath.join(lay.controller_dir, "network.json")]
        wanted += [p for p in self.files if p.startswith(lay.controller_pki + "/")]
        return {posixpath.relpath(p, base): self.files[p] for p in sorted(wanted)}


def interfaces_of(topo: Topology, name: str, ports: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """One QKD interface per fibre end of node `name` (numbered 1.. in link order at each node),
    attached to the peer's interface (qkdi_att_point device = peer name, port = its interface),
    with the peer and the fibre behind it; the peer's classical endpoint when its port is fixed."""
    number: dict[tuple[str, int], int] = {}
    count: dict[str, int] = {n: 0 for n in topo.nodes}
    for i, link in enumerate(topo.links):
        for end in (link.a, link.b):
            count[end] += 1
            number[(end, i)] = count[end]
    out = []
    for i, link in enumerate(topo.links):
        if name not in (link.a, link.b):
            continue
        peer = link.b if name == link.a else link.a
        peer_if = number[(peer, i)]
        endpoint, channel = ports[peer]["peer"], ports[peer]["channel"]
        itf: dict[str, Any] = {
            "id": number[(name, i)], "att_point": {"device": peer, "port": peer_if},
            "peer": {"node": topo.nodes[peer].id, "interface": peer_if},
            "fibre": {"km": link.km, "loss_db": link.loss_db, "profile": link.profile},
        }
        if not endpoint.endswith(":0"):
            itf["peer"]["endpoint"] = endpoint
        if not channel.endswith(":0"):
            itf["peer"]["channel"] = channel
        out.append(itf)
    return out


def topology_data(topo: Topology, peer_cas: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The topology in its file form, with IDs and losses explicit (parse() gives it back).
    `peer_cas`: external peer name -> where its CA file is now (the build's copy, relative to
    network.json): the topology file's own path is relative to the topology file."""
    out: dict[str, Any] = {
        "nodes": [{"name": n.name, "id": n.id, "location": n.location, **({"host": n.host} if n.host else {})}
                  for n in topo.nodes.values()],
        "links": [{"a": ln.a, "b": ln.b, "km": ln.km, "loss_db": ln.loss_db, "profile": ln.profile}
                  for ln in topo.links],
        "saes": [{"name": s.name, "node": s.node} for s in topo.saes.values()],
        "apps": [{"master": a.master, "slave": a.slave, "rate": a.rate, "priority": a.priority} for a in topo.apps],
    }
    peers = [ExternalPeerEntry.model_validate(raw) for raw in topo.extra.get("external_peers") or []]
    if peers:
        # the controller routes to them (runtime/controller/external.py); without them here it
        # knew none of their SAEs
        out["external_peers"] = [{**p.model_dump(exclude_none=True),
                                  **({"ca": (peer_cas or {})[p.name]} if p.ca is not None else {})} for p in peers]
    return out


def applications_config(topo: Topology) -> dict[str, Any]:
    """Every node's `applications` config: the network's SAEs with their node IDs (an external
    peer's SAEs with the ID that stands for its KMS, the controller's remote_qkdn_id of their
    applications), and the topology's `settings.first_request_wait_s` / `settings.app_idle_timeout_s`
    if given."""
    from sdqkd.controller.external import parse_external_peers

    raw_settings = topo.extra.get("settings")
    settings: dict[str, Any] = raw_settings if isinstance(raw_settings, dict) else {}
    sae_nodes = {s.name: topo.nodes[s.node].id for s in topo.saes.values()}
    for peer in parse_external_peers(topo, topo.extra.get("external_peers"), topo.source):
        # a node that knew only our own SAEs refused a first key request for theirs (400 unknown SAE)
        sae_nodes.update({s: peer.kms_id for s in peer.saes})
    out: dict[str, Any] = {"sae_nodes": sae_nodes}
    for key, name in (("first_request_wait_s", "first_request_wait_s"), ("app_idle_timeout_s", "idle_timeout_s")):
        if key in settings:
            out[name] = settings[key]
    return out


def engine_settings(topo: Topology) -> dict[str, Any]:
    """The engine settings every node takes from the topology's `settings`."""
    return topo.settings.model_dump(exclude_none=True, include=set(EngineSettings.model_fields))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _dedupe(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def build(topo: Topology, plans: Mapping[str, NodePlan], layout: TreeLayout, *,
          log: Mapping[str, str] | None = None, ca: Ca | None = None,
          engine: Mapping[str, Any] | None = None, gnmi_password: bool = True) -> NetworkBuild:
    """PKI, bootstrap secrets, node configs and the controller's network description for `topo`,
    each node listening and advertised as `plans` says. `engine` replaces the topology's engine
    settings; without `gnmi_password` gNMI asks for the client certificate only (in-process
    networks, whose tools connect with certificates alone)."""
    b = NetworkBuild(topo=topo, layout=layout)
    ca = ca or create_ca()
    ca_rel = posixpath.join(layout.ca_dir, "ca.pem")
    b.files[ca_rel] = File(ca.cert_pem)
    b.files[posixpath.join(layout.ca_dir, "ca.key")] = File(ca.key_pem, secret=True)
    # hex, not token_urlsafe: a secret that begins with "-" is taken for an option when passed as
    # a bare argument (`pygnmicli -p $(cat gnmi-password)` in the quickstart failed so, 1 run in 64)
    password = secrets.token_hex(18)
    pw_rel = posixpath.join(layout.controller_pki, "gnmi-password")
    b.files[pw_rel] = File(password.encode(), secret=True)
    # the bearer token of the controller's northbound API (runtime/controller/service.py)
    token_rel = posixpath.join(layout.controller_pki, "northbound-token")
    b.files[token_rel] = File(secrets.token_hex(32).encode(), secret=True)
    restconf = _restconf_settings(topo, plans)
    rc_token_rel = posixpath.join(layout.controller_pki, "restconf-token")
    if restconf is not None and "bearer_tokens" in restconf:  # what a manager without the PKI presents
        b.files[rc_token_rel] = File(restconf["bearer_tokens"][0].encode(), secret=True)
    ctl_cert, ctl_key = issue(ca, CONTROLLER_CN, server=False)
    ctl_ca = posixpath.join(layout.controller_pki, "ca.pem")  # the controller's directory stands alone
    b.files[ctl_ca] = File(ca.cert_pem)
    ctl_rel = posixpath.join(layout.controller_pki, CONTROLLER_CN)
    b.files[ctl_rel + ".pem"] = File(ctl_cert)
    b.files[ctl_rel + ".key"] = File(ctl_key, secret=True)
    peer_cas = _peer_cas(topo)
    # the controller's own copy of each external peer's CA: network.json names it (the topology
    # file's path was relative to that file, which the controller's host need not have)
    ctl_peer_cas = {name: posixpath.join(layout.controller_pki, _peer_ca_file(name)) for name in peer_cas}
    b.files.update({ctl_peer_cas[name]: File(pem) for name, pem in peer_cas.items()})
    sae_paths: dict[str, str] = {}
    for sae in topo.saes:
        cert, key = issue(ca, sae, server=False)
        d = layout.sae_dir(sae)
        if layout.sae_subdirs:
            b.files[posixpath.join(d, "ca.pem")] = File(ca.cert_pem)
        sae_paths[sae] = posixpath.join(d, _safe(sae))
        b.files[sae_paths[sae] + ".pem"] = File(cert)
        b.files[sae_paths[sae] + ".key"] = File(key, secret=True)
    boot = _bootstrap(topo)
    engine = dict(engine) if engine is not None else engine_settings(topo)
    for name, node in topo.nodes.items():
        plan = plans[name]
        nd = layout.node_dir(name)
        cert, key = issue(ca, node.id, server=True, sans=_dedupe(plan.sans))
        stem = _safe(node.id)
        b.node_certs[name] = stem
        b.files[posixpath.join(nd, "tls", "ca.pem")] = File(ca.cert_pem)
        b.files[posixpath.join(nd, "tls", stem + ".pem")] = File(cert)
        b.files[posixpath.join(nd, "tls", stem + ".key")] = File(key, secret=True)
        bootstrap: dict[str, str] = {}
        for peer_id, secret in boot[name].items():
            rel = posixpath.join("bootstrap", f"{peer_id}.key")
            b.files[posixpath.join(nd, rel)] = File(secret, secret=True)
            bootstrap[peer_id] = rel
        cfg: dict[str, Any] = {
            "id": node.id, "name": name, "location": node.location,
            **{svc: {"listen": plan.listen[svc]} for svc in SERVICES},
            "data_dir": plan.data_dir,
            "tls": {"ca": "tls/ca.pem", "cert": f"tls/{stem}.pem", "key": f"tls/{stem}.key"},
            # the password in a 0600 file of the node's own directory, never inline
            "users": {GNMI_USER: {"password_file": "gnmi-password"}} if gnmi_password else {},
            "bootstrap": bootstrap,
            "peers": topo.peer_names(name),  # so its logs name links A-B
            "engine": engine,
            "saes": [{"id": s} for s, sae in topo.saes.items() if sae.node == name],
            "applications": applications_config(topo),
            **({"lkms": {"max_key_count": topo.settings.max_key_count}} if topo.settings.max_key_count else {}),
            # one QKD interface per fibre end, naming the peer's endpoints where they are fixed
            "interfaces": interfaces_of(topo, name, {n: dict(p.advertise) for n, p in plans.items()}),
        }
        if restconf is not None:
            cfg["restconf"].update(restconf)
        externals = _external_peers(topo, name)
        if externals:
            cfg["etsi020"]["external_peers"] = externals
            b.files.update({posixpath.join(nd, entry["ca"]): File(peer_cas[entry["name"]]) for entry in externals
                            if "ca" in entry})
        if gnmi_password:
            b.files[posixpath.join(nd, "gnmi-password")] = File(password.encode(), secret=True)
        if log:
            cfg["log"] = dict(log)
        b.configs[name] = cfg
        # private like everything a node reads (it names its secret files)
        b.files[posixpath.join(nd, "node.yaml")] = File(yaml.safe_dump(cfg, sort_keys=False).encode(), secret=True)
    # the controller's own copy when it has a directory of its own (exports), else the PKI's
    b.desc = _description(b, plans, ctl_ca if layout.controller_dir else ca_rel, pw_rel, ctl_rel, sae_paths,
                          ctl_peer_cas)
    b.desc["controller"]["token_file"] = posixpath.relpath(token_rel, layout.controller_dir or ".")
    if rc_token_rel in b.files:
        b.desc["controller"]["restconf_token_file"] = posixpath.relpath(rc_token_rel, layout.controller_dir or ".")
    b.files[posixpath.join(layout.controller_dir, "network.json")] = File(json.dumps(b.desc, indent=2).encode())
    return b


def _restconf_settings(topo: Topology, plans: Mapping[str, NodePlan]) -> dict[str, Any] | None:
    """What the topology's `settings.restconf` adds to every node's `restconf` section: its
    transport and a fresh bearer token (none when `anonymous`: no credentials asked); None without
    it. Plain HTTP on an address other hosts reach carries credentials in the clear: refused
    unless the topology says so, as a node would refuse it at start."""
    from sdqkd.agent.serve import is_loopback

    rc = topo.settings.restconf
    if rc is None:
        return None
    if rc.tls == "none" and not rc.plain_http_outside_loopback:
        exposed = sorted(n for n, p in plans.items() if not is_loopback(p.listen["restconf"]))
        if exposed:
            raise TopologyError(
                f"{topo.source}: settings.restconf: tls none, but node(s) {', '.join(exposed)} serve RESTCONF on an "
                f"address other hosts reach ({plans[exposed[0]].listen['restconf']}), where plain HTTP carries "
                "credentials in the clear: add plain_http_outside_loopback: true to allow it")
    out: dict[str, Any] = {"tls": rc.tls}
    if rc.anonymous:
        out["anonymous"] = True
    else:
        out["bearer_tokens"] = [secrets.token_hex(32)]
    if rc.plain_http_outside_loopback:
        out["plain_http_outside_loopback"] = True
    return out


def _external_peers(topo: Topology, name: str) -> list[dict[str, Any]]:
    """The topology's external KMSs that node `name` dials (those with a `url`), as its config's
    `etsi020.external_peers` entries; a CA file is copied into the node's directory,
    `etsi020/NAME-ca.pem`, so the directory stays movable."""
    out: list[dict[str, Any]] = []
    for raw in topo.extra.get("external_peers") or []:
        peer = ExternalPeerEntry.model_validate(raw)  # checked by topology.parse already
        if peer.node != name or peer.url is None:
            continue
        entry: dict[str, Any] = {"name": peer.name, "url": peer.url, "identity": peer.identity,
                                 "saes": list(peer.saes), "mode": peer.mode}
        if peer.rate_bps > 0:
            entry["rate_bps"] = peer.rate_bps
        if peer.ca is not None:
            entry["ca"] = _peer_ca_file(peer.name)
        out.append(entry)
    return out


def _peer_ca_file(name: str) -> str:
    """Where a copy of external peer `name`'s CA goes, relative to the directory it is copied into."""
    return posixpath.join("etsi020", f"{_safe(name)}-ca.pem")


def _peer_cas(topo: Topology) -> dict[str, bytes]:
    """The CA file of each external peer that names one, read once (relative to `topo.files`)."""
    out: dict[str, bytes] = {}
    for raw in topo.extra.get("external_peers") or []:
        peer = ExternalPeerEntry.model_validate(raw)
        if peer.ca is not None:
            out[peer.name] = (topo.files / peer.ca).read_bytes()
    return out


def _bootstrap(topo: Topology) -> dict[str, dict[str, bytes]]:
    """One fresh secret per fibre link, under the peer's node ID at both ends."""
    out: dict[str, dict[str, bytes]] = {n: {} for n in topo.nodes}
    for link in topo.links:
        secret = secrets.token_bytes(32)
        out[link.a][topo.nodes[link.b].id] = secret
        out[link.b][topo.nodes[link.a].id] = secret
    return out


def _description(b: NetworkBuild, plans: Mapping[str, NodePlan], ca_rel: str, pw_rel: str, ctl_rel: str,
                 sae_paths: Mapping[str, str], peer_cas: Mapping[str, str]) -> dict[str, Any]:
    """network.json: what the controller reads (and the harness, tools and tests)."""
    lay, topo = b.layout, b.topo

    def rel(p: str) -> str:
        return posixpath.relpath(p, lay.controller_dir or ".")

    nodes: dict[str, Any] = {}
    for name, node in topo.nodes.items():
        nd = lay.node_dir(name)
        data = plans[name].data_dir
        ready = posixpath.join(data if posixpath.isabs(data) else posixpath.join(nd, data), "ready.json")
        nodes[name] = {"id": node.id, "config": rel(posixpath.join(nd, "node.yaml")),
                       "ready": ready if posixpath.isabs(ready) else rel(ready),
                       **{svc: plans[name].advertise[svc] for svc in SERVICES},
                       "restconf_tls": b.configs[name].get("restconf", {}).get("tls", "mutual")}
    return {
        "topology": topo.source, "topology_data": topology_data(topo, {n: rel(p) for n, p in peer_cas.items()}),
        "ca": rel(ca_rel), "nodes": nodes,
        "saes": {s: {"node": topo.saes[s].node, "cert": rel(p + ".pem"), "key": rel(p + ".key")}
                 for s, p in sae_paths.items()},
        "controller": {"cert": rel(ctl_rel + ".pem"), "key": rel(ctl_rel + ".key"), "username": GNMI_USER,
                       "password_file": rel(pw_rel)},
    }


def absolute_description(desc: dict[str, Any], base: Path) -> dict[str, Any]:
    """`desc` with every file path made absolute against `base` (network.json's directory)."""

    def ab(p: str) -> str:
        return str(base / p)

    out = json.loads(json.dumps(desc))
    out["ca"] = ab(out["ca"])
    for nd in out["nodes"].values():
        nd["config"], nd["ready"] = ab(nd["config"]), ab(nd["ready"])
    for s in out["saes"].values():
        s["cert"], s["key"] = ab(s["cert"]), ab(s["key"])
    for peer in out["topology_data"].get("external_peers", []):
        if "ca" in peer:
            peer["ca"] = ab(peer["ca"])
    c = out["controller"]
    for k in ("cert", "key", "password_file", "token_file", "restconf_token_file"):
        if k in c:
            c[k] = ab(c[k])
    return out


def write_tree(root: Path, files: Mapping[str, File]) -> None:
    """Write `files` under `root`: directories made 0700, secret files 0600, public ones 0644.
    A secret file is created with its final mode (never briefly world-readable)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for rel, f in files.items():
        path = root / rel
        _mkdirs(root, path.parent)
        mode = 0o600 if f.secret else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)  # an existing file keeps its old mode otherwise; umask may narrow it
        with os.fdopen(fd, "wb") as fh:
            fh.write(f.data)


def _mkdirs(root: Path, d: Path) -> None:
    missing = []
    while d != root and not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        m.mkdir(mode=0o700)
        os.chmod(m, stat.S_IRWXU)  # mkdir's mode is masked by the umask; make it exact
