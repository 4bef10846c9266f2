"""`sdqkd net export TOPOLOGY --format bundle|containerlab|kubernetes --out DIR`: the network of a
topology, for running across hosts, from the same build `sdqkd net up` uses
(runtime/harness/build.py: one PKI, bootstrap secrets, node configs, controller description).

Every format writes the bundle tree, and the kubernetes format adds manifests that carry the same files:
    ca/ca.pem, ca/ca.key          the network's CA (keep ca.key off the nodes; nothing reads it)
    nodes/NAME/                   node.yaml, tls/, bootstrap/: `sdqkd node --config nodes/NAME/node.yaml`
    controller/                   network.json, its certificate, key and the gNMI password:
                                  `sdqkd controller --config controller/network.json --state-dir DIR`
    saes/SAE/                     an application's CA, certificate and key
    endpoints.json                per node its addresses and its SAEs' files (paths relative to DIR)
    RUN.md                        the commands for this export
plus, for containerlab, LAB.clab.yml and for kubernetes, kubernetes/*.yaml (then the nodes/,
controller/ and saes/ directories are left out: their files are in the manifests' Secrets and
ConfigMaps).

All or nothing: the input is checked whole first (names, addresses, the output directory), the
files are written into a fresh directory beside DIR, which is renamed to DIR only when
complete; a failure leaves no DIR and nothing behind. Directories are 0700, secret files 0600.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from sdqkd.controller.topology import Topology, load
from sdqkd.harness.build import BUNDLE_LAYOUT, FIXED_PORTS, SERVICES, File, NetworkBuild, build

from . import containerlab, kubernetes
from .plan import (
    CONTROLLER_API,
    CONTROLLER_NAME,
    DNS_LABEL,
    IMAGE_UID,
    ExportError,
    ExportOptions,
    bundle_plans,
    check_names,
    containerlab_plans,
    kubernetes_plans,
)

FORMATS = ("bundle", "containerlab", "kubernetes")


def export(topology: str | Path, fmt: str, out: str | Path, opts: ExportOptions) -> str:
    """Write the export; returns a one-paragraph summary. ExportError/TopologyError name every
    problem of the input, and nothing is written then."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    topo = load(topology)
    out = Path(out)
    problems: list[str] = []
    _check_out(out, problems)
    check_names(topo, fmt, problems)
    name = str(topo.extra.get("name") or "sdqkd")
    log = {"format": opts.log_format}
    if fmt == "bundle":
        plans = bundle_plans(topo, opts, problems)
    elif fmt == "containerlab":
        if not DNS_LABEL.match(name):
            problems.append(f"name {name!r}: the lab name must be a DNS label (it prefixes container names)")
        plans, mgmt = containerlab_plans(topo, name, opts, problems)
    else:
        ns = opts.namespace or (name if DNS_LABEL.match(name) else "sdqkd")
        plans = kubernetes_plans(topo, ns, opts, problems)
    if problems:
        raise ExportError(f"{topo.source}: " + f"\n{topo.source}: ".join(problems))
    net = build(topo, plans, BUNDLE_LAYOUT, log=log)
    files = dict(net.files)
    files["endpoints.json"] = File(json.dumps(endpoints(net), indent=2).encode())
    if fmt == "containerlab":
        files.update(containerlab.files(net, name, mgmt, opts))
    elif fmt == "kubernetes":
        files = {p: f for p, f in files.items() if p.startswith(("ca/", "saes/")) or p == "endpoints.json"}
        files.update(kubernetes.files(net, ns, opts))
    files["RUN.md"] = File(run_notes(net, fmt, name, opts, ns if fmt == "kubernetes" else "").encode())
    _write_atomically(out, files, chown=fmt == "containerlab")
    return (f"wrote {len(files)} files for {len(topo.nodes)} nodes, {len(topo.links)} links and "
            f"{len(topo.saes)} SAEs to {out} ({fmt}); see {out}/RUN.md")


def _check_out(out: Path, problems: list[str]) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        problems.append(f"--out {out}: exists and is not a directory")
    elif out.is_dir() and any(out.iterdir()):
        problems.append(f"--out {out}: exists and is not empty (choose a new directory)")


def _write_atomically(out: Path, files: dict[str, File], chown: bool) -> None:
    from sdqkd.harness.build import write_tree

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))  # same file system: rename is atomic
    try:
        write_tree(tmp, files)
        if chown and os.geteuid() == 0:
            # the containers run as IMAGE_UID and read their bind-mounted directories
            for sub in ("nodes", CONTROLLER_NAME):
                for dirpath, _dirs, names in os.walk(tmp / sub):
                    os.chown(dirpath, IMAGE_UID, IMAGE_UID)
                    for n in names:
                        os.chown(os.path.join(dirpath, n), IMAGE_UID, IMAGE_UID)
        if out.is_dir():
            out.rmdir()  # empty (checked): the rename takes its place
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def endpoints(net: NetworkBuild) -> dict[str, object]:
    """endpoints.json of the export: as `sdqkd net up` writes it, paths relative to the export."""
    out: dict[str, object] = {}
    for name, node in net.topo.nodes.items():
        nd = net.desc["nodes"][name]
        saes = {}
        for s, sae in net.topo.saes.items():
            if sae.node == name:
                d = net.layout.sae_dir(s)
                saes[s] = {"cert": posixpath.join(d, f"{s}.pem"), "key": posixpath.join(d, f"{s}.key"),
                           "ca": posixpath.join(d, "ca.pem")}
        out[name] = {"id": node.id, **{svc: nd[svc] for svc in SERVICES if svc not in ("peer", "channel")},
                     "restconf_tls": nd["restconf_tls"], "ca": "ca/ca.pem", "saes": saes}
    return out


def run_notes(net: NetworkBuild, fmt: str, lab: str, opts: ExportOptions, ns: str) -> str:
    """RUN.md: the exact commands for this export (docs/deploy.md explains them)."""
    topo: Topology = net.topo
    lines = [f"# Running this export ({fmt})", "", "See docs/deploy.md of sdqkd for the whole story.", ""]
    first = next(iter(topo.nodes))
    if fmt == "bundle":
        lines += ["Copy each directory to its host (keep `ca/ca.key` off the nodes), then on each host:", ""]
        for name in topo.nodes:
            lines.append(f"    # on {net.desc['nodes'][name]['gnmi'].rpartition(':')[0]}:  sdqkd node --config nodes/{name}/node.yaml")
        lines += ["", "and on the controller's host (it must reach every node's gNMI and peer port):", "",
                  "    sdqkd controller --config controller/network.json --state-dir controller-state "
                  f"--api {CONTROLLER_API}",
                  "", "Ports per node: " + ", ".join(f"{s} {p}" for s, p in FIXED_PORTS.items()) + "."]
    elif fmt == "containerlab":
        lines += ["    sudo chown -R 10001:10001 nodes controller   # done already when exported as root",
                  f"    sudo containerlab deploy -t {lab}.clab.yml", "",
                  f"gNMI of {first}: {net.desc['nodes'][first]['gnmi']}"]
    else:
        lines += ["    kubectl apply -f kubernetes/", f"    kubectl -n {ns} rollout status statefulset/{first}", "",
                  f"    kubectl -n {ns} port-forward svc/{first} {FIXED_PORTS['gnmi']} {FIXED_PORTS['etsi014']}",
                  "", "SAE pods: label them `sdqkd.io/sae-of: NODE` and mount Secret `sae-NAME`."]
    return "\n".join(lines) + "\n"


__all__ = ["FORMATS", "ExportError", "ExportOptions", "export"]
