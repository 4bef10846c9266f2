"""Kubernetes: plain manifests for `kubectl apply -f DIR/kubernetes/` (no Helm, no operator).

Per QKD node NAME, in one Namespace:
- Service NAME (ClusterIP): its stable DNS name NAME.NS.svc.DOMAIN is the address in every
  config and in the node's certificate;
- StatefulSet NAME (one replica; the key store on a PersistentVolumeClaim, so a rescheduled
  pod keeps its keys);
- Secret NAME-secret: node.yaml, the gNMI password file, the node's private key and its
  bootstrap secrets; ConfigMap NAME-public: the CA certificate and the node's certificate only.
  Both are projected into one directory (files 0440, readable through the pod's fsGroup, never
  world-readable), which an init container copies into /etc/sdqkd, a memory-backed directory
  of the pod's user with files 0600 (readable by nobody else);
- NetworkPolicy NAME: ingress only from the pods that need each port (CLIENTS): gNMI and
  RESTCONF from the controller, ETSI 014 / 004 from pods labelled `sdqkd.io/sae-of: NAME` (the
  node's applications), the peer port (key sync, from any node on a relay path) and the ETSI 020
  port (key relay between KMSs) from this network's nodes, the engine channel from its fibre
  neighbours.
The controller: Deployment `controller`, its Secret and ConfigMap, no ingress at all (its API
stays on the pod's loopback: `kubectl port-forward` reaches it). One default-deny policy
covers anything else in the namespace.

Pods run as a non-root user with a read-only root filesystem, no privilege escalation and no
capabilities; /tmp and the data directory are the only writable places. Liveness and readiness
run `sdqkd health` in the pod: a gRPC health check of the gNMI port over the node's own mutual
TLS (kubelet's built-in gRPC probe cannot speak TLS, and the node serves nothing without it
beyond loopback). Requests come from measurements (`runtime/deploy/sizing.py`).
"""

from __future__ import annotations

import base64
import posixpath
from typing import Any

import yaml

from sdqkd.harness.build import FIXED_PORTS, SERVICES, File, NetworkBuild
from sdqkd.node.links import DEFAULT_BLOCK_BITS

from .plan import CONTAINER_DATA, CONTROLLER_API, CONTROLLER_NAME, IMAGE_UID, ExportOptions
from .sizing import controller_resources, node_resources

APP = "sdqkd"
CONFIG_DIR = "/etc/sdqkd"
SOURCE_DIR = "/etc/sdqkd-source"
SAE_LABEL = "sdqkd.io/sae-of"


def _labels(component: str, node: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}
    if node:
        out["sdqkd.io/node"] = node
    return out


def _meta(name: str, ns: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "labels": labels}


def _secret(name: str, ns: str, labels: dict[str, str], files: dict[str, File]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, ns, labels), "type": "Opaque",
            "data": {_key(p): base64.b64encode(f.data).decode() for p, f in sorted(files.items())}}


def _configmap(name: str, ns: str, labels: dict[str, str], files: dict[str, File]) -> dict[str, Any]:
    assert not any(f.secret for f in files.values()), "a ConfigMap takes public files only"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, ns, labels),
            "data": {_key(p): f.data.decode() for p, f in sorted(files.items())}}


def _key(path: str) -> str:
    """A Secret/ConfigMap key for a file path (keys cannot hold '/'); the projection puts it back."""
    return path.replace("/", "__")


def _projection(secret: str, cm: str, files: dict[str, File]) -> dict[str, Any]:
    """One directory from a Secret (secret files) and a ConfigMap (public ones), paths kept."""
    sec = [{"key": _key(p), "path": p} for p, f in sorted(files.items()) if f.secret]
    pub = [{"key": _key(p), "path": p} for p, f in sorted(files.items()) if not f.secret]
    return {"name": "source", "projected": {"defaultMode": 0o440, "sources": [
        {"secret": {"name": secret, "items": sec}}, {"configMap": {"name": cm, "items": pub}}]}}


