"""The node's model datastore and its one transaction, protocol-neutral: every northbound (gNMI
today, RESTCONF next) turns its request into `Edit`s and calls `Datastore.change`; nothing here
knows a wire format or a status code.

One change, all under one lock, all or nothing:

    require   every edit's precondition on the committed tree: `absent` (RESTCONF POST,
              NETCONF create) or `present` (PATCH, DELETE); checked under the same lock as
              the rest, so no other change can land between the check and the commit
    decode    resolve every edit's path against the schema, decode its JSON value
              (types, ranges, patterns, enums, identities, keys; `config false` refused)
    edit      apply the edits in order to a copy-on-write copy of the tree
    validate  whole-subtree checks (mandatory leaves, `when`), references the model leaves to
              prose, then the generated `validate_*` hooks (no side effects; may veto)
    commit    swap the new tree in
    publish   leaf changes to subscribers (a refused change publishes nothing)
    apply     the generated `apply_*` hooks do the work; a failure keeps the change committed,
              is reported through `apply_failed` and retried after every later change and by
              `retry_failed()` until it converges

Errors: `InvalidPath` / `InvalidValue` (the request is malformed), `Rejected` (well-formed but
refused by the model or a hook; nothing changed), `Exists` (an `absent` precondition failed),
`NotFound` (no data, or a `present` precondition failed). Hooks see entries in RFC 7951
member names with YANG defaults applied (RFC 7950 §7.6.1; `local_defaults` lets a node set its
own default for a leaf, e.g. its engine's Cascade variant). The stored tree keeps only what
was written, so reads report explicit values (with-defaults "explicit", RFC 6243).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from sdqkd.errors import SdqkdError
from sdqkd.generated.agent_skeleton import HookVeto, ModelHooks
from sdqkd.generated.gnmi_support import parse_path

from . import datastore as ds
from .model import NODES, Elem, PathError, Resolved, ValueError_, child_path, decode_leaf, elems_text, resolve
from .subscriptions import Change, Hub, covers

log = logging.getLogger("sdqkd.agent")

# one path element as a request gives it: (name, {key: value}); names may carry a module prefix
RawElem = tuple[str, Mapping[str, str]]
EditOp = Literal["delete", "replace", "update"]
Requirement = Literal["", "absent", "present"]  # what must hold of the edit's path before the change


class TransactionError(SdqkdError):
    """A change or read the datastore refuses; the message names where and why."""


class InvalidRequest(TransactionError, ValueError):
    """The request is malformed (gNMI INVALID_ARGUMENT, RESTCONF 400)."""


class InvalidPath(InvalidRequest):
    """A path the model does not have, or one that may not be written."""


class InvalidValue(InvalidRequest):
    """A value that does not fit its node's type."""


class Rejected(TransactionError):
    """Well-formed, but the model or a validate hook refuses it; nothing changed (gNMI ABORTED,
    RESTCONF 409)."""


class NotFound(TransactionError):
    """No data at the path."""


class Exists(Rejected):
    """An edit required its path to hold no data, and it does (RESTCONF 409 data-exists)."""


@dataclass(frozen=True)
class Edit:
    """One operation of a change: delete a node, replace it whole, or merge into it."""

    op: EditOp
    path: Sequence[RawElem]
    value: Any = None  # the JSON value (decoded JSON text) of replace / update
    label: str = ""  # how errors name this edit, e.g. "update[0] /qkd_node/..."
    value_error: str | None = None  # the wire layer could not decode the value: refuse it in turn
    requires: Requirement = ""  # "absent": create only; "present": the path must hold data

    def where(self) -> str:
        return self.label or f"{self.op} {elems_text(tuple((n, tuple(k.items())) for n, k in self.path))}"


@dataclass
class Transaction:
    """What a hook sees of the change it runs in (generated `HookTransaction`)."""

    datastore: Datastore
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass
class HookEvent:
    """One entry (list entry or container) whose own data a change created, changed or deleted."""

    spath: str
    elems: tuple[Elem, ...]
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    keys: dict[str, Any] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        return self.new is None

    def order(self) -> tuple[bool, int]:
        # deletions deepest first, then creations / changes shallowest first
        return (not self.deleted, -len(self.elems) if self.deleted else len(self.elems))


@lru_cache(maxsize=8192)
def resolve_text(text: str) -> Resolved:
    """State feeds name the same few paths over and over: parse and check each once."""
    p = parse_path(text)
    return resolve([(e.name, dict(e.key)) for e in p.elem], allow_wildcards=False)


