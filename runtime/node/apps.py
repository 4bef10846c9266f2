"""ETSI GS QKD 015 clause 5.2 "QKD Application Registration" at one node.

An SAE's first key request for a pair (ETSI 014 status / enc_keys / dec_keys, ETSI 004
OPEN_CONNECT) reaches `Registrar.ensure` when no registered application of this node can serve
it. States of a pair at this node (keyed by its app_id, `app_id_for(master, slaves)`, the ID the
controller gives it too):

  (none) --first request--> REGISTERED: a qkd_app entry (app_type CLIENT, server_app_id =
      master, client_app_id = slaves, local_qkdn_id, app_qos from an OPEN_CONNECT's QoS else
      min_bandwidth 0) goes into the node's tree and
      `sdqkdn_application_new` is emitted. Requests wait, at most `first_request_wait_s`.
      No subscriber to that notification (controller down or unreachable): 503 at once. A
      request 2 s later emits it again (a controller that restarted meanwhile hears it).
      Its app_status is DISCONNECTED (not connected to its peer yet: the model has no
      "pending"), as in NO_PATH.
  REGISTERED --controller Set: qkd_app with backing_qkdl_id--> ON: requests are served.
  REGISTERED --controller Set: qkd_app without backing link--> NO_PATH: 503 naming why.
  ON --idle for `idle_timeout_s`, or its last ETSI 004 stream closed--> gone:
      `sdqkdn_application_disconnected` is emitted, the entry and the LKMS registration are
      removed; the controller removes the other end and the path's virtual links.
      REGISTERED and NO_PATH idle out the same way; idle means no key request for the pair
      waiting and none for `idle_timeout_s` (an SAE that keeps asking while the controller
      sets its path up keeps the pair). Keys the other node reserves here for the pair
      (its SAE's requests) count as requests: a pair in use at either end is not idle; nor
      is one while a request for it is being served (a relayed pair's first keys, say).
A pair of two SAEs of this node is ON at once (a local app: keys from the node itself, see
runtime/lkms/local.py; over ETSI 014 and ETSI 004 alike) and needs no controller:
`sdqkdn_application_new` is still emitted (a controller records the pair, path = this node),
but no request waits for it.

Every qkd_app of the node (registered here or installed by the controller) is kept in
DATA_DIR/applications.json (0600, replaced atomically) and restored at start: registrations
survive a node restart. Until the controller has provisioned the links again such a pair is
answered 503 + Retry-After ("being set up"), never "not registered".

Config (node.yaml `applications:`): first_request_wait_s (default 3), idle_timeout_s (default
900), sae_nodes {SAE ID: node ID} (the network's SAEs; without it any pair is put to the
controller, with it an unknown SAE is a 400 at once)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdqkd.lkms.core import NotReady, UnknownPair
from sdqkd.lkms.registry import App, app_id_for, sae_of, sae_uri

from . import statepaths

if TYPE_CHECKING:
    from sdqkd.agent.server import NodeAgent
    from sdqkd.lkms.node import Lkms

    from .config import Settings

log = logging.getLogger("sdqkd.node.apps")
WAITING = "DISCONNECTED"  # app_status of a pair with no key path (yet): the model's nearest state

T = "etsi-qkd-node-types:"
NEW = (("sdqkdn_application_new", ()),)
RENOTIFY_S = 2.0  # a waiting pair's notification is repeated at most this often
IDLE_CHECK_S = 2.0  # idle pairs are looked for at least this often (and at idle_timeout_s / 4)
REQUEST, CONTROLLER = "request", "controller"  # who created a registration (only the former idle out)
CONFIG_LEAVES = ("app_id", "app_type", "server_app_id", "client_app_id", "app_priority", "app_qos",
                 "backing_qkdl_id", "local_qkdn_id", "remote_qkdn_id", "expiration_time")


@dataclass
class Registration:
    app_id: str
    entry: dict[str, Any]  # the qkd_app's configuration (model leaf names)
    origin: str
    state: str = "REGISTERED"  # REGISTERED | ON | NO_PATH
    notified: float = -1e9  # monotonic time of the last sdqkdn_application_new
    since: float = field(default_factory=time.monotonic)  # registered (or restored) at
    asked: float = -1e9  # monotonic time the last key request for the pair that reached here ended
    waiting: int = 0  # requests waiting for the controller now: the pair is not idle
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Registrar:
    def __init__(self, node_id: str, agent: NodeAgent, lkms: Lkms, settings: Settings, data_dir: Path) -> None:
        self.node_id, self.agent, self.lkms, self.settings = node_id, agent, lkms, settings
        self.file = data_dir / "applications.json"
        self.regs: dict[str, Registration] = {}
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- life cycle

    def restore(self) -> None:
        """Registrations saved before a restart: back into the tree and the LKMS."""
        if not self.file.exists():
            return
        try:
            saved = json.loads(self.file.read_text())
        except ValueError:
            log.error("%s: unreadable, application registrations not restored", self.file)
            return
        for app_id, rec in saved.items():
            reg = Registration(app_id, rec["entry"], rec.get("origin", CONTROLLER))
            try:
                self._publish(reg, status="ON" if reg.entry.get("backing_qkdl_id")
                              or self._is_local_entry(reg.entry) else WAITING)
                self._register_lkms(reg.entry)
            except (ValueError, KeyError, TypeError) as e:  # a damaged record: skip it, keep the others
                log.error("%s: application %s not restored: %s", self.file, app_id, e)
                continue
            self.regs[app_id] = reg
        log.info("restored %d application registration(s)", len(self.regs))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._idle_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---------------------------------------------------------------- the LKMS asks

    async def ensure(self, master: str, slaves: Sequence[str], qos: dict[str, int] | None = None) -> App:
        slaves = list(slaves)
        if master in slaves or len(set(slaves)) != len(slaves):
            raise UnknownPair("master and slave SAEs must all differ")
        local = self.lkms.registry.local_saes
        if all(s in local for s in (master, *slaves)):
            return self._local_app(master, slaves, qos or {})
        self._check_known(master, slaves)
        existing = self.lkms.registry.app_for_group(master, slaves)
        app_id = existing.app_id if existing is not None else app_id_for(master, slaves)
        reg = self.regs.get(app_id)
        if reg is None:
            reg = self._register(app_id, master, slaves, qos or {})
        reg.waiting += 1  # not idle while a request waits; idle from its end on
        try:
            return await self._wait(reg, master, slaves)
        finally:
            reg.waiting -= 1
            reg.asked = time.monotonic()

    def stream_closed(self, app: App, still_open: int) -> None:
        reg = self.regs.get(app.app_id)
        if still_open == 0 and reg is not None and reg.origin == REQUEST:
            self.disconnect(app.app_id, "its last ETSI 004 key stream was closed")

    def node_of(self, sae: str) -> str | None:
        nodes = self.settings.sae_nodes
        return nodes.get(sae) if nodes is not None else None

    # ---------------------------------------------------------------- the agent's hooks tell

    def installed(self, app_id: str, entry: Mapping[str, Any] | None) -> None:
        """A qkd_app Set through gNMI (the controller): remember it and wake waiting requests."""
        if entry is None:
            if self.regs.pop(app_id, None) is not None:
                self._save()
            return
        reg = self.regs.get(app_id)
        if reg is None:
            reg = self.regs[app_id] = Registration(app_id, {}, CONTROLLER)
        reg.entry = {k: v for k, v in entry.items() if k in CONFIG_LEAVES}
        reg.state = "ON" if entry.get("backing_qkdl_id") or self._is_local_entry(entry) else "NO_PATH"
        self._save()
        self.poke(reg)

    def poke(self, reg: Registration | None = None) -> None:
        """Links or applications changed: waiting requests look again."""
        for r in [reg] if reg is not None else self.regs.values():
            r.changed.set()
            r.changed = asyncio.Event()

    # ---------------------------------------------------------------- registration

    def _check_known(self, master: str, slaves: list[str]) -> None:
        nodes = self.settings.sae_nodes
        if nodes is None:
            return  # the controller decides
        for sae in (master, *slaves):
            if sae not in nodes and sae not in self.lkms.registry.local_saes:
                raise UnknownPair(f"unknown SAE {sae!r}: no SAE of that ID in this network")
        remote = {nodes[s] for s in (master, *slaves) if s not in self.lkms.registry.local_saes}
        if len(remote) > 1:
            raise UnknownPair("the SAEs of one request must sit on at most two nodes")

    def _entry(self, app_id: str, master: str, slaves: list[str], remote: str | None,
               qos: dict[str, int] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"app_id": app_id, "app_type": f"{T}CLIENT", "server_app_id": sae_uri(master),
                                 "client_app_id": [sae_uri(s) for s in slaves], "local_qkdn_id": self.node_id,
                                 "app_priority": 0, "app_qos": {"min_bandwidth": 0, **(qos or {})}}
        if remote is not None:
            entry["remote_qkdn_id"] = remote
        return entry

    def _register(self, app_id: str, master: str, slaves: list[str], qos: dict[str, int]) -> Registration:
        reg = self.regs[app_id] = Registration(app_id, self._entry(app_id, master, slaves, None, qos), REQUEST)
        self._publish(reg, status=WAITING)
        self._save()
        log.info("application %s registered on first request: %s -> %s", app_id, master, ",".join(slaves))
        return reg

    def _local_app(self, master: str, slaves: list[str], qos: dict[str, int]) -> App:
        existing = self.lkms.registry.app_for_group(master, slaves)
        if existing is not None and existing.is_local:
            return existing
        app_id = app_id_for(master, slaves)
        reg = self.regs[app_id] = Registration(app_id, self._entry(app_id, master, slaves, self.node_id, qos),
                                               REQUEST, state="ON")
        self._publish(reg, status="ON")
        self._register_lkms(reg.entry)
        self._save()
        self._notify_new(reg)  # for the record: nothing waits for the controller
        log.info("application %s (both SAEs on this node) registered: %s -> %s", app_id, master, ",".join(slaves))
        app = self.lkms.registry.apps[app_id]
        return app

    def _notify_new(self, reg: Registration) -> bool:
        """Emit sdqkdn_application_new if someone listens; False if nobody does."""
        if not self.agent.hub.listening(NEW):
            return False
        e = reg.entry
        self.agent.state.notify("sdqkdn_application_new", {"qkd_application": {
            k: e[k] for k in ("app_type", "server_app_id", "client_app_id", "app_priority", "local_qkdn_id",
                              "app_qos") if k in e}})
        reg.notified = time.monotonic()
        return True

    async def _wait(self, reg: Registration, master: str, slaves: list[str]) -> App:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.first_request_wait_s
        while True:
            app = self.lkms.registry.app_for_group(master, slaves)
            if app is not None and self.lkms.core.usable(app):
                return app
            if reg.state != "ON" and time.monotonic() - reg.notified >= RENOTIFY_S and not self._notify_new(reg):
                raise NotReady("no SDN controller is subscribed to application registrations at this node "
                               "(controller down or unreachable); keys for a new SAE pair need it", 5)
            if reg.state == "NO_PATH":
                raise NotReady(self._no_path_reason(reg), 5)
            left = deadline - loop.time()
            if left <= 0:
                raise NotReady(self._slow_reason(reg, app), 1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, RENOTIFY_S)):
                    await reg.changed.wait()

    @staticmethod
    def _no_path_reason(reg: Registration) -> str:
        remote = reg.entry.get("remote_qkdn_id")
        if not remote:
            return "the controller refused to set up this SAE pair (an SAE it does not know?)"
        return f"no key-relay path from this node to node {remote} (the other SAE's) can carry keys at the moment"

    def _slow_reason(self, reg: Registration, app: App | None) -> str:
        if app is None or reg.state == "REGISTERED":
            return "the key path to the slave SAE's node is being set up by the controller"
        return "the key association link of this SAE pair is not up yet"

    # ---------------------------------------------------------------- disconnection

    def disconnect(self, app_id: str, why: str) -> None:
        reg = self.regs.pop(app_id, None)
        if reg is None:
            return
        self.agent.state.notify("sdqkdn_application_disconnected", {"qkd_application": {"app_id": app_id}})
        self.agent.state.delete(statepaths.app(app_id))
        self.lkms.unregister_app(app_id)
        self._save()
        log.info("application %s disconnected: %s", app_id, why)

    async def _idle_loop(self) -> None:
        while True:  # (the settings are read each round: a changed idle_timeout_s holds at once)
            await asyncio.sleep(min(IDLE_CHECK_S, self.settings.idle_timeout_s / 4))
            idle, now = self.settings.idle_timeout_s, time.monotonic()
            for app_id, reg in list(self.regs.items()):
                app = self.lkms.registry.apps.get(app_id)
                # never provisioned: since registered, or asked for again while the controller works
                last = max(app.last_used if app is not None else reg.since, reg.asked)
                if (reg.origin != REQUEST or reg.waiting or now - last < idle
                        or (app is not None and (app.serving or self._streaming(app)))):
                    continue
                self.disconnect(app_id, f"idle for {idle:.0f} s")

    def _streaming(self, app: App) -> bool:
        return any(s.local_connected and s.app is not None and s.app.app_id == app.app_id
                   for s in self.lkms.streams.sides())

    # ---------------------------------------------------------------- tree, LKMS, file

    def _is_local_entry(self, entry: Mapping[str, Any]) -> bool:
        return entry.get("remote_qkdn_id") == self.node_id == entry.get("local_qkdn_id", self.node_id)

    def _publish(self, reg: Registration, status: str) -> None:
        value = dict(reg.entry)
        value["app_status"] = f"{T}{status}"
        value["creation_time"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.agent.state.update({statepaths.app(reg.app_id): value})

    def _register_lkms(self, entry: dict[str, Any]) -> None:
        self.lkms.register_app(entry["app_id"], sae_of(entry.get("server_app_id", "")),
                               [sae_of(c) for c in entry.get("client_app_id", [])],
                               entry.get("local_qkdn_id", self.node_id), entry.get("remote_qkdn_id", ""),
                               entry.get("backing_qkdl_id", []))

    def _save(self) -> None:
        data = {a: {"entry": r.entry, "origin": r.origin} for a, r in self.regs.items()}
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        tmp.replace(self.file)
