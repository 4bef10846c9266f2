"""The node's data tree and the operations Get, Set and Subscribe need on it: JSON decode with
validation, JSON / JSON_IETF encode with CONFIG/STATE filtering, wildcard lookup, merge,
replace, delete, leaf flattening for change detection, and whole-tree checks (mandatory,
`when`). Pure functions over plain dicts; the transaction and locking live in the server."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from .model import (
    NODES,
    ROOTS,
    Elem,
    PathError,
    ValueError_,
    canonical_text,
    child_path,
    decode_leaf,
    decode_scalar,
    elems_text,
    encode_scalar,
    strip_prefix,
)

ALL, CONFIG, STATE = "ALL", "CONFIG", "STATE"


def _member(name: str, node: dict[str, Any], parent_module: str | None, ietf: bool) -> str:
    if ietf and node["module"] != parent_module:
        return f"{node['module']}:{name}"
    return name


# ------------------------------------------------------------------ decode


def decode(spath: str, raw: Any, where: str, *, config_only: bool) -> Any:
    """JSON value for the schema node `spath` -> internal value. Raises ValueError_/PathError."""
    node: dict[str, Any] = NODES[spath] if spath != "/" else {"kind": "container", "children": ROOTS, "config": True}
    if config_only and not node["config"]:
        raise PathError(f"{where}: config false (state) data cannot be written")
    kind = node["kind"]
    if kind == "leaf":
        return decode_scalar(node.get("type", {}), raw, where)
    if kind == "leaf-list":
        if not isinstance(raw, list):
            raise ValueError_(f"{where}: expected a JSON array for leaf-list, got {type(raw).__name__}")
        vals = [decode_scalar(node.get("type", {}), v, f"{where}[{i}]") for i, v in enumerate(raw)]
        if len(set(map(str, vals))) != len(vals):
            raise ValueError_(f"{where}: duplicate values in leaf-list")
        return vals
    if kind == "list":
        if not isinstance(raw, list):
            raise ValueError_(f"{where}: expected a JSON array of entries for list, got {type(raw).__name__}")
        out: dict[tuple[str, ...], Any] = {}
        for i, entry in enumerate(raw):
            key, value = decode_entry(spath, entry, f"{where}[{i}]", config_only=config_only)
            if key in out:
                raise ValueError_(f"{where}: duplicate entry for key {dict(zip(node['keys'], key))}")
            out[key] = value
        return out
    if kind in ("container", "notification"):
        if not isinstance(raw, dict):
            raise ValueError_(f"{where}: expected a JSON object for {kind}, got {type(raw).__name__}")
        return _decode_members(spath, raw, where, config_only)
    raise PathError(f"{where}: cannot hold data ({kind})")


def decode_entry(spath: str, raw: Any, where: str, *, config_only: bool,
                 path_keys: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, ...], dict[str, Any]]:
    node = NODES[spath]
    if not isinstance(raw, dict):
        raise ValueError_(f"{where}: expected a JSON object for a list entry, got {type(raw).__name__}")
    entry = _decode_members(spath, raw, where, config_only)
    given = dict(path_keys)
    key = []
    for k in node["keys"]:
        leaf = NODES[child_path(spath, k)]
        in_path = given.get(k, "*")
        if k in entry:
            text = canonical_text(leaf, entry[k])
            if in_path not in ("*", text):
                raise ValueError_(f"{where}: key {k}={text!r} in the value conflicts with {k}={in_path!r} in the path")
        elif in_path != "*":
            entry[k] = _from_key_text(leaf, in_path, where)
            text = in_path
        else:
            raise ValueError_(f"{where}: list entry lacks its key {k!r}")
        key.append(text)
    return tuple(key), entry


def _from_key_text(leaf: dict[str, Any], text: str, where: str) -> Any:
    from .model import decode_leaf

    return decode_leaf(leaf, text, f"{where}/{leaf['name']}", lenient_strings=True)


def _decode_members(spath: str, raw: dict[str, Any], where: str, config_only: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for member, v in raw.items():
        if not isinstance(member, str):
            raise ValueError_(f"{where}: member names must be strings")
        try:
            name = strip_prefix(member)
        except PathError as e:
            raise PathError(f"{where}: {e}") from None
        cp = child_path(spath, name)
        if cp not in NODES:
            raise PathError(f"{where}: unknown member {member!r}")
        if name in out:
            raise ValueError_(f"{where}: member {name!r} given twice")
        out[name] = decode(cp, v, f"{where}/{name}", config_only=config_only)
    return out


# ------------------------------------------------------------------ encode


def _keep(node: dict[str, Any], filt: str) -> bool:
    return filt == ALL or (filt == CONFIG and node["config"]) or (filt == STATE and not node["config"])


def encode(spath: str, value: Any, *, ietf: bool, filt: str = ALL, parent_module: str | None = None) -> Any:
    """Internal value of schema node `spath` -> JSON; None when the filter leaves nothing."""
    node = NODES[spath] if spath != "/" else None
    if node is None:  # the root: module-qualified top-level members
        out: dict[str, Any] = {}
        for name, v in value.items():
            cp = child_path("/", name)
            j = encode(cp, v, ietf=ietf, filt=filt, parent_module=None)
            if j is not None:
                out[_member(name, NODES[cp], None, True if ietf else False)] = j
        return out
    kind = node["kind"]
    if kind == "leaf":
        return encode_scalar(node, value, ietf) if _keep(node, filt) else None
    if kind == "leaf-list":
        return [encode_scalar(node, v, ietf) for v in value] if _keep(node, filt) else None
    if kind == "list":
        entries = [e for e in (encode_entry(spath, ent, ietf=ietf, filt=filt) for ent in value.values()) if e]
        return entries or None
    out = {}
    for name, v in value.items():
        cp = child_path(spath, name)
        j = encode(cp, v, ietf=ietf, filt=filt, parent_module=node["module"])
        if j is not None:
            out[_member(name, NODES[cp], node["module"], ietf)] = j
    if not out and filt != ALL:
        return None
    return out


def encode_entry(spath: str, entry: dict[str, Any], *, ietf: bool, filt: str = ALL) -> dict[str, Any] | None:
    node = NODES[spath]
    out: dict[str, Any] = {}
    for name, v in entry.items():
        cp = child_path(spath, name)
        child = NODES[cp]
        j = encode(cp, v, ietf=ietf, filt=filt, parent_module=node["module"])
        if j is not None and not (name in node["keys"] and filt == STATE):
            out[_member(name, child, node["module"], ietf)] = j
    if filt == STATE and not out:
        return None
    if filt == STATE:  # keys identify the entry even in state-only output
        for k in node["keys"]:
            out = {_member(k, NODES[child_path(spath, k)], node["module"], ietf):
                   encode_scalar(NODES[child_path(spath, k)], entry[k], ietf), **out}
    return out or None


# ------------------------------------------------------------------ lookup


def find(root: dict[str, Any], elems: tuple[Elem, ...], descendants: bool = False
         ) -> Iterator[tuple[tuple[Elem, ...], str, Any]]:
    """(concrete elems, schema path, value) of every node matching `elems` ('*' keys)."""

    def walk(i: int, cur: Any, spath: str, done: tuple[Elem, ...]) -> Iterator[tuple[tuple[Elem, ...], str, Any]]:
        if i == len(elems):
            yield done, spath, cur
            return
        name, keys = elems[i]
        if not isinstance(cur, dict) or name not in cur:
            return
        cp = child_path(spath, name)
        v = cur[name]
        node = NODES[cp]
        if node["kind"] == "list":
            for ktuple, entry in v.items():
                if all(want == "*" or want == have for (_k, want), have in zip(keys, ktuple)):
                    yield from walk(i + 1, entry, cp, done + ((name, tuple(zip(node["keys"], ktuple))),))
        else:
            yield from walk(i + 1, v, cp, done + ((name, ()),))

    yield from walk(0, root, "/", ())


def leaves(elems: tuple[Elem, ...], spath: str, value: Any) -> Iterator[tuple[tuple[Elem, ...], str, Any]]:
    """Flatten a subtree into (elems, schema path, value) per leaf and leaf-list."""
    node: dict[str, Any] = NODES.get(spath) or {"kind": "container", "name": ""}
    kind = node["kind"]
    if kind in ("leaf", "leaf-list"):
        yield elems, spath, value
        return
    if kind == "list" and elems and elems[-1][0] == node["name"] and elems[-1][1] and all(
            v != "*" for _k, v in elems[-1][1]):
        items: Any = value.items()  # value is one entry
        for name, v in items:
            yield from leaves(elems + ((name, ()),), child_path(spath, name), v)
        return
    if kind == "list":
        for ktuple, entry in value.items():
            e = elems[:-1] + ((node["name"], tuple(zip(node["keys"], ktuple))),)
            for name, v in entry.items():
                yield from leaves(e + ((name, ()),), child_path(spath, name), v)
        return
    for name, v in value.items():
        cp = child_path(spath, name)
        if NODES[cp]["kind"] == "list":
            for ktuple, entry in v.items():
                e = elems + ((name, tuple(zip(NODES[cp]["keys"], ktuple))),)
                for n2, v2 in entry.items():
                    yield from leaves(e + ((n2, ()),), child_path(cp, n2), v2)
        else:
            yield from leaves(elems + ((name, ()),), cp, v)


def flat(root: dict[str, Any]) -> dict[tuple[Elem, ...], Any]:
    """Every leaf of the tree by concrete path; leaf-lists as tuples (comparable)."""
    return {e: tuple(v) if isinstance(v, list) else v for e, _s, v in leaves((), "/", root)}


# ------------------------------------------------------------------ change


def _container_at(root: dict[str, Any], elems: tuple[Elem, ...], create: bool) -> Any:
    """The dict holding elems[-1] (a container dict or a list entry), created when asked."""
    cur: Any = root
    spath = "/"
    for name, keys in elems[:-1]:
        cp = child_path(spath, name)
        node = NODES[cp]
        if name not in cur:
            if not create:
                return None
            cur[name] = {}
        cur = cur[name]
        if node["kind"] == "list":
            k = tuple(v for _k, v in keys)
            if k not in cur:
                if not create:
                    return None
                cur[k] = {kn: _key_value(cp, kn, kv) for kn, kv in keys}
            cur = cur[k]
        spath = cp
    return cur


def _key_value(list_spath: str, key: str, text: str) -> Any:
    return _from_key_text(NODES[child_path(list_spath, key)], text, list_spath)


def merge_values(spath: str, old: Any, new: Any) -> Any:
    node = NODES.get(spath) if spath != "/" else None
    kind = node["kind"] if node else "container"
    if kind in ("leaf", "leaf-list") or old is None:
        return new
    if kind == "list":
        out = dict(old)
        for k, entry in new.items():
            out[k] = merge_entry(spath, out.get(k), entry)
        return out
    out = dict(old)
    for name, v in new.items():
        out[name] = merge_values(child_path(spath, name), out.get(name), v)
    return out


def merge_entry(spath: str, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if old is None:
        return new
    out = dict(old)
    for name, v in new.items():
        out[name] = merge_values(child_path(spath, name), out.get(name), v)
    return out


def put(root: dict[str, Any], elems: tuple[Elem, ...], spath: str, value: Any, *, merge: bool) -> None:
    """Write `value` (internal) at concrete `elems`; merge or replace."""
    if not elems:  # the root
        if merge:
            for name, v in value.items():
                root[name] = merge_values(child_path("/", name), root.get(name), v)
        else:
            root.clear()
            root.update(value)
        return
    holder = _container_at(root, elems, create=True)
    name, keys = elems[-1]
    node = NODES[spath]
    if node["kind"] == "list" and keys:
        lst = holder.setdefault(name, {})
        k = tuple(v for _k, v in keys)
        lst[k] = merge_entry(spath, lst.get(k), value) if merge else value
    elif merge:
        holder[name] = merge_values(spath, holder.get(name), value)
    else:
        holder[name] = value


def remove(root: dict[str, Any], elems: tuple[Elem, ...]) -> bool:
    """Delete the node at concrete `elems`; False when it was not there."""
    if not elems:
        had = bool(root)
        root.clear()
        return had
    holder = _container_at(root, elems, create=False)
    if holder is None:
        return False
    name, keys = elems[-1]
    if name not in holder:
        return False
    if keys:
        k = tuple(v for _k, v in keys)
        if k not in holder[name]:
            return False
        del holder[name][k]
        if not holder[name]:
            del holder[name]
        return True
    del holder[name]
    return True


def prune_empty(root: dict[str, Any], deleted: list[tuple[Elem, ...]]) -> None:
    """Drop non-presence containers and lists that deletes left empty (they carry no data),
    walking up from each deleted path."""
    for elems in deleted:
        for depth in range(len(elems) - 1, 0, -1):
            holder = _container_at(root, elems[:depth], create=False)
            if holder is None:
                continue
            name, keys = elems[depth - 1]
            spath = "/" + "/".join(n for n, _k in elems[:depth])
            node = NODES[spath]
            v = holder.get(name)
            if node["kind"] == "list" and keys:
                k = tuple(x for _n, x in keys)
                if k in v and not any(c for c in v[k] if c not in node["keys"]):
                    continue  # an entry with only its keys is still an entry
                if not v:
                    del holder[name]
            elif isinstance(v, dict) and not v and not node.get("presence"):
                del holder[name]


def cow_copy(root: dict[str, Any], paths: list[tuple[Elem, ...]]) -> dict[str, Any]:
    """A copy of `root` in which every dict on or under `paths` is new and the rest shared:
    a Set writes only there, so it need not copy the whole tree."""
    import copy

    new = dict(root)
    for elems in paths:
        cur_old: Any = root
        cur_new: Any = new
        spath = "/"
        for i, (name, keys) in enumerate(elems):
            if not isinstance(cur_old, dict) or name not in cur_old:
                break
            spath = child_path(spath, name)
            node = NODES[spath]
            last = i == len(elems) - 1
            if node["kind"] == "list":
                if cur_new[name] is cur_old[name]:
                    cur_new[name] = dict(cur_old[name])
                lst_old, lst_new = cur_old[name], cur_new[name]
                k = tuple(v for _n, v in keys)
                if not keys or k not in lst_old:
                    if not keys and last:
                        cur_new[name] = copy.deepcopy(lst_old)
                    break
                if lst_new[k] is lst_old[k]:
                    lst_new[k] = copy.deepcopy(lst_old[k]) if last else dict(lst_old[k])
                cur_old, cur_new = lst_old[k], lst_new[k]
            else:
                if cur_new[name] is cur_old[name]:
                    cur_new[name] = copy.deepcopy(cur_old[name]) if last else (
                        dict(cur_old[name]) if isinstance(cur_old[name], dict) else cur_old[name])
                cur_old, cur_new = cur_old[name], cur_new[name]
        else:
            if not elems:
                return copy.deepcopy(root)
    return new


def strip_lists(spath: str, value: Any) -> Any:
    """A subtree without the entries of the lists below it (they have hooks of their own)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for name, v in value.items():
        cp = child_path(spath, name)
        node = NODES[cp]
        if node["kind"] == "list":
            continue
        out[name] = strip_lists(cp, v) if node["kind"] == "container" else v
    return out


