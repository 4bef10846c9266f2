"""The agent's view of the compiled model (sdqkd.generated.schema): gNMI path resolution against
the schema, and leaf value codecs (validation, canonical form, JSON and JSON_IETF output).

Internal data tree: a container is a dict {child name: value}; a list is a dict {key tuple:
entry dict} (key values as canonical strings, in schema key order); a leaf holds its canonical
Python value (int for integers, str with exact fraction digits for decimal64, bool, str for
strings/enums, "module:identity" for identityrefs); a leaf-list holds a list.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from sdqkd.errors import SdqkdError
from sdqkd.generated import schema as gs

NODES = gs.NODES
ROOTS = gs.ROOTS
MODULE_NAMES = {m["name"] for m in gs.MODULES}
_PREFIX_TO_MODULE = {m["prefix"]: m["name"] for m in gs.MODULES}
INT64 = {"int64", "uint64"}
_INT_BASES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})


class PathError(SdqkdError, ValueError):
    """A path the model does not have, or a malformed one (gRPC INVALID_ARGUMENT)."""


class ValueError_(SdqkdError, ValueError):
    """A value that does not fit its leaf's type (gRPC INVALID_ARGUMENT)."""


# An element of a concrete or wildcard data path: (name, keys), keys as a tuple of
# (key name, value) in schema key order; value "*" is a wildcard. Name "..." = any depth.
Elem = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Resolved:
    """A gNMI path checked against the schema."""

    elems: tuple[Elem, ...]  # names without module prefixes, keys complete ("*" where absent)
    schema_path: str  # "/" for the root; for "..." the schema path before it
    descendants: bool  # ends in "..."
    notification: str | None = None

    @property
    def wildcard(self) -> bool:
        return self.descendants or any(v == "*" for _n, keys in self.elems for _k, v in keys)

    def text(self) -> str:
        return elems_text(self.elems) + ("/..." if self.descendants else "")


def elems_text(elems: tuple[Elem, ...]) -> str:
    out = []
    for name, keys in elems:
        out.append(name + "".join(f"[{k}={v}]" for k, v in keys))
    return "/" + "/".join(out)


def strip_prefix(name: str) -> str:
    if ":" in name:
        mod, local = name.split(":", 1)
        if mod in MODULE_NAMES or mod in _PREFIX_TO_MODULE:
            return local
        raise PathError(f"unknown module prefix {mod!r} in path element {name!r}")
    return name


