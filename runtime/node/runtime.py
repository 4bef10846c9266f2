"""One SD-QKD node: the datastore with its gNMI agent and RESTCONF northbound, the LKMS and the
engine links, wired together. Committed ETSI 015 changes reach the engine and the LKMS through
the datastore's two-phase hooks (`provisioning.NodeProvisioning`); the engine's blocks go to the
LKMS key store; telemetry and key-store figures go back into the datastore's state tree. The
node config's interfaces (and the fibre behind each) are seeded into `qkd_interfaces` at start.

A link's engine session, bootstrap key and key pool are named by its key association ID
(`provisioning.key_association`): `sdqkd-link/key-association-id` when set (the two ends name
the link differently, as TeraFlowSDN does), else its qkdl_id."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from typing import Any

import grpc

from sdqkd.agent.serve import is_loopback, start_gnmi
from sdqkd.agent.server import NodeAgent
from sdqkd.agent.transaction import Datastore
from sdqkd.lkms.core import Limits
from sdqkd.lkms.external import external_peer
from sdqkd.lkms.node import Lkms
from sdqkd.restconf import Credentials, ModelAdapter, start_restconf, tls_context
from sdqkd.restconf.adapter import MERGE, Edit, EditRefused

from . import statepaths
from .apps import Registrar
from .channel import ChannelServer
from .config import NodeConfig
from .links import SHUTDOWN_DRAIN_S, EngineLink, LinkDirectory, LinkParams, LinkStats
from .provisioning import NodeProvisioning, engine_defaults

log = logging.getLogger("sdqkd.node")
T = "etsi-qkd-node-types:"


class NodeRuntime:
    """A node's parts and their wiring; what configuration changes do is `provisioning`."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.links: dict[str, EngineLink] = {}
        hooks = (cfg.hooks or NodeProvisioning)(self)  # a vendor's subclass runs ours too
        self.datastore = Datastore.for_node(cfg.id, location=cfg.location, hooks=hooks,
                                            local_defaults=engine_defaults(cfg.engine))
        self.agent = NodeAgent(cfg.id, target=cfg.name, datastore=self.datastore)
        self.lkms: Lkms | None = None
        self.registrar: Registrar | None = None
        self._gnmi: grpc.aio.Server | None = None
        self._channel: ChannelServer | None = None
        self._restconf: Any = None
        self.adapter = ModelAdapter(self.agent)
        self._tasks: list[asyncio.Task[Any]] = []
        self.addresses: dict[str, str] = {}
        self.engine_of: dict[str, str] = {}  # qkdl_id -> its key association ID (engine, LKMS)
        self.tree_of: dict[str, str] = {}  # key association ID -> the qkdl_id naming it here

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> dict[str, str]:
        cfg = self.cfg
        # the key store creates the data dir (0700) and refuses one it cannot write, saying why
        self.lkms = Lkms(cfg.id, cfg.data_dir, cfg.tls, saes=[s["id"] for s in cfg.saes],
                         etsi014_listen=cfg.etsi014_listen, etsi004_listen=cfg.etsi004_listen,
                         keysync_listen=cfg.peer_listen, etsi020_listen=cfg.etsi020_listen,
                         limits=self._limits(cfg), names={cfg.id: cfg.name, **cfg.peers},
                         directory=self.fibre_peers)
        for p in cfg.external_peers:
            await self.lkms.add_external_peer(external_peer(cfg.id, p))
        self.registrar = Registrar(cfg.id, self.agent, self.lkms, cfg.applications, cfg.data_dir)
        self.lkms.registrar = self.registrar
        await self.lkms.start()
        self.adapter.locator = self.lkms.locate  # the compatibility dialect's VIRT links find their far end
        await self._seed_interfaces()
        self.registrar.restore()
        self.registrar.start()
        self._channel = LinkDirectory(self.links, cfg.tls, frozenset(cfg.peers)).server()
        channel_addr = await self._channel.start(cfg.channel_listen)
        self._gnmi, port = await start_gnmi(self.agent, cfg.gnmi_listen, tls=cfg.tls, mutual=cfg.gnmi_mutual_tls,
                                            users=cfg.users or None)
        ctx = None
        if cfg.tls is not None and cfg.restconf_tls != "none":
            ctx = tls_context(str(cfg.tls.ca), str(cfg.tls.cert), str(cfg.tls.key), mutual=cfg.restconf_tls == "mutual")
        credentials = Credentials() if cfg.restconf_anonymous else Credentials(cfg.users, cfg.restconf_tokens)
        self._restconf, rport, _server = await start_restconf(
            self.adapter, cfg.restconf_listen, ssl_context=ctx, credentials=credentials,
            allow_plain_outside_loopback=cfg.restconf_plain_outside_loopback)
        if not credentials.required and not is_loopback(cfg.restconf_listen):
            # mutual TLS admits every certificate of the network's CA, the SAEs' included
            log.warning("RESTCONF on %s asks no credentials: any client the CA certified may change this "
                        "node's configuration; give `users` or `restconf.bearer_tokens`", cfg.restconf_listen)
        self.addresses = {"gnmi": f"{cfg.gnmi_listen.rsplit(':', 1)[0]}:{port}",
                          "etsi014": self.lkms.addresses["etsi014"], "etsi004": self.lkms.addresses["etsi004"],
                          "peer": self.lkms.addresses["keysync"], "etsi020": self.lkms.addresses["etsi020"],
                          "channel": channel_addr,
                          "restconf": f"{cfg.restconf_listen.rsplit(':', 1)[0]}:{rport}"}
        self._tasks.append(asyncio.create_task(self._publish_store()))
        self._write_ready()
        return self.addresses

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.registrar is not None:
            await self.registrar.stop()
        await asyncio.gather(*(link.stop(SHUTDOWN_DRAIN_S) for link in list(self.links.values())))
        if self._channel is not None:
            await self._channel.stop()
        if self._restconf is not None:
            await self._restconf.cleanup()
        if self._gnmi is not None:
            await self._gnmi.stop(0.5)
        if self.lkms is not None:
            await self.lkms.stop()

    async def _seed_interfaces(self) -> None:
        """The node config's interfaces (and the fibre behind each) into qkd_interfaces."""
        edits = []
        for itf in self.cfg.interfaces:
            entry: dict[str, Any] = {"qkdi_id": itf["id"]}
            if itf.get("att_point"):
                entry["qkdi_att_point"] = itf["att_point"]
            peer, fibre = itf.get("peer") or {}, itf.get("fibre") or {}
            ext = {"peer-node-id": peer.get("node"), "peer-qkdi-id": peer.get("interface"),
                   "classical-endpoint": peer.get("endpoint"), "channel-endpoint": peer.get("channel"),
                   "device-profile": fibre.get("profile"),
                   "fibre-length-km": _dec(fibre.get("km")), "fibre-loss-db": _dec(fibre.get("loss_db"))}
            ext = {k: v for k, v in ext.items() if v is not None}
            if ext:
                entry["sdqkd-node-ext:sdqkd-interface"] = ext
            elems = (("qkd_node", ()), ("qkd_interfaces", ()), ("qkd_interface", (("qkdi_id", str(itf["id"])),)))
            edits.append(Edit(MERGE, elems, entry))
        if not edits:
            return
        try:
            await self.adapter.commit(edits)
        except EditRefused as e:
            raise ValueError(f"interfaces: {e.message}") from None
        self.agent.state.update({statepaths.interface_status(itf["id"]): f"{T}ENABLED" for itf in self.cfg.interfaces})

    def fibre_peers(self) -> dict[str, str]:
        """Peer node ID -> its KeySync address, from the interfaces (the fibre behind each)."""
        ifaces = self.agent.root.get("qkd_node", {}).get("qkd_interfaces", {}).get("qkd_interface", {})
        out: dict[str, str] = {}
        for entry in ifaces.values():
            fibre = entry.get("sdqkd-interface", {})
            if fibre.get("peer-node-id") and fibre.get("classical-endpoint"):
                out.setdefault(str(fibre["peer-node-id"]), str(fibre["classical-endpoint"]))
        return out

    def _write_ready(self) -> None:
        tmp = self.cfg.data_dir / "ready.json.tmp"
        tmp.write_text(json.dumps({"id": self.cfg.id, "name": self.cfg.name, "pid": os.getpid(), **self.addresses}))
        tmp.replace(self.cfg.data_dir / "ready.json")

    def require_lkms(self) -> Lkms:
        if self.lkms is None:
            raise RuntimeError("the node's LKMS is not started")
        return self.lkms

    # ---------------------------------------------------------------- engine -> LKMS, agent

    async def store_block(self, qkdl_id: str, material: bytes, key_size_bits: int, block_id: str) -> None:
        assert self.lkms is not None
        await self.lkms.add_block(qkdl_id, material, key_size_bits, block_id)

    @staticmethod
    def _limits(cfg: NodeConfig) -> Limits:
        """The LKMS limits the config names; the rest Limits' defaults."""
        lim = Limits(etsi004_server=cfg.etsi004_server, erase_deleted_links=cfg.erase_deleted_links)
        return lim if cfg.max_key_count is None else dataclasses.replace(lim, max_key_count=cfg.max_key_count)

    def link_stats(self, p: LinkParams, s: LinkStats, result: Any) -> None:
        tree_id = self.tree_of.get(p.qkdl_id, p.qkdl_id)  # the engine runs under the key association ID
        leaf = statepaths.link(tree_id)
        if (tree_id,) not in self.agent.root.get("qkd_node", {}).get("qkd_links", {}).get("qkd_link", {}):
            return  # the link was removed meanwhile
        vals: dict[str, Any] = {
            leaf.status: f"{T}{s.status}",
            leaf.skr: min(int(s.skr), 2**32 - 1),
            leaf.eskr: min(int(max(0.0, s.skr - s.auth_bps)), 2**32 - 1),
            leaf.blocks_ok: s.blocks_ok,
            leaf.blocks_aborted: s.blocks_aborted,
            leaf.secret_bits: s.secret_bits,
            leaf.cut_bits: s.cut_bits,
            leaf.last_abort_reason: s.last_abort,
            leaf.paused: s.paused,
        }
        if s.qber == s.qber:  # not NaN
            vals[leaf.qber_value] = f"{min(s.qber, 1.0):.3f}"
            vals[leaf.qber] = f"{min(s.qber, 1.0):.6f}"
        self.agent.state.update(vals)
        if result is not None and getattr(result, "alarm", False):
            self.agent.state.notify("alarm", {"link": {
                "qkdl_id": tree_id, "qkdl_status": f"{T}PASSIVE", "severity": f"{T}MAJOR",
                "message": f"key block discarded: {result.reason}"}})
        if result is not None and result.status == "ok":
            self.agent.state.notify("sdqkdn_link_perf_update", {"qkd_link": {
                "qkdl_id": tree_id, "performance": {"skr": min(int(s.skr), 2**32 - 1)}}})

    def link_off(self, qkdl_id: str) -> None:
        """A link its configuration disabled: ETSI 015 status OFF and no key rate, as the
        controller's router reads them (its engine's next block, once enabled, says ACTIVE)."""
        tree_id = self.tree_of.get(qkdl_id, qkdl_id)
        if (tree_id,) in self.agent.root.get("qkd_node", {}).get("qkd_links", {}).get("qkd_link", {}):
            leaf = statepaths.link(tree_id)
            self.agent.state.update({leaf.status: f"{T}OFF", leaf.skr: 0, leaf.eskr: 0, leaf.paused: False})

    async def _publish_store(self) -> None:
        """Key-store figures into the augmentation, and app statistics, once a second."""
        assert self.lkms is not None
        while True:
            with contextlib.suppress(Exception):
                stats = self.lkms.key_store_stats()
                vals: dict[str, Any] = {}
                vals.update({path: stats[k] for k, path in statepaths.store().items() if k in stats})
                for pool in stats.get("pool", []):
                    leaves = statepaths.pool(pool["qkdl-id"])
                    vals.update({leaves.stored_keys: pool.get("stored-keys", 0),
                                 leaves.stored_bits: pool.get("stored-bits", 0),
                                 leaves.delivered_keys: pool.get("delivered-keys", 0)})
                if vals:
                    self.agent.state.update(vals)
            await asyncio.sleep(1.0)


def _dec(v: Any) -> str | None:
    """A config number as decimal64 text (3 fraction digits, the augmentation's)."""
    return None if v is None else f"{float(v):.3f}"
