"""RESTCONF (RFC 8040) northbound of one node, on aiohttp.

Resources: `/.well-known/host-meta` (root discovery, §3.1), `/restconf` (§3.3),
`/restconf/data` (§3.3.1: the datastore, every data resource of the model and its
augmentations, plus ietf-yang-library and ietf-restconf-monitoring), `/restconf/operations`
(the model has no RPCs), `/restconf/yang-library-version` and the event stream
`/restconf/streams/NETCONF/json` (§6, server-sent events).

A data request: authenticate (HTTP Basic or bearer, constant-time) -> pick the dialect
(strict RFC 8040 when a YANG media type is named, the compatibility dialect of compat.py
otherwise) -> parse the URI (uri.py) and query (query.py) -> GET reads the agent's tree,
encodes RFC 7951, applies content / with-defaults / fields / depth, answers with ETag and
Last-Modified on configuration alone (304 on If-None-Match; If-Modified-Since on configuration); PUT / POST / PATCH / DELETE check
the method's preconditions (If-Match, If-Unmodified-Since: 412; existence: 404 / 409) and
commit one edit through the adapter, i.e. the node's transaction (Datastore.change). Every refusal is
an `ietf-restconf:errors` body with its RFC 8040 status, changes nothing, and is counted in
the node's `sdqkd-restconf` state; no request can take the server down (500, counted)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web

from sdqkd.generated import restconf as rc

from . import bodies, compat, library, query, uri
from .adapter import CONFIG, DELETE, MERGE, REPLACE, Edit, EditRefused, ModelAdapter
from .auth import Credentials
from .errors import RestconfError, not_found, protocol

log = logging.getLogger("sdqkd.restconf")

YANG_JSON = bodies.YANG_JSON
MAX_BODY = 4 * 1024 * 1024  # as gNMI's message limit
DATA_PREFIX = "/restconf/data"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DATA_METHODS = "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"
COMPAT = web.RequestKey("compat", bool)  # the request speaks the compatibility dialect


@dataclass
class Figures:
    requests: int = 0
    refused: int = 0
    compat: int = 0
    refused_compat: int = 0
    last_refusal: str = ""
    dirty: bool = False


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def _etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'


def _member(spath: str) -> str:
    """Module-qualified member name of a node at the top of a body (RFC 7951 §4)."""
    res = rc.RESOURCES[spath]
    return f"{res.module}:{res.path.rsplit('/', 1)[1]}"


class RestconfServer:
    """The RESTCONF application of one node's agent (through `ModelAdapter`)."""

    def __init__(self, adapter: ModelAdapter, credentials: Credentials | None = None):
        self.adapter = adapter
        self.credentials = credentials or Credentials()
        self.figures = Figures()
        self._flusher: asyncio.Task[None] | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self.app = self._build()

    # ---------------------------------------------------------------- app

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/.well-known/host-meta", self.host_meta)
        r.add_get("/restconf", self.api_root)
        r.add_get("/restconf/", self.api_root)
        r.add_get("/restconf/yang-library-version", self.library_version)
        r.add_get("/restconf/operations", self.operations)
        r.add_route("*", "/restconf/operations/{op:.*}", self.no_operation)
        r.add_get(f"/restconf/streams/{library.STREAM}/json", self.stream)
        r.add_route("*", DATA_PREFIX, self.data)
        r.add_route("*", DATA_PREFIX + "/{tail:.*}", self.data)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._flush()  # the figures exist from the start
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _on_shutdown(self, _app: web.Application) -> None:
        for task in list(self._streams):  # open event streams end with the server
            task.cancel()

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        compat_req = compat.wants_compat(request.headers.get("Accept", ""), request.headers.get("Content-Type", ""))
        request[COMPAT] = compat_req
        self.figures.requests += 1
        self.figures.compat += compat_req
        try:
            if request.path.startswith("/restconf") and self.credentials.required:
                if not self.credentials.check(request.headers.get("Authorization", "")):
                    raise protocol("access-denied", "valid HTTP Basic or bearer credentials required", status=401,
                                   headers={"WWW-Authenticate": 'Basic realm="restconf", Bearer realm="restconf"'})
            return await handler(request)
        except RestconfError as e:
            return self._refuse(request, e)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            tag = {404: "invalid-value", 405: "operation-not-supported", 413: "too-big"}.get(e.status, "invalid-value")
            return self._refuse(request, protocol(tag, e.reason, status=e.status))
        except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
            log.exception("RESTCONF %s %s failed", request.method, request.path)
            return self._refuse(request, RestconfError("operation-failed", f"internal error ({type(e).__name__}); "
                                                       "nothing was applied"))

    def _refuse(self, request: web.Request, e: RestconfError) -> web.Response:
        f = self.figures
        f.refused += 1
        f.refused_compat += bool(request.get(COMPAT))
        f.last_refusal = f"{request.method} {request.path}: {e.status} {e.tag}: {e.message}"[:1000]
        self._flush()
        if request.get(COMPAT):
            log.info("RESTCONF refused (compat) %s", f.last_refusal)
        headers = dict(e.headers)
        return web.Response(status=e.status, body=_json(e.body()), headers=headers,
                            content_type=YANG_JSON if not request.get(COMPAT) else "application/json")

    # ---------------------------------------------------------------- figures -> state

    def _flush(self) -> None:
        f = self.figures
        base = "/qkd_node/sdqkd-restconf"
        with contextlib.suppress(Exception):  # figures never fail a request
            self.adapter.feed_state({f"{base}/requests": f.requests, f"{base}/refused-requests": f.refused,
                                     f"{base}/compat-requests": f.compat,
                                     f"{base}/refused-compat-requests": f.refused_compat,
                                     f"{base}/last-refusal": f.last_refusal})

    async def _flush_loop(self) -> None:
        last = -1
        while True:
            await asyncio.sleep(1.0)
            if self.figures.requests != last:
                last = self.figures.requests
                self._flush()

    # ---------------------------------------------------------------- fixed resources

    async def host_meta(self, request: web.Request) -> web.Response:
        xrd = ("<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
               "  <Link rel='restconf' href='/restconf'/>\n</XRD>\n")
        return web.Response(text=xrd, content_type="application/xrd+xml")

    def _answer(self, request: web.Request, body: Any, status: int = 200) -> web.Response:
        data = _json(body)
        return web.Response(status=status, body=data, headers={"Cache-Control": "no-cache"},
                            content_type="application/json" if request[COMPAT] else YANG_JSON)

    async def api_root(self, request: web.Request) -> web.Response:
        self._check_accept(request)
        return self._answer(request, {"ietf-restconf:restconf": {
            "data": {}, "operations": {}, "yang-library-version": rc.YANG_LIBRARY_VERSION}})

    async def library_version(self, request: web.Request) -> web.Response:
        self._check_accept(request)
        return self._answer(request, {"ietf-restconf:yang-library-version": rc.YANG_LIBRARY_VERSION})

    async def operations(self, request: web.Request) -> web.Response:
        self._check_accept(request)
        return self._answer(request, {"ietf-restconf:operations": {}})

    async def no_operation(self, request: web.Request) -> web.Response:
        raise protocol("operation-not-supported", f"no operation {request.match_info['op']!r}: the model defines no "
                       "RPCs or actions", status=404)

    @staticmethod
    def _check_accept(request: web.Request) -> None:
        accept = request.headers.get("Accept", "")
        if request[COMPAT] or not accept:
            return
        if YANG_JSON not in accept and "*/*" not in accept and "application/*" not in accept:
            raise protocol("invalid-value", f"cannot answer in {accept!r}; this server speaks {YANG_JSON}",
                           status=406)

    # ---------------------------------------------------------------- data

    async def data(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0][len(DATA_PREFIX):]
        method = request.method
        if method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": _DATA_METHODS, "Accept-Patch": YANG_JSON})
        strict = not request[COMPAT]
        self._check_accept(request)
        q = query.parse(request.query, [k for k, _v in request.query.items()], method)
        lib = library.lookup(raw, self._base_url(request)) if raw.strip("/") else None
        if lib is not None:
            if method not in ("GET", "HEAD"):
                raise library.read_only(raw)
            name, value = lib
            return self._send(request, {name: value}, q, config_only=False)
        target = uri.parse(raw, strict)
        if q.fields is not None:
            query.check_fields(target.spath, q.fields, request.query["fields"])
        if method in ("GET", "HEAD"):
            return self._get(request, target, q, strict)
        if method not in ("PUT", "POST", "PATCH", "DELETE"):
            raise protocol("operation-not-supported", f"method {method} not allowed here", status=405,
                           headers={"Allow": _DATA_METHODS})
        self._check_writable(target)
        await self._preconditions(request, target)
        if method == "DELETE":
            return await self._delete(target)
        body = await bodies.read_body(request, strict)
        if not strict:
            return await self._compat_write(request, target, body)
        if method == "PUT":
            return await self._put(target, body)
        if method == "POST":
            return await self._post(request, target, body)
        return await self._patch(target, body)

    @staticmethod
    def _base_url(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    # -- GET

    def _get(self, request: web.Request, target: uri.Target, q: query.Query, strict: bool) -> web.StreamResponse:
        if target.spath == "/":
            return self._send(request, self._datastore(request, q, strict), q, config_only=q.content == CONFIG)
        matches = self.adapter.find(target.elems)
        kind = rc.RESOURCES[target.spath].kind
        # a config leaf, or content=config: what the last commit set; anything else may hold state
        config_only = q.content == CONFIG or (kind in ("leaf", "leaf-list") and rc.RESOURCES[target.spath].config)
        if not matches and not strict and kind == "container" and not rc.RESOURCES[target.spath].presence \
                and (len(target.elems) == 1 or self.adapter.exists(target.elems[:-1])):
            return self._send(request, {}, q, config_only)  # FreeCONF answers an empty container with {}
        if not matches:
            raise not_found(target.instance_id(), "the list has no entries" if target.keyless else "no data at this path")
        entry = kind == "list"
        values = []
        for _e, _s, internal in matches:
            v = self.adapter.encode(target.spath, internal, ietf=strict, filt=q.content, entry=entry)
            if v is None and kind in ("leaf", "leaf-list"):
                raise not_found(target.instance_id(), f"no {'config' if q.content == CONFIG else 'state'} "
                                "data at this path")
            if v is not None or not target.keyless:
                values.append(self._shape(target.spath, v if v is not None else {}, q, strict))
        if not strict and (kind == "container" or (entry and not target.keyless)):
            return self._send(request, values[0], q, config_only)  # the compatibility dialect: content unwrapped
        member = _member(target.spath) if strict else target.name
        return self._send(request, {member: values if entry else values[0]}, q, config_only)

    def _datastore(self, request: web.Request, q: query.Query, strict: bool) -> dict[str, Any]:
        body: dict[str, Any] = self.adapter.encode("/", self.adapter.root(), ietf=strict, filt=q.content) or {}
        if not strict:
            return body
        body = {m: self._shape("/" + m.rpartition(":")[2], v, q, strict, top=False) for m, v in body.items()}
        if q.content != CONFIG:
            body.update(library.top_level(self._base_url(request)))
        if q.fields is not None:
            body = query.select("/", body, q.fields)
        if q.depth is not None:
            body = query.limit_depth("/", body, q.depth, level=0)
        return body

    def _shape(self, spath: str, value: Any, q: query.Query, ietf: bool, top: bool = True) -> Any:
        if q.with_defaults != "explicit":
            value = query.apply_defaults(spath, value, q.with_defaults, q.content, ietf, self._encode_default(ietf))
        if not top:
            return value
        if q.fields is not None:
            value = query.select(spath, value, q.fields)
        if q.depth is not None:
            value = query.limit_depth(spath, value, q.depth)
        return value

    def _encode_default(self, ietf: bool) -> Callable[[str, str], Any]:
        def enc(spath: str, text: str) -> Any:
            return self.adapter.encode(spath, self.adapter.decode_default(spath, text), ietf=ietf)
        return enc

    def _send(self, request: web.Request, body: Any, q: query.Query, config_only: bool) -> web.Response:
        """The representation with its ETag; with Last-Modified (the last commit) only when it
        holds configuration alone: state changes without a commit, and a client revalidating
        by date would keep stale counters (304 on If-Modified-Since)."""
        data = _json(body)
        etag = _etag(data)
        modified = self.adapter.modified()
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if config_only:
            headers["Last-Modified"] = _http_date(modified)
        inm = request.headers.get("If-None-Match")
        if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return web.Response(status=304, headers=headers)
        ims = request.headers.get("If-Modified-Since")
        if config_only and inm is None and ims is not None:
            since = email.utils.parsedate_to_datetime(ims).timestamp() if _valid_date(ims) else None
            if since is not None and int(modified) <= since:
                return web.Response(status=304, headers=headers)
        return web.Response(status=200, body=data, headers=headers,
                            content_type="application/json" if request[COMPAT] else YANG_JSON)

    # -- write helpers

    @staticmethod
    def _check_writable(target: uri.Target) -> None:
        res = target.resource
        if res is not None and not res.config:
            raise RestconfError("operation-not-supported", f"{target.instance_id()} is state data (config false); "
                                "it cannot be written", path=target.instance_id(), status=405,
                                headers={"Allow": "GET, HEAD, OPTIONS"})

    async def _preconditions(self, request: web.Request, target: uri.Target) -> None:
        im = request.headers.get("If-Match")
        ius = request.headers.get("If-Unmodified-Since")
        if im is None and ius is None:
            return
        if ius is not None and _valid_date(ius):
            if int(self.adapter.modified()) > email.utils.parsedate_to_datetime(ius).timestamp():
                raise protocol("operation-failed", "the datastore changed after If-Unmodified-Since", status=412)
        if im is not None and im.strip() != "*":
            current = self._current_etag(target)
            if current not in [t.strip() for t in im.split(",")]:
                raise protocol("operation-failed", f"If-Match {im.strip()} does not match the resource's ETag "
                               f"{current}", status=412)
        elif im is not None and target.elems and not self.adapter.exists(target.elems):
            raise protocol("operation-failed", "If-Match: * but the resource does not exist", status=412)

    def _current_etag(self, target: uri.Target) -> str | None:
        if target.spath == "/":
            body: Any = self.adapter.encode("/", self.adapter.root(), ietf=True)
        else:
            m = self.adapter.find(target.elems)
            if not m:
                return None
            kind = rc.RESOURCES[target.spath].kind
            v = self.adapter.encode(target.spath, m[0][2], ietf=True, entry=kind == "list")
            body = {_member(target.spath): [v] if kind == "list" else v}
        return _etag(_json(body))

    async def _commit(self, edits: list[Edit], where: str) -> None:
        try:
            await self.adapter.commit(edits)
        except EditRefused as e:
            raise bodies.refusal(e, where) from None

    # -- PUT / POST / PATCH / DELETE (strict)

    def _target_value(self, method: str, target: uri.Target, body: Any) -> Any:
        """The checked value a PUT or PATCH writes at `target` (the whole datastore for `/`)."""
        if target.keyless:
            raise protocol("invalid-value", f"{method} needs a list instance (list=key), not the whole list")
        if target.spath == "/":
            if not isinstance(body, dict):
                raise protocol("malformed-message", "the datastore is a JSON object")
            bodies.check_member_names("/", body, "/")
            return body
        module, name, value = bodies.single_member(body, target.instance_id())
        bodies.check_target_member(target, module, name)
        bodies.check_value(target.spath, value, target.instance_id())
        if rc.RESOURCES[target.spath].kind == "list":
            value = bodies.list_entry(value, target)
        return value

    async def _put(self, target: uri.Target, body: Any) -> web.Response:
        value = self._target_value("PUT", target, body)
        if target.spath == "/":
            await self._commit([Edit(REPLACE, (), value)], "/")
            return web.Response(status=204)
        existed = self.adapter.exists(target.elems)
        await self._commit([Edit(REPLACE, target.elems, value)], target.instance_id())
        return web.Response(status=204 if existed else 201)

    async def _post(self, request: web.Request, target: uri.Target, body: Any) -> web.Response:
        if target.keyless:
            raise protocol("invalid-value", "POST creates a child of the resource it names: post list entries to the "
                           "list's parent")
        module, name, value = bodies.single_member(body, target.instance_id())
        child = rc.CHILDREN.get(target.spath, {}).get(name)
        if child is None or rc.RESOURCES[child].module != module:
            raise RestconfError("unknown-element", f"{target.instance_id()} has no child {module}:{name}",
                                path=target.instance_id(), error_type="protocol")
        res = rc.RESOURCES[child]
        if not res.config:
            raise RestconfError("invalid-value", f"{name} is state data; it cannot be created",
                                path=target.instance_id())
        bodies.check_value(child, value, target.instance_id())
        keys: dict[str, str] = {}
        if res.kind == "list":
            value = bodies.list_entry(value, target)
            if not isinstance(value, dict):
                raise protocol("invalid-value", "a list entry is a JSON object")
            for k in res.keys:
                kv = next((v for m, v in value.items() if m.rpartition(":")[2] == k), None)
                if kv is None:
                    raise RestconfError("invalid-value", f"the new {name} entry lacks its key {k!r}", path=target.instance_id())
                keys[k] = str(kv).lower() if isinstance(kv, bool) else str(kv)
        elif res.kind == "leaf-list":
            raise protocol("operation-not-supported", "leaf-list entries are written with their list", status=501)
        try:
            new = uri.parse(target.uri() + "/" + (f"{module}:{name}" if res.qualified else name)
                            + ("=" + ",".join(_q(keys[k]) for k in res.keys) if keys else ""), True)
        except RestconfError as e:
            raise RestconfError("invalid-value", e.message, path=target.instance_id()) from None
        await self._commit([Edit(MERGE, new.elems, value, requires="absent")], new.instance_id())
        location = f"{self._base_url(request)}{DATA_PREFIX}{new.uri()}"
        return web.Response(status=201, headers={"Location": location})

    async def _patch(self, target: uri.Target, body: Any) -> web.Response:
        value = self._target_value("PATCH", target, body)
        if target.spath == "/":
            await self._commit([Edit(MERGE, (), value)], "/")
            return web.Response(status=204)
        await self._commit([Edit(MERGE, target.elems, value, requires="present")], target.instance_id())
        return web.Response(status=204)

    async def _delete(self, target: uri.Target) -> web.Response:
        if target.keyless or target.spath == "/":
            raise protocol("operation-not-supported", "DELETE needs one resource (a list instance, not the whole "
                           "list or datastore)", status=405, headers={"Allow": "GET, HEAD, OPTIONS, POST, PUT, PATCH"})
        await self._commit([Edit(DELETE, target.elems, requires="present")], target.instance_id())
        return web.Response(status=204)

    # -- compatibility dialect writes

    async def _compat_write(self, request: web.Request, target: uri.Target, body: Any) -> web.Response:
        body = compat.drop_nulls(body)
        if target.spath == "/":
            if not isinstance(body, dict):
                raise protocol("malformed-message", "the datastore is a JSON object")
            op = REPLACE if request.method == "PUT" else MERGE
            await self._commit([Edit(op, (), body)], "/")
            return web.Response(status=204)
        value = compat.unwrap(body, target.name)
        kind = rc.RESOURCES[target.spath].kind
        if kind == "list" and isinstance(value, list) and len(value) == 1 and not target.keyless:
            value = value[0]
        if target.keyless:
            raise protocol("invalid-value", f"write {target.name} entries through their parent container or as "
                           f"{target.name}=<key>")
        completer = compat.LinkCompleter(self.adapter.node_id, self.adapter.root().get("qkd_node", {}),
                                         self._locate)
        value, derived = await compat.complete_links(completer, target.spath, value, target.instance_id())
        existed = self.adapter.exists(target.elems)  # 201 or 204 only; PATCH's check is the transaction's
        op = REPLACE if request.method == "PUT" else MERGE
        await self._commit([Edit(op, target.elems, value, requires="present" if request.method == "PATCH" else "")],
                           target.instance_id())
        if derived:
            self.adapter.feed_state({f"/qkd_node/qkd_links/qkd_link[qkdl_id={lid}]/sdqkd-link/derived-from": why
                                     for lid, why in derived.items()})
            log.info("compat link request completed: %s", "; ".join(f"{k}: {v}" for k, v in derived.items()))
        return web.Response(status=204 if existed else 201)

    async def _locate(self, node_id: str, via: Sequence[str]) -> str:
        try:
            return await self.adapter.locate(node_id, via)
        except EditRefused as e:
            raise RestconfError("invalid-value", e.message) from None

    # ---------------------------------------------------------------- event stream

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """RFC 8040 §6.4: server-sent events, one `ietf-restconf:notification` per event."""
        accept = request.headers.get("Accept", "*/*")
        if "text/event-stream" not in accept and "*/*" not in accept:
            raise protocol("invalid-value", "an event stream is served as text/event-stream", status=406)
        if request.query:
            raise protocol("invalid-value", f"stream parameters {sorted(request.query)} are not supported "
                           "(no replay, no filter)")
        sub = self.adapter.subscribe([((name, ()),) for name in rc.NOTIFICATIONS])
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            await resp.write(b": sdqkd NETCONF stream\n\n")
            while not sub.overflowed:
                batch = await sub.queue.get()
                for _elems, spath, value in batch:
                    if not (isinstance(value, tuple) and value and value[0] == "notification"):
                        continue
                    await resp.write(b"data: " + _json(self._notification(spath, value[1])) + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.adapter.unsubscribe(sub)
            if task is not None:
                self._streams.discard(task)
        return resp

    def _notification(self, spath: str, content: dict[str, Any]) -> dict[str, Any]:
        name = spath.strip("/")
        body = self.adapter.notification_json(spath, content)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1_000_000:06d}Z"
        return {"ietf-restconf:notification": {"eventTime": stamp, f"{rc.NOTIFICATIONS[name]}:{name}": body}}


def _q(v: str) -> str:
    return quote(v, safe="")


def _valid_date(text: str) -> bool:
    try:
        email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return False
    return True