def child_path(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def resolve(elems: list[tuple[str, dict[str, str]]], allow_wildcards: bool = True) -> Resolved:
    """Check (name, keys) elements against the schema; complete list keys with '*'."""
    out: list[Elem] = []
    spath = "/"
    notification = None
    for i, (raw, keys) in enumerate(elems):
        if raw == "...":
            if not allow_wildcards:
                raise PathError(f"wildcard '...' not allowed in {elems_text(tuple(out))}/...")
            if i != len(elems) - 1:
                raise PathError("'...' is supported only as the last path element")
            return Resolved(tuple(out), spath, True, notification)
        name = strip_prefix(raw)
        if name == "*":
            raise PathError(f"wildcard '*' not allowed here (after {elems_text(tuple(out)) if out else '/'})")
        cp = child_path(spath, name)
        node = NODES.get(cp)
        if node is None:
            where = spath if spath != "/" else "the root"
            raise PathError(f"unknown path {elems_text(tuple(out)) if out else ''}/{raw}: no {name!r} under {where}")
        if node["kind"] == "notification":
            notification = name
        if keys and node["kind"] != "list":
            raise PathError(f"{cp}: keys given for a {node['kind']}, which has none")
        ktuple: tuple[tuple[str, str], ...] = ()
        if node["kind"] == "list":
            unknown = set(keys) - set(node["keys"])
            if unknown:
                raise PathError(f"{cp}: unknown key(s) {sorted(unknown)}; keys are {node['keys']}")
            kv = []
            for k in node["keys"]:
                v = keys.get(k, "*")
                if v == "*" and not allow_wildcards:
                    raise PathError(f"{cp}: key {k!r} missing")
                if v != "*":
                    v = key_text(NODES[child_path(cp, k)], v, cp)
                kv.append((k, v))
            ktuple = tuple(kv)
        out.append((name, ktuple))
        spath = cp
    return Resolved(tuple(out), spath, False, notification)


def resolve_all(elems: list[tuple[str, dict[str, str]]]) -> list[Resolved]:
    """Like resolve, with `*` allowed as an element name: one Resolved per schema node it
    stands for (data nodes only). An error if nothing the model has matches."""
    if not any(name == "*" for name, _k in elems):
        return [resolve(elems)]

    def expand(i: int, spath: str, acc: list[tuple[str, dict[str, str]]]
               ) -> Iterator[list[tuple[str, dict[str, str]]]]:
        if i == len(elems):
            yield list(acc)
            return
        name, keys = elems[i]
        if name == "*":
            kids = NODES[spath].get("children", []) if spath != "/" else ROOTS
            for cp in kids:
                if NODES[cp]["kind"] != "notification":
                    yield from expand(i + 1, cp, acc + [(NODES[cp]["name"], keys)])
        elif name == "...":
            yield acc + list(elems[i:])
        else:
            cp = child_path(spath, strip_prefix(name))
            if cp not in NODES:
                yield acc + list(elems[i:])  # resolve() names the problem
            else:
                yield from expand(i + 1, cp, acc + [(name, keys)])

    out, first_error = [], None
    for concrete in expand(0, "/", []):
        try:
            out.append(resolve(concrete))
        except (PathError, ValueError_) as e:
            first_error = first_error or e
    if not out:
        raise first_error or PathError(f"{elems_text(tuple((n, ()) for n, _k in elems))}: the wildcard matches nothing")
    return out


def key_text(leaf: dict[str, Any], text: str, where: str) -> str:
    """Canonical text of a key value (validated against the key leaf's type)."""
    v = decode_leaf(leaf, text, where + "/" + leaf["name"], lenient_strings=True)
    return canonical_text(leaf, v)


def canonical_text(leaf: dict[str, Any], v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# ------------------------------------------------------------------ value codecs


@lru_cache(maxsize=512)
def _pattern(p: str) -> re.Pattern[str]:
    # XSD patterns are implicitly anchored; \p{..} blocks are rare in these models
    return re.compile(f"(?:{p})\\Z", re.S)


def _check_ranges(val: Any, ranges: list[list[Any]], what: str, where: str) -> None:
    for lo, hi in ranges:
        lo_v = Decimal(str(lo)) if not isinstance(lo, int) and lo not in ("min",) else lo
        hi_v = Decimal(str(hi)) if not isinstance(hi, int) and hi not in ("max",) else hi
        if (lo_v == "min" or val >= lo_v) and (hi_v == "max" or val <= hi_v):
            return
    raise ValueError_(f"{where}: {what} {val} out of range {' | '.join(f'{a}..{b}' for a, b in ranges)}")


def _identity(t: dict[str, Any], raw: str, where: str) -> str:
    if ":" in raw:
        mod, name = raw.split(":", 1)
        mod = _PREFIX_TO_MODULE.get(mod, mod)
        cand = f"{mod}:{name}"
        if cand in t.get("identities", []):
            return cand
    else:
        hits = [i for i in t.get("identities", []) if i.split(":", 1)[1] == raw]
        if len(hits) == 1:
            return hits[0]
    raise ValueError_(f"{where}: {raw!r} is not an identity derived from {', '.join(t.get('identity_bases', []))}"
                      f" (one of {', '.join(t.get('identities', []))})")


def decode_scalar(t: dict[str, Any], raw: Any, where: str, lenient_strings: bool = False) -> Any:
    """JSON value (or path key text) -> canonical value; ValueError_ naming `where`."""
    base = t.get("base", "string")
    if base == "union":
        errors = []
        for member in t.get("union", []):
            try:
                return decode_scalar(member, raw, where, lenient_strings)
            except ValueError_ as e:
                errors.append(str(e).split(": ", 1)[-1])
        raise ValueError_(f"{where}: {raw!r} matches no member of the union ({'; '.join(errors)})")
    if base in _INT_BASES:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError_(f"{where}: expected {base}, got {type(raw).__name__} {raw!r}")
        if isinstance(raw, str):
            if not re.fullmatch(r"[+-]?\d+", raw.strip()):
                raise ValueError_(f"{where}: expected {base}, got {raw!r}")
            raw = int(raw)
        _check_ranges(raw, t.get("range", []), base, where)
        return raw
    if base == "decimal64":
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError_(f"{where}: expected decimal64, got {type(raw).__name__}")
        try:
            d = Decimal(str(raw))
        except InvalidOperation:
            raise ValueError_(f"{where}: expected decimal64, got {raw!r}") from None
        if not d.is_finite():
            raise ValueError_(f"{where}: decimal64 must be finite, got {raw!r}")
        fd = t.get("fraction_digits", 1)
        q = d.quantize(Decimal(1).scaleb(-fd))
        if q != d:
            raise ValueError_(f"{where}: {raw!r} has more than {fd} fraction digits")
        if abs(q.scaleb(fd)) > 2**63 - 1:
            raise ValueError_(f"{where}: {raw!r} out of decimal64 range")
        if "range" in t:
            _check_ranges(q, t["range"], "decimal64", where)
        return f"{q:.{fd}f}"
    if base == "boolean":
        if isinstance(raw, bool):
            return raw
        if lenient_strings and raw in ("true", "false"):
            return raw == "true"
        raise ValueError_(f"{where}: expected boolean, got {raw!r}")
    if base == "empty":
        if raw in ([None], None, True):
            return True
        raise ValueError_(f"{where}: expected empty ([null]), got {raw!r}")
    if not isinstance(raw, str):
        raise ValueError_(f"{where}: expected {t.get('typedef', base)} (a string), got {type(raw).__name__} {raw!r}")
    if base == "identityref":
        return _identity(t, raw, where)
    if base == "enumeration":
        if raw not in t.get("enums", []):
            raise ValueError_(f"{where}: {raw!r} is not one of {t.get('enums')}")
        return raw
    if base in ("string", "leafref", "binary", "bits", "instance-identifier"):
        if "length" in t:
            _check_ranges(len(raw), t["length"], "length", where)
        for p in t.get("patterns", []):
            if not _pattern(p).match(raw):
                raise ValueError_(f"{where}: {raw!r} does not match the pattern of {t.get('typedef', base)}: {p}")
        return raw
    raise ValueError_(f"{where}: type {base} not supported")


def decode_leaf(leaf: dict[str, Any], raw: Any, where: str, lenient_strings: bool = False) -> Any:
    t = leaf.get("type", {})
    if lenient_strings and isinstance(raw, str) and t.get("base") not in ("string", "union", "identityref",
                                                                         "enumeration", "decimal64", "leafref"):
        if t.get("base") in _INT_BASES and not re.fullmatch(r"[+-]?\d+", raw):
            raise ValueError_(f"{where}: expected {t.get('base')}, got {raw!r}")
    return decode_scalar(t, raw, where, lenient_strings)


def encode_scalar(leaf: dict[str, Any], v: Any, ietf: bool) -> Any:
    """Canonical value -> JSON value (RFC 7951 for JSON_IETF)."""
    t = leaf.get("type", {})
    base = t.get("base")
    if base == "union":
        return v
    if base in INT64:
        return str(v) if ietf else v
    if base == "decimal64":
        return v if ietf else float(v)
    if base == "empty":
        return [None]
    return v
