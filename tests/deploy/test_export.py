"""`sdqkd net export`: the three formats from one build, checked offline — Kubernetes manifests
against the Kubernetes API schemas (kubernetes-validate ships them), every Secret/ConfigMap
reference resolved, only public material in ConfigMaps, the containerlab file's required
fields, file modes — and bad input refused with nothing written."""

from __future__ import annotations

import base64
import ipaddress
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from sdqkd.deploy import export
from sdqkd.deploy.plan import ExportError, ExportOptions
from sdqkd.harness.build import FIXED_PORTS, SERVICES

TOPO = {"name": "metro", "nodes": [{"name": "alice", "host": "10.0.0.1"}, {"name": "relay", "host": "10.0.0.2"},
                                   {"name": "bob", "host": "bob.example.net"}],
        "links": [{"a": "alice", "b": "relay", "km": 10}, {"a": "relay", "b": "bob", "km": 20}],
        "saes": [{"name": "sae-a", "node": "alice"}, {"name": "sae-b", "node": "bob"}],
        "settings": {"clock_scale": 0.5, "block_sifted_bits": 200000}}
K8S_VERSION = "1.30"


def _topo(tmp: Path, data: dict[str, Any] = TOPO) -> Path:
    p = tmp / "topo.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _export(tmp: Path, fmt: str, data: dict[str, Any] = TOPO, **kw: Any) -> Path:
    out = tmp / f"out-{fmt}"
    export(_topo(tmp, data), fmt, out, ExportOptions(hosts=kw.pop("hosts", {}), **kw))
    return out


