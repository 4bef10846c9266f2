"""Topology files (DESIGN §4 contract): nodes, fibre links, SAEs and optional explicitly
registered applications (`apps: [{master, slave, rate, priority}]`; any other pair is registered
by its first key request), checked whole before anything starts. Every problem is reported as
`FILE: where: what is wrong`."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from runtime.errors import SdqkdError

# IDs derived from names: a topology without explicit IDs is reproducible
from runtime.lkms.registry import NAMESPACE


class TopologyError(SdqkdError, ValueError):
    pass


@dataclass(frozen=True)
class Node:
    name: str
    id: str
    location: str = ""
    host: str = ""  # host name or IP other hosts reach it by (`sdqkd net export`); "" = not given


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    km: float
    loss_db: float
    profile: str
    id: str

    @property
    def ends(self) -> tuple[str, str]:
        return self.a, self.b


@dataclass(frozen=True)
class Sae:
    name: str
    node: str


@dataclass(frozen=True)
class AppSpec:
    """An application registered up front: SAE `master` gets keys shared with SAE `slave`."""

    master: str
    slave: str
    rate: float = 0.0  # bit/s the path must carry (the app's min_bandwidth)
    priority: int = 0


@dataclass
class Topology:
    nodes: dict[str, Node]
    links: list[Link]
    saes: dict[str, Sae]
    source: str = "<dict>"
    extra: dict[str, Any] = field(default_factory=dict)
    apps: list[AppSpec] = field(default_factory=list)

    def link_between(self, a: str, b: str) -> Link | None:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        return None


def node_id(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"node:{name}"))


def link_id(a: str, b: str) -> str:
    x, y = sorted((a, b))
    return str(uuid.uuid5(NAMESPACE, f"link:{x}|{y}"))


@lru_cache(maxsize=32)
def reach_db(profile: str) -> float:
    """Highest loss at which the profile's asymptotic decoy-state key rate is still positive."""
    from runtime.engine.keyrate import asymptotic

    lo, hi = 0.0, 100.0
    if asymptotic(profile, lo) <= 0:
        return 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if asymptotic(profile, mid) > 0:
            lo = mid
        else:
            hi = mid
    return lo


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def parse(data: Any, source: str = "<dict>") -> Topology:
    from runtime.engine.profiles import PROFILES

    problems: list[str] = []
    if not isinstance(data, dict):
        raise TopologyError(f"{source}: expected a mapping with nodes, links and saes")
    for k in sorted(set(data) - {"nodes", "links", "saes", "apps", "name", "settings", "external_peers"}):
        problems.append(f"{k}: unknown key (known: nodes, links, saes, apps, name, settings, external_peers)")
    nodes: dict[str, Node] = {}
    ids: set[str] = set()
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        problems.append("nodes: required, a non-empty list")
        raw_nodes = []
    for i, n in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        if not isinstance(n, dict) or not isinstance(n.get("name"), str) or not n["name"]:
            problems.append(f"{where}: needs a non-empty `name`")
            continue
        name = n["name"]
        if name in nodes:
            problems.append(f"{where}: duplicate node name {name!r}")
            continue
        nid = n.get("id", node_id(name))
        try:
            nid = str(uuid.UUID(str(nid)))
        except ValueError:
            problems.append(f"{where} ({name}): id {nid!r} is not a UUID")
            continue
        if nid in ids:
            problems.append(f"{where} ({name}): duplicate node id {nid}")
        ids.add(nid)
        host = n.get("host", "")
        if not isinstance(host, str):
            problems.append(f"{where} ({name}): host must be a host name or IP address, got {host!r}")
            host = ""
        nodes[name] = Node(name=name, id=nid, location=str(n.get("location", "")), host=host)
    links: list[Link] = []
    seen_pairs: set[frozenset[str]] = set()
    for i, ln in enumerate(data.get("links") or []):
        where = f"links[{i}]"
        if not isinstance(ln, dict):
            problems.append(f"{where}: expected a mapping {{a, b, km}}")
            continue
        a, b = ln.get("a"), ln.get("b")
        where = f"{where} ({a}-{b})"
        bad = False
        for end in (a, b):
            if end not in nodes:
                problems.append(f"{where}: unknown node {end!r}")
                bad = True
        if a == b and not bad:
            problems.append(f"{where}: a link needs two different nodes")
            bad = True
        km = _num(ln.get("km"))
        if km is None or not math.isfinite(km) or km < 0:
            problems.append(f"{where}: km must be a number >= 0, got {ln.get('km')!r}")
            bad = True
        profile = ln.get("profile", "commercial")
        if profile not in PROFILES:
            problems.append(f"{where}: unknown profile {profile!r} (known: {', '.join(sorted(PROFILES))})")
            bad = True
        loss = ln.get("loss_db")
        if loss is None and km is not None and profile in PROFILES:
            loss = km * PROFILES[profile].alpha_db_per_km
        loss = _num(loss)
        if loss is None or not math.isfinite(loss) or loss < 0:
            problems.append(f"{where}: loss_db must be a number >= 0, got {ln.get('loss_db')!r}")
            bad = True
        if bad or km is None or loss is None:
            continue
        a, b = str(a), str(b)  # both named nodes of the topology (checked above)
        pair = frozenset((a, b))
        if pair in seen_pairs:
            problems.append(f"{where}: duplicate link between {a} and {b}")
            continue
        seen_pairs.add(pair)
        reach = reach_db(profile)
        if loss > reach:
            problems.append(f"{where}: {loss:.1f} dB is beyond the reach of profile {profile!r} "
                            f"(no key above {reach:.1f} dB)")
            continue
        links.append(Link(a=a, b=b, km=km, loss_db=round(loss, 3), profile=profile, id=link_id(a, b)))
    saes: dict[str, Sae] = {}
    for i, s in enumerate(data.get("saes") or []):
        where = f"saes[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
            problems.append(f"{where}: needs a non-empty `name`")
            continue
        if s["name"] in saes:
            problems.append(f"{where}: duplicate SAE name {s['name']!r}")
            continue
        if s.get("node") not in nodes:
            problems.append(f"{where} ({s['name']}): unknown node {s.get('node')!r}")
            continue
        saes[s["name"]] = Sae(name=s["name"], node=s["node"])
    apps = _apps(data.get("apps"), saes, problems)
    if problems:
        raise TopologyError(f"{source}: " + f"\n{source}: ".join(problems))
    topo = Topology(nodes=nodes, links=links, saes=saes, source=source,
                    extra={k: data[k] for k in ("name", "settings", "external_peers") if k in data}, apps=apps)
    from .external import parse_external_peers

    parse_external_peers(topo, data.get("external_peers"), source)  # checked here, used by the controller
    return topo


