"""What `sdqkd net up|down|status` print: progress while a network starts (each step, then each
link as it starts producing key), a summary with the controller's address and the next commands,
and the link table (shared with the demo). The work itself is `sdqkd.harness.network`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sdqkd.controller.topology import TopologyError
from sdqkd.controller.topology import load as load_topology

from . import network, northbound


def fmt_rate(bps: Any) -> str:
    if bps in (None, ""):
        return "-"
    v = float(bps)
    return f"{v / 1e6:.2f} Mb/s" if v >= 1e6 else f"{v / 1e3:.1f} kb/s"


def _ends(link: str, nodes: dict[str, bool]) -> tuple[str, ...]:
    """The two nodes of a link row named `A-B` (node names may hold '-' themselves)."""
    return next(((n, link[len(n) + 1:]) for n in nodes if link.startswith(n + "-") and link[len(n) + 1:] in nodes),
                ())


def _state(row: dict[str, Any], nodes: dict[str, bool], provisioned: bool) -> str:
    if row.get("disabled_at"):
        # qkdl_enable false (gNMI or RESTCONF): it stays down until enabled again
        return f"disabled at {', '.join(row['disabled_at'])}"
    if not row["up"]:
        down = [n for n in _ends(row["link"], nodes) if nodes.get(n) is False]
        return f"down (node {', '.join(down)} down)" if down and provisioned else "coming up"
    # a full pool pauses its link (max_key_count): the rate shown is what it makes when it runs
    return "up, paused: key pool full" if row.get("paused") else "up"


def table(status: dict[str, Any]) -> str:
    """The controller's view as a table: links, nodes not up (starting or down), applications."""
    rows = [f"  {'link':22s} {'km':>5s} {'dB':>5s} {'QBER':>6s} {'secret key rate':>16s} {'stored keys':>12s}  state"]
    nodes, provisioned = status.get("nodes", {}), status.get("provisioned", True)
    states = {}
    for r in status.get("links", []):
        q = f"{float(r['qber']) * 100:.1f}%" if r.get("qber") not in (None, "") else "-"
        states[r["link"]] = _state(r, nodes, provisioned)
        rows.append(f"  {r['link']:22s} {r['km']:5.0f} {r['db']:5.1f} {q:>6s} {fmt_rate(r.get('skr')):>16s} "
                    f"{r.get('stored_keys', 0):>12d}  {states[r['link']]}")
    not_up = [n for n, up in status.get("nodes", {}).items() if not up]
    if not_up:
        # the controller provisions only once it has seen every node up: until then a node it has
        # not reached yet is still starting, not down (a status without the flag predates it)
        starting = not status.get("provisioned", True)
        rows.append(f"  nodes {'starting' if starting else 'down'}: {', '.join(not_up)}")
    for a in status.get("apps", []):
        line = f"  app {a['master']} -> {a['slave']}: path {' - '.join(a['path'])} " \
               f"({'relayed' if a['virtual'] else 'direct'})"
        down = a.get("links_down") or []
        if down:
            # left on a path with a link down: no other path could carry it, so no keys now
            line += "  NOT SERVED: " + "; ".join(f"link {ln} {states.get(ln, 'down')}" for ln in down)
        rows.append(line)
    return "\n".join(rows)


class LinkProgress:
    """Called while `net up` waits: prints each link once, when it first produces key."""

    def __init__(self, state: Path, t0: float):
        self.status_file = state / "controller-status.json"
        self.t0 = t0
        self.seen: set[str] = set()
        self.last_read = 0.0

    def __call__(self, force: bool = False) -> None:
        if (not force and time.monotonic() - self.last_read < 0.5) or not self.status_file.exists():
            return
        self.last_read = time.monotonic()
        try:
            st = json.loads(self.status_file.read_text())
        except ValueError:
            return
        for r in st.get("links", []):
            if r["link"] not in self.seen and r["up"] and r.get("stored_keys", 0) > 0:
                self.seen.add(r["link"])
                say(self.t0, f"link {r['link']} ({r['km']:.0f} km, {r['db']:.1f} dB): producing key, "
                             f"{fmt_rate(r.get('skr'))}  [{len(self.seen)}/{len(st['links'])}]")


def say(t0: float, text: str) -> None:
    print(f"  [{time.monotonic() - t0:5.1f} s] {text}", file=sys.stderr, flush=True)