def _docs(out: Path) -> list[dict[str, Any]]:
    return [d for f in sorted((out / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def _cert_sans(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | \
           {str(v) for v in san.get_values_for_type(x509.IPAddress)}


# ------------------------------------------------------------------ bundle


def test_bundle_is_one_runnable_directory_per_node_with_secrets_private(tmp_path: Path):
    out = _export(tmp_path, "bundle", hosts={"bob": "192.0.2.7"})
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for p in out.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, p
        elif p.suffix == ".key" or p.name in ("node.yaml", "gnmi-password", "northbound-token"):
            assert mode == 0o600, p  # private keys, bootstrap secrets, configs with the gNMI password
        else:
            assert mode & 0o077 in (0o044, 0), p
            assert b"PRIVATE KEY" not in p.read_bytes(), p
    eps = json.loads((out / "endpoints.json").read_text())
    # --host wins over the topology's host; the others come from the topology
    assert eps["bob"]["gnmi"] == f"192.0.2.7:{FIXED_PORTS['gnmi']}"
    assert eps["alice"]["etsi014"] == f"10.0.0.1:{FIXED_PORTS['etsi014']}"
    from sdqkd.node.config import load_config

    for name in ("alice", "relay", "bob"):
        nd = out / "nodes" / name
        cfg = load_config(nd / "node.yaml")  # the node's own parser accepts it, every file found in its dir
        assert cfg.tls is not None and cfg.tls.key.is_relative_to(nd) and cfg.data_dir == nd / "data"
        assert cfg.gnmi_listen == f"0.0.0.0:{FIXED_PORTS['gnmi']}" and cfg.engine["clock_scale"] == 0.5
        host = eps[name]["gnmi"].rpartition(":")[0]
        assert host in _cert_sans(cfg.tls.cert.read_bytes())
    # the bootstrap secret of a link is the same file content at both ends, and nowhere else
    ids = {n: eps[n]["id"] for n in eps}
    a_side = (out / "nodes" / "alice" / "bootstrap" / f"{ids['relay']}.key").read_bytes()
    assert a_side == (out / "nodes" / "relay" / "bootstrap" / f"{ids['alice']}.key").read_bytes()
    assert len(a_side) == 32 and not (out / "nodes" / "bob" / "bootstrap" / f"{ids['alice']}.key").exists()
    net = json.loads((out / "controller" / "network.json").read_text())
    assert net["nodes"]["relay"]["peer"] == f"10.0.0.2:{FIXED_PORTS['peer']}"
    for f in (net["ca"], net["controller"]["cert"], net["controller"]["key"], net["controller"]["password_file"]):
        assert (out / "controller" / f).is_file() and not Path(f).is_absolute()


def test_restconf_setting_reaches_every_node_and_plain_http_beyond_loopback_is_asked_for(tmp_path: Path):
    from sdqkd.controller.topology import TopologyError

    plain = {**TOPO, "settings": {"restconf": {"tls": "none"}}}
    with pytest.raises(TopologyError) as e:  # the bundle's nodes listen on 0.0.0.0
        _export(tmp_path, "bundle", plain)
    assert str(tmp_path / "topo.yaml") in str(e.value) and "settings.restconf: tls none" in str(e.value)
    assert "plain_http_outside_loopback: true" in str(e.value) and "alice, bob, relay" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["topo.yaml"]  # nothing written
    allowed = {**TOPO, "settings": {"restconf": {"tls": "none", "plain_http_outside_loopback": True}}}
    out = _export(tmp_path, "bundle", allowed)
    token = (out / "controller" / "restconf-token").read_text()
    assert len(token) == 64 and stat.S_IMODE((out / "controller" / "restconf-token").stat().st_mode) == 0o600
    from sdqkd.node.config import load_config

    for name in ("alice", "relay", "bob"):
        cfg = load_config(out / "nodes" / name / "node.yaml")
        assert (cfg.restconf_tls, cfg.restconf_plain_outside_loopback, cfg.restconf_tokens) == ("none", True, [token])
        assert cfg.restconf_listen == f"0.0.0.0:{FIXED_PORTS['restconf']}"
    eps = json.loads((out / "endpoints.json").read_text())
    assert {e["restconf_tls"] for e in eps.values()} == {"none"}
    anonymous = {**TOPO, "settings": {"restconf": {"tls": "none", "plain_http_outside_loopback": True,
                                                   "anonymous": True}}}
    (tmp_path / "anonymous").mkdir()
    out = _export(tmp_path / "anonymous", "bundle", anonymous)
    cfg = load_config(out / "nodes" / "relay" / "node.yaml")
    assert cfg.restconf_anonymous and cfg.restconf_tokens == [] and not (out / "controller" / "restconf-token").exists()
    # without the setting: mutual TLS as before, and no token anywhere
    (tmp_path / "default").mkdir()
    out = _export(tmp_path / "default", "bundle")
    assert not (out / "controller" / "restconf-token").exists()
    assert {e["restconf_tls"] for e in json.loads((out / "endpoints.json").read_text()).values()} == {"mutual"}
    assert load_config(out / "nodes" / "bob" / "node.yaml").restconf_tls == "mutual"


def test_net_up_and_export_share_one_builder(tmp_path: Path):
    """The harness writes the same node config keys, bootstrap and PKI files as a bundle."""
    from sdqkd.controller.topology import parse
    from sdqkd.harness.network import prepare

    plain = {**TOPO, "nodes": [{"name": n["name"]} for n in TOPO["nodes"]]}
    desc = prepare(parse(plain), tmp_path / "state")
    out = _export(tmp_path, "bundle")
    for name in ("alice", "relay", "bob"):
        up = yaml.safe_load(Path(desc["nodes"][name]["config"]).read_text())
        ex = yaml.safe_load((out / "nodes" / name / "node.yaml").read_text())
        assert set(up) | {"log"} == set(ex)
        assert {k: up[k] for k in ("id", "tls", "bootstrap", "engine", "saes")} == \
               {k: ex[k] for k in ("id", "tls", "bootstrap", "engine", "saes")}
        rel = sorted(str(p.relative_to(out / "nodes" / name)) for p in (out / "nodes" / name).rglob("*"))
        state = tmp_path / "state" / "nodes" / name
        assert rel == sorted(str(p.relative_to(state)) for p in state.rglob("*"))


# ------------------------------------------------------------------ containerlab


def test_containerlab_file_has_what_containerlab_requires(tmp_path: Path):
    out = _export(tmp_path, "containerlab", hosts={"relay": "172.20.20.50"})
    lab = yaml.safe_load((out / "metro.clab.yml").read_text())
    assert set(lab) <= {"name", "prefix", "mgmt", "topology", "settings"} and lab["name"] == "metro"
    subnet = ipaddress.ip_network(lab["mgmt"]["ipv4-subnet"])
    nodes = lab["topology"]["nodes"]
    assert set(nodes) == {"controller", "alice", "relay", "bob"}
    ips = [n["mgmt-ipv4"] for n in nodes.values()]
    assert len(set(ips)) == len(ips) and all(ipaddress.ip_address(i) in subnet for i in ips)
    assert nodes["relay"]["mgmt-ipv4"] == "172.20.20.50"
    eps = json.loads((out / "endpoints.json").read_text())
    for name, node in nodes.items():
        assert node["kind"] == "linux" and node["image"] and isinstance(node["cmd"], str)
        for bind in node["binds"]:
            host_path, container_path, mode = bind.split(":")
            assert (out / host_path).is_dir() and container_path == "/etc/sdqkd" and mode == "ro"
        if name != "controller":
            assert eps[name]["gnmi"] == f"{node['mgmt-ipv4']}:57400"  # gNMI on the conventional port
            assert node["cmd"] == "node --config /etc/sdqkd/node.yaml"
            assert yaml.safe_load((out / node["binds"][0].split(":")[0] / "node.yaml").read_text())["data_dir"] \
                == "/var/lib/sdqkd"
    # one data link per fibre link, each interface used once
    ends = [e for link in lab["topology"]["links"] for e in link["endpoints"]]
    assert len(lab["topology"]["links"]) == 2 and len(set(ends)) == len(ends)
    assert {tuple(sorted(e.split(":")[0] for e in ln["endpoints"])) for ln in lab["topology"]["links"]} == \
           {("alice", "relay"), ("bob", "relay")}
    assert all(e.split(":")[0] in nodes and e.split(":")[1].startswith("eth") for e in ends)


# ------------------------------------------------------------------ kubernetes


def test_kubernetes_manifests_validate_and_every_reference_resolves(tmp_path: Path):
    out = _export(tmp_path, "kubernetes")
    docs = _docs(out)
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)  # raises on any schema violation
    ns = "metro"
    assert all(d["metadata"].get("namespace", ns) == ns for d in docs)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert ("Namespace", ns) in by
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    assert {d["metadata"]["name"] for d in workloads} == {"alice", "relay", "bob", "controller"}
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        vols = {v["name"]: v for v in spec["volumes"]} | {c: {} for c in claims}
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert c["resources"]["requests"]["memory"] and c["resources"]["requests"]["cpu"]
            for m in c["volumeMounts"]:
                assert m["name"] in vols, m
        for v in spec["volumes"]:
            for src in v.get("projected", {}).get("sources", []):
                kind, ref = ("Secret", src["secret"]) if "secret" in src else ("ConfigMap", src["configMap"])
                obj = by[(kind, ref["name"])]
                for item in ref["items"]:
                    assert item["key"] in obj["data"], (kind, ref["name"], item["key"])
            mode = v.get("projected", {}).get("defaultMode")
            assert mode is None or mode & 0o007 == 0  # never world-readable
        if w["kind"] == "StatefulSet":
            c = spec["containers"][0]
            assert c["readinessProbe"]["exec"]["command"][:2] == ["sdqkd", "health"]
            assert {p["containerPort"] for p in c["ports"]} == {FIXED_PORTS[s] for s in SERVICES}
            assert by[("Service", w["spec"]["serviceName"])]["spec"]["selector"] == w["spec"]["selector"]["matchLabels"]
    # ConfigMaps: certificates only (public); Secrets: every private key, password and bootstrap secret
    for d in docs:
        if d["kind"] == "ConfigMap":
            for k, v in d["data"].items():
                assert "PRIVATE KEY" not in v and k.endswith(".pem") or k == "network.json", k
                if k == "network.json":
                    assert "password" not in json.loads(v)["controller"].get("password", "")
        if d["kind"] == "Secret":
            for v in d["data"].values():
                base64.b64decode(v, validate=True)
    cfg = yaml.safe_load(base64.b64decode(by[("Secret", "relay-secret")]["data"]["node.yaml"]))
    assert cfg["gnmi"]["listen"] == "0.0.0.0:57400"
    net = json.loads(by[("ConfigMap", "controller-public")]["data"]["network.json"])
    assert net["nodes"]["bob"]["gnmi"] == "bob.metro.svc.cluster.local:57400"
    cert = by[("ConfigMap", "bob-public")]["data"][f"tls__{net['nodes']['bob']['id']}.pem"]
    assert "bob.metro.svc.cluster.local" in _cert_sans(cert.encode())
    assert not (out / "nodes").exists() and stat.S_IMODE((out / "kubernetes" / "10-secrets.yaml").stat().st_mode) == 0o600


def test_kubernetes_init_copy_gives_the_node_private_files_it_accepts(tmp_path: Path):
    """The init container's script, run on a directory laid out as kubelet projects Secrets and
    ConfigMaps (timestamped dir, ..data link, top-level links, files 0440), yields a config
    directory the node's own parser accepts, with nothing readable by others."""
    from sdqkd.node.config import load_config

    docs = _docs(_export(tmp_path, "kubernetes"))
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pod = by[("StatefulSet", "relay")]["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"][:2] == ["sh", "-c"]
    src, dst = tmp_path / "src", tmp_path / "dst"
    stamp = src / "..2026_01_01_00_00_00.1"
    for v in pod["volumes"]:
        for source in v.get("projected", {}).get("sources", []):
            kind, ref = ("Secret", source["secret"]) if "secret" in source else ("ConfigMap", source["configMap"])
            for item in ref["items"]:
                raw = by[(kind, ref["name"])]["data"][item["key"]]
                f = stamp / item["path"]
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(base64.b64decode(raw) if kind == "Secret" else raw.encode())
                f.chmod(0o440)
    (src / "..data").symlink_to(stamp.name)
    for top in {p.relative_to(stamp).parts[0] for p in stamp.rglob("*")}:
        (src / top).symlink_to(f"..data/{top}")
    dst.mkdir()
    script = init["command"][2].replace("/etc/sdqkd-source", str(src)).replace("/etc/sdqkd", str(dst))
    subprocess.run(["sh", "-c", script], check=True)
    assert not any(p.name.startswith("..") for p in dst.iterdir())
    for p in dst.rglob("*"):
        assert not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
    cfg = load_config(dst / "node.yaml")
    assert cfg.tls is not None and cfg.tls.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert len(cfg.bootstrap) == 2 and all(len(f.read_bytes()) == 32 for f in cfg.bootstrap.values())
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["config"]["readOnly"] and {v["name"]: v for v in pod["volumes"]}["config"]["emptyDir"]["medium"] == "Memory"


def test_kubernetes_network_policies_let_only_the_right_peers_in(tmp_path: Path):
    docs = _docs(_export(tmp_path, "kubernetes", namespace="qkd"))
    pols = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] in ("StatefulSet", "Deployment")}
    app_of_alice = {"sdqkd.io/sae-of": "alice"}

    def admitted(target: str, port: int, source: dict[str, str]) -> bool:
        """NetworkPolicy semantics: selected by some policy -> only what one of its rules allows."""
        selecting = [p for p in pols.values()
                     if all(pods[target].get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]
        assert selecting, target
        for p in selecting:
            for rule in p["spec"].get("ingress", []):
                ports = {x["port"] for x in rule.get("ports", [])}
                if ports and port not in ports:
                    continue
                for peer in rule["from"]:
                    sel = peer["podSelector"]
                    if all(source.get(k) == v for k, v in sel["matchLabels"].items()) and \
                            all(source.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", [])):
                        return True
        return False

    g, e14, e04, peer = (FIXED_PORTS[s] for s in ("gnmi", "etsi014", "etsi004", "peer"))
    assert admitted("alice", g, pods["controller"]) and not admitted("alice", g, pods["bob"])
    assert not admitted("alice", g, app_of_alice)
    assert admitted("alice", e14, app_of_alice) and admitted("alice", e04, app_of_alice)
    assert not admitted("bob", e14, app_of_alice) and not admitted("alice", e14, pods["relay"])
    assert admitted("alice", peer, pods["relay"]) and admitted("alice", peer, pods["bob"])  # relay paths
    assert not admitted("alice", peer, pods["controller"]) and not admitted("alice", peer, app_of_alice)
    assert not any(admitted("controller", p, pods["alice"]) for p in (g, e14, peer, 8080))
    assert pols["default-deny-ingress"]["spec"]["podSelector"] == {}
    manager = {"sdqkd.io/restconf-client": "true"}  # e.g. TeraFlowSDN's device service, labelled so
    assert not admitted("alice", FIXED_PORTS["restconf"], manager)  # only with settings.restconf
    tfs = {**TOPO, "settings": {"restconf": {"tls": "none", "plain_http_outside_loopback": True}}}
    (tmp_path / "tfs").mkdir()
    pols = {d["metadata"]["name"]: d for d in _docs(_export(tmp_path / "tfs", "kubernetes", tfs, namespace="qkd"))
            if d["kind"] == "NetworkPolicy"}
    for pol in pols.values():
        kubernetes_validate.validate(pol, K8S_VERSION, strict=True)
    assert admitted("alice", FIXED_PORTS["restconf"], manager) and admitted("bob", FIXED_PORTS["restconf"], manager)
    assert not admitted("alice", g, manager) and not admitted("alice", e14, manager)
    assert admitted("alice", FIXED_PORTS["restconf"], pods["controller"])
    rc_peers = [peer for r in pols["alice"]["spec"]["ingress"] for peer in r["from"]
                if r["ports"][0]["port"] == FIXED_PORTS["restconf"]]
    assert {"namespaceSelector": {}, "podSelector": {"matchLabels": manager}} in rc_peers  # any namespace


def test_every_service_has_a_fixed_port_and_a_policy():
    """A service added to the node (SERVICES) must get a port and say who may reach it."""
    from sdqkd.deploy.kubernetes import CLIENTS
    from sdqkd.deploy.plan import CONTROLLER_API

    assert set(SERVICES) <= set(FIXED_PORTS) and set(SERVICES) <= set(CLIENTS)
    ports = [FIXED_PORTS[s] for s in SERVICES] + [int(CONTROLLER_API.rpartition(":")[2])]
    assert len(set(ports)) == len(ports) and all(p > 1024 for p in ports)  # non-root binds them


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("fmt", ["containerlab", "kubernetes"])
def test_names_that_are_not_dns_labels_are_refused(tmp_path: Path, fmt: str):
    bad = {**TOPO, "nodes": [{"name": "Alice_1"}, {"name": "relay"}, {"name": "bob"}],
           "links": [{"a": "Alice_1", "b": "relay", "km": 10}], "saes": [{"name": "sae-a", "node": "Alice_1"}]}
    with pytest.raises(ExportError) as e:
        _export(tmp_path, fmt, bad)
    assert "nodes[0] (Alice_1): name is not a DNS label" in str(e.value) and str(tmp_path / "topo.yaml") in str(e.value)
    assert not (tmp_path / f"out-{fmt}").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["topo.yaml"]  # no temporary directory left


def test_duplicate_or_missing_host_addresses_are_refused(tmp_path: Path):
    with pytest.raises(ExportError) as e:
        _export(tmp_path, "bundle", hosts={"bob": "10.0.0.1"})
    assert "--host bob: address 10.0.0.1 is already the address of node alice" in str(e.value)
    assert "no host address" not in str(e.value)  # bob has one: a bad one, reported as such
    with pytest.raises(ExportError) as e:
        _export(tmp_path, "bundle", hosts={"bob": "not a host!"})
    assert "--host bob: 'not a host!' is neither an IP address nor a host name" in str(e.value)
    assert "no host address" not in str(e.value)
    for listen in ("bogus", "10.0.0.1"):  # one address for every node: the others' hosts lack it
        with pytest.raises(ExportError, match=f"--listen '{listen}': expected one of 0.0.0.0, ::, host"):
            _export(tmp_path, "bundle", listen_host=listen)
    data = {**TOPO, "nodes": [{"name": "alice"}, {"name": "relay", "host": "x"}, {"name": "bob", "host": "X"}]}
    with pytest.raises(ExportError) as e:
        _export(tmp_path, "bundle", data, hosts={"nobody": "10.9.9.9"})
    msg = str(e.value)
    assert "nodes[2] (bob).host: address X is already the address of node relay" in msg
    assert "nodes[0] (alice): no host address" in msg and "no node 'nobody'" in msg
    with pytest.raises(ExportError, match="not a usable address of the management subnet"):
        _export(tmp_path, "containerlab", hosts={"bob": "10.0.0.9"})
    assert [p.name for p in tmp_path.iterdir()] == ["topo.yaml"]


def test_output_dir_with_content_is_refused_and_left_alone(tmp_path: Path):
    out = tmp_path / "out-bundle"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match="exists and is not empty"):
        _export(tmp_path, "bundle")
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"
    out.joinpath("mine.txt").unlink()
    _export(tmp_path, "bundle")  # an empty directory is taken
    assert (out / "nodes" / "alice" / "node.yaml").is_file()


def test_a_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sdqkd.harness import build as build_mod

    real = build_mod.write_tree

    def half(root: Path, files: dict[str, Any]) -> None:
        real(root, dict(list(files.items())[:5]))  # some secrets already on disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build_mod, "write_tree", half)
    with pytest.raises(OSError, match="No space left"):
        _export(tmp_path, "bundle")
    assert [p.name for p in tmp_path.iterdir()] == ["topo.yaml"]  # neither DIR nor the temporary one


def test_cli_names_the_problem_and_exits_2(tmp_path: Path):
    topo = _topo(tmp_path, {**TOPO, "nodes": [{"name": "alice"}, {"name": "relay"}, {"name": "bob"}]})
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "net", "export", str(topo), "--format", "bundle",
                        "--out", str(tmp_path / "o"), "--host", "alice=10.1.1.1", "--host", "relay=10.1.1.1",
                        "--host", "bob=bob.lab"], capture_output=True, text=True)
    assert r.returncode == 2 and "--host relay: address 10.1.1.1 is already the address of node alice" in r.stderr
    assert not (tmp_path / "o").exists()
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "net", "export", str(topo), "--format", "kubernetes",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "kubectl apply -f kubernetes/" in (tmp_path / "o" / "RUN.md").read_text()


