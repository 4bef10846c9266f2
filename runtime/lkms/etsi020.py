"""ETSI GS QKD 020 server of the LKMS (aiohttp, its own port, mutual TLS 1.3), and the state
the 020 parts share (client, address book of peer KMSs, acknowledgements awaited).

Endpoints (field names and status codes as the standard spells them):
  GET  /kmapi/versions             -> 200 version_container {"versions": ["v1"]}
  POST /kmapi/v1/ext_keys          ext_key_container -> 200 (no ack_callback_url: synchronous,
                                   {"status": "success"|"partial_success", "ack_containers": [...]})
                                   or 202 (asynchronous: acks follow at ack_callback_url)
  POST /kmapi/v1/ext_keys/void     void_container (?all_confirmation=true) -> 200/202 likewise
  POST /kmapi/v1/ext_keys/ack      [ack_container, ...] -> 200
Errors: 400 (format, routing, unknown keys), 401 (caller certificate not a known peer KMS),
408 (the next KMS did not answer in time), 503 (anything else), each with a `message_data` body
{"message", "details": [{...}]}; never a 500.

Who may call: an sdqkd node (certificate CN = its node ID, from our CA) or an external peer KMS
named in the node config (its CA, its expected identity). What each may do is decided by the
relay (relay.py: only the previous hop of a virtual link) and by external.py (only the peer
that owns the SAEs).

Acks are idempotent: an ack for keys already acknowledged with the same status changes nothing
and is answered 200; an ack naming a key ID we never sent (or sent to another KMS) is refused
whole with 400 `key not present`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from sdqkd.lkms.etsi020_client import KMS_ID_HEADER, Etsi020Client, PeerKms, cert_identities
from sdqkd.lkms.etsi020_schema import (
    API_VERSIONS,
    AckContainer,
    Bad,
    JsonObj,
    message_data,
    parse_ack_containers,
    parse_ext_key_container,
    parse_void_container,
)

if TYPE_CHECKING:
    from sdqkd.lkms.external import ExternalPeers
    from sdqkd.lkms.relay import Relay

log = logging.getLogger(__name__)

Reply = tuple[int, JsonObj]
Spawn = Callable[[Coroutine[Any, Any, None]], None]  # runs a task the server tracks
_DONE_MEMORY = 100_000  # acknowledged key IDs remembered (to answer a repeated ack)


def sync_reply(acks: list[AckContainer], requested: int) -> Reply:
    """The 200 answer of a synchronous ext_keys/void: success when every key got the wanted
    status (relayed / voided), partial_success with the per-key acks otherwise."""
    good = sum(len(a.key_ids) for a in acks if a.ack_status in ("relayed", "voided"))
    body: JsonObj = {"status": "success" if good == requested else "partial_success"}
    if good != requested:
        body["ack_containers"] = [a.to_json() for a in acks]
    return 200, body


@dataclass
class _Awaited:
    peer: PeerKms
    future: asyncio.Future[AckContainer]


class Kms020:
    """Shared 020 state of one LKMS."""

    def __init__(self, node_id: str, client: Etsi020Client, tls: bool,
                 is_peer_node: Callable[[str], bool] = lambda _: False) -> None:
        self.node_id = node_id
        self.is_peer_node = is_peer_node  # a node we share a link with (its address may be unknown)
        self.client = client
        self.tls = tls
        self.base_url = ""  # ours, set when the server listens
        self.nodes: dict[str, PeerKms] = {}  # sdqkd peers: node ID -> their 020 server
        self.pinned: set[str] = set()  # addresses given by configuration (never unlearnt)
        self._awaited: dict[str, _Awaited] = {}  # key ID -> ack we wait for
        self._done: OrderedDict[str, str] = OrderedDict()  # key ID -> ack status received

    @property
    def ack_url(self) -> str:
        return f"{self.base_url}/kmapi/{API_VERSIONS[-1]}/ext_keys/ack"

    def set_node(self, node_id: str, address: str) -> None:
        self.nodes[node_id] = PeerKms(f"{'https' if self.tls else 'http'}://{address}", node_id)

    def node(self, node_id: str) -> PeerKms | None:
        return self.nodes.get(node_id)

    def unlearn(self, peer: PeerKms) -> None:
        """Forget a node's address (learnt with Describe) after it stopped answering there."""
        if self.nodes.get(peer.identity) == peer and peer.identity not in self.pinned:
            del self.nodes[peer.identity]

    def caller(self, identity: str) -> PeerKms | None:
        """A calling sdqkd node: its known 020 server, or (address not known yet) its identity."""
        p = self.nodes.get(identity)
        if p is None and self.is_peer_node(identity):
            p = PeerKms("", identity)
        return p

    # --- acknowledgements ------------------------------------------------------------------
    def expect(self, peer: PeerKms, key_ids: list[str]) -> list[asyncio.Future[AckContainer]]:
        loop = asyncio.get_running_loop()
        futs = []
        for k in key_ids:
            f: asyncio.Future[AckContainer] = loop.create_future()
            self._awaited[k] = _Awaited(peer, f)
            futs.append(f)
        return futs

    def forget(self, key_ids: list[str]) -> None:
        for k in key_ids:
            self._awaited.pop(k, None)

    def on_ack(self, caller: str, acks: list[AckContainer]) -> Reply:
        """All or nothing: every key ID must be awaited from this caller or already acknowledged
        with the same status (a repeated ack); then each awaited one is resolved."""
        for a in acks:
            for k in a.key_ids:
                w = self._awaited.get(k)
                if w is not None and w.peer.identity == caller:
                    continue
                if self._done.get(k) == a.ack_status:
                    continue
                return 400, message_data("key not present",
                                         {"key_not_present": "The acknowledged key ID(s) are not known to this KME."})
        for a in acks:
            for k in a.key_ids:
                w = self._awaited.pop(k, None)
                if w is None:
                    continue  # repeated ack
                self._done[k] = a.ack_status
                if len(self._done) > _DONE_MEMORY:
                    self._done.popitem(last=False)
                if not w.future.done():
                    w.future.set_result(AckContainer((k,), a.ack_status, a.initiator_sae_id, a.target_sae_id,
                                                     a.message, a.extension))
        return 200, {}

    def callback_peer(self, url: str, caller: PeerKms) -> PeerKms:
        """An ack_callback_url is only ever called on the KMS that gave it (no request forgery
        towards third parties): same host and port as that caller's 020 server."""
        u = urlsplit(url)
        try:
            port = u.port or 443
        except ValueError:
            port = -1
        if not caller.url and u.hostname and port > 0:
            # an sdqkd node whose address we did not know: its identity is still checked before
            # anything is sent there, so a URL elsewhere reaches nobody
            return PeerKms(f"{u.scheme}://{u.hostname}:{port}", caller.identity)
        if (u.hostname, port) != caller.hostport:
            raise Bad("bad request format", "bad_request_format",
                      "ack_callback_url: must be on the calling KMS's own ETSI 020 server")
        return caller

    async def send_acks(self, peer: PeerKms, url: str, acks: list[AckContainer]) -> None:
        """POST acks to a callback URL, retried for a while (a lost ack is reconciled by the
        sender with void, so giving up is safe)."""
        body = [a.to_json() for a in acks]
        delay = 0.1
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = await self.client.post_url(peer, url, body)
                if status == 200:
                    return
                log.warning("ETSI 020 ack to %s refused: %d", peer.url, status)
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    log.warning("ETSI 020 ack to %s not delivered: %s", peer.url, type(e).__name__)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class Etsi020Server:
    def __init__(self, kms: Kms020, relay: Relay, external: ExternalPeers) -> None:
        self.kms, self.relay, self.external = kms, relay, external
        self.tasks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/kmapi/versions", self.versions)
        for v in API_VERSIONS:
            app.router.add_post(f"/kmapi/{v}/ext_keys", self.ext_keys)
            app.router.add_post(f"/kmapi/{v}/ext_keys/void", self.void)
            app.router.add_post(f"/kmapi/{v}/ext_keys/ack", self.ack)
        return app

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except Bad as e:
            return web.json_response(e.body(), status=e.status)
        except web.HTTPException as e:  # 404/405 from routing, 413 body too large
            return web.json_response(message_data(e.reason or "error", {"http_error": e.reason or ""}),
                                     status=e.status)
        except Exception as e:  # never a 500 (whose body could carry anything)
            log.error("ETSI 020 %s %s failed: %s", request.method, request.path, type(e).__name__)
            return web.json_response(message_data("server side general error", {
                "server_side_general_error": "The server encountered a general failure and cannot respond."}),
                status=503)

    # --- helpers -------------------------------------------------------------------------
    def _caller(self, request: web.Request) -> PeerKms:
        """The calling KMS: an sdqkd node or a configured external peer, by its certificate."""
        if self.kms.tls:
            tr = request.transport
            ids = cert_identities(tr.get_extra_info("peercert")) if tr is not None else set()
        else:
            h = request.headers.get(KMS_ID_HEADER)
            ids = {h} if h else set()
        for i in sorted(ids):
            p = self.kms.caller(i) or self.external.peer_by_identity(i)
            if p is not None:
                return p
        raise Bad("unauthorized", "unauthorized", "User-supplied certificate is invalid.", status=401)

    @staticmethod
    async def _json(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw)  # see etsi020_client: a relay request is hundreds of keys
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise Bad("bad request format", "bad_request_format", "body: not valid JSON") from None

    @staticmethod
    def _reply(r: Reply) -> web.Response:
        return web.json_response(r[1], status=r[0]) if r[1] or r[0] != 200 else web.Response(status=200)

    # --- endpoints -----------------------------------------------------------------------
    async def versions(self, request: web.Request) -> web.Response:
        self._caller(request)
        return web.json_response({"versions": list(API_VERSIONS)})

    async def ext_keys(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        raw = await self._json(request)
        req = parse_ext_key_container(raw)
        if req.ack_callback_url is not None:
            caller = self.kms.callback_peer(req.ack_callback_url, caller)
        unknown = set(req.extension_mandatory) - {"sdqkd_hop"}
        if unknown:
            raise Bad("bad request format", "extension_not_supported",
                      f"extension_mandatory: {', '.join(sorted(unknown))} not supported by this KME")
        if "sdqkd_hop" in req.extension_mandatory:
            return self._reply(await self.relay.on_ext_keys(caller, raw, req, self.spawn))
        return self._reply(await self.external.on_ext_keys(caller, req, self.spawn))

    async def void(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        flag = request.query.get("all_confirmation", "false")
        if flag not in ("true", "false"):
            raise Bad("void request not understood", "key_voiding_error", "all_confirmation: true or false")
        req = parse_void_container(await self._json(request), flag == "true")
        if req.ack_callback_url is not None:
            caller = self.kms.callback_peer(req.ack_callback_url, caller)
        if "sdqkd_hop" in req.extension:
            return self._reply(await self.relay.on_void(caller, req, self.spawn))
        return self._reply(await self.external.on_void(caller, req, self.spawn))

    async def ack(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        acks = parse_ack_containers(await self._json(request))
        return self._reply(self.kms.on_ack(caller.identity, acks))
