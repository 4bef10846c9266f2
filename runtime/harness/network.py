"""`sdqkd net up TOPOLOGY --state-dir DIR` / `sdqkd net down --state-dir DIR`: a whole network
as OS processes on this machine — one `sdqkd node` per node plus one controller — with a PKI
made for it (CA, node certificates, one client certificate per SAE, one for the controller),
mutual TLS everywhere, and DIR/endpoints.json written only when every link produces key.

Files: DIR and every node directory are 0700; everything secret is a 0600 file (private keys,
bootstrap secrets, the gNMI password file, the controller's northbound token, key stores, node
configs, logs). Node configs hold no secret themselves: they name the password file.
`net down` signals only processes that are still ours: the PID's command line must be an
`sdqkd` (sdqkd.cli) process started for this state dir, so a reused PID is left alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sdqkd.controller.topology import Topology, TopologyError
from sdqkd.errors import SdqkdError
from sdqkd.harness.build import (
    FIXED_PORTS,
    HARNESS_LAYOUT,
    SERVICES,
    NodePlan,
    absolute_description,
    applications_config,
    build,
    interfaces_of,
    topology_data,
    write_tree,
)
from sdqkd.private import open_private_append, private_dir, write_private


class HarnessError(SdqkdError, RuntimeError):
    pass


@dataclass
class Layout:
    """Where everything of one network lives under its state dir."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    @property
    def network(self) -> Path:
        return self.root / "network.json"

    @property
    def endpoints(self) -> Path:
        return self.root / "endpoints.json"

    @property
    def pids(self) -> Path:
        return self.root / "pids.json"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def plan_ports(topo: Topology, host: str = "127.0.0.1", hosts: dict[str, str] | None = None
               ) -> dict[str, dict[str, str]]:
    """Listen addresses per node. `settings.base_port` in the topology fixes them (one per service, in
    node order) and each is checked free before anything starts; otherwise port 0 (the OS picks).
    With `hosts` (one address per node, each in its own network namespace) every node uses the
    fixed ports of nodes with addresses of their own (build.FIXED_PORTS, as exports do)."""
    if hosts:
        return {n: {svc: f"{hosts[n]}:{FIXED_PORTS[svc]}" for svc in SERVICES} for n in topo.nodes}
    base = topo.settings.base_port
    out: dict[str, dict[str, str]] = {}
    busy = []
    for i, name in enumerate(topo.nodes):
        ports = {}
        for k, svc in enumerate(SERVICES):
            port = 0 if base is None else int(base) + len(SERVICES) * i + k
            if port and not _port_free(host, port):
                busy.append(f"{name}.{svc} port {port}")
            ports[svc] = f"{host}:{port}"
        out[name] = ports
    if busy:
        raise HarnessError(f"{topo.source}: port(s) in use: {', '.join(busy)}")
    return out


