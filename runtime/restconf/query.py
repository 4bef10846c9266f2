"""RESTCONF query parameters of a retrieval (RFC 8040 §4.8): `content` (all | config |
nonconfig), `depth` (1..65535 | unbounded; the target is level 1, list entries keep their keys),
`fields` (§4.8.3: `a/b;c(d;e)`, relative to the target, list keys always kept) and
`with-defaults` (RFC 6243 modes report-all, report-all-tagged, trim, explicit; basic mode
explicit). Every one is applied to the JSON of the target's value, schema-guided by
generated/restconf.py. Parameters this server does not know, or repeated ones, are refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdqkd.generated import restconf as rc

from .adapter import ALL, CONFIG, STATE
from .errors import protocol

CONTENT = {"all": ALL, "config": CONFIG, "nonconfig": STATE}
WITH_DEFAULTS = ("report-all", "report-all-tagged", "trim", "explicit")
DEFAULT_TAG = "ietf-netconf-with-defaults:default"
_RETRIEVAL = {"content", "depth", "fields", "with-defaults"}
_KNOWN = _RETRIEVAL | {"insert", "point", "filter", "start-time", "stop-time"}

Fields = dict[str, "Fields | None"]  # local name -> narrower selection, None = the whole subtree


@dataclass
class Query:
    content: str = ALL
    depth: int | None = None
    fields: Fields | None = None
    with_defaults: str = "explicit"
    given: set[str] = field(default_factory=set)


def parse(params: Mapping[str, str], keys: list[str], method: str) -> Query:
    """The query of one request; `keys` lists every parameter name as sent (repeats kept)."""
    q = Query()
    for k in keys:
        if k not in _KNOWN:
            raise protocol("invalid-value", f"unknown query parameter {k!r}")
        if keys.count(k) > 1:
            raise protocol("invalid-value", f"query parameter {k!r} given more than once")
        if k in ("insert", "point"):
            raise protocol("invalid-value", f"{k!r} applies to ordered-by user lists; this model has none")
        if k in ("filter", "start-time", "stop-time"):
            raise protocol("invalid-value", f"{k!r} applies to event streams only")
        if method not in ("GET", "HEAD"):
            raise protocol("invalid-value", f"{k!r} is a retrieval parameter (GET, HEAD); not for {method}")
        q.given.add(k)
    if "content" in params:
        if params["content"] not in CONTENT:
            raise protocol("invalid-value", f"content={params['content']!r}: expected all, config or nonconfig")
        q.content = CONTENT[params["content"]]
    if "depth" in params:
        d = params["depth"]
        if d != "unbounded":
            if not d.isdigit() or not 1 <= int(d) <= 65535:
                raise protocol("invalid-value", f"depth={d!r}: expected 1..65535 or unbounded")
            q.depth = int(d)
    if "with-defaults" in params:
        if params["with-defaults"] not in WITH_DEFAULTS:
            raise protocol("invalid-value", f"with-defaults={params['with-defaults']!r}: expected one of "
                                            f"{', '.join(WITH_DEFAULTS)}")
        q.with_defaults = params["with-defaults"]
    if "fields" in params:
        q.fields = parse_fields(params["fields"])  # checked against the target by the caller
    return q


# ------------------------------------------------------------------ fields


def parse_fields(text: str) -> Fields:
    """`a/b;c(d;e/f)` -> {a: {b: None}, c: {d: None, e: {f: None}}}."""
    pos = 0

    def expr() -> Fields:
        nonlocal pos
        out: Fields = {}
        while True:
            path: list[str] = []
            while True:
                start = pos
                while pos < len(text) and text[pos] not in "/;()":
                    pos += 1
                name = text[start:pos].rpartition(":")[2]
                if not name:
                    raise protocol("invalid-value", f"fields={text!r}: empty identifier at offset {start}")
                path.append(name)
                if pos < len(text) and text[pos] == "/":
                    pos += 1
                    continue
                break
            sub: Fields | None = None
            if pos < len(text) and text[pos] == "(":
                pos += 1
                sub = expr()
                if pos >= len(text) or text[pos] != ")":
                    raise protocol("invalid-value", f"fields={text!r}: unbalanced '('")
                pos += 1
            _merge(out, path, sub)
            if pos < len(text) and text[pos] == ";":
                pos += 1
                continue
            return out

    result = expr()
    if pos != len(text):
        raise protocol("invalid-value", f"fields={text!r}: unexpected {text[pos]!r} at offset {pos}")
    return result


def _merge(out: Fields, path: list[str], sub: Fields | None) -> None:
    cur = out
    for name in path[:-1]:
        nxt = cur.get(name, {})
        if nxt is None:
            return  # already selected whole
        cur[name] = nxt
        cur = nxt
    last = path[-1]
    if sub is None or cur.get(last, {}) is None:
        cur[last] = None
    else:
        existing = cur.get(last) or {}
        existing.update(sub)
        cur[last] = existing


def check_fields(spath: str, sel: Fields, text: str) -> None:
    for name, sub in sel.items():
        child = rc.CHILDREN.get(spath, {}).get(name)
        if child is None:
            raise protocol("invalid-value", f"fields={text!r}: {spath} has no child {name!r}")
        if sub is not None:
            check_fields(child, sub, text)


def select(spath: str, value: Any, sel: Fields) -> Any:
    """The parts of a container / list entry JSON that `sel` names (list keys kept)."""
    if not isinstance(value, dict):
        return value
    keys = set(rc.RESOURCES[spath].keys) if spath in rc.RESOURCES else set()
    out: dict[str, Any] = {}
    for member, v in value.items():
        local = member.rpartition(":")[2]
        if local in keys:
            out[member] = v
            continue
        if local not in sel:
            continue
        sub = sel[local]
        child = rc.CHILDREN[spath][local]
        if sub is None:
            out[member] = v
        elif isinstance(v, list):
            out[member] = [select(child, e, sub) for e in v]
        else:
            out[member] = select(child, v, sub)
    return out


# ------------------------------------------------------------------ depth


def limit_depth(spath: str, value: Any, depth: int, level: int = 1) -> Any:
    """Cut a node's JSON below `depth`; `value` sits at `level` (the target is level 1)."""
    if not isinstance(value, dict):
        return value
    keys = set(rc.RESOURCES[spath].keys) if spath in rc.RESOURCES else set()
    out: dict[str, Any] = {}
    for member, v in value.items():
        local = member.rpartition(":")[2]
        if local in keys:
            out[member] = v
            continue
        if level + 1 > depth:
            continue
        child = rc.CHILDREN.get(spath, {}).get(local, f"{spath.rstrip('/')}/{local}")
        if isinstance(v, list) and v and isinstance(v[0], dict):
            out[member] = [limit_depth(child, e, depth, level + 1) for e in v]
        else:
            out[member] = limit_depth(child, v, depth, level + 1)
    return out