def _private_copy(image: str, files: dict[str, File]) -> dict[str, Any]:
    """An init container that copies the projected files into a memory-backed directory owned by
    the pod's user, mode 0600 (0700 directories). Kubernetes shows Secret files to a non-root
    user only group-readable (root:fsGroup 0440), and a node's private files must be readable by
    nobody but its user; the copies never touch a disk."""
    tops = sorted({p.split("/", 1)[0] for p in files})
    script = (f"cp -RL {' '.join(f'{SOURCE_DIR}/{t}' for t in tops)} {CONFIG_DIR}/ && "
              f"find {CONFIG_DIR} -mindepth 1 -exec chmod go= {{}} +")
    _, sec = _security()
    return {"name": "private-copy", "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script], "securityContext": sec,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
            "volumeMounts": [{"name": "source", "mountPath": SOURCE_DIR, "readOnly": True},
                             {"name": "config", "mountPath": CONFIG_DIR}]}


def _volumes(secret: str, cm: str, files: dict[str, File]) -> list[dict[str, Any]]:
    return [_projection(secret, cm, files),
            {"name": "config", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]


def _security() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID, "fsGroup": IMAGE_UID,
           "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                 "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _container(name: str, image: str, args: list[str], ports: list[dict[str, Any]],
               resources: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    _, sec = _security()
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "args": args, "ports": ports,
            "resources": resources, "securityContext": sec,
            "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                             {"name": "data", "mountPath": CONTAINER_DATA},
                             {"name": "tmp", "mountPath": "/tmp"}], **extra}


def _probe(initial: int, period: int) -> dict[str, Any]:
    return {"exec": {"command": ["sdqkd", "health", "--config", f"{CONFIG_DIR}/node.yaml"]},
            "initialDelaySeconds": initial, "periodSeconds": period, "timeoutSeconds": 10, "failureThreshold": 3}


def node_objects(net: NetworkBuild, name: str, ns: str, opts: ExportOptions) -> list[dict[str, Any]]:
    labels = _labels("node", name)
    files = net.node_files(name)
    secret_files = {p: f for p, f in files.items() if f.secret}
    public_files = {p: f for p, f in files.items() if not f.secret}
    ports = [{"name": svc, "containerPort": FIXED_PORTS[svc], "protocol": "TCP"} for svc in SERVICES]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns, labels),
           "spec": {"type": "ClusterIP", "selector": labels,
                    "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"],
                               "protocol": "TCP"} for p in ports]}}
    links = sum(1 for ln in net.topo.links if name in ln.ends)
    block = float(net.configs[name]["engine"].get("block_sifted_bits", DEFAULT_BLOCK_BITS))
    pod_sec, _ = _security()
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name, ns, labels),
           "spec": {"serviceName": name, "replicas": 1, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {
                        "securityContext": pod_sec, "automountServiceAccountToken": False,
                        "enableServiceLinks": False, "terminationGracePeriodSeconds": 30,
                        "initContainers": [_private_copy(opts.image, files)],
                        "containers": [_container("node", opts.image,
                                                  ["node", "--config", f"{CONFIG_DIR}/node.yaml"], ports,
                                                  node_resources(links, block),
                                                  {"readinessProbe": _probe(5, 15),
                                                   "livenessProbe": _probe(30, 60)})],
                        "volumes": _volumes(f"{name}-secret", f"{name}-public", files)}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": labels}, "spec": {
                        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}
    return [_secret(f"{name}-secret", ns, labels, secret_files),
            _configmap(f"{name}-public", ns, labels, public_files), svc, sts, node_policy(net, name, ns)]


# pods given this label, in any namespace, reach every node's RESTCONF when the topology has
# settings.restconf (docs/restconf.md: ETSI TeraFlowSDN's device service)
RESTCONF_CLIENT_LABEL = "sdqkd.io/restconf-client"
# who connects to each service of a node: the controller (management), the node's own SAEs,
# every node of the network (key sync and relay may join any two), or its fibre neighbours
CLIENTS: dict[str, str] = {"gnmi": "controller", "restconf": "controller", "etsi014": "saes", "etsi004": "saes",
                           "peer": "nodes", "etsi020": "nodes", "channel": "neighbours"}


