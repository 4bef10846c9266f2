"""The SDN controller: holds the topology, talks to every node only through the generated gNMI
client (no back door), turns PHYS links up on both ends, registers applications, computes
key-relay paths and installs VIRT links along them, watches every node with STREAM
subscriptions and reroutes virtual links when a link or node goes down.

Application registration (ETSI GS QKD 015 clause 5.2): a node emits `sdqkdn_application_new`
when an SAE's first request names a pair it has no application for; the controller computes
the path and installs the qkd_app on both end nodes (VIRT links first, the far end's app
before the requesting node's, so the far end knows the pair before the first Reserve arrives).
A same-node pair (both SAEs on the notifying node, which serves it itself) is only recorded.
A pair it cannot serve gets a qkd_app without backing link at the requesting node (with
remote_qkdn_id when the SAEs are known but no path exists), which that node reports as the
reason of its 503. `sdqkdn_application_disconnected` removes the application at the other end
and the path's VIRT links no other application uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc

from sdqkd.generated import model_types as t
from sdqkd.generated import paths
from sdqkd.generated.client import ModelClient
from sdqkd.generated.gnmi_support import decode_value, join
from sdqkd.generated.proto.gnmi import gnmi_pb2
from sdqkd.lkms.registry import app_id_for, sae_of, sae_uri
from sdqkd.pki import TlsFiles
from sdqkd.tls import aio_channel

from .external import ExternalPeers
from .routing import LinkState, Router
from .topology import NAMESPACE, Topology
from .topology import Link as TopoLink

log = logging.getLogger("sdqkd.controller")

T = "etsi-qkd-node-types:"
_LINK = paths.qkd_node().qkd_links().qkd_link()
_POOL = paths.qkd_node().sdqkd_key_store().pool()
# what the controller watches on every node (one STREAM subscription)
WATCHED: list[gnmi_pb2.Path] = [_LINK.qkdl_performance().path(), _LINK.qkdl_status, _LINK.qkdl_enable,
                                _LINK.sdqkd_link().engine_state().paused, _POOL.path(),
                                paths.sdqkdn_link_down(), paths.alarm(), paths.sdqkdn_application_new(),
                                paths.sdqkdn_application_disconnected()]


@dataclass(frozen=True)
class NodeEndpoint:
    """How the controller and peers reach one node."""

    name: str
    id: str
    gnmi: str
    peer: str  # inter-node endpoint: LKMS key sync (KeySync gRPC)
    channel: str = ""  # the engines' classical channel (runtime/node/channel.py)


EVENTS_KEPT = 1000  # Controller.events: the latest this many
QOS_KEPT = ("max_bandwidth", "jitter", "ttl", "clients_shared_path_enable")  # app_qos carried to both ends


def qos_of(raw: Any) -> t.AppQos:
    """The app_qos leaves of a request or entry that the controller keeps (not min_bandwidth)."""
    items = raw.items() if isinstance(raw, dict) else ()
    return cast(t.AppQos, {k: v for k, v in items if k in QOS_KEPT and v is not None})


@dataclass
class AppRoute:
    app_id: str
    master: str  # SAE names
    slave: str
    rate_bps: float
    path: list[str]  # node names, master's node first
    qkdl_id: str  # the PHYS link (direct) or the VIRT link serving the pair; "" on one node
    virtual: bool
    priority: int = 0
    more_slaves: list[str] = field(default_factory=list)  # further slaves of a multicast application
    qos: t.AppQos = field(default_factory=lambda: t.AppQos())  # as requested; min_bandwidth is rate_bps


@dataclass
class NodeView:
    up: bool = False
    seen: bool = False  # answered at least once (a later answer after a loss = came back)
    client: ModelClient | None = None
    channel: grpc.aio.Channel | None = None
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # qkdl_id -> latest performance/state
    store: dict[str, Any] = field(default_factory=dict)


class Controller:
    def __init__(self, topo: Topology, endpoints: dict[str, NodeEndpoint], *, tls: TlsFiles | None = None,
                 credentials: tuple[str, str] | None = None, horizon_s: float = 60.0):
        missing = sorted(set(topo.nodes) - set(endpoints))
        if missing:
            raise ValueError(f"no endpoint for node(s) {missing}")
        self.topo = topo
        self.endpoints = endpoints
        self.tls = tls
        self.credentials = credentials
        self.router = Router(horizon_s)
        for link in topo.links:
            self.router.add(LinkState(id=link.id, a=link.a, b=link.b, up=False))
        self.external = ExternalPeers(topo, self.router)  # other vendors' KMSs (ETSI 020)
        self.nodes = {name: NodeView() for name in topo.nodes}
        self.apps: dict[str, AppRoute] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._lock = asyncio.Lock()  # provisioning steps run one at a time
        # the latest events (registrations with their path, releases, reroutes, nodes up and down,
        # alarms), for diagnostics and tests; bounded: an unbounded queue nobody read grew with
        # every alarm for as long as the controller ran
        self.events: deque[tuple[str, Any]] = deque(maxlen=EVENTS_KEPT)

    # ------------------------------------------------------------------ connections

    def _channel(self, ep: NodeEndpoint) -> grpc.aio.Channel:
        opts = [("grpc.keepalive_time_ms", 2000), ("grpc.keepalive_timeout_ms", 2000),
                ("grpc.keepalive_permit_without_calls", 1)]
        return aio_channel(ep.gnmi, self.tls, opts)

    def _client(self, name: str) -> ModelClient:
        view = self.nodes[name]
        if view.client is None:
            ep = self.endpoints[name]
            view.channel = self._channel(ep)
            user, pw = self.credentials or (None, None)
            view.client = ModelClient(view.channel, username=user, password=pw)
        return view.client

    async def start(self, provision: bool = True) -> None:
        for name in self.topo.nodes:
            self._tasks.append(asyncio.create_task(self._watch(name), name=f"watch-{name}"))
        if provision:
            await asyncio.gather(*(self._wait_node(n) for n in self.topo.nodes))
            await self.provision_links()
            if self.topo.apps:
                self._spawn(self.register_topology_apps())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for view in self.nodes.values():
            if view.channel is not None:
                await view.channel.close()

    async def _wait_node(self, name: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self.nodes[name].up:
            if loop.time() > end:
                raise TimeoutError(f"node {name} ({self.endpoints[name].gnmi}) did not answer in {timeout:.0f} s")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ provisioning

    def _phys_entry(self, link: TopoLink, local: str, remote: str, role: str) -> t.QkdLink:
        ext: t.SdqkdLink = {
            "classical-endpoint": self.endpoints[remote].peer,
            "fibre-length-km": f"{link.km:.3f}", "fibre-loss-db": f"{link.loss_db:.3f}",
            "device-profile": link.profile,
        }
        if self.endpoints[remote].channel:
            ext["channel-endpoint"] = self.endpoints[remote].channel
        return {
            "qkdl_id": link.id, "qkdl_enable": True, "qkdl_type": f"{T}PHYS",
            "qkdl_local": {"qkdn_id": self.topo.nodes[local].id},
            "qkdl_remote": {"qkdn_id": self.topo.nodes[remote].id},
            "phys_channel_att": f"{link.loss_db:.3f}", "phys_qkd_role": f"{T}{role}",
            "sdqkd-node-ext:sdqkd-link": ext,
        }

    async def provision_link(self, link: TopoLink) -> None:
        """The same qkdl_id on both ends, local/remote swapped; a is the transmitter."""
        await asyncio.gather(
            self._client(link.a).create_qkd_link(self._phys_entry(link, link.a, link.b, "TRANSMITTER")),
            self._client(link.b).create_qkd_link(self._phys_entry(link, link.b, link.a, "RECEIVER")),
        )

    async def provision_links(self, only_node: str | None = None) -> None:
        async with self._lock:
            links = [ln for ln in self.topo.links if only_node is None or only_node in ln.ends]
            await asyncio.gather(*(self.provision_link(ln) for ln in links
                                   if self.nodes[ln.a].up and self.nodes[ln.b].up))

    async def request_keys(self, master: str, slave: str, rate_bps: float = 0.0, *, priority: int = 0,
                           first: str | None = None, more_slaves: tuple[str, ...] = (),
                           qos: dict[str, Any] | None = None) -> AppRoute:
        """The northbound call: give SAE `master` keys shared with SAE `slave` at `rate_bps`.
        `first`: the node to install the app on last (the one whose SAE waits for it);
        `more_slaves`: further slaves of a multicast application (on the slave's node);
        `qos`: the app_qos the registering request asked for, kept at both ends."""
        if self.external.involves(master, slave) and not more_slaves:
            async with self._lock:
                route = await self.external.request(self, master, slave, rate_bps)
                self.apps[route.app_id] = route
                return route
        # each refusal names the member of the request that is wrong (as the northbound API answers it)
        for role, sae in (("master", master), ("slave", slave), *(("more_slaves", s) for s in more_slaves)):
            if sae not in self.topo.saes:
                raise ValueError(f"{role}: unknown SAE {sae!r} (known: {self._known_saes()})")
        if len({master, slave, *more_slaves}) != 2 + len(more_slaves):
            raise ValueError("slave: master and slave SAEs must all differ")
        if rate_bps < 0:
            raise ValueError(f"rate: must be >= 0 bit/s, got {rate_bps}")
        src, dst = self.topo.saes[master].node, self.topo.saes[slave].node
        if any(self.topo.saes[s].node != dst for s in more_slaves):
            raise ValueError("more_slaves: the slave SAEs of one application must sit on one node")
        async with self._lock:
            route = self._route(master, slave, src, dst, rate_bps)
            route.priority, route.more_slaves = priority, list(more_slaves)
            route.qos = qos_of(qos)
            route.app_id = app_id_for(master, [slave, *more_slaves])
            # recorded before the waiting node's Set, which answers its SAE at once
            before, self.apps[route.app_id] = self.apps.get(route.app_id), route
            try:
                await self._install(route, first)
            except BaseException:
                if before is None:
                    self.apps.pop(route.app_id, None)
                else:
                    self.apps[route.app_id] = before
                raise
            return route

    def _known_saes(self) -> str:
        """The SAEs a request may name: the topology's and those behind external KMSs."""
        return ", ".join(sorted([*self.topo.saes, *(s for p in self.external.peers for s in p.saes)]))

    def _route(self, master: str, slave: str, src: str, dst: str, rate_bps: float) -> AppRoute:
        app_id = app_id_for(master, [slave])
        if src == dst:  # served by the node itself from its own random keys: no link, no path
            return AppRoute(app_id, master, slave, rate_bps, [src], "", virtual=False)
        direct = self.topo.link_between(src, dst)
        if direct is not None and self.router.links[direct.id].up:
            return AppRoute(app_id, master, slave, rate_bps, [src, dst], direct.id, virtual=False)
        path = self.router.path(src, dst, rate_bps)
        if path is None:
            raise RuntimeError(f"no key-relay path from {src} to {dst} can carry {rate_bps:.0f} bit/s now")
        virt = str(uuid.uuid5(NAMESPACE, f"virt:{src}|{dst}"))
        return AppRoute(app_id, master, slave, rate_bps, path, virt, virtual=len(path) > 2)

    def _virt_entry(self, route: AppRoute, node: str) -> t.QkdLink:
        path = route.path
        i = path.index(node)
        ids = self.topo.nodes
        entry: t.QkdLink = {
            "qkdl_id": route.qkdl_id, "qkdl_enable": True, "qkdl_type": f"{T}VIRT",
            "qkdl_local": {"qkdn_id": ids[node].id},
            "qkdl_remote": {"qkdn_id": ids[path[-1] if i < len(path) - 1 else path[0]].id},
            "virt_bandwidth": int(route.rate_bps),
            "sdqkd-node-ext:sdqkd-link": {"classical-endpoint": self.endpoints[path[-1] if i == 0 else path[0]].peer},
        }
        if i > 0:
            entry["virt_prev_hop"] = ids[path[i - 1]].id
        if i < len(path) - 1:
            # the rest of the path, adjacent node first and far end last: what each trusted
            # node needs to forward a relayed key (ETSI leaves the list's order to the user)
            entry["virt_next_hop"] = [ids[n].id for n in path[i + 1:]]
        return entry

    def _app_entry(self, route: AppRoute, local: str, remote: str) -> t.QkdApp:
        return {
            "app_id": route.app_id, "app_type": f"{T}CLIENT",
            "server_app_id": sae_uri(route.master),
            "client_app_id": [sae_uri(s) for s in (route.slave, *route.more_slaves)],
            "backing_qkdl_id": [route.qkdl_id] if route.qkdl_id else [],
            "local_qkdn_id": self.topo.nodes[local].id, "remote_qkdn_id": self.topo.nodes[remote].id,
            "app_qos": {**route.qos, "min_bandwidth": int(route.rate_bps)},
            "app_priority": route.priority,
        }

    async def _install(self, route: AppRoute, first: str | None = None) -> None:
        """VIRT links along the path, then the app at the far end, then at `first` (the node
        whose SAE is waiting; default the master's)."""
        if route.virtual:
            await asyncio.gather(*(self._client(n).replace_qkd_link(route.qkdl_id, self._virt_entry(route, n))
                                   for n in route.path))
        src, dst = route.path[0], route.path[-1]
        near = first if first in (src, dst) else src
        far = dst if near == src else src
        if far != near:
            await self._client(far).replace_qkd_app(route.app_id, self._app_entry(route, far, near))
        await self._client(near).replace_qkd_app(route.app_id, self._app_entry(route, near, far))

    # ------------------------------------------------------------------ registration workflow

    async def _application_new(self, node: str, content: dict[str, Any]) -> None:
        """`sdqkdn_application_new` from `node`: provision the pair, or say why not."""
        app = next((v for k, v in content.items() if k.endswith("qkd_application")), content)
        master = sae_of(app.get("server_app_id", ""))
        slaves = [sae_of(c) for c in app.get("client_app_id", [])]
        rate = float((app.get("app_qos") or {}).get("min_bandwidth", 0) or 0)
        app_id = app_id_for(master, slaves)
        remote: str | None = None
        if self._served_by(node, master, slaves):
            # the node serves it from its own keys and holds its qkd_app already: only recorded
            # (a Set now could land after the node disconnected it and bring it back)
            async with self._lock:
                self.apps[app_id] = AppRoute(app_id, master, slaves[0], rate, [node], "", virtual=False,
                                             priority=int(app.get("app_priority", 0)), more_slaves=slaves[1:],
                                         qos=qos_of(app.get("app_qos")))
            log.info("application %s registered by node %s: %s -> %s on that node", app_id, node, master,
                     ",".join(slaves))
            self.events.append(("app-registered", (app_id, (node,))))
            return
        try:
            if not slaves:
                raise ValueError("no slave SAE")
            route = await self.request_keys(master, slaves[0], rate, first=node, priority=int(app.get("app_priority", 0)),
                                            more_slaves=tuple(slaves[1:]), qos=app.get("app_qos"))
            log.info("application %s registered by node %s: %s -> %s over %s", app_id, node, master, slaves[0],
                     route.path)
            self.events.append(("app-registered", (app_id, tuple(route.path))))
            return
        except ValueError as e:
            log.warning("application %s from node %s refused: %s", app_id, node, e)
        except RuntimeError as e:
            log.warning("application %s from node %s: %s", app_id, node, e)
            other = [self.topo.saes[s].node for s in (master, *slaves) if s in self.topo.saes]
            remote = next((self.topo.nodes[n].id for n in other if n != node), None)
            # an external KMS's SAE: the ID standing for that KMS (without a remote the node told
            # its SAE the controller did not know the pair)
            ext = next((p for s in (master, *slaves) if (p := self.external.peer_of(s)) is not None), None)
            remote = remote or (ext.kms_id if ext is not None else None)
        except grpc.aio.AioRpcError as e:
            log.warning("application %s: provisioning failed: %s", app_id, e.details())
            return
        # a qkd_app without backing link: the node answers its SAE with the reason
        entry: t.QkdApp = {"app_id": app_id, "app_type": f"{T}CLIENT", "server_app_id": sae_uri(master),
                           "client_app_id": [sae_uri(s) for s in slaves],
                           "local_qkdn_id": self.topo.nodes[node].id, "backing_qkdl_id": []}
        if remote is not None:
            entry["remote_qkdn_id"] = remote
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._client(node).replace_qkd_app(app_id, entry)

    def _served_by(self, node: str, master: str, slaves: list[str]) -> bool:
        """Every SAE of the application attached to `node` (a same-node pair)."""
        saes = self.topo.saes
        return bool(slaves) and all(s in saes and saes[s].node == node for s in (master, *slaves))

    async def _application_disconnected(self, node: str, app_id: str) -> None:
        """Release what the application held: its other end and the path's unused VIRT links."""
        async with self._lock:
            route = self.apps.pop(app_id, None)
            if route is None:  # provisioned before this controller (re)started: its ends are unknown
                for n, view in self.nodes.items():
                    if n != node and view.up:  # deleting an absent entry is accepted (gNMI 3.4.6)
                        with contextlib.suppress(grpc.aio.AioRpcError):
                            await self._client(n).delete_qkd_app(app_id)
                return
            for n in dict.fromkeys((route.path[0], route.path[-1])):
                if n != node and n in self.nodes and self.nodes[n].up:  # (not an external KMS's pseudo node)
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await self._client(n).delete_qkd_app(app_id)
            if route.virtual and not any(r.qkdl_id == route.qkdl_id for r in self.apps.values()):
                for n in route.path:
                    if n in self.nodes and self.nodes[n].up:  # (not an external KMS's pseudo node)
                        with contextlib.suppress(grpc.aio.AioRpcError):
                            await self._client(n).delete_qkd_link(route.qkdl_id)
        log.info("application %s disconnected at node %s: released", app_id, node)
        self.events.append(("app-released", app_id))

    async def _adopt_apps(self, name: str) -> None:
        """Applications a previous controller provisioned (this one restarted since): their
        routes, read back from the master's node (its qkd_app, and the VIRT link's next hops),
        so that they are rerouted and released like the ones this controller provisions."""
        client = self._client(name)
        try:
            apps, links = await asyncio.gather(client.list_qkd_app(), client.list_qkd_link())
        except grpc.aio.AioRpcError as e:
            log.info("node %s: applications not read back: %s", name, e.details())
            return
        by_id = {n.id: n.name for n in self.topo.nodes.values()}
        virt = {ln["qkdl_id"]: ln for ln in links if str(ln.get("qkdl_type", "")).endswith("VIRT")}
        async with self._lock:
            for a in apps:
                master, slaves = sae_of(a.get("server_app_id", "")), [sae_of(c) for c in a.get("client_app_id", [])]
                app_id, remote = a.get("app_id", ""), by_id.get(str(a.get("remote_qkdn_id", "")))
                backing = list(a.get("backing_qkdl_id", []))
                hops = [by_id.get(str(h), "?") for h in virt.get(backing[0], {}).get("virt_next_hop", [])] if backing else []
                if app_id in self.apps:
                    continue
                if (ext := self.external.adopt(name, a, virt, hops)) is not None:
                    self.apps[app_id] = ext  # a pair with another vendor's KMS, at or through its gateway
                    log.info("app %s adopted from node %s: path %s", app_id, name, ext.path)
                    continue
                if not slaves or master not in self.topo.saes or self.topo.saes[master].node != name or remote is None:
                    continue
                if remote == name:
                    path, qkdl = [name], ""
                elif backing and backing[0] in virt:
                    path, qkdl = [name, *hops], backing[0]
                elif backing:
                    path, qkdl = [name, remote], backing[0]
                else:
                    continue
                rate = float((a.get("app_qos") or {}).get("min_bandwidth", 0) or 0)
                self.apps[app_id] = AppRoute(app_id, master, slaves[0], rate, path, qkdl, virtual=len(path) > 2,
                                             priority=int(a.get("app_priority", 0)), more_slaves=slaves[1:],
                                             qos=qos_of(a.get("app_qos")))
                log.info("app %s adopted from node %s: path %s", app_id, name, path)

    async def register_topology_apps(self) -> None:
        """The topology's `apps:` (explicit registration), retried until each has a path."""
        pending = list(self.topo.apps)
        while pending:
            for a in list(pending):
                try:
                    await self.request_keys(a.master, a.slave, a.rate, priority=a.priority)
                    pending.remove(a)
                except (RuntimeError, grpc.aio.AioRpcError) as e:
                    log.info("topology app %s -> %s not yet: %s", a.master, a.slave, e)
            if pending:
                await asyncio.sleep(1.0)

    async def _reroute(self, reason: str) -> None:
        """Move every application whose path uses a link that is down onto a new path."""
        async with self._lock:
            for route in list(self.apps.values()):
                if self.external.owns(route):
                    # to another vendor's KMS: the sdqkd part of a path that leaves at a gateway
                    # (a pair at the gateway itself is reached from there only: nothing to move)
                    if route.virtual and self._broken(route.path[:-1]):
                        await self._move(route, reason, lambda r: self.external.reroute(self, r))
                elif self._broken(route.path):
                    await self._move(route, reason, self._reroute_inside)

    def _broken(self, path: list[str]) -> bool:
        """A hop of the path whose link is missing or down."""
        return any(not (ln := self.topo.link_between(*h)) or not self.router.links[ln.id].up
                   for h in zip(path, path[1:]))

    async def _reroute_inside(self, route: AppRoute) -> AppRoute:
        """A new path between the same nodes (RuntimeError if none): the old path's nodes it
        leaves out lose the VIRT link, then the new path is installed."""
        new = self._route(route.master, route.slave, route.path[0], route.path[-1], route.rate_bps)
        new.app_id, new.priority, new.more_slaves = route.app_id, route.priority, route.more_slaves
        for n in route.path:
            if n not in new.path and self.nodes[n].up:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._client(n).delete_qkd_link(route.qkdl_id)
        await self._install(new)
        return new

    async def _move(self, route: AppRoute, reason: str,
                    how: Callable[[AppRoute], Awaitable[AppRoute]]) -> None:
        """One application onto the path `how` finds and installs; said in the log and events."""
        try:
            new = await how(route)
        except RuntimeError as e:
            log.warning("app %s -> %s: %s (%s)", route.master, route.slave, e, reason)
            self.events.append(("unroutable", route.app_id))
            return
        except grpc.aio.AioRpcError as e:
            log.warning("app %s -> %s: reinstall failed: %s", route.master, route.slave, e.details())
            return
        self.apps[route.app_id] = new
        log.info("app %s -> %s rerouted %s -> %s (%s)", route.master, route.slave, "-".join(route.path),
                 "-".join(new.path), reason)
        self.events.append(("rerouted", route.app_id))

    # ------------------------------------------------------------------ monitoring

    async def _watch(self, name: str) -> None:
        """Keep a STREAM subscription on the node; on loss mark it down, on return re-provision."""
        view = self.nodes[name]
        backoff = 0.2
        while True:
            client = self._client(name)
            try:
                async for resp in client.subscribe(WATCHED, mode="ON_CHANGE"):
                    if resp.sync_response:
                        came_back = view.seen and not view.up
                        first = not view.seen
                        view.up = view.seen = True
                        backoff = 0.2
                        self.events.append(("node-up", name))
                        # the sync's updates came while the node was not up yet; a link whose
                        # state then stays put (a paused one) would never be judged again
                        for lid, ls in list(self.router.links.items()):
                            if name in (ls.a, ls.b):
                                self._update_router(lid)
                        if came_back:
                            self._spawn(self._node_back(name))
                        if first:
                            self._spawn(self._adopt_apps(name))
                    elif resp.HasField("update"):
                        self._absorb(name, resp.update)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.info("node %s: stream ended (%s)", name, e.code().name)
            except Exception:  # a bug of ours in handling what came: logged, and the node watched again
                log.exception("node %s: watch failed; subscribing again", name)
            if view.up:
                view.up = False
                await self._node_lost(name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _absorb(self, name: str, n: gnmi_pb2.Notification) -> None:
        """Fold one notification of the watch stream into the node's view (by path elements)."""
        view = self.nodes[name]
        for u in n.update:
            elems = join(n.prefix, u.path).elem
            names = [e.name.split(":")[-1] for e in elems]
            v = decode_value(u.val)
            if names[:3] == ["qkd_node", "qkd_links", "qkd_link"] and len(names) > 3:
                lid = elems[2].key["qkdl_id"]
                view.links.setdefault(lid, {})["qber" if "phys_perf" in names else names[-1]] = v
                if lid in self.router.links:
                    self._update_router(lid)
            elif names[:3] == ["qkd_node", "sdqkd-key-store", "pool"] and len(names) > 3:
                lid = elems[2].key["qkdl-id"]
                view.store.setdefault(lid, {})[names[-1]] = v
                if lid in self.router.links:
                    self._update_router(lid)
            elif names and names[0] in ("sdqkdn_link_down", "alarm"):
                self.events.append((names[0], v))
            elif names and names[0] == "sdqkdn_application_new":
                self._spawn(self._application_new(name, v))
            elif names and names[0] == "sdqkdn_application_disconnected":
                gone: dict[str, Any] = next((x for k, x in v.items() if k.endswith("qkd_application")), {})
                self._spawn(self._application_disconnected(name, str(gone.get("app_id", ""))))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _update_router(self, lid: str) -> None:
        ls = self.router.links[lid]
        if ls.a not in self.nodes or ls.b not in self.nodes:
            # an external KMS's link (the gateway reports it too): its capacity is configured, not
            # measured (external.py). Looked up as a node, it ended the gateway's watch with a
            # KeyError, and the gateway never counted as up
            return
        a, b = self.nodes[ls.a], self.nodes[ls.b]
        la, lb = a.links.get(lid, {}), b.links.get(lid, {})
        status_ok = all(x.get("qkdl_status", f"{T}ACTIVE") == f"{T}ACTIVE" for x in (la, lb))
        was = ls.up
        ls.up = a.up and b.up and status_ok and ("eskr" in la or "skr" in la)
        ls.eskr = float(la.get("eskr", la.get("skr", 0)) or 0)
        ls.consumption = float(la.get("expected_consumption", 0) or 0)
        stored = [float(v.store.get(lid, {}).get("stored-bits", 0) or 0) for v in (a, b)]
        ls.stored_bits = min(stored)
        if was and not ls.up:
            self._spawn(self._reroute(f"link {ls.a}-{ls.b} down"))  # (held: the loop keeps only weak references)

    async def _node_lost(self, name: str) -> None:
        log.warning("node %s lost", name)
        self.events.append(("node-down", name))
        for link in self.topo.links:
            if name in link.ends:
                self.router.links[link.id].up = False
                peer = link.b if link.a == name else link.a
                if self.nodes[peer].up:  # ETSI 015 status on the surviving end
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await self._client(peer).update_qkd_link(link.id, {"qkdl_status": f"{T}OFF"})
        await self._reroute(f"node {name} down")

    async def _node_back(self, name: str) -> None:
        log.info("node %s back: provisioning its links", name)
        await self.provision_links(only_node=name)
        for link in self.topo.links:
            if name in link.ends:
                for end in link.ends:
                    if self.nodes[end].up:
                        with contextlib.suppress(grpc.aio.AioRpcError):
                            await self._client(end).update_qkd_link(link.id, {"qkdl_status": f"{T}PENDING"})
        async with self._lock:
            for route in self.apps.values():
                if name in route.path:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        if self.external.owns(route):
                            await self.external.install(self, route)
                        else:
                            await self._install(route)
                        # (after "no key-relay path ... (node down)": say it is served again)
                        log.info("app %s -> %s: path %s provisioned again (node %s back)", route.master,
                                 route.slave, "-".join(route.path), name)

    # ------------------------------------------------------------------ views

    def links_down(self, route: AppRoute) -> list[str]:
        """The fibre links of an application's path that are not up, named as in link_table (a
        pair left on its path because no other could carry it is not served)."""
        out = []
        for hop in zip(route.path, route.path[1:]):
            link = self.topo.link_between(*hop)  # (none to an external KMS's pseudo node)
            if link is not None and not self.router.links[link.id].up:
                out.append(f"{link.a}-{link.b}")
        return out

    def link_table(self) -> list[dict[str, Any]]:
        rows = []
        for link in self.topo.links:
            a, b = (self.nodes[n].links.get(link.id, {}) for n in link.ends)
            # the transmitter's figures; the receiver's where it has none yet (restarted while its
            # pool was full, it runs no block to measure until keys are used)
            perf = a if a.get("skr") else b if b.get("skr") else a
            st = [self.nodes[n].store.get(link.id, {}) for n in link.ends]
            rows.append({
                "link": f"{link.a}-{link.b}", "qkdl_id": link.id, "km": link.km, "db": link.loss_db,
                "up": self.router.links[link.id].up,
                # ends where it is administratively disabled (qkdl_enable false): not "coming up"
                "disabled_at": [n for n in link.ends if self.nodes[n].links.get(link.id, {}).get("qkdl_enable") is False],
                "qber": perf.get("qber"), "skr": perf.get("skr"), "eskr": perf.get("eskr"),
                "paused": any(bool(self.nodes[n].links.get(link.id, {}).get("paused")) for n in link.ends),
                "stored_keys": min((int(s.get("stored-keys", 0) or 0) for s in st), default=0),
            })
        return rows