# ------------------------------------------------------------------ external KMSs (ETSI 020)


def test_an_external_kms_with_url_reaches_its_gateways_config(tmp_path: Path):
    """A topology's external peer with `url` goes into its gateway's node config (with its CA
    copied into the node's directory); the other nodes and peers without `url` get nothing."""
    (tmp_path / "vendor-ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nvendor\n-----END CERTIFICATE-----\n")
    data = {**TOPO, "external_peers": [
        {"name": "vendorx", "node": "bob", "saes": ["vx1"], "rate_bps": 5000, "url": "https://kms.vendorx.test:7020",
         "identity": "kms.vendorx.test", "ca": "vendor-ca.pem", "mode": "async"},
        {"name": "vendory", "node": "alice", "saes": ["vy1"]}]}  # no url: the config names it by hand
    out = _export(tmp_path, "bundle", data)
    from sdqkd.node.config import load_config

    bob = load_config(out / "nodes" / "bob" / "node.yaml")
    (peer,) = bob.external_peers
    assert (peer["name"], peer["url"], peer["identity"], peer["saes"], peer["mode"], peer["rate_bps"]) == \
        ("vendorx", "https://kms.vendorx.test:7020", "kms.vendorx.test", ["vx1"], "async", 5000)
    assert Path(peer["ca"]).read_bytes() == (tmp_path / "vendor-ca.pem").read_bytes()
    assert Path(peer["ca"]).is_relative_to(out / "nodes" / "bob")  # the node's directory stays movable
    assert load_config(out / "nodes" / "alice" / "node.yaml").external_peers == []