def _apps(raw: Any, saes: dict[str, Sae], problems: list[str]) -> list[AppSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append("apps: expected a list of {master, slave, rate, priority}")
        return []
    out: list[AppSpec] = []
    for i, a in enumerate(raw):
        where = f"apps[{i}]"
        if not isinstance(a, dict):
            problems.append(f"{where}: expected a mapping {{master, slave, rate, priority}}")
            continue
        for k in sorted(set(a) - {"master", "slave", "rate", "priority"}):
            problems.append(f"{where}.{k}: unknown key (known: master, slave, rate, priority)")
        bad = False
        for role in ("master", "slave"):
            if a.get(role) not in saes:
                problems.append(f"{where}.{role}: unknown SAE {a.get(role)!r}")
                bad = True
        if not bad and a["master"] == a["slave"]:
            problems.append(f"{where}: master and slave must differ")
            bad = True
        rate = _num(a.get("rate", 0))
        if rate is None or not math.isfinite(rate) or rate < 0:
            problems.append(f"{where}.rate: expected bit/s >= 0, got {a.get('rate')!r}")
            bad = True
        prio = a.get("priority", 0)
        if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio < 2**32:
            problems.append(f"{where}.priority: expected an integer 0..4294967295, got {prio!r}")
            bad = True
        if not bad:
            out.append(AppSpec(a["master"], a["slave"], float(rate or 0), int(prio)))
    return out


def load(path: str | Path) -> Topology:
    from runtime.yamlfile import read_yaml

    return parse(read_yaml(path, TopologyError), str(Path(path)))
