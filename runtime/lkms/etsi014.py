"""ETSI GS QKD 014 V1.1.1 REST API of the LKMS (the "KME"), served by aiohttp over HTTPS.

Why aiohttp: it is asyncio-native, so the REST server, the gRPC servers (grpc.aio) and the key
store's completions share one event loop without threads or an ASGI layer; it gives handlers the
TLS transport (the verified client certificate) directly; and it is the fastest mature
pure-asyncio HTTP/1.1 server available to us (keep-alive, no per-request thread hop).

Endpoints (field names exactly as the standard spells them):
  GET  /api/v1/keys/{slave_SAE_ID}/status                     -> Status
  GET  /api/v1/keys/{slave_SAE_ID}/enc_keys?number=&size=     -> Key container
  POST /api/v1/keys/{slave_SAE_ID}/enc_keys   Key request     -> Key container
  GET  /api/v1/keys/{master_SAE_ID}/dec_keys?key_ID=          -> Key container
  POST /api/v1/keys/{master_SAE_ID}/dec_keys  Key IDs         -> Key container
The caller is the SAE named by the CN of its client certificate (without TLS, for loopback
development only, the `X-SAE-ID` header); it must be attached to this node, else 401.
Errors: 400 (bad request, naming what: unknown members, the bad number/size, the key IDs not
found; unknown pair), 401 (no/unknown SAE, saying which), 503 (no link up,
not enough key, peer KMS unreachable, pair being set up, controller unreachable) with a
`Retry-After` header, each with an Error body {message, details}.

First request of a pair: status, enc_keys and dec_keys find the pair's application through
`Core.app_for_request`, which registers a new pair at this node and waits (bounded) for the
controller to provision it (ETSI GS QKD 015 clause 5.2; runtime/node/apps.py). A pair of two
SAEs of this node is served from the node's own random keys (runtime/lkms/local.py).

Key sizes. `size` must be a multiple of 8 within [min_key_size, max_key_size]. A key of a size
other than the pool's native key size is built from whole link keys: enough consecutive link
keys are concatenated and cut to `size` bits (e.g. size 512 from two 256-bit keys, size 128
from one 256-bit key whose other half is discarded). Its key_ID is the ID of its first link
key; both KMEs group the same link keys the same way, so dec_keys returns the same bytes.
Discarded remainders are erased with the key, never reused.

Multicast: additional_slave_SAE_IDs (at most max_SAE_ID_count) must belong to the same
registered application and hence the same remote node; each slave can fetch each key once.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sdqkd.errors import SdqkdError
from sdqkd.lkms.core import Core, NotReady, UnknownPair
from sdqkd.lkms.dispenser import Dispensers, KeyUnavailable
from sdqkd.lkms.keys import AppKey, is_uuid
from sdqkd.lkms.local import local_keys
from sdqkd.lkms.tlsctx import peercert_cn

log = logging.getLogger(__name__)

SAE_HEADER = "X-SAE-ID"
_KEY_ERROR = "key not found"  # same for unknown keys and other pairs' keys (no oracle), with their IDs


class ApiError(SdqkdError):
    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details or []


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None,
           retry_after_s: int = 1) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = details
    # every 503 here is transient (RFC 9110 15.6.4): tell the client when to come back
    headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
    return web.json_response(body, status=status, headers=headers)


def _keys_body(keys: list[AppKey]) -> web.Response:
    return web.json_response({"keys": [{"key_ID": k.key_id, "key": base64.b64encode(k.material).decode()}
                                       for k in keys]})


_KEY_REQUEST = frozenset({"number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional"})
_KEY_IDS = frozenset({"key_IDs", "key_IDs_extension", "extension_mandatory", "extension_optional"})
_KEY_ID = frozenset({"key_ID", "key_ID_extension"})


def _unknown_members(obj: dict[str, Any], known: frozenset[str], where: str) -> None:
    """400 naming the members the standard's data format does not have (a typo such as `numbr`
    must not silently give the defaults; extensions go in extension_mandatory/_optional)."""
    bad = sorted(k for k in obj if k not in known)
    if bad:
        shown = ", ".join(repr(k[:40]) for k in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ApiError(400, f"{where}: unknown member{'s' if len(bad) > 1 else ''} {shown} "
                            f"(known: {', '.join(sorted(known))})")


def _unknown_query(request: web.Request, known: set[str]) -> None:
    bad = sorted(k for k in request.query if k not in known)
    if bad:
        raise ApiError(400, f"unknown query parameter{'s' if len(bad) > 1 else ''} "
                            f"{', '.join(repr(k[:40]) for k in bad[:8])} (known: {', '.join(sorted(known))})")


def _got(v: Any) -> str:
    r = repr(v) if not isinstance(v, str) else repr(v[:20] + ("..." if len(v) > 20 else ""))
    return r if len(r) <= 30 else r[:27] + "..."


def _int_or(v: Any, query: bool, bad: Callable[[Any], ApiError]) -> int:
    """`v` as an int: from a query, a string of an optional minus and digits; from JSON, an
    integer (not a bool, not a string)."""
    if query:
        t = v[1:] if v.startswith("-") else v
        if t.isascii() and t.isdigit() and len(t) <= 9:
            return int(v)
        raise bad(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(v)
    return v


def _query_one(q: Any, name: str) -> str | None:
    vals = q.getall(name, [])
    if not vals:
        return None
    if len(vals) > 1:
        raise ApiError(400, f"{name} given more than once")
    return str(vals[0])


class Etsi014:
    def __init__(self, core: Core, dispensers: Dispensers) -> None:
        self.core, self.dispensers = core, dispensers

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=256 * 1024)
        app.router.add_get("/api/v1/keys/{sae}/status", self.status)
        app.router.add_route("GET", "/api/v1/keys/{sae}/enc_keys", self.enc_keys)
        app.router.add_route("POST", "/api/v1/keys/{sae}/enc_keys", self.enc_keys)
        app.router.add_route("GET", "/api/v1/keys/{sae}/dec_keys", self.dec_keys)
        app.router.add_route("POST", "/api/v1/keys/{sae}/dec_keys", self.dec_keys)
        return app

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return _error(e.status, e.message, e.details)
        except web.HTTPException as e:  # 404/405 from routing, 413 body too large
            return _error(e.status, e.reason)
        except NotReady as e:
            return _error(503, str(e), retry_after_s=e.retry_after_s)
        except UnknownPair as e:
            return _error(400, str(e))
        except KeyUnavailable as e:
            return _error(503, str(e))
        except Exception as e:  # never a 500 with a traceback (which could carry anything)
            log.error("ETSI 014 %s %s failed: %s", request.method, request.path, type(e).__name__)
            return _error(503, "internal error")

    # --- helpers -------------------------------------------------------------------------
    def _caller(self, request: web.Request) -> str:
        """The calling SAE; 401 saying what was wrong with the certificate (or header)."""
        core = self.core
        if core.tls:
            tr = request.transport
            cert = tr.get_extra_info("peercert") if tr is not None else None
            if not cert:
                raise ApiError(401, "unauthorized: no client certificate (an SAE's certificate is required)")
            sae, what = peercert_cn(cert), "certificate"
            if not sae:
                raise ApiError(401, "unauthorized: the client certificate names no subject CN (SAE ID)")
        else:
            sae, what = request.headers.get(SAE_HEADER), f"{SAE_HEADER} header"
            if not sae:
                raise ApiError(401, f"unauthorized: no {SAE_HEADER} header naming the calling SAE")
        if core.registry.is_local(sae):
            return sae
        node = core.sae_node(sae)
        if node is not None:
            raise ApiError(401, f"unauthorized: {what} of SAE {sae!r}, which is attached to node "
                                f"{core.node_label(node)}, not this node ({core.node_label(core.node_id)})")
        raise ApiError(401, f"unauthorized: {what} of {sae!r}, which is not an SAE known to this node")

    async def _json(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(400, "malformed JSON body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    # --- status --------------------------------------------------------------------------
    async def status(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave = request.match_info["sae"]
        core, lim = self.core, self.core.limits
        app, link = core.served(master, (slave,)) or await core.app_for_request(master, (slave,))
        if link is None and not app.is_local:
            raise NotReady("no key association link up for this SAE pair")
        # a local pair draws fresh random keys on demand: as many as one may hold
        st = core.store.pool_stats(link.qkdl_id) if link is not None else None
        stored = core.store.max_key_count if link is None else (st.available_bits // lim.key_size) if st else 0
        return web.json_response({
            "source_KME_ID": core.node_id, "target_KME_ID": link.peer_node_id if link else core.node_id,
            "master_SAE_ID": master, "slave_SAE_ID": slave, "key_size": lim.key_size,
            "stored_key_count": stored,
            "max_key_count": core.store.max_key_count, "max_key_per_request": lim.max_key_per_request,
            "max_key_size": lim.max_key_size, "min_key_size": lim.min_key_size,
            "max_SAE_ID_count": lim.max_sae_id_count})

    # --- enc_keys ------------------------------------------------------------------------
    def _key_request(self, given: dict[str, Any], query: bool) -> tuple[int, int]:
        """number and size (absent: the default) checked, with one wording per parameter whatever
        was wrong (not an integer, negative, out of range), naming the value given."""
        lim = self.core.limits

        def bad_number(v: Any) -> ApiError:
            return ApiError(400, f"number must be an integer between 1 and {lim.max_key_per_request} (got {_got(v)})")

        def bad_size(v: Any) -> ApiError:
            return ApiError(400, f"size must be an integer multiple of 8 between {lim.min_key_size} and "
                                 f"{lim.max_key_size} (got {_got(v)})")

        n = _int_or(given["number"], query, bad_number) if "number" in given else 1
        z = _int_or(given["size"], query, bad_size) if "size" in given else lim.key_size
        if not 1 <= n <= lim.max_key_per_request:
            raise bad_number(n)
        if z % 8 or not lim.min_key_size <= z <= lim.max_key_size:
            raise bad_size(z)
        return n, z

    async def enc_keys(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave = request.match_info["sae"]
        extra: list[str] = []
        if request.method == "POST":
            body = await self._json(request)
            _unknown_members(body, _KEY_REQUEST, "Key request")
            number, size = self._key_request(body, query=False)
            extra = self._extra_slaves(body.get("additional_slave_SAE_IDs"), master, slave)
            self._extensions(body)
        else:
            _unknown_query(request, {"number", "size"})
            given = {k: v for k in ("number", "size") if (v := _query_one(request.query, k)) is not None}
            number, size = self._key_request(given, query=True)
        slaves = [slave, *extra]
        core = self.core
        app, link = core.served(master, slaves) or await core.app_for_request(master, slaves)
        if app.is_local:
            keys = await local_keys(core.store, core.node_id, master, slaves, size, number)
        elif link is None:
            raise NotReady("no key association link up for this SAE pair")
        else:
            with core.serving(app):
                keys = await self.dispensers.get(link, master, slaves, size, number)
        core.charge(app, number * size, number)
        return _keys_body(keys)

    def _extra_slaves(self, v: Any, master: str, slave: str) -> list[str]:
        if v is None:
            return []
        lim = self.core.limits
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise ApiError(400, "additional_slave_SAE_IDs must be a list of SAE IDs")
        if len(v) > lim.max_sae_id_count:
            raise ApiError(400, f"at most {lim.max_sae_id_count} additional_slave_SAE_IDs")
        if len(set(v)) != len(v) or slave in v or master in v:
            raise ApiError(400, "additional_slave_SAE_IDs must be distinct from each other and the pair")
        return list(v)

    @staticmethod
    def _extensions(body: dict[str, Any]) -> None:
        for name in ("extension_mandatory", "extension_optional"):
            v = body.get(name)
            if v is not None and (not isinstance(v, list) or not all(isinstance(e, dict) for e in v)):
                raise ApiError(400, f"{name} must be a list of objects")
        mandatory = body.get("extension_mandatory") or []
        if any(mandatory):
            names = sorted({k for e in mandatory for k in e})
            raise ApiError(400, "mandatory extension not supported", [{"extension_mandatory": names}])

    # --- dec_keys ------------------------------------------------------------------------
    async def dec_keys(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        master = request.match_info["sae"]
        lim = self.core.limits
        if request.method == "POST":
            body = await self._json(request)
            _unknown_members(body, _KEY_IDS, "Key IDs")
            items = body.get("key_IDs")
            if not isinstance(items, list) or not items:
                raise ApiError(400, "key_IDs must be a non-empty list")
            ids = []
            for i, it in enumerate(items):
                if not isinstance(it, dict) or not isinstance(it.get("key_ID"), str):
                    raise ApiError(400, f"key_IDs[{i}] must be an object with a key_ID string")
                _unknown_members(it, _KEY_ID, f"key_IDs[{i}]")
                ids.append(it["key_ID"])
            self._extensions(body)
        else:
            _unknown_query(request, {"key_ID"})
            ids = request.query.getall("key_ID", [])
            if len(ids) != 1:
                raise ApiError(400, "exactly one key_ID query parameter is required")
        if len(ids) > lim.max_key_per_request:
            raise ApiError(400, f"at most {lim.max_key_per_request} key_IDs per request")
        for i, k in enumerate(ids):
            if not is_uuid(k):
                raise ApiError(400, f"key_ID must be a UUID (key_IDs[{i}] is {_got(k)})")
        if len(set(ids)) != len(ids):
            raise ApiError(400, f"duplicate key_ID {next(k for k in ids if ids.count(k) > 1)}")
        app = self.core.registry.app_for(master, slave) or (
            await self.core.app_for_request(master, (slave,), need_link=False))[0]
        missing: list[str] = []
        keys = await self.core.store.take_in(master, slave, ids, missing)
        if keys is None:  # nothing taken; unknown IDs and other pairs' keys are named alike (no oracle)
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise ApiError(400, f"{_KEY_ERROR}: {shown}",
                           [{"key_IDs": "unknown, already delivered, or not keys of this SAE pair",
                             "key_IDs_not_found": missing}])
        self.core.charge(app, sum(k.bits for k in keys), len(keys))
        return _keys_body(keys)