def test_external_kms_entries_are_checked(tmp_path: Path):
    from sdqkd.controller.topology import TopologyError

    data = {**TOPO, "external_peers": [
        {"name": "v1", "node": "bob", "saes": ["x1"], "url": "https://kms.v1.test:7020"},
        {"name": "v2", "node": "bob", "saes": ["x2"], "url": "ftp://kms", "identity": "kms"},
        {"name": "v3", "node": "bob", "saes": ["x3"], "url": "https://kms.v3.test", "identity": "kms.v3.test",
         "ca": "missing-ca.pem"},
        # a field the schema refuses (mode) hides none of the others; plain HTTP is refused
        {"name": "v4", "node": "bob", "saes": ["x4"], "url": "http://kms.v4.test:7020", "mode": "synch",
         "ca": "missing-ca.pem"}]}
    with pytest.raises(TopologyError) as e:
        _export(tmp_path, "bundle", data)
    msg = str(e.value)
    assert "external_peers[3] (v4).mode: must be one of 'sync' or 'async', got 'synch'" in msg
    assert "external_peers[3] (v4): give `url` and `identity` together" in msg
    assert "external_peers[3] (v4).url: 'http://kms.v4.test:7020': the gateway always speaks TLS" in msg
    assert f"external_peers[3] (v4).ca: no such file {tmp_path / 'missing-ca.pem'}" in msg
    assert "external_peers[0] (v1): give `url` and `identity` together" in msg
    assert "external_peers[1] (v2).url: expected https://host:port, got 'ftp://kms'" in msg
    assert f"external_peers[2] (v3).ca: no such file {tmp_path / 'missing-ca.pem'}" in msg
    assert not (tmp_path / "out-bundle").exists()