def up(topology: str | None, state_dir: str, *, timeout: float, netns: bool, controller: bool = True) -> int:
    """`topology` None: the demo's metro network (the README's first-key example). Without
    `controller`: the nodes only, for another SDN controller to make the links."""
    from sdqkd.demo import DEFAULT_TOPOLOGY

    t0 = time.monotonic()
    state = Path(state_dir)
    progress = LinkProgress(state.resolve(), t0)
    try:
        if topology is not None:
            load_topology(topology)  # a refused topology says so alone: no "state in DIR" before it
        print(f"sdqkd net up {topology or '(the demo network)'}: state in {state.resolve()}", file=sys.stderr,
              flush=True)
        eps = network.up(topology or DEFAULT_TOPOLOGY, state, timeout=timeout, netns=netns, progress=progress,
                         report=lambda text: say(t0, text), controller=controller)
    except (TopologyError, network.HarnessError) as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a read-only or full state dir: one line, no traceback
        print(f"sdqkd net up: {state_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    if not controller:
        print(nodes_only_summary(state, eps, time.monotonic() - t0))
        return 0
    progress(force=True)  # the links that came up after the last look
    st = json.loads((state / "controller-status.json").read_text())
    print(summary(state, eps, st, time.monotonic() - t0))
    return 0


def nodes_only_summary(state: Path, eps: dict[str, Any], seconds: float) -> str:
    """After `net up --no-controller`: where each node's RESTCONF is, for the SDN controller that
    makes the links (docs/restconf.md), and the credential it needs."""
    d = str(state)
    some = next(iter(eps.values()))
    token = some["management"].get("restconf_token_file")
    scheme = {"none": "http"}.get(some.get("restconf_tls", "mutual"), "https")
    desc = json.loads(network.Layout(state.resolve()).network.read_text())
    node_cfg = yaml.safe_load(Path(next(iter(desc["nodes"].values()))["config"]).read_text())
    cred = "none asked (settings.restconf.anonymous)" if node_cfg.get("restconf", {}).get("anonymous") else \
        f"bearer token in {token}" if token else "the management identity and password of endpoints.json"
    return "\n".join([
        f"nodes up in {seconds:.1f} s: {len(eps)} nodes, no controller: no link until your SDN controller makes them",
        *(f"  {name:14s}  RESTCONF {scheme}://{e['restconf']}" for name, e in eps.items()),
        f"  credential      {cred} (docs/restconf.md)",
        f"  endpoints       {d}/endpoints.json   (addresses, CA and SAE certificates: docs/endpoints.md)",
        f"  logs            {d}/logs/",
        "next:",
        f"  sdqkd net status --state-dir {d}",
        f"  sdqkd net down --state-dir {d}",
    ])


def token_file(state: Path) -> str:
    """The bearer-token file of the controller's API, as network.json names it (controller.token_file,
    where the harness wrote it), shown under the state dir as the user named it."""
    path = Path(json.loads(network.Layout(state).network.read_text())["controller"]["token_file"])
    try:
        return str(state / path.relative_to(state.resolve()))
    except ValueError:  # outside the state dir: the path as written
        return str(path)


def summary(state: Path, eps: dict[str, Any], status: dict[str, Any], seconds: float) -> str:
    d = str(state)
    return "\n".join([
        f"network up in {seconds:.1f} s: {len(eps)} nodes, {len(status['links'])} links producing key",
        f"  controller API  http://{status['api']}   (bearer token in {token_file(state)}: docs/controller-api.md)",
        f"  endpoints       {d}/endpoints.json   (addresses, CA and SAE certificates: docs/endpoints.md)",
        f"  logs            {d}/logs/",
        "next:",
        f"  sdqkd net status --state-dir {d}",
        f"  jq . {d}/endpoints.json",
        "  docs/quickstart.md: a key with curl, gNMI Get/Subscribe with pygnmicli",
        f"  sdqkd net down --state-dir {d}",
    ])


def _without_controller(state: Path) -> bool:
    """A state dir of `net up --no-controller` (its network.json says so)."""
    try:
        return json.loads(network.Layout(state).network.read_text()).get("harness", {}).get("controller") is False
    except (OSError, ValueError, AttributeError):
        return False


def down(state_dir: str) -> int:
    try:
        stopped = network.down(state_dir)
    except network.HarnessError as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sdqkd net down: {state_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"stopped {len(stopped)} process(es): {', '.join(stopped)}")
    return 0


STATUS_FRESH_S = 5.0  # the controller rewrites controller-status.json every second


def status(state_dir: str) -> int:
    state = Path(state_dir)
    f = state / "controller-status.json"
    if not f.exists() and _without_controller(state):
        print(f"{state_dir}: {'running' if (state / 'pids.json').exists() else 'stopped'}, started with "
              "--no-controller: the links are your SDN controller's; each node's RESTCONF and gNMI tell "
              f"their state ({state_dir}/endpoints.json)")
        return 0
    if not f.exists():
        print(f"{state_dir}: no network status here (no controller-status.json)", file=sys.stderr)
        return 2
    st = json.loads(f.read_text())
    running = (state / "pids.json").exists()  # started by `net up`
    age = time.time() - f.stat().st_mtime
    if running:
        try:  # the controller's view now; the file is refreshed only once a second
            st, age = northbound.get_status(state), 0.0
        except (OSError, ValueError, KeyError):
            pass  # not answering: show the file, with its age
    # a `net up` state dir (network.json) runs while pids.json is there; the state dir of a
    # controller started on its own (deployed across hosts) holds only its status file, which
    # it refreshes while it runs
    live = running or (not (state / "network.json").exists() and age <= STATUS_FRESH_S)
    head = f"controller API http://{st.get('api', '-')}" if live else \
        f"stopped: last status from {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f.stat().st_mtime))}"
    if running and age > STATUS_FRESH_S:
        head += f" (status {age:.0f} s old: is the controller running? see {state_dir}/logs/controller.log)"
    print(f"{state_dir}: {head}")
    print(table(st))
    return 0