# ------------------------------------------------------------------ defaults


class Defaults:
    """YANG defaults (RFC 7950 §7.6.1): a leaf that is absent has its default value when its
    parent exists (non-presence containers exist implicitly). `local` maps schema paths of
    leaves to a node-local default that takes the schema's place (e.g. the node's engine
    setting for a Cascade variant); each is checked against the leaf's type."""

    def __init__(self, local: Mapping[str, Any] | None = None):
        self._local: dict[str, Any] = {}
        for spath, raw in (local or {}).items():
            node = NODES.get(spath)
            if node is None or node["kind"] != "leaf":
                raise PathError(f"{spath}: the model has no leaf there to give a default")
            self._local[spath] = decode_leaf(node, raw, spath, lenient_strings=True)
        # schema paths at or above a leaf with a default: the only subtrees apply() walks
        self._reach = {p for p in NODES if _has_default(p)}
        for spath in self._local:
            parts = spath.split("/")
            self._reach.update("/".join(parts[:i]) for i in range(2, len(parts) + 1))

    def value(self, spath: str) -> Any:
        """The default of a leaf (canonical value), None when it has none."""
        if spath in self._local:
            return self._local[spath]
        return _schema_default(spath)

    def apply(self, spath: str, value: Any) -> Any:
        """A copy of a container or list entry with every absent default filled in below it."""
        if not isinstance(value, dict) or not self._reaches_default(spath):
            return value
        out = dict(value)
        for cp in NODES[spath].get("children", []):
            node = NODES[cp]
            name = node["name"]
            if not node["config"] or not self._reaches_default(cp):
                continue
            kind = node["kind"]
            if kind == "leaf":
                if name not in out and _when_holds(node, out):
                    out[name] = self.value(cp)
            elif kind == "container" and not node.get("presence"):
                sub = self.apply(cp, out.get(name, {}))
                if sub:
                    out[name] = sub
            elif kind == "list" and name in out:
                out[name] = {k: self.apply(cp, e) for k, e in out[name].items()}
        return out

    def _reaches_default(self, spath: str) -> bool:
        return spath in self._reach