def prepare(topo: Topology, state_dir: Path, host: str = "127.0.0.1",
            hosts: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the build of the network (runtime/harness/build.py: PKI, bootstrap secrets, every
    node's config, network.json) into the state dir; return the network description with
    absolute paths."""
    lay = Layout(state_dir)
    if lay.pids.exists():
        raise HarnessError(f"{state_dir}: a network already runs here (pids.json); `sdqkd net down` it first")
    ports = plan_ports(topo, host, hosts)
    plans = {}
    for name in topo.nodes:
        addr = (hosts or {}).get(name, host)
        plans[name] = NodePlan(listen=ports[name], advertise=ports[name], sans=(addr, "localhost"))
    net = build(topo, plans, HARNESS_LAYOUT)
    write_tree(state_dir, net.files)
    desc = absolute_description(net.desc, state_dir)
    lay.network.write_text(json.dumps(desc, indent=2))
    return desc


def _spawn(args: list[str], log: Path, netns: str | None = None) -> subprocess.Popen[bytes]:
    out = os.fdopen(open_private_append(log), "ab")  # the child owns it
    wrap = ["ip", "netns", "exec", netns] if netns else []
    # -P: import the installed package, never a source tree in the current directory (its C
    # extensions may not be built there)
    return subprocess.Popen([*wrap, sys.executable, "-P", "-m", "sdqkd.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _wait(cond: Any, timeout: float, what: str, procs: dict[str, subprocess.Popen[bytes]], logs: Path,
          progress: Any = None) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if progress is not None:
            progress()
        for name, p in procs.items():
            if p.poll() is not None:
                raise HarnessError(f"{name} exited with {p.returncode} while waiting for {what}; see {logs}/{name}.log")
        if time.monotonic() > end:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {logs}")
        time.sleep(0.1)


def up(topology: str | Path | dict[str, Any], state_dir: str | Path, *, timeout: float = 120.0,
       progress: Callable[[], None] | None = None, netns: bool = False,
       report: Callable[[str], None] | None = None, controller: bool = True) -> dict[str, Any]:
    """Start the network; return the endpoints (also written to state_dir/endpoints.json).
    `progress()` is called while waiting for the links (the demo prints its live table from it);
    `report(text)` hears each step (PKI written, nodes listening, controller started). Without
    `controller`, the nodes only: no link until another manager makes them over RESTCONF or
    gNMI (network.json then says `"controller": false` under `harness`)."""
    from sdqkd.controller import topology as tp

    say = report or (lambda _text: None)
    topo = tp.parse(topology) if isinstance(topology, dict) else tp.load(topology)
    state = private_dir(Path(state_dir).resolve())
    lay = Layout(state)
    ns_hosts: dict[str, dict[str, str]] = {}
    if netns:
        from sdqkd import netns as nsmod

        ns_hosts = nsmod.create(list(topo.nodes), state / "netns.json")
    try:
        desc = prepare(topo, state, hosts={n: h["ip"] for n, h in ns_hosts.items()} or None)
    except BaseException:
        _destroy_netns(state)
        raise
    say(f"PKI and node configs written ({len(topo.nodes)} nodes, {len(topo.saes)} SAE certificates)")
    logs = private_dir(state / "logs")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, nd in desc["nodes"].items():
            procs[f"node-{name}"] = _spawn(["node", "--config", nd["config"]], logs / f"node-{name}.log",
                                           ns_hosts.get(name, {}).get("netns"))
        _write_pids(lay, procs)
        ready = _wait(lambda: _all_ready(desc), timeout, "every node to listen", procs, logs)
        say(f"nodes listening: {', '.join(ready)}")
        for name, r in ready.items():
            desc["nodes"][name].update({k: r[k] for k in SERVICES if k in r})
            _pin_ports(Path(desc["nodes"][name]["config"]), r, ready)
        _wire_interfaces(desc, ready)
        desc["harness"] = {"controller": controller}
        lay.network.write_text(json.dumps(desc, indent=2))
        if controller:
            procs["controller"] = _spawn(["controller", "--state-dir", str(state)], logs / "controller.log")
            _write_pids(lay, procs)
            say(f"controller started; provisioning {len(topo.links)} link(s) on both ends")
            status_file = state / "controller-status.json"
            _wait(lambda: _links_producing(status_file), timeout, "every link to produce key", procs, logs, progress)
        else:
            say("no controller (--no-controller): the links are for your SDN controller to make")
    except BaseException:
        _stop(procs)
        lay.pids.unlink(missing_ok=True)
        _destroy_netns(state)
        raise
    endpoints = endpoints_of(desc)
    tmp = lay.endpoints.with_suffix(".tmp")
    tmp.write_text(json.dumps(endpoints, indent=2))
    tmp.replace(lay.endpoints)
    return endpoints


def _pin_ports(config: Path, ready: dict[str, Any], every: dict[str, Any] | None = None) -> None:
    """Write the ports a node actually bound back into its config, so that a node restarted
    with `sdqkd node --config` comes back where the controller and its peers expect it; and
    the peers' classical endpoints into its interfaces (`every`: each node's ready.json)."""
    cfg = yaml.safe_load(config.read_text())
    for svc in SERVICES:
        if svc in ready:
            cfg.setdefault(svc, {})["listen"] = ready[svc]
    for itf in cfg.get("interfaces") or []:
        peer = (every or {}).get(itf.get("att_point", {}).get("device"), {})
        if "peer" in peer:
            itf.setdefault("peer", {})["endpoint"] = peer["peer"]
        if "channel" in peer:
            itf.setdefault("peer", {})["channel"] = peer["channel"]
    write_private(config, yaml.safe_dump(cfg, sort_keys=False))


def _wire_interfaces(desc: dict[str, Any], ready: dict[str, Any]) -> None:
    """Tell each running node's interfaces where their peers' classical channels listen (known
    only now when the OS picked the ports), over its RESTCONF with the controller's identity."""
    import ssl

    import httpx

    ctl = desc["controller"]
    ctx = ssl.create_default_context(cafile=desc["ca"])
    ctx.load_cert_chain(ctl["cert"], ctl["key"])
    auth = httpx.BasicAuth(ctl["username"], Path(ctl["password_file"]).read_text())
    h = {"Accept": "application/yang-data+json", "Content-Type": "application/yang-data+json"}
    for name, nd in desc["nodes"].items():
        cfg = yaml.safe_load(Path(nd["config"]).read_text())
        itfs = [i for i in cfg.get("interfaces") or [] if i.get("peer", {}).get("endpoint")]
        if not itfs or "restconf" not in ready[name]:
            continue
        scheme = "http" if nd.get("restconf_tls") == "none" else "https"  # settings.restconf (topology.md)
        with httpx.Client(base_url=f"{scheme}://{ready[name]['restconf']}", verify=ctx, auth=auth, timeout=30) as c:
            for itf in itfs:
                r = c.patch(f"/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_interfaces/qkd_interface={itf['id']}"
                            "/sdqkd-node-ext:sdqkd-interface", headers=h,
                            json={"sdqkd-node-ext:sdqkd-interface": {
                                "classical-endpoint": itf["peer"]["endpoint"],
                                **({"channel-endpoint": itf["peer"]["channel"]} if "channel" in itf["peer"] else {})}})
                if r.status_code != 204:
                    raise HarnessError(f"node {name}: interface {itf['id']}: RESTCONF answered {r.status_code}: "
                                       f"{r.text[:300]}")


def endpoints_of(desc: dict[str, Any]) -> dict[str, Any]:
    """endpoints.json (docs/endpoints.md): per node its id, addresses and the TLS material clients need."""
    out: dict[str, Any] = {}
    for name, nd in desc["nodes"].items():
        out[name] = {
            "id": nd["id"], "gnmi": nd.get("gnmi"), "etsi014": nd.get("etsi014"), "etsi004": nd.get("etsi004"),
            "etsi020": nd.get("etsi020"), "restconf": nd.get("restconf"),
            "restconf_tls": nd.get("restconf_tls", "mutual"), "ca": desc["ca"],
            "saes": {s: {"cert": v["cert"], "key": v["key"]} for s, v in desc["saes"].items() if v["node"] == name},
            "management": desc["controller"],
        }
    return out


def _all_ready(desc: dict[str, Any]) -> dict[str, Any] | None:
    out = {}
    for name, nd in desc["nodes"].items():
        p = Path(nd["ready"])
        if not p.exists():
            return None
        out[name] = json.loads(p.read_text())
    return out


def _links_producing(status_file: Path) -> bool:
    if not status_file.exists():
        return False
    try:
        st = json.loads(status_file.read_text())
    except ValueError:
        return False
    return bool(st.get("provisioned")) and all(row["up"] and row.get("stored_keys", 0) > 0 for row in st["links"])


def _write_pids(lay: Layout, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    lay.pids.write_text(json.dumps({name: p.pid for name, p in procs.items()}))


def _stop(procs: dict[str, subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs.values():
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def down(state_dir: str | Path, grace: float = 5.0) -> list[str]:
    """Stop every process of the network under state_dir, including a node restarted by hand with
    `sdqkd node --config DIR/nodes/NAME/node.yaml` (found by the pid in its ready.json and checked
    against its command line); returns what was stopped."""
    lay = Layout(Path(state_dir).resolve())
    if not lay.pids.exists():
        raise HarnessError(f"{state_dir}: no network runs here (no pids.json)")
    recorded: dict[str, int] = json.loads(lay.pids.read_text())
    pids = {name: pid for name, pid in recorded.items() if _ours(pid, lay.root)}
    for name in sorted(set(recorded) - set(pids)):
        print(f"sdqkd net down: {name} (PID {recorded[name]}) is not running as part of this network any more; "
              "left alone", file=sys.stderr)
    by_hand = _restarted_by_hand(lay, set(recorded.values()))
    stopped = []
    for name, pid in pids.items():
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(name)
        except ProcessLookupError:
            pass
    for name, pid in by_hand.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped.append(f"{name} (restarted by hand, pid {pid})")
    end = time.monotonic() + grace
    for pid in [*pids.values(), *by_hand.values()]:
        while time.monotonic() < end and _alive(pid):
            time.sleep(0.05)
        # checked again before SIGKILL: it may have exited and the PID gone to another process
        if _alive(pid) and (_ours(pid, lay.root) or pid in by_hand.values() and _hand_started(lay, pid)):
            with contextlib.suppress(ProcessLookupError):
                if pid in by_hand.values():
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.killpg(pid, signal.SIGKILL)
    lay.pids.unlink()
    lay.endpoints.unlink(missing_ok=True)
    _destroy_netns(lay.root)
    return stopped


def _restarted_by_hand(lay: Layout, ours: set[int]) -> dict[str, int]:
    """node-NAME -> pid of each node process not started by `net up` that runs this network's
    node config (its ready.json names the pid; /proc/PID/cmdline must name the config)."""
    out: dict[str, int] = {}
    try:
        desc = json.loads(lay.network.read_text())
    except (OSError, ValueError):
        return out
    for name, nd in desc.get("nodes", {}).items():
        try:
            pid = int(json.loads(Path(nd["ready"]).read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid not in ours and _runs_config(pid, cmdline, Path(nd["config"]).resolve()):
            out[f"node-{name}"] = pid
    return out


def _hand_started(lay: Layout, pid: int) -> bool:
    return pid in _restarted_by_hand(lay, set()).values()


def _runs_config(pid: int, cmdline: list[bytes], config: Path) -> bool:
    """Whether the process's command line names `config` (relative paths from its own cwd)."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    for arg in cmdline:
        if arg:
            p = Path(os.fsdecode(arg))
            if (p if p.is_absolute() else cwd / p).resolve() == config:
                return True
    return False


def _destroy_netns(state: Path) -> None:
    if (state / "netns.json").exists():
        from sdqkd import netns as nsmod

        nsmod.destroy(state / "netns.json")


def _ours(pid: int, state: Path) -> bool:
    """The PID is (still) an sdqkd process of the network under `state`: its command line runs
    sdqkd.cli with an argument inside the state dir (a node's config or the controller's
    --state-dir). A PID reused by anything else, or by another network, is not."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    root = str(state).encode()
    return b"sdqkd.cli" in args and any(a == root or a.startswith(root + b"/") for a in args)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # reap if it is our child (a zombie still answers kill 0)
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


__all__ = ["HarnessError", "TopologyError", "up", "down", "prepare", "endpoints_of", "topology_data",
           "applications_config", "interfaces_of"]
