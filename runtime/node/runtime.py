"""One SD-QKD node: the gNMI agent, the LKMS and the engine links, wired together. The agent's
typed hooks (generated skeleton) turn ETSI 015 changes into engine and LKMS actions inside the
Set transaction; the engine's blocks go to the LKMS key store; telemetry and key-store figures
go back into the agent's state tree."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from typing import Any

import grpc

from generated.agent_skeleton import HookVeto
from generated.proto.sdqkd import classical_pb2_grpc
from runtime.agent.serve import start_gnmi
from runtime.agent.server import NodeAgent
from runtime.lkms.external import external_peer
from runtime.lkms.node import Lkms
from runtime.lkms.registry import sae_of

from .apps import Registrar
from .config import NodeConfig
from .links import ClassicalChannelService, EngineLink, LinkParams, LinkStats

log = logging.getLogger("sdqkd.node")
T = "etsi-qkd-node-types:"
EXT = "sdqkd-node-ext:"
LINK = "/qkd_node/qkd_links/qkd_link"


class NodeAgentWithRuntime(NodeAgent):
    """The agent whose hooks drive this node's engine and LKMS."""

    def __init__(self, node: NodeRuntime):
        super().__init__(node.cfg.id, target=node.cfg.name, location=node.cfg.location)
        self.node = node

    async def on_qkd_link(self, txn: Any, old: dict[str, Any] | None, new: dict[str, Any] | None, *,
                          qkdl_id: str) -> None:
        await self.node.link_changed(qkdl_id, old, new)

    async def on_qkd_app(self, txn: Any, old: dict[str, Any] | None, new: dict[str, Any] | None, *,
                         app_id: str) -> None:
        self.node.app_changed(app_id, new)


def _ext(entry: dict[str, Any]) -> dict[str, Any]:
    return entry.get(f"{EXT}sdqkd-link", entry.get("sdqkd-link", {})) or {}