@lru_cache(maxsize=2048)
def _schema_default(spath: str) -> Any:
    node = NODES[spath]
    if node.get("default") is None:
        return None
    return decode_leaf(node, node["default"], spath, lenient_strings=True)


@lru_cache(maxsize=2048)
def _has_default(spath: str) -> bool:
    node = NODES[spath]
    if node["kind"] == "leaf":
        return node.get("default") is not None
    return any(_has_default(cp) for cp in node.get("children", []))


def _when_holds(node: dict[str, Any], siblings: dict[str, Any]) -> bool:
    """A default applies only where the leaf's `when` holds (evaluable: a sibling's value)."""
    when = node.get("when")
    if not when:
        return True
    rel = when.get("leaf", "")
    if "/" in rel or rel not in siblings:
        return False
    return str(siblings[rel]) == when.get("equals")


# ------------------------------------------------------------------ checks


def check_tree(root: dict[str, Any], under: list[tuple[Elem, ...]] | None = None) -> list[str]:
    """Model constraints (mandatory leaves, `when` conditions) on the configuration of the
    whole tree, or of the subtrees holding the given paths (from their parents down: siblings'
    `when`s and the parent's mandatory leaves depend on what changed). State data (`config
    false`) is not judged: the runtime writes it, and a change is refused only for the
    configuration it produces (state under a false `when` is removed: `stale_state`)."""
    return _check(root, under)[0]


