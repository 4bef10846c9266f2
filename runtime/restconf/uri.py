"""RESTCONF data resource URIs (RFC 8040 §3.5.3) -> the agent's element paths.

    api-path     = "/" api-segment *("/" api-segment)
    api-segment  = api-identifier / list-instance
    api-identifier = [module-name ":"] identifier     ; module name at the top and where it changes
    list-instance  = api-identifier "=" key-value *("," key-value)   ; every key, schema order

The raw (still percent-encoded) path is split on "/" first, a segment's keys on ",", and only
then is each part percent-decoded, so key values may hold "/", "," or "=" (%2F %2C %3D).
Which identifiers exist, their modules and list key order come from generated/restconf.py.

Strict mode is RFC 8040 as written. The compatibility dialect (what ETSI TeraFlowSDN and
FreeCONF-style clients send) also takes unqualified identifiers, trailing slashes and the
bare module root `etsi-qkd-sdn-node:`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from sdqkd.generated import restconf as rc

from .adapter import Elem, resolve_path
from .errors import RestconfError


@dataclass(frozen=True)
class Target:
    """The resource a request names: the datastore itself (no elems), a module root (compat),
    a node or a list instance; `keyless` when it ends in a list named without keys."""

    elems: tuple[Elem, ...]
    spath: str  # schema path, "/" for the datastore
    keyless: bool = False
    module_root: str | None = None

    @property
    def resource(self) -> rc.Resource | None:
        return rc.RESOURCES.get(self.spath)

    @property
    def name(self) -> str:
        return self.elems[-1][0] if self.elems else ""

    def instance_id(self) -> str:
        """The target as an instance-identifier (error-path, RFC 8040 §7.1)."""
        return instance_id(self.elems)

    def uri(self) -> str:
        """The target as an api-path (Location of a created resource)."""
        out, spath = [], ""
        for name, keys in self.elems:
            spath = f"{spath}/{name}"
            res = rc.RESOURCES[spath]
            seg = f"{res.module}:{name}" if res.qualified else name
            if keys:
                seg += "=" + ",".join(quote(v, safe="") for _k, v in keys)
            out.append(seg)
        return "/" + "/".join(out)


def instance_id(elems: tuple[Elem, ...]) -> str:
    out, spath = [], ""
    for name, keys in elems:
        spath = f"{spath}/{name}"
        res = rc.RESOURCES.get(spath)
        seg = f"{res.module}:{name}" if res is not None and res.qualified else name
        seg += "".join(f"[{k}='{v}']" for k, v in keys if v != "*")
        out.append(seg)
    return "/" + "/".join(out)


DATASTORE = Target((), "/")


def _bad(message: str, where: str) -> RestconfError:
    return RestconfError("invalid-value", message, path=where or "/", error_type="protocol")


@lru_cache(maxsize=4096)
def parse(raw: str, strict: bool) -> Target:
    """`raw` = the part of the request path after /restconf/data, percent-encoded as sent."""
    text = raw
    if not strict:
        text = text.rstrip("/")
    if text in ("", "/"):
        return DATASTORE
    if not text.startswith("/"):
        raise _bad(f"a data resource path starts with '/', got {raw!r}", raw)
    segments = text[1:].split("/")
    if not strict and len(segments) == 1 and segments[0].endswith(":") and "=" not in segments[0]:
        module = unquote(segments[0][:-1])
        if module not in {m[0] for m in rc.MODULES}:
            raise _bad(f"unknown module {module!r}", raw)
        return Target((), "/", module_root=module)
    elems: list[tuple[str, dict[str, str]]] = []
    spath = "/"
    keyless = False
    for i, seg in enumerate(segments):
        if keyless:
            raise _bad(f"list {elems[-1][0]!r} needs its keys before a child ({seg!r})", raw)
        if not seg:
            raise _bad("empty path segment (a doubled or trailing '/')", raw)
        ident, eq, keytext = seg.partition("=")
        ident = unquote(ident)
        module, colon, name = ident.rpartition(":")
        if not colon:
            module, name = "", ident
        child = rc.CHILDREN.get(spath, {}).get(name)
        if child is None:
            where = "the top level" if spath == "/" else spath
            raise RestconfError("unknown-element", f"no node {ident!r} at {where}", path=raw, error_type="protocol")
        res = rc.RESOURCES[child]
        if module and module != res.module:
            raise RestconfError("unknown-namespace", f"{name!r} is defined in module {res.module!r}, not {module!r}",
                                path=raw, error_type="protocol")
        if strict and res.qualified and not module:
            raise _bad(f"{name!r} must be qualified with its module name ({res.module}:{name}): "
                       f"{'a top-level node' if i == 0 else 'its module differs from its parent'}", raw)
        keys: dict[str, str] = {}
        if res.kind == "list":
            if eq:
                values = [unquote(v) for v in keytext.split(",")]
                if len(values) != len(res.keys):
                    raise _bad(f"list {name!r} has {len(res.keys)} key(s) ({', '.join(res.keys)}); "
                               f"{len(values)} value(s) given", raw)
                keys = dict(zip(res.keys, values))
            else:
                keyless = True
        elif eq:
            raise _bad(f"{name!r} is a {res.kind}; only list instances take '=' keys", raw)
        elems.append((name, keys))
        spath = child
    try:
        resolved = resolve_path(elems, keyless)
    except ValueError as e:
        raise _bad(str(e), raw) from None
    return Target(resolved, spath, keyless=keyless)
