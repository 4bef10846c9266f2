"""Topology files (docs/topology.md): nodes, fibre links, SAEs, optional explicitly registered
applications (`apps:`; any other pair is registered by its first key request) and `settings:`,
checked whole before anything starts. Every problem is reported as `FILE:LINE: where: what is
wrong`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sdqkd import schemas
from sdqkd.errors import SdqkdError
from sdqkd.lkms.registry import NAMESPACE  # IDs derived from names: reproducible topologies
from sdqkd.yamlfile import Lines, read_yaml_lines


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
    extra: dict[str, Any] = field(default_factory=dict)  # name, settings (as plain data)
    settings: schemas.Settings = field(default_factory=schemas.Settings)
    apps: list[AppSpec] = field(default_factory=list)
    files: Path = Path(".")  # where the files it names (an external peer's `ca`) are relative to

    def peer_names(self, name: str) -> dict[str, str]:
        """Node ID -> name of every other node (a node config's `peers`: relays reach any of them)."""
        return {n.id: n.name for n in self.nodes.values() if n.name != name}

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
    from sdqkd.engine.keyrate import asymptotic

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


def parse(data: Any, source: str = "<dict>", lines: Lines | None = None, files: Path | None = None) -> Topology:
    """Check a whole topology (docs/topology.md) against the schema (`sdqkd.schemas`) and its
    cross-references (names, duplicates, reach); every problem is reported at once as
    `FILE[:LINE]: place: what`. An entry the schema refuses is still checked for references, so
    one run names every mistake. The files it names are relative to `files`, by default the
    folder of `source` (network.json passes its own folder: its copy names the build's files)."""
    lines = lines or Lines(source)
    files = files if files is not None else files_dir(source)
    model, problems = schemas.problems(schemas.TopologyFile, data, lines)
    if not isinstance(data, dict):
        raise TopologyError("\n".join(problems))
    names: set[str] = set()
    nodes = _nodes(schemas.entries(schemas.NodeEntry, data.get("nodes")), names, lines, problems)
    links = _links(schemas.entries(schemas.LinkEntry, data.get("links")), names, lines, problems)
    saes = _saes(schemas.entries(schemas.SaeEntry, data.get("saes")), names, lines, problems)
    apps = _apps(schemas.entries(schemas.AppEntry, data.get("apps")), saes, lines, problems)
    _external_refs(schemas.entries(schemas.ExternalPeerEntry, data.get("external_peers")), names, saes, lines,
                   problems, files)
    if model is not None and model.settings.base_port is not None:
        from sdqkd.harness.network import SERVICES

        base, n, per = model.settings.base_port, len(model.nodes), len(SERVICES)
        if base + per * n - 1 > 65535:
            problems.append(f"{lines.where(('settings', 'base_port'))}: settings.base_port: {base} leaves no room "
                            f"for {per} ports per node ({n} nodes): at most {65536 - per * n}")
    if problems or model is None:
        raise TopologyError("\n".join(problems))
    settings = model.settings.model_dump(exclude_none=True)
    extra: dict[str, Any] = {"settings": settings} if settings else {}
    extra.update({k: data[k] for k in ("name", "external_peers") if k in data})
    topo = Topology(nodes=nodes, links=links, saes=saes, source=source, extra=extra, settings=model.settings,
                    apps=apps, files=files)
    from .external import parse_external_peers

    parse_external_peers(topo, data.get("external_peers"), source)  # references checked here, used by the controller
    return topo


def _str(raw: dict[str, Any], key: str) -> str | None:
    v = raw.get(key)
    return v if isinstance(v, str) and v else None


def _nodes(entries: list[tuple[int, dict[str, Any], schemas.NodeEntry | None]], names: set[str], lines: Lines,
           problems: list[str]) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    ids: set[str] = set()
    for i, raw, n in entries:
        name = _str(raw, "name")
        if name is None:
            continue  # the schema named it
        at = f"{lines.where(('nodes', i))}: nodes[{i}] ({name})"
        if name in names:
            problems.append(f"{at}: duplicate node name {name!r}")
            continue
        names.add(name)
        if n is None:
            continue
        nid = n.id or node_id(n.name)
        if nid in ids:
            problems.append(f"{at}: duplicate node id {nid}")
        ids.add(nid)
        nodes[name] = Node(name=name, id=nid, location=n.location, host=n.host or "")
    return nodes


def _links(entries: list[tuple[int, dict[str, Any], schemas.LinkEntry | None]], names: set[str], lines: Lines,
           problems: list[str]) -> list[Link]:
    from sdqkd.engine.profiles import PROFILES

    links: list[Link] = []
    seen_pairs: set[frozenset[str]] = set()
    for i, raw, ln in entries:
        a, b = _str(raw, "a"), _str(raw, "b")
        at = f"{lines.where(('links', i))}: links[{i}] ({a}-{b})"
        unknown = [end for end in (a, b) if end is not None and end not in names]
        problems += [f"{at}: unknown node {end!r} (nodes: {', '.join(sorted(names))})" for end in unknown]
        if unknown or a is None or b is None:
            continue
        if a == b:
            problems.append(f"{at}: a link needs two different nodes")
            continue
        pair = frozenset((a, b))
        if pair in seen_pairs:
            problems.append(f"{at}: duplicate link between {a} and {b}")
            continue
        seen_pairs.add(pair)
        if ln is None:
            continue
        loss = ln.loss_db if ln.loss_db is not None else ln.km * PROFILES[ln.profile].alpha_db_per_km
        reach = reach_db(ln.profile)
        if loss > reach:
            problems.append(f"{at}: {loss:.1f} dB is beyond the reach of profile {ln.profile!r} "
                            f"(no key above {reach:.1f} dB)")
            continue
        links.append(Link(a=a, b=b, km=ln.km, loss_db=round(loss, 3), profile=ln.profile, id=link_id(a, b)))
    return links


def _saes(entries: list[tuple[int, dict[str, Any], schemas.SaeEntry | None]], names: set[str], lines: Lines,
          problems: list[str]) -> dict[str, Sae]:
    saes: dict[str, Sae] = {}
    for i, raw, s in entries:
        name, node = _str(raw, "name"), _str(raw, "node")
        if name is None:
            continue
        at = f"{lines.where(('saes', i))}: saes[{i}] ({name})"
        if name in saes:
            problems.append(f"{at}: duplicate SAE name {name!r}")
        elif node is not None and node not in names:
            problems.append(f"{at}: unknown node {node!r} (nodes: {', '.join(sorted(names))})")
        elif s is not None:
            saes[name] = Sae(name=name, node=s.node)
    return saes


def _apps(entries: list[tuple[int, dict[str, Any], schemas.AppEntry | None]], saes: dict[str, Sae], lines: Lines,
          problems: list[str]) -> list[AppSpec]:
    out: list[AppSpec] = []
    for i, raw, a in entries:
        at = f"{lines.where(('apps', i))}: apps[{i}]"
        bad = False
        for role in ("master", "slave"):
            sae = _str(raw, role)
            if sae is not None and sae not in saes:
                problems.append(f"{at}.{role}: unknown SAE {sae!r} (SAEs: {', '.join(sorted(saes))})")
                bad = True
        if a is None or bad:
            continue
        if a.master == a.slave:
            problems.append(f"{at}: master and slave must differ")
            continue
        out.append(AppSpec(a.master, a.slave, float(a.rate), a.priority))
    return out


def _external_refs(entries: list[tuple[int, dict[str, Any], schemas.ExternalPeerEntry | None]], names: set[str],
                   saes: dict[str, Sae], lines: Lines, problems: list[str], files: Path) -> None:
    """External peers' references (the controller's parse_external_peers builds them afterwards)."""
    seen: set[str] = set()
    for i, raw, _peer in entries:
        name, node = _str(raw, "name"), _str(raw, "node")
        at = f"{lines.where(('external_peers', i))}: external_peers[{i}]" + (f" ({name})" if name else "")
        if name is not None and name in seen:
            problems.append(f"{at}.name: duplicate external peer {name!r}")
        seen.add(name or "")
        if node is not None and node not in names:
            problems.append(f"{at}.node: unknown node {node!r} (nodes: {', '.join(sorted(names))})")
        peer_saes = raw.get("saes")
        for sae in peer_saes if isinstance(peer_saes, list) else []:
            if isinstance(sae, str) and sae in saes:
                problems.append(f"{at}.saes: {sae!r} is already an SAE of node {saes[sae].node}")
        # from the raw entry, so that a field the schema refused hides no other mistake
        url, identity, ca = _str(raw, "url"), _str(raw, "identity"), _str(raw, "ca")
        if (url is None) != (identity is None):
            problems.append(f"{at}: give `url` and `identity` together (where the gateway dials the peer, "
                            "and the name its certificate carries)")
        if url is not None and url.startswith("http://"):
            problems.append(f"{at}.url: {url!r}: the gateway always speaks TLS to the peer (net up, net export); "
                            "give https://host:port")
        if ca is not None and not (files / ca).is_file():
            problems.append(f"{at}.ca: no such file {files / ca}")


def files_dir(source: str) -> Path:
    """Where files a topology names (an external peer's `ca`) are relative to: its file's folder."""
    return Path(source).parent if not source.startswith("<") else Path(".")


def load(path: str | Path) -> Topology:
    data, lines = read_yaml_lines(path, TopologyError)
    return parse(data, str(Path(path)), lines)