def stale_state(root: dict[str, Any], under: list[tuple[Elem, ...]] | None = None) -> list[tuple[Elem, ...]]:
    """Concrete paths of the state (`config false`) nodes present under a `when` that is false,
    in the same scope as `check_tree`: data that must not exist (RFC 7950 §7.21.5), which the
    server removes when a change turns the condition false (§8.2)."""
    return _check(root, under)[1]


def _leaf_at(stack: list[Any], rel: str) -> Any:
    """The value `rel` (a `when`'s relative path) names from the context whose data nodes,
    root first, are `stack`."""
    stack = list(stack)
    for step in rel.split("/"):
        step = strip_prefix(step) if step not in ("..", ".", "") else step
        if step == "..":
            stack.pop()
        elif step not in (".", ""):
            cur = stack[-1]
            if not isinstance(cur, dict) or step not in cur:
                return None
            stack.append(cur[step])
    return stack[-1]


def when_false(when: dict[str, Any] | None, stack: list[Any]) -> bool:
    """A compiled `when` (a leaf's value compared) is false in the context `stack`."""
    if not when or "leaf" not in when:
        return False
    got = _leaf_at(stack, when["leaf"])
    return got is None or str(got) != when["equals"]


def _check(root: dict[str, Any], under: list[tuple[Elem, ...]] | None) -> tuple[list[str], list[tuple[Elem, ...]]]:
    problems: list[str] = []
    stale: list[tuple[Elem, ...]] = []

    def walk(spath: str, cur: dict[str, Any], elems: tuple[Elem, ...], stack: list[Any],
             only: dict[str, dict[tuple[Any, ...], None]] | None = None) -> None:
        children = NODES[spath].get("children", []) if spath != "/" else ROOTS
        for cp in children:
            node = NODES[cp]
            if node["kind"] == "notification":
                continue
            name = node["name"]
            present = name in cur
            if node.get("mandatory") and node["config"] and not present and spath != "/":
                problems.append(f"{elems_text(elems)}: mandatory leaf {name!r} missing")
            if not present:
                continue
            v = cur[name]
            is_list = node["kind"] == "list"
            if when_false(node.get("when"), stack):
                if node["config"]:
                    problems.append(f"{elems_text(elems + ((name, ()),))}: present but its condition "
                                    f"`{node['when']['xpath']}` is false")
                else:  # all of it goes, every entry of a list
                    stale.extend([_entry(elems, node, name, k) for k in v] if is_list else [elems + ((name, ()),)])
                    continue
            if node["kind"] == "container":
                walk(cp, v, elems + ((name, ()),), stack + [v])
            elif is_list:
                keys = v if only is None or name not in only else [k for k in only[name] if k in v]
                for k in keys:  # only the entries changed, when `only` names them: the others cannot see them
                    walk(cp, v[k], _entry(elems, node, name, k), stack + [v[k]])

    if under is None:
        walk("/", root, (), [root])
        return problems, stale
    starts = sorted({e[:-1] for e in under}, key=len)
    done: list[tuple[Elem, ...]] = []
    for start in starts:
        if any(start[: len(d)] == d for d in done):
            continue
        done.append(start)
        stack: list[Any] = [root]
        cur: Any = root
        spath = "/"
        ok = True
        for name, keys in start:
            spath = child_path(spath, name)
            if not isinstance(cur, dict) or name not in cur:
                ok = False
                break
            cur = cur[name]
            if keys:
                k = tuple(v for _n, v in keys)
                if k not in cur:
                    ok = False
                    break
                cur = cur[k]
            stack.append(cur)
        if ok and isinstance(cur, dict):
            walk(spath, cur, start, stack, _entries_only(start, under))
    return problems, stale