def node_policy(net: NetworkBuild, name: str, ns: str) -> dict[str, Any]:
    """Who may reach which port of node `name`."""
    neighbours = sorted({n for ln in net.topo.links if name in ln.ends for n in ln.ends} - {name})
    selectors = {
        "controller": {"podSelector": {"matchLabels": _labels("controller")}},
        "saes": {"podSelector": {"matchLabels": {SAE_LABEL: name}}},
        "nodes": {"podSelector": {"matchLabels": _labels("node")}},
        "neighbours": {"podSelector": {"matchLabels": _labels("node"), "matchExpressions": [
            {"key": "sdqkd.io/node", "operator": "In", "values": neighbours}]}},
    }
    # a manager holding the network's RESTCONF token (TeraFlowSDN), from any namespace
    manager = {"namespaceSelector": {}, "podSelector": {"matchLabels": {RESTCONF_CLIENT_LABEL: "true"}}}
    extra = {"restconf": [manager]} if net.topo.settings.restconf is not None else {}
    rules = [{"from": [selectors[CLIENTS[svc]], *extra.get(svc, [])],
              "ports": [{"protocol": "TCP", "port": FIXED_PORTS[svc]}]}
             for svc in SERVICES if CLIENTS[svc] != "neighbours" or neighbours]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(name, ns, _labels("node", name)),
            "spec": {"podSelector": {"matchLabels": _labels("node", name)}, "policyTypes": ["Ingress"],
                     "ingress": rules}}


def controller_objects(net: NetworkBuild, ns: str, opts: ExportOptions) -> list[dict[str, Any]]:
    labels = _labels("controller")
    files = net.controller_files()
    pod_sec, _ = _security()
    args = ["controller", "--config", f"{CONFIG_DIR}/network.json", "--state-dir", CONTAINER_DATA,
            "--api", CONTROLLER_API, "--log-format", opts.log_format]
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(CONTROLLER_NAME, ns, labels),
           "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {
                        "securityContext": pod_sec, "automountServiceAccountToken": False,
                        "initContainers": [_private_copy(opts.image, files)],
                        "containers": [_container(CONTROLLER_NAME, opts.image, args, [], controller_resources(
                            len(net.topo.nodes)), {})],
                        "volumes": [*_volumes(f"{CONTROLLER_NAME}-secret", f"{CONTROLLER_NAME}-public", files),
                                    {"name": "data", "emptyDir": {}}]}}}}
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": _meta(CONTROLLER_NAME, ns, labels),
              "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"], "ingress": []}}
    return [_secret(f"{CONTROLLER_NAME}-secret", ns, labels, {p: f for p, f in files.items() if f.secret}),
            _configmap(f"{CONTROLLER_NAME}-public", ns, labels, {p: f for p, f in files.items() if not f.secret}),
            dep, policy]


def sae_objects(net: NetworkBuild, ns: str) -> list[dict[str, Any]]:
    """One Secret per SAE (its CA, certificate and key) for the application pods to mount."""
    out = []
    for sae, s in net.topo.saes.items():
        d = net.layout.sae_dir(sae) + "/"
        files = {posixpath.relpath(p, d): f for p, f in net.files.items() if p.startswith(d)}
        labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "sae", "sdqkd.io/node": s.node}
        out.append(_secret(f"sae-{sae}", ns, labels, files))
    return out


def manifests(net: NetworkBuild, ns: str, opts: ExportOptions) -> dict[str, list[dict[str, Any]]]:
    """The objects, grouped into the files `kubectl apply -f` reads in name order."""
    groups: dict[str, list[dict[str, Any]]] = {"00-namespace.yaml": [], "10-secrets.yaml": [],
                                               "20-configmaps.yaml": [], "30-services.yaml": [],
                                               "40-workloads.yaml": [], "50-networkpolicies.yaml": []}
    groups["00-namespace.yaml"].append({"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": ns, "labels": {"app.kubernetes.io/name": APP}}})
    objs = [o for n in net.topo.nodes for o in node_objects(net, n, ns, opts)]
    objs += controller_objects(net, ns, opts) + sae_objects(net, ns)
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": _meta("default-deny-ingress", ns, {"app.kubernetes.io/name": APP}),
                 "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    where = {"Secret": "10-secrets.yaml", "ConfigMap": "20-configmaps.yaml", "Service": "30-services.yaml",
             "StatefulSet": "40-workloads.yaml", "Deployment": "40-workloads.yaml",
             "NetworkPolicy": "50-networkpolicies.yaml"}
    for o in objs:
        groups[where[o["kind"]]].append(o)
    return groups


class _PlainDumper(yaml.SafeDumper):
    """Writes a shared dict (the labels) out in full each time, never as a YAML anchor."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def files(net: NetworkBuild, ns: str, opts: ExportOptions) -> dict[str, File]:
    out = {}
    for fname, objs in manifests(net, ns, opts).items():
        text = yaml.dump_all(objs, Dumper=_PlainDumper, sort_keys=False)
        out[posixpath.join("kubernetes", fname)] = File(text.encode(), secret=fname == "10-secrets.yaml")
    return out