class NodeRuntime:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.links: dict[str, EngineLink] = {}
        self.agent = NodeAgentWithRuntime(self)
        self.lkms: Lkms | None = None
        self.registrar: Registrar | None = None
        self._gnmi: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.addresses: dict[str, str] = {}

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> dict[str, str]:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        service = ClassicalChannelService(self.links)
        self.lkms = Lkms(cfg.id, cfg.data_dir, cfg.tls, saes=[s["id"] for s in cfg.saes],
                         etsi014_listen=cfg.etsi014_listen, etsi004_listen=cfg.etsi004_listen,
                         keysync_listen=cfg.peer_listen, etsi020_listen=cfg.etsi020_listen,
                         peer_servicers=[lambda server: classical_pb2_grpc.add_ClassicalChannelServicer_to_server(
                             service, server)])
        for p in cfg.external_peers:
            await self.lkms.add_external_peer(external_peer(cfg.id, p))
        self.registrar = Registrar(cfg.id, self.agent, self.lkms, cfg.applications, cfg.data_dir)
        self.lkms.registrar = self.registrar
        await self.lkms.start()
        self.registrar.restore()
        self.registrar.start()
        self._gnmi, port = await start_gnmi(self.agent, cfg.gnmi_listen, tls=cfg.tls, mutual=cfg.gnmi_mutual_tls,
                                            users=cfg.users or None)
        self.addresses = {"gnmi": f"{cfg.gnmi_listen.rsplit(':', 1)[0]}:{port}",
                          "etsi014": self.lkms.addresses["etsi014"], "etsi004": self.lkms.addresses["etsi004"],
                          "peer": self.lkms.addresses["keysync"], "etsi020": self.lkms.addresses["etsi020"]}
        self._tasks.append(asyncio.create_task(self._publish_store()))
        self._write_ready()
        return self.addresses

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.registrar is not None:
            await self.registrar.stop()
        for link in list(self.links.values()):
            await link.stop()
        if self._gnmi is not None:
            await self._gnmi.stop(0.5)
        if self.lkms is not None:
            await self.lkms.stop()

    def _write_ready(self) -> None:
        tmp = self.cfg.data_dir / "ready.json.tmp"
        tmp.write_text(json.dumps({"id": self.cfg.id, "name": self.cfg.name, "pid": os.getpid(), **self.addresses}))
        tmp.replace(self.cfg.data_dir / "ready.json")

    # ---------------------------------------------------------------- hooks

    def _channel(self, address: str) -> grpc.aio.Channel:
        opts = [("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024)]
        if self.cfg.tls is None:
            return grpc.aio.insecure_channel(address, options=opts)
        ca, cert, key = self.cfg.tls.read()
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert), options=opts)

    def _bootstrap(self, peer_id: str, qkdl_id: str) -> bytes | None:
        """The secret both ends share before any QKD key exists (config `bootstrap`)."""
        f = self.cfg.bootstrap.get(peer_id) or self.cfg.bootstrap.get("*")
        if f is None:
            return None
        return hashlib.sha256(f.read_bytes() + qkdl_id.encode()).digest()

    async def link_changed(self, qkdl_id: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        try:
            await self._link_changed(qkdl_id, new)
        finally:
            if self.registrar is not None:  # requests waiting for a link look again
                self.registrar.poke()

    async def _link_changed(self, qkdl_id: str, new: dict[str, Any] | None) -> None:
        from runtime.engine import cascade, profiles

        assert self.lkms is not None
        if new is None:
            link = self.links.pop(qkdl_id, None)
            if link:
                await link.stop()
            await self.lkms.remove_link(qkdl_id, erase=False)
            return
        kind = new.get("qkdl_type", f"{T}PHYS").split(":")[-1]
        ext = _ext(new)
        peer_id = new.get("qkdl_remote", {}).get("qkdn_id")
        peer_addr = ext.get("classical-endpoint")
        enabled = bool(new.get("qkdl_enable", True))
        if not peer_id or not peer_addr:
            # configured but not runnable yet (ETSI allows it): the engine starts once both are set
            link = self.links.pop(qkdl_id, None)
            if link:
                await link.stop()
            return
        if kind == "VIRT":
            await self.lkms.set_link(qkdl_id, peer_id, peer_addr, kind="VIRT", prev_hop=new.get("virt_prev_hop"),
                                     next_hops=tuple(new.get("virt_next_hop", [])), up=enabled)
            return
        profile = ext.get("device-profile", "commercial")
        try:
            prof = profiles.get(profile)
        except ValueError as e:
            raise HookVeto(str(e)) from None
        km = float(ext.get("fibre-length-km", 0) or 0)
        loss = float(ext.get("fibre-loss-db") or new.get("phys_channel_att") or km * prof.alpha_db_per_km)
        role = "alice" if new.get("phys_qkd_role", f"{T}TRANSMITTER").endswith("TRANSMITTER") else "bob"
        # the link's own leaf, else this node's engine default (both ends of a link must agree)
        variant = ext.get("cascade-variant") or self.cfg.engine.get("cascade_variant", "optimized")
        if variant not in cascade.VARIANTS:
            raise HookVeto(f"unknown Cascade variant {variant!r}; valid variants: {', '.join(cascade.VARIANTS)}")
        params = LinkParams(qkdl_id=qkdl_id, role=role, peer_address=peer_addr, profile=profile, loss_db=loss,
                            variant=variant, eve=float(ext.get("eve-fraction", 0) or 0),
                            enabled=enabled, clock_scale=float(self.cfg.engine.get("clock_scale", 1.0)),
                            target_sifted_bits=float(self.cfg.engine.get("block_sifted_bits", 1e6)))
        bootstrap = self._bootstrap(peer_id, qkdl_id)
        if bootstrap is None:
            log.warning("link %s: no bootstrap secret for peer %s; not started", qkdl_id, peer_id)
            return
        await self.lkms.set_link(qkdl_id, peer_id, peer_addr, kind="PHYS", up=enabled)
        current = self.links.get(qkdl_id)
        if current is not None and current.p == params:
            return
        if current is not None:
            await current.stop()
            del self.links[qkdl_id]
        if enabled:
            link = EngineLink(params, bootstrap, self._channel, self._store_block, self._link_stats,
                              self.lkms.wait_for_room)
            self.links[qkdl_id] = link
            link.start()

    def app_changed(self, app_id: str, new: dict[str, Any] | None) -> None:
        assert self.lkms is not None
        if new is None:
            self.lkms.unregister_app(app_id)
        else:
            self.lkms.register_app(app_id, sae_of(new.get("server_app_id", "")),
                                   [sae_of(c) for c in new.get("client_app_id", [])],
                                   new.get("local_qkdn_id", self.cfg.id), new.get("remote_qkdn_id", ""),
                                   new.get("backing_qkdl_id", []))
            base = f"/qkd_node/qkd_applications/qkd_app[app_id={app_id}]"
            vals = {f"{base}/creation_time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
            if new.get("backing_qkdl_id") or new.get("remote_qkdn_id") == self.cfg.id:
                vals[f"{base}/app_status"] = f"{T}ON"  # registered without a path: no status yet
            self.agent.state.update(vals)
        if self.registrar is not None:
            self.registrar.installed(app_id, new)

    # ---------------------------------------------------------------- engine -> LKMS, agent

    async def _store_block(self, qkdl_id: str, material: bytes, key_size_bits: int, block_id: str) -> None:
        assert self.lkms is not None
        await self.lkms.add_block(qkdl_id, material, key_size_bits, block_id)

    def _link_stats(self, p: LinkParams, s: LinkStats, result: Any) -> None:
        base = f"{LINK}[qkdl_id={p.qkdl_id}]"
        if (p.qkdl_id,) not in self.agent.root.get("qkd_node", {}).get("qkd_links", {}).get("qkd_link", {}):
            return  # the link was removed meanwhile
        vals: dict[str, Any] = {
            f"{base}/qkdl_status": f"{T}{s.status}",
            f"{base}/qkdl_performance/skr": min(int(s.skr), 2**32 - 1),
            f"{base}/qkdl_performance/eskr": min(int(max(0.0, s.skr - s.auth_bps)), 2**32 - 1),
            f"{base}/sdqkd-link/engine-state/blocks-ok": s.blocks_ok,
            f"{base}/sdqkd-link/engine-state/blocks-aborted": s.blocks_aborted,
            f"{base}/sdqkd-link/engine-state/secret-bits": s.secret_bits,
            f"{base}/sdqkd-link/engine-state/last-abort-reason": s.last_abort,
        }
        if s.qber == s.qber:  # not NaN
            vals[f"{base}/qkdl_performance/phys_perf[perf_type={T}QBER]/value"] = f"{min(s.qber, 1.0):.3f}"
            vals[f"{base}/sdqkd-link/engine-state/qber"] = f"{min(s.qber, 1.0):.6f}"
        self.agent.state.update(vals)
        if result is not None and getattr(result, "alarm", False):
            self.agent.state.notify("alarm", {"link": {
                "qkdl_id": p.qkdl_id, "qkdl_status": f"{T}PASSIVE", "severity": f"{T}MAJOR",
                "message": f"key block discarded: {result.reason}"}})
        if result is not None and result.status == "ok":
            self.agent.state.notify("sdqkdn_link_perf_update", {"qkd_link": {
                "qkdl_id": p.qkdl_id, "performance": {"skr": min(int(s.skr), 2**32 - 1)}}})

    async def _publish_store(self) -> None:
        """Key-store figures into the augmentation, and app statistics, once a second."""
        assert self.lkms is not None
        while True:
            with contextlib.suppress(Exception):
                stats = self.lkms.key_store_stats()
                vals: dict[str, Any] = {}
                for k in ("max-key-count", "stored-keys", "stored-bits", "delivered-keys"):
                    if k in stats:
                        vals[f"/qkd_node/sdqkd-key-store/{k}"] = stats[k]
                for pool in stats.get("pool", []):
                    base = f"/qkd_node/sdqkd-key-store/pool[qkdl-id={pool['qkdl-id']}]"
                    for k in ("stored-keys", "stored-bits", "delivered-keys"):
                        vals[f"{base}/{k}"] = pool.get(k, 0)
                if vals:
                    self.agent.state.update(vals)
            await asyncio.sleep(1.0)