# ------------------------------------------------------------------ with-defaults


def apply_defaults(spath: str, value: Any, mode: str, filt: str, ietf: bool,
                   encode_default: Any) -> Any:
    """Add (report-all, report-all-tagged) or drop (trim) leaves equal to their YANG default in
    a container / list entry JSON and every container and entry below it."""
    if mode == "explicit" or not isinstance(value, dict):
        return value
    parent_module = rc.RESOURCES[spath].module if spath in rc.RESOURCES else None
    out = dict(value)
    for local, child in rc.CHILDREN.get(spath, {}).items():
        res = rc.RESOURCES[child]
        member = f"{res.module}:{local}" if ietf and res.module != parent_module else local
        if res.kind == "leaf":
            if res.default is None or res.conditional or not _kept(res.config, filt):
                continue
            dv = encode_default(child, res.default)
            present = member in out
            if mode == "trim":
                if present and out[member] == dv:
                    del out[member]
            elif not present or out[member] == dv:
                out[member] = dv
                if mode == "report-all-tagged":
                    out[f"@{member}"] = {DEFAULT_TAG: True}
        elif member in out and res.kind == "container":
            out[member] = apply_defaults(child, out[member], mode, filt, ietf, encode_default)
        elif member in out and res.kind == "list":
            out[member] = [apply_defaults(child, e, mode, filt, ietf, encode_default) for e in out[member]]
    return out


def _kept(config: bool, filt: str) -> bool:
    return filt == ALL or (filt == CONFIG) == config