def _entry(elems: tuple[Elem, ...], node: dict[str, Any], name: str, key: tuple[Any, ...]) -> tuple[Elem, ...]:
    return elems + ((name, tuple(zip(node["keys"], key))),)


def _entries_only(start: tuple[Elem, ...], under: list[tuple[Elem, ...]]
                  ) -> dict[str, dict[tuple[Any, ...], None]] | None:
    """Where every change below `start` is inside entries of its lists: those entries, by list.
    A `when` reads leaves by name up and down from its node (`_leaf_at`) and cannot step into a
    list entry, so an entry's checks cannot depend on another entry, and the other children's
    cannot depend on any entry: the unchanged entries need no walk. That keeps a Set on one link
    of a node with many from walking them all. None (walk everything) once a change touches
    `start`'s own leaves or containers, or a whole list. Entries in the order the change names
    them (a dict, not a set), so that problems are reported in the same order every run."""
    only: dict[str, dict[tuple[Any, ...], None]] = {}
    for u in under:
        if len(u) <= len(start) or u[: len(start)] != start:
            continue
        name, keys = u[len(start)]
        if not keys:
            return None
        only.setdefault(name, {})[tuple(v for _n, v in keys)] = None
    return only


@lru_cache(maxsize=4096)
def whens_along(spath: str) -> tuple[tuple[int, dict[str, Any]], ...]:
    """(depth, `when`) of every node on a schema path that has one, root first (depth i: the
    node is the path's i-th element, its context the data node above it)."""
    out = []
    cur = "/"
    for i, name in enumerate(spath.strip("/").split("/") if spath != "/" else []):
        cur = child_path(cur, name)
        when = NODES[cur].get("when")
        if when and "leaf" in when:
            out.append((i, when))
    return tuple(out)


