"""Other vendors' KMSs in the controller's view (ETSI GS QKD 020 peers).

A topology may name them:

    external_peers:
      - name: vendorx          # as in the gateway node's config (etsi020.external_peers[].name)
        node: B                # the sdqkd node whose LKMS speaks ETSI 020 with it
        saes: [bx1, bx2]       # SAEs served by that KMS
        rate_bps: 100000       # key rate the peer can take (020 has no call to ask for it)

Each becomes a link of the routing graph between its gateway node and a pseudo node
`ext:<name>`, with the configured rate as its capacity, unlimited without one (0 or absent): the
controller cannot learn more (ETSI 020 offers no rate or status query, and the peer is not
managed over gNMI). Its qkdl_id is the
one the gateway LKMS derives for the peer (sdqkd.lkms.registry.external_link_id).

Applications: an SAE behind a peer pairs with an SAE of its gateway node: the application is
registered on the gateway only, backed by that link. An SAE of another node, as master, pairs
with it over a relay path that leaves the sdqkd network at the gateway: the controller routes
from the SAE's node to `ext:<name>` (the peer's rate counts like a link's), installs a VIRT link
along the sdqkd part with `sdqkd-link/exit-peer` = the peer's name on every node of it, and
registers the application on the SAE's node only, backed by that VIRT link (the LKMS makes
keys on demand and the gateway hands them to the peer, runtime/lkms/relay.py). The peer's SAE
as master of such a pair is refused: its keys reach SAEs of its gateway only.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sdqkd.lkms.registry import app_id_for, external_link_id, sae_of, sae_uri

from .routing import LinkState, Router
from .topology import NAMESPACE, Topology, TopologyError

if TYPE_CHECKING:
    from sdqkd.generated.model_types import QkdApp, QkdLink

    from .controller import AppRoute, Controller



@dataclass(frozen=True)
class ExternalPeerTopo:
    name: str
    node: str
    saes: tuple[str, ...]
    rate_bps: float
    qkdl_id: str
    kms_id: str  # stands in for the peer in qkd_app.remote_qkdn_id

    @property
    def vertex(self) -> str:
        return f"ext:{self.name}"


def parse_external_peers(topo: Topology, raw: Any, source: str) -> list[ExternalPeerTopo]:
    """Check the `external_peers` section against the topology; TopologyError names each problem."""
    if raw is None:
        return []
    problems: list[str] = []
    out: list[ExternalPeerTopo] = []
    if not isinstance(raw, list):
        raise TopologyError(f"{source}: external_peers: expected a list of mappings")
    names: set[str] = set()
    for i, p in enumerate(raw):
        where = f"external_peers[{i}]"
        if not isinstance(p, dict):
            problems.append(f"{where}: expected a mapping {{name, node, saes, rate_bps}}")
            continue
        known = {"name", "node", "saes", "rate_bps", "url", "identity", "ca", "mode"}  # the last four: node config
        for k in sorted(set(p) - known):
            problems.append(f"{where}.{k}: unknown key (known: {', '.join(sorted(known))})")
        name, node, saes, rate = p.get("name"), p.get("node"), p.get("saes"), p.get("rate_bps", 0)
        if not isinstance(name, str) or not name or name in names:
            problems.append(f"{where}.name: required, a unique non-empty string")
            continue
        names.add(name)
        if node not in topo.nodes:
            problems.append(f"{where}.node: unknown node {node!r}")
            continue
        if not isinstance(saes, list) or not saes or not all(isinstance(s, str) and s for s in saes):
            problems.append(f"{where}.saes: required, a non-empty list of SAE names")
            continue
        for s in saes:
            if s in topo.saes:
                problems.append(f"{where}.saes: {s!r} is already an SAE of node {topo.saes[s].node}")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate < 0:
            problems.append(f"{where}.rate_bps: expected a number >= 0")
            continue
        nid = topo.nodes[node].id
        out.append(ExternalPeerTopo(name, node, tuple(saes), float(rate),
                                    external_link_id(nid, name),
                                    str(uuid.uuid5(NAMESPACE, f"ext-kms:{name}"))))
    if problems:
        raise TopologyError(f"{source}: " + f"\n{source}: ".join(problems))
    return out


class ExternalPeers:
    def __init__(self, topo: Topology, router: Router) -> None:
        self.peers = parse_external_peers(topo, topo.extra.get("external_peers"), topo.source)
        self.topo = topo
        for p in self.peers:
            # the peer's capacity is what the config says, unlimited where it says none (a capacity
            # of 0 made every relay path to the peer impossible while pairs at the gateway worked)
            router.add(LinkState(id=p.qkdl_id, a=p.node, b=p.vertex, up=True, eskr=p.rate_bps or math.inf))

    def peer_of(self, sae: str) -> ExternalPeerTopo | None:
        for p in self.peers:
            if sae in p.saes:
                return p
        return None

    def owns(self, route: AppRoute) -> bool:
        return any(n.startswith("ext:") for n in route.path)

    def involves(self, master: str, slave: str) -> bool:
        return self.peer_of(master) is not None or self.peer_of(slave) is not None

    async def request(self, ctl: Controller, master: str, slave: str, rate_bps: float) -> AppRoute:
        """An application between an SAE behind a peer KMS and one of its gateway node."""
        from .controller import AppRoute

        ext, local, role = (self.peer_of(master), slave, "slave") if self.peer_of(master) else \
            (self.peer_of(slave), master, "master")
        assert ext is not None
        if local not in self.topo.saes:
            raise ValueError(f"{role}: unknown SAE {local!r}; an external KMS pairs with an SAE of an sdqkd node "
                             f"(known: {', '.join(sorted(self.topo.saes))})")
        if self.topo.saes[local].node != ext.node:
            return await self._request_via(ctl, ext, master, slave, rate_bps)
        link = ctl.router.links[ext.qkdl_id]
        if link.capacity(ctl.router.horizon_s) < rate_bps:
            raise RuntimeError(f"external KMS {ext.name} takes {link.eskr:.0f} bit/s, less than {rate_bps:.0f}")
        route = AppRoute(app_id_for(master, [slave]), master, slave, rate_bps, [ext.node, ext.vertex], ext.qkdl_id,
                         virtual=False)
        await self.install(ctl, route)
        return route

    async def _request_via(self, ctl: Controller, ext: ExternalPeerTopo, master: str, slave: str,
                           rate_bps: float) -> AppRoute:
        """Our SAE `master` on another node than the gateway: a relay path to the gateway that
        leaves there for the peer (see the module doc)."""
        from .controller import AppRoute

        if self.peer_of(master) is not None:
            raise ValueError(f"master: SAE {master} behind the external KMS {ext.name} pairs with SAEs of {ext.node} only "
                             f"(not {slave}, on {self.topo.saes[slave].node})")
        src = self.topo.saes[master].node
        path = self._exit_path(ctl, src, ext, rate_bps)
        virt = str(uuid.uuid5(NAMESPACE, f"virt-exit:{src}|{ext.name}"))
        route = AppRoute(app_id_for(master, [slave]), master, slave, rate_bps, path, virt, virtual=True)
        await self.install(ctl, route)
        return route

    def _exit_path(self, ctl: Controller, src: str, ext: ExternalPeerTopo, rate_bps: float) -> list[str]:
        path = ctl.router.path(src, ext.vertex, rate_bps)
        if path is None:
            raise RuntimeError(f"no key-relay path from {src} to the external KMS {ext.name} can carry "
                               f"{rate_bps:.0f} bit/s now")
        return path

    def _peer_at_end(self, route: AppRoute) -> ExternalPeerTopo:
        return next(p for p in self.peers if p.vertex == route.path[-1])

    async def install(self, ctl: Controller, route: AppRoute) -> None:
        """(Re)install a route to a peer as it stands: at the gateway, the app backed by the peer's
        link; on a path leaving at the gateway, the VIRT link with `exit-peer` on every sdqkd node
        of it, then the app on the SAE's node."""
        from .controller import T

        ext = self._peer_at_end(route)
        node = route.path[0]
        if route.virtual:
            inner = dataclasses.replace(route, path=route.path[:-1])  # the sdqkd nodes: source .. gateway
            for n in inner.path:
                link = ctl._virt_entry(inner, n)
                link["sdqkd-node-ext:sdqkd-link"]["exit-peer"] = ext.name
                await ctl._client(n).replace_qkd_link(route.qkdl_id, link)
        entry: dict[str, Any] = {"app_id": route.app_id, "app_type": f"{T}CLIENT",
                 "server_app_id": sae_uri(route.master), "client_app_id": [sae_uri(route.slave)],
                 "backing_qkdl_id": [route.qkdl_id], "local_qkdn_id": self.topo.nodes[node].id,
                 "remote_qkdn_id": ext.kms_id, "app_qos": {"min_bandwidth": int(route.rate_bps)}}
        await ctl._client(node).replace_qkd_app(route.app_id, cast("QkdApp", entry))

    async def reroute(self, ctl: Controller, route: AppRoute) -> AppRoute:
        """A path leaving at a gateway whose links are not all up, moved onto a new path to the
        same peer (RuntimeError if there is none): installed along the new path first, then
        removed from the old path's nodes that the new one leaves out (the far end stays the
        peer: the pair's VIRT link keeps its ID, and the app on the SAE's node its backing)."""
        ext = self._peer_at_end(route)
        new = dataclasses.replace(route, path=self._exit_path(ctl, route.path[0], ext, route.rate_bps))
        await self.install(ctl, new)
        for n in route.path[:-1]:
            if n not in new.path and ctl.nodes[n].up:
                await ctl._client(n).delete_qkd_link(route.qkdl_id)
        return new

    def adopt(self, node: str, app: QkdApp, virt: dict[str, QkdLink], hops: list[str]) -> AppRoute | None:
        """A route to a peer that a previous controller installed, read back from the app on
        `node` (its SAE's node) and, for a path, the VIRT link backing it (`hops`: its next hops'
        names); None if it is not one, or not to a peer of this topology."""
        from .controller import AppRoute, qos_of

        ext = next((p for p in self.peers if p.kms_id == app.get("remote_qkdn_id")), None)
        master, slaves = sae_of(app.get("server_app_id", "")), [sae_of(c) for c in app.get("client_app_id", [])]
        backing = app.get("backing_qkdl_id", [])
        if ext is None or len(slaves) != 1 or not backing:
            return None
        local = slaves[0] if master in ext.saes else master
        if local not in self.topo.saes or self.topo.saes[local].node != node:
            return None
        if node == ext.node and backing == [ext.qkdl_id]:
            path, virtual = [node, ext.vertex], False
        elif (virt.get(backing[0], {}).get("sdqkd-node-ext:sdqkd-link") or {}).get("exit-peer") == ext.name \
                and hops and hops[-1] == ext.node:
            path, virtual = [node, *hops, ext.vertex], True
        else:
            return None
        qos = app.get("app_qos") or {}
        return AppRoute(app.get("app_id", ""), master, slaves[0], float(qos.get("min_bandwidth", 0) or 0), path,
                        backing[0], virtual=virtual, priority=int(app.get("app_priority", 0)), qos=qos_of(qos))
