"""The SDN agent of one node: a gNMI 0.10.0 target over the ETSI GS QKD 015 tree (plus our
augmentation), built on the generated skeleton. Get, Set (one transaction: delete, replace,
update; validated; hooks may veto; all or nothing) and Subscribe (ONCE, POLL, STREAM with
SAMPLE / ON_CHANGE / TARGET_DEFINED). Runtime components feed state through `AgentState`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from copy import deepcopy as _deepcopy
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import grpc

from generated.agent_skeleton import GNMI_VERSION, AgentSkeleton, HookVeto
from generated.gnmi_support import parse_path, path_str
from generated.proto.gnmi import gnmi_pb2

from . import datastore as ds
from .model import NODES, Elem, PathError, Resolved, ValueError_, child_path, elems_text, resolve, resolve_all
from .subscriptions import Change, Hub, StreamSub, covers

log = logging.getLogger("sdqkd.agent")

ENCODINGS = {gnmi_pb2.JSON: False, gnmi_pb2.JSON_IETF: True}
GET_TYPES = {gnmi_pb2.GetRequest.ALL: ds.ALL, gnmi_pb2.GetRequest.CONFIG: ds.CONFIG,
             gnmi_pb2.GetRequest.STATE: ds.STATE, gnmi_pb2.GetRequest.OPERATIONAL: ds.STATE}
MIN_SAMPLE_NS = 10_000_000  # sample_interval 0 = "as fast as the target can": 10 ms here


class GnmiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> int:
    return time.time_ns()


def _elems_of(path: gnmi_pb2.Path) -> list[tuple[str, dict[str, str]]]:
    if path.elem:
        return [(e.name, dict(e.key)) for e in path.elem]
    return [(name, {}) for name in path.element]  # deprecated string elements


def _full(prefix: gnmi_pb2.Path | None, path: gnmi_pb2.Path) -> list[tuple[str, dict[str, str]]]:
    return (_elems_of(prefix) if prefix is not None else []) + _elems_of(path)


def to_path(elems: tuple[Elem, ...]) -> gnmi_pb2.Path:
    return gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n, key=dict(k)) for n, k in elems])


@lru_cache(maxsize=8192)
def _resolve_text(text: str) -> Resolved:
    """State feeds name the same few paths over and over: parse and check each once."""
    return resolve(_elems_of(parse_path(text)), allow_wildcards=False)


@lru_cache(maxsize=8192)
def _path_cached(elems: tuple[Elem, ...]) -> gnmi_pb2.Path:
    return to_path(elems)  # read-only use: protobuf copies it into each Update


def typed(value: Any, ietf: bool) -> gnmi_pb2.TypedValue:
    data = json.dumps(value, separators=(",", ":")).encode()
    return gnmi_pb2.TypedValue(json_ietf_val=data) if ietf else gnmi_pb2.TypedValue(json_val=data)


def _wildcard_elems(spath: str) -> tuple[Elem, ...]:
    out: list[Elem] = []
    cur = "/"
    for name in spath.strip("/").split("/"):
        cur = child_path(cur, name)
        node = NODES[cur]
        out.append((name, tuple((k, "*") for k in node.get("keys", []))))
    return tuple(out)


def raw_value(tv: gnmi_pb2.TypedValue, where: str) -> Any:
    """TypedValue of a Set -> JSON-like Python value."""
    kind = tv.WhichOneof("value")
    if kind in ("json_ietf_val", "json_val"):
        try:
            return json.loads(getattr(tv, kind))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError_(f"{where}: invalid JSON ({e})") from None
        except RecursionError:  # the C decoder recurses per nesting level
            raise ValueError_(f"{where}: invalid JSON (nested too deeply)") from None
    if kind in ("string_val", "int_val", "uint_val", "bool_val", "ascii_val"):
        return getattr(tv, kind)
    if kind in ("double_val", "float_val"):
        return getattr(tv, kind)
    if kind == "decimal_val":
        return str(Decimal(tv.decimal_val.digits).scaleb(-tv.decimal_val.precision))
    if kind == "leaflist_val":
        return [raw_value(e, where) for e in tv.leaflist_val.element]
    raise ValueError_(f"{where}: value encoding {kind or 'none'} is not supported (use JSON or JSON_IETF)")


@dataclass
class Transaction:
    """What a hook sees of the Set it runs in: the tree before and the tree being built."""

    agent: NodeAgent
    before: dict[str, Any]
    after: dict[str, Any]


class AgentState:
    """The one door through which the runtime feeds state leaves and notifications."""

    def __init__(self, agent: NodeAgent):
        self._agent = agent

    def update(self, values: dict[str, Any]) -> None:
        """{path text: JSON value} for any node (state or config-owned-by-runtime), validated."""
        changes: list[Change] = []
        for text, raw in values.items():
            r = self._agent.resolve_text(text)
            node = NODES[r.schema_path]
            if node["kind"] == "list" and r.elems[-1][1] and all(v != "*" for _k, v in r.elems[-1][1]):
                _key, val = ds.decode_entry(r.schema_path, raw, text, config_only=False, path_keys=r.elems[-1][1])
            else:
                val = ds.decode(r.schema_path, raw, text, config_only=False)
            for root in self._agent._roots():
                ds.put(root, r.elems, r.schema_path, _deepcopy(val) if root is not self._agent.root else val,
                       merge=True)
            changes.extend(ds.leaves(r.elems, r.schema_path, val))
        self._agent.hub.publish(changes)

    def delete(self, text: str) -> None:
        r = self._agent.resolve_text(text)
        found = False
        for root in self._agent._roots():
            found = ds.remove(root, r.elems) or found
        if found:
            self._agent.hub.publish([(r.elems, r.schema_path, None)])

    def notify(self, name: str, content: dict[str, Any]) -> None:
        """Emit an ETSI 015 notification to subscribers of /<name>."""
        spath = f"/{name}"
        if NODES.get(spath, {}).get("kind") != "notification":
            raise ValueError(f"unknown notification {name!r}")
        ds.decode(spath, content, spath, config_only=False)  # validate before anyone sees it
        self._agent.hub.publish([(((name, ()),), spath, ("notification", content))])


class NodeAgent(AgentSkeleton):
    """gNMI servicer of one node. Subclass it (or assign `hooks`) to plug runtime behaviour
    into the typed hooks of the generated skeleton."""

    def __init__(self, node_id: str, *, target: str = "", location: str = "", version: str = "sdqkd 0.1.0"):
        self.node_id = node_id
        self.target = target
        self.root: dict[str, Any] = {"qkd_node": {
            "qkdn_id": node_id, "qkdn_version": version, "qkdn_location_id": location,
            "qkdn_status": "etsi-qkd-node-types:OPERATING",
            "qkdn_capabilities": {"link_stats_support": True, "application_stats_support": True,
                                  "key_relay_mode_enable": True},
        }}
        self.hub = Hub()
        self.state = AgentState(self)
        self._lock = asyncio.Lock()
        self._work: dict[str, Any] | None = None
        self.open_streams = 0

    # ---------------------------------------------------------------- helpers

    def _roots(self) -> list[dict[str, Any]]:
        return [self.root] if self._work is None else [self.root, self._work]

    def resolve_text(self, text: str) -> Resolved:
        return _resolve_text(text)

    def _check_target(self, prefix: gnmi_pb2.Path) -> None:
        if prefix.target and self.target and prefix.target != self.target:
            raise GnmiError(grpc.StatusCode.NOT_FOUND, f"unknown target {prefix.target!r}; this is {self.target!r}")

    @staticmethod
    def _encoding(enc: int) -> bool:
        if enc not in ENCODINGS:
            name = gnmi_pb2.Encoding.Name(enc) if enc in gnmi_pb2.Encoding.values() else str(enc)
            raise GnmiError(grpc.StatusCode.UNIMPLEMENTED, f"encoding {name} not supported; use JSON or JSON_IETF")
        return ENCODINGS[enc]

    def _prefix_out(self, prefix: gnmi_pb2.Path | None) -> gnmi_pb2.Path | None:
        if prefix is not None and prefix.target:
            return gnmi_pb2.Path(target=prefix.target)
        return None

    def updates_for(self, r: Resolved, ietf: bool, filt: str = ds.ALL, leaf_level: bool = False
                    ) -> list[gnmi_pb2.Update]:
        """Current data matching a resolved path, one Update per match (or per leaf)."""
        out = []
        if r.notification:
            return out
        for elems, spath, value in ds.find(self.root, r.elems):
            if r.descendants or leaf_level:
                for e, s, v in ds.leaves(elems, spath, value):
                    j = ds.encode(s, v, ietf=ietf, filt=filt)
                    if j is not None:
                        out.append(gnmi_pb2.Update(path=to_path(e), val=typed(j, ietf)))
                continue
            node = NODES.get(spath)
            if node is not None and node["kind"] == "list":
                j = ds.encode_entry(spath, value, ietf=ietf, filt=filt)
            else:
                j = ds.encode(spath, value, ietf=ietf, filt=filt)
            if j is not None:
                out.append(gnmi_pb2.Update(path=to_path(elems), val=typed(j, ietf)))
        return out

    # ---------------------------------------------------------------- RPCs

    async def Capabilities(self, request: gnmi_pb2.CapabilityRequest, context: Any) -> gnmi_pb2.CapabilityResponse:
        return gnmi_pb2.CapabilityResponse(
            supported_models=[gnmi_pb2.ModelData(name=n, organization=o, version=v) for n, o, v in self.MODELS],
            supported_encodings=[gnmi_pb2.JSON, gnmi_pb2.JSON_IETF],
            gNMI_version=GNMI_VERSION,
        )

    async def Get(self, request: gnmi_pb2.GetRequest, context: Any) -> gnmi_pb2.GetResponse:
        try:
            return self.get(request)
        except GnmiError as e:
            await context.abort(e.code, e.message)

    def get(self, request: gnmi_pb2.GetRequest) -> gnmi_pb2.GetResponse:
        ietf = self._encoding(request.encoding)
        if request.type not in GET_TYPES:
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown Get data type {request.type}")
        filt = GET_TYPES[request.type]
        prefix = request.prefix if request.HasField("prefix") else None
        if prefix is not None:
            self._check_target(prefix)
        notifications = []
        for p in request.path or [gnmi_pb2.Path()]:
            full = _full(prefix, p)
            text = path_str(gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n, key=k) for n, k in full]))
            try:
                rs = resolve_all(full)
            except (PathError, ValueError_) as e:
                raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, f"Get {text}: {e}") from None
            if any(r.notification for r in rs):
                raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Get {text}: notifications are delivered through Subscribe")
            if not full:  # the root: one update, module-qualified members
                val = ds.encode("/", self.root, ietf=True if ietf else False, filt=filt)
                ups = [gnmi_pb2.Update(path=gnmi_pb2.Path(), val=typed(val, ietf))]
            else:
                ups = [u for r in rs for u in self.updates_for(r, ietf, filt)]
                r = rs[0]
                if (not ups and len(rs) == 1 and not r.wildcard
                        and not any(True for _ in ds.find(self.root, r.elems))):
                    raise GnmiError(grpc.StatusCode.NOT_FOUND, f"Get {text}: no data at this path")
            notifications.append(gnmi_pb2.Notification(timestamp=_now(), prefix=self._prefix_out(prefix), update=ups))
        return gnmi_pb2.GetResponse(notification=notifications)

    async def Set(self, request: gnmi_pb2.SetRequest, context: Any) -> gnmi_pb2.SetResponse:
        try:
            return await self.set(request)
        except GnmiError as e:
            await context.abort(e.code, e.message)

    def _decode_update(self, r: Resolved, u: gnmi_pb2.Update, where: str) -> Any:
        raw = raw_value(u.val, where)
        node = NODES.get(r.schema_path)
        if node is not None and node["kind"] == "list":
            if not r.elems[-1][1] or any(v == "*" for _k, v in r.elems[-1][1]):
                raise ValueError_(f"{where}: a Set on a list needs every key in the path "
                                  f"({', '.join(node['keys'])})")
            _k, entry = ds.decode_entry(r.schema_path, raw, where, config_only=True, path_keys=r.elems[-1][1])
            return entry
        if node is None and r.schema_path == "/":
            if not isinstance(raw, dict):
                raise ValueError_(f"{where}: the root takes a JSON object")
            return ds.decode("/", raw, where, config_only=True)
        return ds.decode(r.schema_path, raw, where, config_only=True)

    async def set(self, request: gnmi_pb2.SetRequest) -> gnmi_pb2.SetResponse:
        prefix = request.prefix if request.HasField("prefix") else None
        if prefix is not None:
            self._check_target(prefix)
        if not (request.delete or request.replace or request.update or request.union_replace):
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "Set carries no operation")
        if request.union_replace:
            raise GnmiError(grpc.StatusCode.UNIMPLEMENTED, "union_replace is not supported")
        async with self._lock:
            touched = self._touched(prefix, request)
            work = ds.cow_copy(self.root, touched)
            self._work = work
            try:
                results = self._apply(work, prefix, request)
                ds.prune_empty(work, [r.elems for r in self._last_resolved[: len(request.delete)]])
                problems = ds.check_tree(work, touched) + self.check_references(work)
                if problems:
                    raise GnmiError(grpc.StatusCode.ABORTED, "Set rejected, nothing changed: " + "; ".join(problems))
                await self._run_hooks(self.root, work, touched)
            finally:
                self._work = None
            old, self.root = self.root, work
        self.hub.publish(self._diff(old, work, touched))
        return gnmi_pb2.SetResponse(prefix=self._prefix_out(prefix), response=results, timestamp=_now())

    def _touched(self, prefix: gnmi_pb2.Path | None, request: gnmi_pb2.SetRequest) -> list[tuple[Elem, ...]]:
        """Concrete element paths of every operation that resolves (the others fail in _apply)."""
        out = []
        for p in list(request.delete) + [u.path for u in request.replace] + [u.path for u in request.update]:
            try:
                out.append(resolve(_full(prefix, p), allow_wildcards=False).elems)
            except (PathError, ValueError_):
                pass
        return out

    def _apply(self, work: dict[str, Any], prefix: gnmi_pb2.Path | None, request: gnmi_pb2.SetRequest
               ) -> list[gnmi_pb2.UpdateResult]:
        results = []
        self._last_resolved: list[Resolved] = []
        ops: list[tuple[str, int, Any]] = (
            [("delete", i, d) for i, d in enumerate(request.delete)]
            + [("replace", i, u) for i, u in enumerate(request.replace)]
            + [("update", i, u) for i, u in enumerate(request.update)]
        )
        codes = {"delete": gnmi_pb2.UpdateResult.DELETE, "replace": gnmi_pb2.UpdateResult.REPLACE,
                 "update": gnmi_pb2.UpdateResult.UPDATE}
        for op, i, item in ops:
            path = item if op == "delete" else item.path
            full = _full(prefix, path)
            text = path_str(gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n, key=k) for n, k in full]))
            where = f"{op}[{i}] {text}"
            try:
                r = resolve(full, allow_wildcards=False)
                self._last_resolved.append(r)
                if r.notification:
                    raise PathError("a notification is not data")
                if op == "delete":
                    if r.elems == (("qkd_node", ()),) or r.elems == (("qkd_node", ()), ("qkdn_id", ())):
                        raise PathError("the node itself and its qkdn_id cannot be deleted")
                    if r.schema_path != "/" and not NODES[r.schema_path]["config"]:
                        raise PathError("config false (state) data cannot be deleted")
                    ds.remove(work, r.elems)  # absent paths are accepted silently (gNMI 3.4.6)
                else:
                    value = self._decode_update(r, item, where)
                    ds.put(work, r.elems, r.schema_path, value, merge=(op == "update"))
            except (PathError, ValueError_) as e:
                msg = str(e)
                raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT,
                                msg if msg.startswith(where) else f"{where}: {msg}") from None
            results.append(gnmi_pb2.UpdateResult(path=path, op=codes[op]))
        return results

    def check_references(self, work: dict[str, Any]) -> list[str]:
        """References the model leaves to prose: the node's own ID stays; qkdl_local names us."""
        problems = []
        node = work.get("qkd_node", {})
        if node.get("qkdn_id") != self.node_id:
            problems.append(f"/qkd_node/qkdn_id: is this node's ID {self.node_id} and cannot change")
        for key, link in node.get("qkd_links", {}).get("qkd_link", {}).items():
            where = f"/qkd_node/qkd_links/qkd_link[qkdl_id={key[0]}]"
            local = link.get("qkdl_local", {}).get("qkdn_id")
            if local is not None and local != self.node_id:
                problems.append(f"{where}/qkdl_local/qkdn_id: {local} is not this node ({self.node_id})")
            remote = link.get("qkdl_remote", {}).get("qkdn_id")
            if remote is not None and remote == self.node_id:
                problems.append(f"{where}/qkdl_remote/qkdn_id: a link cannot end at this node itself")
        for key, app in node.get("qkd_applications", {}).get("qkd_app", {}).items():
            local = app.get("local_qkdn_id")
            if local is not None and local != self.node_id:
                problems.append(f"/qkd_node/qkd_applications/qkd_app[app_id={key[0]}]/local_qkdn_id: "
                                f"{local} is not this node")
        return problems

    async def _run_hooks(self, old: dict[str, Any], new: dict[str, Any], touched: list[tuple[Elem, ...]]) -> None:
        """Call the hook of every list entry and container whose own data (its subtree without
        the entries of lists below it) the Set created, changed or deleted."""
        txn = Transaction(self, old, new)
        events = []
        for spath, method in self.HOOKS.items():
            pattern = _wildcard_elems(spath)
            node = NODES[spath]
            scopes = {_narrow(pattern, t) for t in touched if covers(pattern, t)}
            for scope in scopes:
                before = {e: v for e, _s, v in ds.find(old, scope)}
                after = {e: v for e, _s, v in ds.find(new, scope)}
                for elems in sorted(set(before) | set(after), key=elems_text):
                    b, a = before.get(elems), after.get(elems)
                    if b is not None and a is not None and ds.strip_lists(spath, b) == ds.strip_lists(spath, a):
                        continue
                    enc = ds.encode_entry if node["kind"] == "list" else ds.encode
                    bj = enc(spath, b, ietf=True, filt=ds.CONFIG) if b is not None else None
                    aj = enc(spath, a, ietf=True, filt=ds.CONFIG) if a is not None else None
                    if bj != aj:
                        events.append((len(elems), a is None, spath, method, elems, bj, aj))
        # deletions deepest first, then creations/changes shallowest first
        events.sort(key=lambda e: (not e[1], -e[0] if e[1] else e[0]))
        for _depth, _deleted, spath, method, elems, b, a in events:
            kwargs = {}
            for list_name, key, kw in self.HOOK_KEYS[spath]:
                for name, keys in elems:
                    if name == list_name:
                        kwargs[kw] = dict(keys)[key]
            try:
                await getattr(self, method)(txn, b, a, **kwargs)
            except HookVeto as e:
                raise GnmiError(grpc.StatusCode.ABORTED,
                                f"Set rejected, nothing changed: {elems_text(elems)}: {e}") from None

    def _diff(self, old: dict[str, Any], new: dict[str, Any], touched: list[tuple[Elem, ...]]) -> list[Change]:
        """Leaf changes between two trees, looking only under the paths a Set wrote."""
        fo, fn = self._flat_under(old, touched), self._flat_under(new, touched)
        changes: list[Change] = []
        spath_of = {e: s for t in _shortest(touched) for e0, s0, v0 in ds.find(new, t)
                    for e, s, _v in ds.leaves(e0, s0, v0)}
        for e, v in fn.items():
            if fo.get(e, _MISSING) != v:
                changes.append((e, spath_of[e], list(v) if isinstance(v, tuple) else v))
        gone_entries: set[tuple[Elem, ...]] = set()
        new_entries = {e[:i] for e in fn for i in range(1, len(e) + 1) if e[i - 1][1]}
        for e in fo:
            if e in fn:
                continue
            cut = next((e[:i] for i in range(1, len(e) + 1) if e[i - 1][1] and e[:i] not in new_entries), None)
            if cut is not None:
                if cut not in gone_entries:
                    gone_entries.add(cut)
                    changes.append((cut, "", None))
            else:
                changes.append((e, "", None))
        return changes

    @staticmethod
    def _flat_under(root: dict[str, Any], touched: list[tuple[Elem, ...]]) -> dict[tuple[Elem, ...], Any]:
        out: dict[tuple[Elem, ...], Any] = {}
        for t in _shortest(touched):
            for e0, s0, v0 in ds.find(root, t):
                for e, _s, v in ds.leaves(e0, s0, v0):
                    out[e] = tuple(v) if isinstance(v, list) else v
        return out

    # ---------------------------------------------------------------- Subscribe

    async def Subscribe(self, request_iterator: AsyncIterator[gnmi_pb2.SubscribeRequest],
                        context: Any) -> AsyncIterator[gnmi_pb2.SubscribeResponse]:
        self.open_streams += 1
        try:
            async for resp in self._subscribe(request_iterator):
                yield resp
        except GnmiError as e:
            await context.abort(e.code, e.message)
        finally:
            self.open_streams -= 1

    def _sub_paths(self, sl: gnmi_pb2.SubscriptionList) -> list[tuple[Resolved, gnmi_pb2.Subscription]]:
        prefix = sl.prefix if sl.HasField("prefix") else None
        if prefix is not None:
            self._check_target(prefix)
        if not sl.subscription:
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "SubscriptionList has no subscription")
        out = []
        for i, s in enumerate(sl.subscription):
            full = _full(prefix, s.path)
            try:
                out.extend((r, s) for r in resolve_all(full))
            except (PathError, ValueError_) as e:
                raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, f"subscription[{i}]: {e}") from None
        return out

    def _snapshot(self, subs: Iterable[tuple[Resolved, Any]], ietf: bool, prefix: gnmi_pb2.Path | None
                  ) -> list[gnmi_pb2.SubscribeResponse]:
        out = []
        for r, _s in subs:
            ups = self.updates_for(r, ietf, leaf_level=True)
            if ups:
                out.append(gnmi_pb2.SubscribeResponse(update=gnmi_pb2.Notification(
                    timestamp=_now(), prefix=self._prefix_out(prefix), update=ups)))
        return out

    async def _subscribe(self, requests: AsyncIterator[gnmi_pb2.SubscribeRequest]
                         ) -> AsyncIterator[gnmi_pb2.SubscribeResponse]:
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        if not first.HasField("subscribe"):
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "the first SubscribeRequest must carry a SubscriptionList")
        sl = first.subscribe
        ietf = self._encoding(sl.encoding)
        subs = self._sub_paths(sl)
        prefix = sl.prefix if sl.HasField("prefix") else None
        sync = gnmi_pb2.SubscribeResponse(sync_response=True)

        if sl.mode == gnmi_pb2.SubscriptionList.ONCE:
            if not sl.updates_only:
                for resp in self._snapshot(subs, ietf, prefix):
                    yield resp
            yield sync
            return
        if sl.mode == gnmi_pb2.SubscriptionList.POLL:
            if not sl.updates_only:
                for resp in self._snapshot(subs, ietf, prefix):
                    yield resp
            yield sync
            async for req in requests:
                if req.HasField("poll"):
                    for resp in self._snapshot(subs, ietf, prefix):
                        yield resp
                    yield sync
                else:
                    raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "only poll requests may follow a POLL subscription")
            return
        async for resp in self._stream(requests, subs, sl, ietf, prefix):
            yield resp

    async def _stream(self, requests: AsyncIterator[gnmi_pb2.SubscribeRequest],
                      subs: list[tuple[Resolved, gnmi_pb2.Subscription]], sl: gnmi_pb2.SubscriptionList,
                      ietf: bool, prefix: gnmi_pb2.Path | None) -> AsyncIterator[gnmi_pb2.SubscribeResponse]:
        out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None] = asyncio.Queue()
        on_change = [(r, s) for r, s in subs if s.mode in (gnmi_pb2.ON_CHANGE, gnmi_pb2.TARGET_DEFINED)]
        sampled = [(r, s) for r, s in subs if s.mode == gnmi_pb2.SAMPLE]
        stream_sub = StreamSub(patterns=[r.elems for r, _s in on_change])
        tasks: list[asyncio.Task[Any]] = []
        if not sl.updates_only:
            for resp in self._snapshot(subs, ietf, prefix):
                yield resp
        yield gnmi_pb2.SubscribeResponse(sync_response=True)
        if on_change:
            self.hub.add(stream_sub)
            tasks.append(asyncio.create_task(self._pump_changes(stream_sub, out, ietf, prefix)))
            for r, s in on_change:
                if s.heartbeat_interval:
                    tasks.append(asyncio.create_task(self._heartbeat(r, s.heartbeat_interval, out, ietf, prefix)))
        for r, s in sampled:
            tasks.append(asyncio.create_task(self._sample(r, s, out, ietf, prefix)))
        tasks.append(asyncio.create_task(self._drain(requests, out)))
        try:
            while True:
                resp = await out.get()
                if resp is None:
                    return
                yield resp
        finally:
            self.hub.discard(stream_sub)
            for t in tasks:
                t.cancel()

    async def _drain(self, requests: AsyncIterator[gnmi_pb2.SubscribeRequest],
                     out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None]) -> None:
        """Read (and ignore) further requests; the client half-closing ends nothing, an error ends all."""
        try:
            async for _ in requests:
                pass
        except Exception:  # noqa: BLE001 - the client went away
            await out.put(None)

    async def _pump_changes(self, sub: StreamSub, out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None],
                            ietf: bool, prefix: gnmi_pb2.Path | None) -> None:
        while True:
            batch = await sub.queue.get()
            while not sub.queue.empty() and len(batch) < 5000:  # coalesce what piled up
                batch.extend(sub.queue.get_nowait())
            if sub.overflowed:
                await out.put(None)
                return
            ups, dels = [], []
            for elems, spath, value in batch:
                if value is None:
                    dels.append(to_path(elems))
                elif isinstance(value, tuple) and value and value[0] == "notification":
                    ups.append(gnmi_pb2.Update(path=to_path(elems), val=typed(value[1], ietf)))
                else:
                    j = ds.encode(spath, value, ietf=ietf)
                    ups.append(gnmi_pb2.Update(path=_path_cached(elems), val=typed(j, ietf)))
            await out.put(gnmi_pb2.SubscribeResponse(update=gnmi_pb2.Notification(
                timestamp=_now(), prefix=self._prefix_out(prefix), update=ups, delete=dels)))

    async def _heartbeat(self, r: Resolved, interval_ns: int, out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None],
                         ietf: bool, prefix: gnmi_pb2.Path | None) -> None:
        while True:
            await asyncio.sleep(max(interval_ns, MIN_SAMPLE_NS) / 1e9)
            for resp in self._snapshot([(r, None)], ietf, prefix):
                await out.put(resp)

    async def _sample(self, r: Resolved, s: gnmi_pb2.Subscription,
                      out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None], ietf: bool,
                      prefix: gnmi_pb2.Path | None) -> None:
        interval = max(s.sample_interval, MIN_SAMPLE_NS) / 1e9
        heartbeat = s.heartbeat_interval / 1e9 if s.heartbeat_interval else None
        last: dict[bytes, bytes] = {}
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            ups = self.updates_for(r, ietf, leaf_level=True)
            now = time.monotonic()
            if s.suppress_redundant and not (heartbeat and now - last_full >= heartbeat):
                current = {u.path.SerializeToString(): u.val.SerializeToString() for u in ups}
                ups = [u for u in ups if last.get(u.path.SerializeToString()) != u.val.SerializeToString()]
                last = current
            else:
                last = {u.path.SerializeToString(): u.val.SerializeToString() for u in ups}
                last_full = now
            if ups:
                await out.put(gnmi_pb2.SubscribeResponse(update=gnmi_pb2.Notification(
                    timestamp=_now(), prefix=self._prefix_out(prefix), update=ups)))


_MISSING = object()


def _narrow(pattern: tuple[Elem, ...], touched: tuple[Elem, ...]) -> tuple[Elem, ...]:
    """The hook pattern with the keys the touched path fixes (pattern and path overlap)."""
    out = []
    for i, (name, keys) in enumerate(pattern):
        if i < len(touched) and touched[i][1]:
            out.append((name, touched[i][1]))
        else:
            out.append((name, keys))
    return tuple(out)


def _shortest(paths: list[tuple[Elem, ...]]) -> list[tuple[Elem, ...]]:
    """The paths none of the others lie under (so each subtree is walked once)."""
    out: list[tuple[Elem, ...]] = []
    for p in sorted(set(paths), key=len):
        if not any(p[: len(q)] == q for q in out):
            out.append(p)
    return out