class StateFeed:
    """The one door through which the runtime feeds state leaves and notifications, validated
    like a change; it bypasses hooks (the runtime is the source of this data)."""

    def __init__(self, store: Datastore):
        self._store = store

    def update(self, values: Mapping[str, Any]) -> None:
        """{path text: JSON value} for any node (state or config-owned-by-runtime). A value under
        a `when` that is false in the tree is not written (RFC 7950 §7.21.5: that data does not
        exist), e.g. a link's phys_perf once its configuration no longer says PHYS. Only leaves
        whose value changed are published: ON_CHANGE subscribers hear of changes, not of writes."""
        changes: list[Change] = []
        for text, raw in values.items():
            r = resolve_text(text)
            node = NODES[r.schema_path]
            if node["kind"] == "list" and r.elems[-1][1] and all(v != "*" for _k, v in r.elems[-1][1]):
                _key, val = ds.decode_entry(r.schema_path, raw, text, config_only=False, path_keys=r.elems[-1][1])
            else:
                val = ds.decode(r.schema_path, raw, text, config_only=False)
            fresh = [c for c in ds.leaves(r.elems, r.schema_path, val) if ds.value_at(self._store.root, c[0]) != c[2]]
            written = False
            for root in self._store.roots():
                if ds.path_when_false(root, r.elems, r.schema_path):
                    continue
                ds.put(root, r.elems, r.schema_path, deepcopy(val) if root is not self._store.root else val,
                       merge=True)
                if ds.when_below(r.schema_path):  # a subtree value: drop what its own `when`s exclude
                    for stale in ds.stale_state(root, [r.elems]):
                        (ds.remove if root is self._store.root else ds.detach)(root, stale)
                written = True
            if written:
                changes.extend(fresh)
            else:
                log.debug("state %s not written: a `when` above it is false", text)
        self._store.hub.publish(changes)

    def delete(self, text: str) -> None:
        r = resolve_text(text)
        found = False
        for root in self._store.roots():
            found = ds.remove(root, r.elems) or found
        if found:
            self._store.hub.publish([(r.elems, r.schema_path, None)])

    def notify(self, name: str, content: Mapping[str, Any]) -> None:
        """Emit an ETSI 015 notification to subscribers of /<name>."""
        spath = f"/{name}"
        if NODES.get(spath, {}).get("kind") != "notification":
            raise InvalidPath(f"unknown notification {name!r}")
        ds.decode(spath, content, spath, config_only=False)  # validate before anyone sees it
        self._store.hub.publish([(((name, ()),), spath, ("notification", dict(content)))])


