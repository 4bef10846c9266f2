"""Provisioning of one node: the generated model hooks that turn committed ETSI 015 entries
into engine links and LKMS registrations. The datastore hands them typed entries (RFC 7951
names) with YANG defaults applied, so no default is restated here.

Per `qkd_link` entry:
- `validate_qkd_link` (before commit, no side effects): a link must name its type (PHYS or
  VIRT: ETSI 015's `when`s on the role, hops and phys_perf need it) and its remote node (ETSI
  leaves both optional; this node cannot run a link without them), and a PHYS link's device
  profile must exist; otherwise the whole change is refused and nothing starts or stops.
- `apply_qkd_link` (after commit) converges the runtime on the entry, whatever it did before:
  deleted -> engine link stopped, LKMS link removed (unless another entry names the same key
  association: TeraFlowSDN's two one-way VIRT links of a service on a trusted node); not runnable yet (no
  classical endpoint: an ETSI-only client does not know our augmentation) -> engine link stopped, OFF,
  `engine-state/last-abort-reason` "not started: ..." naming the leaf it lacks; VIRT -> LKMS relay link; PHYS -> LKMS pool
  and link, engine link (re)started when its parameters changed, stopped when disabled.
Per `qkd_app` entry: registered with / removed from the LKMS, `app_status` ON (DISCONNECTED
while it has no backing link: no key path).
A failed apply is reported by `apply_failed`: an ETSI `alarm` (link or application) and, for a
link, `sdqkd-link/engine-state/last-abort-reason`; the datastore retries it later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdqkd.agent.model import NODES, Resolved, elems_text
from sdqkd.agent.transaction import resolve_text
from sdqkd.generated import model_types as t
from sdqkd.generated.agent_skeleton import HookTransaction, HookVeto, ModelHooks
from sdqkd.lkms.registry import sae_of
from sdqkd.logfmt import link_label

from . import statepaths
from .apps import WAITING
from .config import ConfigError
from .links import DEFAULT_BLOCK_BITS, DEFAULT_SCHEDULE, DEFAULT_WINDOW, EngineLink, LinkParams

if TYPE_CHECKING:
    from .runtime import NodeRuntime

log = logging.getLogger("sdqkd.node")

T = "etsi-qkd-node-types:"
EXT = "sdqkd-node-ext:sdqkd-link"
LINK = "/qkd_node/qkd_links/qkd_link"
APP = "/qkd_node/qkd_applications/qkd_app"
CASCADE_VARIANT = f"{LINK}/sdqkd-link/cascade-variant"
# the Cascade variants the model allows (the schema index is the one source)
CASCADE_VARIANTS: tuple[str, ...] = tuple(NODES[CASCADE_VARIANT]["type"]["enums"])


def engine_defaults(engine: Mapping[str, Any]) -> dict[str, Any]:
    """Node-local defaults of model leaves from the node's `engine` settings (checked here, so
    a bad value stops the node before it starts)."""
    out: dict[str, Any] = {}
    if "cascade_variant" in engine:
        variant = engine["cascade_variant"]
        if variant not in CASCADE_VARIANTS:
            raise ConfigError(f"engine.cascade_variant: unknown Cascade variant {variant!r}; "
                              f"valid variants: {', '.join(CASCADE_VARIANTS)}")
        out[CASCADE_VARIANT] = variant
    return out


@dataclass(frozen=True)
class VirtPlan:
    """A VIRT link: key relayed by the LKMS along a path of other links."""

    peer_id: str
    peer_address: str
    prev_hop: str | None
    next_hops: tuple[str, ...]
    enabled: bool
    exit_peer: str | None = None  # the path leaves the far end for this external KMS


@dataclass(frozen=True)
class PhysPlan:
    """A PHYS link: an engine link producing key into the LKMS pool."""

    peer_id: str
    peer_address: str
    params: LinkParams


def key_association(qkdl_id: str, entry: t.QkdLink) -> str:
    """The ID the link's engine session, bootstrap key and key pool run under: its
    `sdqkd-link/key-association-id` when set (both ends of one fibre named it differently, as
    TeraFlowSDN does; the RESTCONF compatibility dialect derives it), else the qkdl_id."""
    ext: Mapping[str, Any] = entry.get("sdqkd-node-ext:sdqkd-link") or {}
    return str(ext.get("key-association-id") or qkdl_id)


def link_plan(qkdl_id: str, entry: t.QkdLink, engine: Mapping[str, Any], node_id: str) -> VirtPlan | PhysPlan | None:
    """What the runtime should run for a link entry; None while it is not runnable yet.
    HookVeto when the entry names what this node cannot run. A PHYS link without
    `phys_qkd_role` transmits from the end whose node ID sorts first (both ends derive the same
    split, as the RESTCONF dialect does; two transmitters would never make key)."""
    from sdqkd.engine import profiles

    ext = entry["sdqkd-node-ext:sdqkd-link"]  # present: its leaves have defaults
    peer_id = entry.get("qkdl_remote", {}).get("qkdn_id")
    peer_addr = ext.get("classical-endpoint")
    channel_addr = ext.get("channel-endpoint")
    enabled = entry["qkdl_enable"]
    if not peer_id or not peer_addr:
        return None
    if entry.get("qkdl_type", f"{T}PHYS") == f"{T}VIRT":
        return VirtPlan(peer_id, peer_addr, entry.get("virt_prev_hop"), tuple(entry.get("virt_next_hop", [])),
                        enabled, ext.get("exit-peer"))
    profile = ext["device-profile"]
    try:
        prof = profiles.get(profile)
    except ValueError as e:
        raise HookVeto(str(e)) from None
    km = float(ext.get("fibre-length-km", "0"))
    loss = float(ext.get("fibre-loss-db") or entry.get("phys_channel_att") or km * prof.alpha_db_per_km)
    given = entry.get("phys_qkd_role")
    role = ("alice" if node_id < peer_id else "bob") if given is None else \
        "alice" if given == f"{T}TRANSMITTER" else "bob"
    params = LinkParams(qkdl_id=qkdl_id, role=role, peer_address=channel_addr or "", profile=profile,
                        loss_db=loss, variant=ext["cascade-variant"], schedule=str(engine.get("cascade_schedule", DEFAULT_SCHEDULE)),
                        eve=float(ext["eve-fraction"]),
                        enabled=enabled, clock_scale=float(engine.get("clock_scale", 1.0)),
                        target_sifted_bits=float(engine.get("block_sifted_bits", DEFAULT_BLOCK_BITS)),
                        window=int(engine.get("blocks_in_flight", DEFAULT_WINDOW)), peer_id=peer_id)
    return PhysPlan(peer_id, peer_addr, params)


def check_link(entry: t.QkdLink) -> None:
    """HookVeto naming what a link entry lacks for this node to run it: its type and its remote
    node. A `replace` that leaves them out (a whole entry written as just its key and
    qkdl_enable) is refused, not accepted and the link silently stopped."""
    missing = [name for name, given in (("qkdl_type", entry.get("qkdl_type")),
                                        ("qkdl_remote/qkdn_id", entry.get("qkdl_remote", {}).get("qkdn_id")))
               if not given]
    if missing:
        raise HookVeto(f"{' and '.join(missing)} missing: this node runs a link only as PHYS or VIRT "
                       "towards a named remote node (a replace writes the whole entry: give them again)")


class NodeProvisioning(ModelHooks):
    """The hooks of one node's datastore, driving its engine links and LKMS."""

    def __init__(self, node: NodeRuntime):
        self.node = node

    # ---------------------------------------------------------------- links

    async def validate_qkd_link(self, txn: HookTransaction, old: t.QkdLink | None, new: t.QkdLink | None, *,
                                qkdl_id: str) -> None:
        if new is not None:
            check_link(new)
            link_plan(qkdl_id, new, self.node.cfg.engine, self.node.cfg.id)

    async def apply_qkd_link(self, txn: HookTransaction, old: t.QkdLink | None, new: t.QkdLink | None, *,
                             qkdl_id: str) -> None:
        try:
            await self._apply_link(qkdl_id, new)
        finally:
            if self.node.registrar is not None:  # requests waiting for a link look again
                self.node.registrar.poke()

    async def _apply_link(self, qkdl_id: str, new: t.QkdLink | None) -> None:
        lkms = self.node.require_lkms()
        node = self.node
        old_eid = node.engine_of.get(qkdl_id, qkdl_id)
        eid = key_association(qkdl_id, new) if new is not None else old_eid
        if new is None or eid != old_eid:  # gone, or it runs under another key association now
            node.engine_of.pop(qkdl_id, None)
            sharing = [q for q, e in node.engine_of.items() if e == old_eid]
            if sharing:  # another entry names the same association (both directions of a TFS service)
                node.tree_of[old_eid] = sharing[0]
            else:
                await self._stop_engine(old_eid)
                # kept unless the operator asks (docs/reliability.md, "A deleted link keeps its pool")
                await lkms.remove_link(old_eid, erase=lkms.limits.erase_deleted_links)
                node.tree_of.pop(old_eid, None)
            if new is None:
                return
        node.engine_of[qkdl_id], node.tree_of[eid] = eid, qkdl_id
        plan = link_plan(eid, new, node.cfg.engine, node.cfg.id)
        if not isinstance(plan, PhysPlan) or not plan.params.enabled:
            await self._stop_engine(eid)
        if plan is None:  # taken (an ETSI-only client does not know our augmentation), but it cannot run
            self._not_started(eid, f"no sdqkd-node-ext:sdqkd-link/classical-endpoint (the key-relay host:port of "
                                   f"node {new.get('qkdl_remote', {}).get('qkdn_id')}): the link runs once it has one")
        if isinstance(plan, PhysPlan) and not plan.params.enabled:
            self.node.link_off(eid)  # else the last block's ACTIVE and rate stand, and relays keep using it
        if isinstance(plan, VirtPlan):
            await lkms.set_link(eid, plan.peer_id, plan.peer_address, kind="VIRT", prev_hop=plan.prev_hop,
                                next_hops=plan.next_hops, up=plan.enabled, exit_peer=plan.exit_peer)
        elif isinstance(plan, PhysPlan):
            await self._apply_phys(eid, plan)

    async def _apply_phys(self, qkdl_id: str, plan: PhysPlan) -> None:
        lkms = self.node.require_lkms()
        cfg = self.node.cfg
        plan = dataclasses.replace(plan, params=dataclasses.replace(
            plan.params, label=link_label(cfg.peers, cfg.name, plan.peer_id, qkdl_id)))  # logs say "link A-B"
        bootstrap = self._bootstrap(plan.peer_id, qkdl_id)
        if bootstrap is None:
            log.warning("link %s: no bootstrap secret for peer %s; not started", plan.params.label, plan.peer_id)
            return
        await lkms.set_link(qkdl_id, plan.peer_id, plan.peer_address, kind="PHYS", up=plan.params.enabled)
        current = self.node.links.get(qkdl_id)
        if current is not None and current.p == plan.params:
            current.restate()  # a Set that wrote the link's status (the controller's PENDING) is not its state
            return
        await self._stop_engine(qkdl_id)
        if plan.params.enabled and plan.params.role == "alice" and not plan.params.peer_address:
            self._not_started(qkdl_id, "this end transmits but has no sdqkd-node-ext:sdqkd-link/channel-endpoint "
                                       f"(node {plan.peer_id}'s classical channel host:port)")
        elif plan.params.enabled:
            link = EngineLink(plan.params, bootstrap, self.node.cfg.tls, self.node.store_block,
                              self.node.link_stats, lkms)
            self.node.links[qkdl_id] = link
            link.start()

    def _not_started(self, qkdl_id: str, why: str) -> None:
        """A link entry this node took but cannot run: OFF, and why in its last-abort-reason (the
        engine's first block report replaces it once it runs)."""
        self.node.link_off(qkdl_id)
        tree_id = self.node.tree_of.get(qkdl_id, qkdl_id)
        self.node.agent.state.update({statepaths.link(tree_id).last_abort_reason: f"not started: {why}"})
        log.warning("link %s not started: %s", tree_id, why)

    async def _stop_engine(self, qkdl_id: str) -> None:
        link = self.node.links.pop(qkdl_id, None)
        if link is not None:
            await link.stop()

    def _bootstrap(self, peer_id: str, qkdl_id: str) -> bytes | None:
        """The secret both ends share before any QKD key exists (config `bootstrap`); an
        unreadable file fails the apply (reported, retried)."""
        f = self.node.cfg.bootstrap.get(peer_id) or self.node.cfg.bootstrap.get("*")
        if f is None:
            return None
        return hashlib.sha256(f.read_bytes() + qkdl_id.encode()).digest()

    # ---------------------------------------------------------------- applications

    async def validate_qkd_app(self, txn: HookTransaction, old: t.QkdApp | None, new: t.QkdApp | None, *,
                               app_id: str) -> None:
        if new is not None and not new.get("client_app_id"):  # the LKMS cannot register it
            raise HookVeto("an application needs at least one slave SAE (client_app_id)")

    async def apply_qkd_app(self, txn: HookTransaction, old: t.QkdApp | None, new: t.QkdApp | None, *,
                            app_id: str) -> None:
        lkms = self.node.require_lkms()
        if new is None:
            lkms.unregister_app(app_id)
        else:
            lkms.register_app(app_id, sae_of(new.get("server_app_id", "")),
                              [sae_of(c) for c in new.get("client_app_id", [])],
                              new.get("local_qkdn_id", self.node.cfg.id), new.get("remote_qkdn_id", ""),
                              [self.node.engine_of.get(b, b) for b in new.get("backing_qkdl_id", [])])
            created, status = statepaths.app_leaves(app_id)
            served = new.get("backing_qkdl_id") or new.get("remote_qkdn_id") == self.node.cfg.id
            self.node.agent.state.update({
                created: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                status: f"{T}ON" if served else f"{T}{WAITING}"})  # no key path: not connected
        if self.node.registrar is not None:
            self.node.registrar.installed(app_id, new)

    # ---------------------------------------------------------------- failures

    async def apply_failed(self, txn: HookTransaction, where: str, error: Exception) -> None:
        r: Resolved = resolve_text(where)
        keys = dict(r.elems[-1][1])
        message = f"configuration not applied: {error}"
        state = self.node.agent.state
        if r.schema_path == LINK:
            if self.node.datastore.exists(r):  # a failed removal must not bring the entry back
                state.update({statepaths.link(keys["qkdl_id"]).last_abort_reason: message})
            state.notify("alarm", {"link": {"qkdl_id": keys["qkdl_id"], "qkdl_status": f"{T}OFF",
                                            "severity": f"{T}MAJOR", "message": message}})
        elif r.schema_path == APP:
            state.notify("alarm", {"application": {"app_id": keys["app_id"], "severity": f"{T}MAJOR",
                                                   "message": message}})
        log.warning("%s: %s", elems_text(r.elems), message)