@lru_cache(maxsize=4096)
def when_below(spath: str) -> bool:
    """Whether a node at or below a schema node has a `when`."""
    node = NODES[spath] if spath != "/" else {"children": ROOTS}
    return bool(node.get("when")) or any(when_below(cp) for cp in node.get("children", []))


def path_when_false(root: dict[str, Any], elems: tuple[Elem, ...], spath: str) -> bool:
    """A `when` on the node at `elems` or on a node above it is false in `root` (data not
    there yet counts as empty: writing it would not make the condition true)."""
    whens = whens_along(spath)
    if not whens:
        return False
    stack: list[Any] = [root]
    cur: Any = root
    depth = 0
    for i, (name, keys) in enumerate(elems):
        while whens[depth][0] == i:
            if when_false(whens[depth][1], stack):
                return True
            depth += 1
            if depth == len(whens):
                return False
        cur = cur.get(name, {}) if isinstance(cur, dict) else {}
        if keys:
            cur = cur.get(tuple(v for _n, v in keys), {}) if isinstance(cur, dict) else {}
        stack.append(cur)
    return False


ABSENT = object()


def value_at(root: dict[str, Any], elems: tuple[Elem, ...]) -> Any:
    """The value at concrete `elems` (keys all given), or ABSENT: a walk down the dicts (a list
    holds its entries by their key tuple, as in path_when_false), not find's schema-aware search."""
    cur: Any = root
    for name, keys in elems:
        if not isinstance(cur, dict) or name not in cur:
            return ABSENT
        cur = cur[name]
        if keys:
            k = tuple(v for _n, v in keys)
            if not isinstance(cur, dict) or k not in cur:
                return ABSENT
            cur = cur[k]
    return cur


def detach(root: dict[str, Any], elems: tuple[Elem, ...]) -> bool:
    """`remove` in a copy-on-write tree: every dict on the way is copied first, so a tree that
    shares them (the committed one) is left alone."""
    cur: Any = root
    for name, keys in elems[:-1]:
        if not isinstance(cur, dict) or name not in cur:
            return False
        cur[name] = dict(cur[name])
        cur = cur[name]
        if keys:
            k = tuple(v for _n, v in keys)
            if k not in cur:
                return False
            cur[k] = dict(cur[k])
            cur = cur[k]
    name, keys = elems[-1]
    if not isinstance(cur, dict) or name not in cur:
        return False
    if keys:
        cur[name] = dict(cur[name])
    return remove(root, elems)