class Datastore:
    """The data tree of one node, its change transaction, its state feed and its subscribers."""

    def __init__(self, node_id: str, root: dict[str, Any], hooks: ModelHooks | None = None, *,
                 local_defaults: Mapping[str, Any] | None = None):
        self.node_id = node_id
        self.root = root
        self.hooks = hooks if hooks is not None else ModelHooks()
        # only nodes whose hooks the runtime overrides cost anything per change
        self._hooked = [spath for spath, name in self.hooks.HOOKS.items() if _overrides(self.hooks, name)]
        self.hub = Hub()
        self.state = StateFeed(self)
        self.defaults = ds.Defaults(local_defaults or {})
        self._lock = asyncio.Lock()
        self._work: dict[str, Any] | None = None
        self._failed: dict[tuple[Elem, ...], tuple[HookEvent, str]] = {}

    @classmethod
    def for_node(cls, node_id: str, *, location: str = "", version: str = "sdqkd 0.1.0",
                 hooks: ModelHooks | None = None, local_defaults: Mapping[str, Any] | None = None) -> Datastore:
        """A node's datastore at start: its identity, status and capabilities."""
        root: dict[str, Any] = {"qkd_node": {
            "qkdn_id": node_id, "qkdn_version": version, "qkdn_location_id": location,
            "qkdn_status": "etsi-qkd-node-types:OPERATING",
            "qkdn_capabilities": {"link_stats_support": True, "application_stats_support": True,
                                  "key_relay_mode_enable": True},
        }}
        return cls(node_id, root, hooks, local_defaults=local_defaults)

    def roots(self) -> list[dict[str, Any]]:
        """The committed tree, and the one a change is building (state feeds write both)."""
        return [self.root] if self._work is None else [self.root, self._work]

    @property
    def failed(self) -> dict[str, str]:
        """{data path: reason} of every entry whose apply hook has not succeeded yet."""
        return {elems_text(e): reason for e, (_ev, reason) in self._failed.items()}

    # ---------------------------------------------------------------- reads

    def read(self, r: Resolved, *, ietf: bool, filt: str = ds.ALL, leaf_level: bool = False
             ) -> list[tuple[tuple[Elem, ...], Any]]:
        """(concrete path, JSON value) of every node matching a resolved path, or of every leaf
        below them (`leaf_level`, or a path ending in '...'); nodes the filter empties are left out."""
        out: list[tuple[tuple[Elem, ...], Any]] = []
        if r.notification:
            return out
        for elems, spath, value in ds.find(self.root, r.elems):
            if r.descendants or leaf_level:
                for e, s, v in ds.leaves(elems, spath, value):
                    j = ds.encode(s, v, ietf=ietf, filt=filt)
                    if j is not None:
                        out.append((e, j))
                continue
            node = NODES.get(spath)
            if node is not None and node["kind"] == "list":
                j = ds.encode_entry(spath, value, ietf=ietf, filt=filt)
            else:
                j = ds.encode(spath, value, ietf=ietf, filt=filt)
            if j is not None:
                out.append((elems, j))
        return out

    def exists(self, r: Resolved) -> bool:
        return any(True for _ in ds.find(self.root, r.elems))

    def require(self, r: Resolved) -> None:
        """NotFound when a concrete path (no wildcard) names no data; a wildcard may match nothing."""
        if not r.wildcard and not self.exists(r):
            raise NotFound(f"{r.text()}: no data at this path")

    # ---------------------------------------------------------------- the change

    async def change(self, edits: Sequence[Edit]) -> None:
        """Run one all-or-nothing change (see the module docstring)."""
        async with self._lock:
            self._check_requirements(edits)
            touched = _touched(edits)
            work = ds.cow_copy(self.root, touched)
            self._work = work
            try:
                deleted = self._edit(work, edits)
                ds.prune_empty(work, deleted)
                # state data whose `when` the change made false goes (RFC 7950 §8.2); the change
                # is judged on the configuration it produces, never on the runtime's state
                stale = ds.stale_state(work, touched)
                for elems in stale:
                    ds.detach(work, elems)
                ds.prune_empty(work, stale)
                problems = ds.check_tree(work, touched) + self.check_references(work)
                if problems:
                    raise Rejected("; ".join(problems))
                events = self._events(self.root, work, touched)
                txn = Transaction(self, self.root, work)
                await self._validate(txn, events)
            finally:
                self._work = None
            old, self.root = self.root, work
            self.hub.publish(_diff(old, work, touched + stale))
            await self._apply(txn, events)
            await self._retry(exclude={ev.elems for ev in events})

    def _check_requirements(self, edits: Sequence[Edit]) -> None:
        """Each edit's precondition against the committed tree (under the change's lock)."""
        for edit in edits:
            if not edit.requires:
                continue
            try:
                r = resolve([(n, dict(k)) for n, k in edit.path], allow_wildcards=False)
            except (PathError, ValueError_):
                continue  # refused as malformed by _edit, naming the problem
            there = self.exists(r)
            if edit.requires == "absent" and there:
                raise Exists(f"{edit.where()}: the data already exists")
            if edit.requires == "present" and not there:
                raise NotFound(f"{edit.where()}: no data at this path")

    async def retry_failed(self) -> dict[str, str]:
        """Apply again every entry whose apply failed; returns what still fails."""
        async with self._lock:
            await self._retry(exclude=set())
        return self.failed

    def _edit(self, work: dict[str, Any], edits: Sequence[Edit]) -> list[tuple[Elem, ...]]:
        deleted: list[tuple[Elem, ...]] = []
        for edit in edits:
            where = edit.where()
            try:
                r = resolve(list((n, dict(k)) for n, k in edit.path), allow_wildcards=False)
                if r.notification:
                    raise PathError("a notification is not data")
                if edit.op == "delete":
                    _check_deletable(r)
                    deleted.append(r.elems)
                    ds.remove(work, r.elems)  # absent paths are accepted silently (gNMI 3.4.6)
                    continue
                if edit.value_error is not None:
                    raise ValueError_(edit.value_error)
                value = _decode_edit(r, edit.value, where)
                ds.put(work, r.elems, r.schema_path, value, merge=(edit.op == "update"))
            except PathError as e:
                raise InvalidPath(_at(where, e)) from None
            except ValueError_ as e:
                raise InvalidValue(_at(where, e)) from None
        return deleted

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

    # ---------------------------------------------------------------- hooks

    def _entry_json(self, spath: str, value: Any) -> dict[str, Any] | None:
        """An entry as hooks see it: RFC 7951 names, config only, defaults applied."""
        if value is None:
            return None
        full = self.defaults.apply(spath, value)
        enc = ds.encode_entry if NODES[spath]["kind"] == "list" else ds.encode
        out = enc(spath, full, ietf=True, filt=ds.CONFIG)
        return out if out is not None else {}

    def _events(self, old: dict[str, Any], new: dict[str, Any], touched: list[tuple[Elem, ...]]
                ) -> list[HookEvent]:
        """Every list entry and container whose own data (its subtree without the entries of
        lists below it) the change created, modified or deleted, in hook order."""
        events: list[HookEvent] = []
        for spath in self._hooked:
            pattern = _wildcard_elems(spath)
            for scope in {_narrow(pattern, t) for t in touched if covers(pattern, t)}:
                before = {e: v for e, _s, v in ds.find(old, scope)}
                after = {e: v for e, _s, v in ds.find(new, scope)}
                for elems in sorted(set(before) | set(after), key=elems_text):
                    b, a = before.get(elems), after.get(elems)
                    if b is not None and a is not None and ds.strip_lists(spath, b) == ds.strip_lists(spath, a):
                        continue
                    bj, aj = self._entry_json(spath, b), self._entry_json(spath, a)
                    if bj != aj:
                        events.append(HookEvent(spath, elems, bj, aj, self._hook_keys(spath, elems)))
        events.sort(key=HookEvent.order)
        return events

    def _hook_keys(self, spath: str, elems: tuple[Elem, ...]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for list_name, key, kw in self.hooks.HOOK_KEYS[spath]:
            for name, keys in elems:
                if name == list_name:
                    text = dict(keys)[key]
                    leaf = NODES[child_path(_list_spath(spath, list_name), key)]
                    kwargs[kw] = decode_leaf(leaf, text, kw, lenient_strings=True)
        return kwargs

    async def _validate(self, txn: Transaction, events: Iterable[HookEvent]) -> None:
        for ev in events:
            hook = getattr(self.hooks, f"validate_{self.hooks.HOOKS[ev.spath]}")
            try:
                await hook(txn, ev.old, ev.new, **ev.keys)
            except HookVeto as e:
                raise Rejected(f"{elems_text(ev.elems)}: {e}") from None

    async def _apply(self, txn: Transaction, events: Iterable[HookEvent]) -> None:
        for ev in events:
            hook = getattr(self.hooks, f"apply_{self.hooks.HOOKS[ev.spath]}")
            where = elems_text(ev.elems)
            try:
                await hook(txn, ev.old, ev.new, **ev.keys)
            except Exception as e:  # noqa: BLE001 - any failure of the runtime is reported, not raised
                log.warning("apply %s failed: %s", where, e)
                self._failed[ev.elems] = (ev, str(e) or type(e).__name__)
                try:
                    await self.hooks.apply_failed(txn, where, e)
                except Exception:  # noqa: BLE001 - a failing report must not hide the first failure
                    log.exception("reporting the failed apply of %s failed", where)
            else:
                self._failed.pop(ev.elems, None)

    async def _retry(self, exclude: set[tuple[Elem, ...]]) -> None:
        """Apply failed entries again with what the tree holds for them now."""
        again = []
        for elems, (ev, _reason) in list(self._failed.items()):
            if elems in exclude:
                continue
            now = next((v for _e, _s, v in ds.find(self.root, elems)), None)
            again.append(HookEvent(ev.spath, elems, ev.old, self._entry_json(ev.spath, now), ev.keys))
        if again:
            again.sort(key=HookEvent.order)
            await self._apply(Transaction(self, self.root, self.root), again)


# ------------------------------------------------------------------ helpers


def _overrides(hooks: ModelHooks, name: str) -> bool:
    cls = type(hooks)
    return any(getattr(cls, f"{phase}_{name}") is not getattr(ModelHooks, f"{phase}_{name}")
               for phase in ("validate", "apply"))


def _at(where: str, e: Exception) -> str:
    msg = str(e)
    return msg if msg.startswith(where) else f"{where}: {msg}"


def _check_deletable(r: Resolved) -> None:
    if r.elems in ((("qkd_node", ()),), (("qkd_node", ()), ("qkdn_id", ())),):
        raise PathError("the node itself and its qkdn_id cannot be deleted")
    if r.schema_path != "/" and not NODES[r.schema_path]["config"]:
        raise PathError("config false (state) data cannot be deleted")


def _decode_edit(r: Resolved, raw: Any, where: str) -> Any:
    node = NODES.get(r.schema_path)
    if node is not None and node["kind"] == "list":
        if not r.elems[-1][1] or any(v == "*" for _k, v in r.elems[-1][1]):
            raise ValueError_(f"{where}: a change of a list needs every key in the path "
                              f"({', '.join(node['keys'])})")
        _k, entry = ds.decode_entry(r.schema_path, raw, where, config_only=True, path_keys=r.elems[-1][1])
        return entry
    if node is None and r.schema_path == "/" and not isinstance(raw, dict):
        raise ValueError_(f"{where}: the root takes a JSON object")
    return ds.decode(r.schema_path, raw, where, config_only=True)


def _touched(edits: Sequence[Edit]) -> list[tuple[Elem, ...]]:
    """Concrete element paths of every edit that resolves (the others fail in _edit)."""
    out = []
    for edit in edits:
        try:
            out.append(resolve([(n, dict(k)) for n, k in edit.path], allow_wildcards=False).elems)
        except (PathError, ValueError_):
            pass
    return out


def _list_spath(spath: str, list_name: str) -> str:
    parts = spath.split("/")
    return "/".join(parts[: parts.index(list_name) + 1])


@lru_cache(maxsize=256)
def _wildcard_elems(spath: str) -> tuple[Elem, ...]:
    out: list[Elem] = []
    cur = "/"
    for name in spath.strip("/").split("/"):
        cur = child_path(cur, name)
        out.append((name, tuple((k, "*") for k in NODES[cur].get("keys", []))))
    return tuple(out)


def _narrow(pattern: tuple[Elem, ...], touched: tuple[Elem, ...]) -> tuple[Elem, ...]:
    """The hook pattern with the keys the touched path fixes (pattern and path overlap)."""
    out = []
    for i, (name, keys) in enumerate(pattern):
        out.append((name, touched[i][1]) if i < len(touched) and touched[i][1] else (name, keys))
    return tuple(out)


def _shortest(paths: list[tuple[Elem, ...]]) -> list[tuple[Elem, ...]]:
    """The paths none of the others lie under (so each subtree is walked once)."""
    out: list[tuple[Elem, ...]] = []
    for p in sorted(set(paths), key=len):
        if not any(p[: len(q)] == q for q in out):
            out.append(p)
    return out


_MISSING = object()


def _flat_under(root: dict[str, Any], touched: list[tuple[Elem, ...]]) -> dict[tuple[Elem, ...], Any]:
    out: dict[tuple[Elem, ...], Any] = {}
    for t in _shortest(touched):
        for e0, s0, v0 in ds.find(root, t):
            for e, _s, v in ds.leaves(e0, s0, v0):
                out[e] = tuple(v) if isinstance(v, list) else v
    return out


def _diff(old: dict[str, Any], new: dict[str, Any], touched: list[tuple[Elem, ...]]) -> list[Change]:
    """Leaf changes between two trees, looking only under the paths a change wrote; a removed
    list entry is one deletion of the entry."""
    fo, fn = _flat_under(old, touched), _flat_under(new, touched)
    changes: list[Change] = []
    spath_of = {e: s for t in _shortest(touched) for e0, s0, v0 in ds.find(new, t)
                for e, s, _v in ds.leaves(e0, s0, v0)}
    for e, v in fn.items():
        if fo.get(e, _MISSING) != v:
            changes.append((e, spath_of[e], list(v) if isinstance(v, tuple) else v))
    gone_entries: set[tuple[Elem, ...]] = set()
    kept: dict[tuple[Elem, ...], bool] = {}

    def entry_gone(entry: tuple[Elem, ...]) -> bool:
        # a list entry the new tree no longer holds (one of its leaves going is not the entry going)
        if entry not in kept:
            kept[entry] = next(ds.find(new, entry), None) is not None
        return not kept[entry]

    for e in fo:
        if e in fn:
            continue
        cut = next((e[:i] for i in range(1, len(e) + 1) if e[i - 1][1] and entry_gone(e[:i])), None)
        if cut is not None:
            if cut not in gone_entries:
                gone_entries.add(cut)
                changes.append((cut, "", None))
        else:
            changes.append((e, "", None))
    return changes
