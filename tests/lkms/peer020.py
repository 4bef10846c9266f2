"""An independent ETSI GS QKD 020 KMS for interoperability tests ("another vendor").

Written from the standard's OpenAPI (draft 0.4.1, interop-kms.yaml) and its text only; it
imports nothing from sdqkd. It uses aiohttp for both its server and its client (sdqkd's client
is a different stack), keeps its keys in a dict, and serves its own SAEs through a method
(`take`, standing in for its ETSI 014 interface).

Behaviour, as the standard describes it:
- GET /kmapi/versions -> {"versions": ["v1"]}
- POST /kmapi/v1/ext_keys: keys for target SAEs served here. Without ack_callback_url the call
  blocks and answers 200 {"status": "success"}; with it, 202 and then a POST of ack_containers
  (`relayed`) to the callback.
- POST /kmapi/v1/ext_keys/void: keys present and not yet delivered are discarded (`voided`),
  delivered ones `failed`, unknown ones `key not present`; 200 or 202 + acks likewise.
- POST /kmapi/v1/ext_keys/ack: acks for keys it sent; unknown IDs -> 400 key not present.
- Errors: message_data {"message", "details"}; callers must present a client certificate with
  the expected identity (CN), else 401.
Fault knobs for tests: never_ack, ack_twice, void_fails (that many voids answered 503, as by a
KMS overloaded or restarting); `void_ids` lists the key IDs of each void request received
(None: all_confirmation).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


def _err(status: int, message: str, detail_key: str, detail: str) -> web.Response:
    return web.json_response({"message": message, "details": [{detail_key: detail}]}, status=status)


def _is_uuid(v: Any) -> bool:
    try:
        return isinstance(v, str) and str(uuid.UUID(v)) == v.lower()
    except ValueError:
        return False


@dataclass
class Held:
    value: bytes = field(repr=False)
    initiator: str
    targets: list[str]
    delivered: bool = False


class PeerKms:
    def __init__(self, identity: str, saes: list[str], cert: str, key: str, own_ca: str, trusted_ca: str,
                 caller_identity: str) -> None:
        self.identity, self.saes = identity, saes
        self.caller_identity = caller_identity  # the CN the calling KMS must present
        self.server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=trusted_ca)
        self.server_ctx.load_cert_chain(cert, key)
        self.server_ctx.verify_mode = ssl.CERT_REQUIRED
        self.client_ctx = ssl.create_default_context(cafile=trusted_ca)
        self.client_ctx.load_cert_chain(cert, key)
        self.client_ctx.check_hostname = False  # the other KMS is named by its certificate CN
        self.own_ca = own_ca
        self.keys: dict[str, Held] = {}
        self.acks: list[dict[str, Any]] = []  # ack containers received
        self.awaiting: set[str] = set()  # key IDs we sent asynchronously
        self.requests = 0
        self.never_ack = False
        self.ack_twice = False
        self.void_fails = 0
        self.void_ids: list[list[str] | None] = []
        self.supported = ["v1"]
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/kmapi/versions", self.versions)
        app.router.add_post("/kmapi/v1/ext_keys", self.ext_keys)
        app.router.add_post("/kmapi/v1/ext_keys/void", self.void)
        app.router.add_post("/kmapi/v1/ext_keys/ack", self.ack)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.server_ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _authorised(self, request: web.Request) -> bool:
        tr = request.transport
        cert = tr.get_extra_info("peercert") if tr is not None else None
        cns = [v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"]
        return self.caller_identity in cns

    # --- the SAE side (stands in for this vendor's ETSI 014) -------------------------------------
    def take(self, key_id: str) -> bytes | None:
        h = self.keys.get(key_id)
        if h is None or h.delivered:
            return None
        h.delivered = True
        return h.value

    # --- server ------------------------------------------------------------------------
    async def versions(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _err(401, "unauthorized", "unauthorized", "User-supplied certificate is invalid.")
        return web.json_response({"versions": self.supported})

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    async def ext_keys(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _err(401, "unauthorized", "unauthorized", "User-supplied certificate is invalid.")
        self.requests += 1
        b = await self._body(request)
        if not isinstance(b, dict) or not {"keys", "initiator_sae_id", "target_sae_ids"} <= set(b):
            return _err(400, "missing parameters", "missing_parameters",
                        "required parameters are missing from the API call")
        if b.get("extension_mandatory"):
            return _err(400, "extension not supported", "extension_mandatory", "not supported")
        targets = b["target_sae_ids"]
        if not isinstance(targets, list) or not targets or any(t not in self.saes for t in targets):
            return _err(400, "key routing error", "target_sae_id_not_recognized",
                        "KME associated with a target SAE ID is not known.")
        new: dict[str, Held] = {}
        for k in b["keys"] if isinstance(b["keys"], list) else []:
            if not isinstance(k, dict) or not _is_uuid(k.get("key_id")) or not isinstance(k.get("value"), str):
                return _err(400, "missing parameters", "missing_parameters", "key_id and value required")
            value = base64.b64decode(k["value"])
            old = self.keys.get(k["key_id"])
            if old is not None and old.value != value:
                return _err(400, "key routing error", "invalid_routing", "key ID already in use")
            if old is None:
                new[k["key_id"]] = Held(value, b["initiator_sae_id"], list(targets))
        self.keys.update(new)  # a repeated body stores nothing twice
        ids = [k["key_id"] for k in b["keys"]]
        url = b.get("ack_callback_url")
        if url is None:
            return web.json_response({"status": "success"})
        acks = [{"key_ids": [{"key_id": i} for i in ids], "ack_status": "relayed",
                 "initiator_sae_id": b["initiator_sae_id"], "target_sae_id": t} for t in targets]
        if not self.never_ack:
            self._spawn(self._post_acks(url, acks, 2 if self.ack_twice else 1))
        return web.Response(status=202)

    async def void(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _err(401, "unauthorized", "unauthorized", "User-supplied certificate is invalid.")
        b = await self._body(request)
        if not isinstance(b, dict) or not {"initiator_sae_id", "target_sae_ids"} <= set(b):
            return _err(400, "void request not understood", "key_voiding_error",
                        "KME cannot parse the submitted void request.")
        ids = b.get("key_ids")
        self.void_ids.append(list(ids) if isinstance(ids, list) else None)
        if self.void_fails > 0:
            self.void_fails -= 1
            return _err(503, "service unavailable", "service_unavailable", "KME is restarting.")
        if ids is None:
            if request.query.get("all_confirmation") != "true":
                return _err(400, "no_key_ids_or_confirmation", "no_key_ids_or_confirmation",
                            "set all_confirmation to true or specify key_ids")
            ids = [k for k, h in self.keys.items() if h.initiator == b["initiator_sae_id"]]
        by_status: dict[str, list[str]] = {"voided": [], "failed": [], "key not present": []}
        for i in ids:
            h = self.keys.get(i)
            if h is None:
                by_status["key not present"].append(i)
            elif h.delivered:
                by_status["failed"].append(i)
            else:
                del self.keys[i]
                by_status["voided"].append(i)
        acks = [{"key_ids": [{"key_id": i} for i in v], "ack_status": s, "initiator_sae_id": b["initiator_sae_id"],
                 "target_sae_id": t} for s, v in by_status.items() if v for t in b["target_sae_ids"]]
        url = b.get("ack_callback_url")
        if url is None:
            ok = not by_status["failed"] and not by_status["key not present"]
            return web.json_response({"status": "success"} if ok else
                                     {"status": "partial_success", "ack_containers": acks})
        self._spawn(self._post_acks(url, acks, 1))
        return web.Response(status=202)

    async def ack(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _err(401, "unauthorized", "unauthorized", "User-supplied certificate is invalid.")
        b = await self._body(request)
        if not isinstance(b, list) or not all(isinstance(a, dict) and "key_ids" in a and "ack_status" in a for a in b):
            return _err(400, "ack not understood", "ack_not_understood", "KME cannot parse the submitted acknowledgement.")
        ids = [x["key_id"] for a in b for x in a["key_ids"]]
        if any(i not in self.awaiting for i in ids):
            return _err(400, "key not present", "key_not_present", "The acknowledged key ID(s) are not known to this KME.")
        self.acks.extend(b)
        return web.Response(status=200)

    # --- client ------------------------------------------------------------------------
    async def _post_acks(self, url: str, acks: list[dict[str, Any]], times: int) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(times):
                async with s.post(url, json=acks, ssl=self.client_ctx) as r:
                    await r.read()

    async def call(self, url: str, body: Any, query: str = "") -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.post(url + query, json=body, ssl=self.client_ctx) as r:
            text = await r.text()
            return r.status, (await r.json() if text else None)

    async def send_keys(self, kms_url: str, keys: dict[str, bytes], initiator: str, targets: list[str],
                        asynchronous: bool = False) -> tuple[int, Any]:
        """ext_keys to another KMS (this peer as the sender)."""
        async with aiohttp.ClientSession() as s, s.get(kms_url + "/kmapi/versions", ssl=self.client_ctx) as r:
            assert "v1" in (await r.json())["versions"]
        body: dict[str, Any] = {"keys": [{"key_id": k, "value": base64.b64encode(v).decode()} for k, v in keys.items()],
                                "initiator_sae_id": initiator, "target_sae_ids": targets}
        if asynchronous:
            body["ack_callback_url"] = self.url + "/kmapi/v1/ext_keys/ack"
            self.awaiting |= set(keys)
        return await self.call(kms_url + "/kmapi/v1/ext_keys", body)
