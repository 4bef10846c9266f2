"""Stage 2, the intermediate schema: one language-neutral tree built from the validated pyang
context. Every data and notification node with its path, kind, type (restrictions resolved
through typedef chains), config/state, keys, default and defining module. Emitters read only
this (and the bindings emitter, pyang's own tree)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .report import Diagnostic, GenerationError

# Implicit ranges of the YANG built-in integer types (RFC 7950 §9.2).
INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint8": (0, 2**8 - 1), "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1),
}
DATA_KINDS = ("container", "list", "leaf", "leaf-list")
_WHEN_EQ = re.compile(r"""^\s*((?:\.\./)*[\w:./-]+?)\s*=\s*(['"])([^'"]*)\2\s*$""")


@dataclass
class Node:
    path: str  # schema path without keys or prefixes: /qkd_node/qkd_links/qkd_link
    name: str  # YANG identifier
    kind: str  # container | list | leaf | leaf-list | notification
    module: str  # defining module (its namespace)
    config: bool
    file: str
    line: int
    description: str = ""
    keys: list[str] = field(default_factory=list)
    type: dict[str, Any] = field(default_factory=dict)
    default: Any = None
    mandatory: bool = False
    presence: bool = False
    when: dict[str, str] | None = None
    children: list[str] = field(default_factory=list)  # child paths, schema order
    notification: str | None = None  # owning notification name, for nodes inside one
    pyname: str = ""  # set by the python-names transform
    unique: str = ""  # short unique name (lists, containers, notifications)

    @property
    def parent_path(self) -> str:
        return self.path.rsplit("/", 1)[0] or "/"

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "name": self.name, "module": self.module, "config": self.config}
        for k in ("keys", "type", "children"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        for k in ("default", "when", "notification"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        for k in ("mandatory", "presence"):
            if getattr(self, k):
                d[k] = True
        d["pyname"] = self.pyname
        if self.unique:
            d["unique"] = self.unique
        if self.description:
            d["description"] = self.description
        return d


@dataclass
class Module:
    name: str
    prefix: str
    namespace: str
    revision: str
    organization: str
    file: str
    identities: dict[str, list[str]]  # "module:identity" -> its bases ("module:identity")


@dataclass
class Schema:
    modules: list[Module]
    nodes: dict[str, Node]  # every node by path, in schema order
    roots: list[str]  # top-level data nodes and notifications

    def children(self, node: Node) -> list[Node]:
        return [self.nodes[c] for c in node.children]

    def ancestors(self, node: Node) -> list[Node]:
        out, p = [], node.parent_path
        while p != "/":
            out.append(self.nodes[p])
            p = self.nodes[p].parent_path
        return out[::-1]

    def resolve_relative(self, node: Node, rel: str) -> Node | None:
        """Resolve a simple relative XPath (`../x`, `x`) as seen from `node`'s context node."""
        # a `when` from `uses` is evaluated with the parent as context node
        base = node.parent_path.split("/")
        for step in rel.split("/"):
            step = step.split(":")[-1]
            if step == "..":
                base = base[:-1]
            elif step not in ("", "."):
                base = base + [step]
        return self.nodes.get("/".join(base) or "/")

    def data_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.notification is None and n.kind in DATA_KINDS]

    def notifications(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "notification"]


# ------------------------------------------------------------------ build from pyang


def _module_name(stmt: Any) -> str:
    m = stmt.i_module
    return getattr(m, "i_including_modulename", None) or m.arg


def _identity_id(ident: Any) -> str:
    return f"{_module_name(ident)}:{ident.arg}"


def _collect_identities(ctx: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for mod in ctx.modules.values():
        for ident in getattr(mod, "i_identities", {}).values():
            out[_identity_id(ident)] = sorted(
                _identity_id(b.i_identity) for b in ident.search("base") if getattr(b, "i_identity", None)
            )
    return out


def _derived(identities: dict[str, list[str]], base: str) -> list[str]:
    def is_derived(i: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(b == base or (b not in seen and is_derived(b, seen | {i})) for b in identities.get(i, []))

    return sorted(i for i in identities if is_derived(i))


def _ranges(arg: str, base: str) -> list[list[Any]]:
    lo_d, hi_d = INT_RANGES.get(base, (None, None))
    out = []
    for part in arg.split("|"):
        bounds = [b.strip() for b in part.split("..")]
        lo, hi = bounds[0], bounds[-1]

        def num(v: str) -> Any:
            if base not in INT_RANGES:  # decimal64 bounds stay exact decimal text
                return v
            if v == "min":
                return lo_d
            if v == "max":
                return hi_d
            return int(v)

        out.append([num(lo), num(hi)])
    return out


def build_type(type_stmt: Any, identities: dict[str, list[str]]) -> dict[str, Any]:
    """Resolve a `type` statement through its typedef chain into one restriction dict."""
    info: dict[str, Any] = {}
    chain = []
    t = type_stmt
    while t is not None:
        chain.append(t)
        td = getattr(t, "i_typedef", None)
        t = td.search_one("type") if td is not None else None
    first = chain[0]
    if ":" in first.arg or getattr(first, "i_typedef", None) is not None:
        td = first.i_typedef
        info["typedef"] = f"{_module_name(td)}:{td.arg}" if td is not None else first.arg
    base_stmt = chain[-1]
    base = base_stmt.arg
    info["base"] = base
    patterns: list[str] = []
    for t in reversed(chain):  # most general first; every level's restrictions apply
        r = t.search_one("range")
        if r is not None:
            info["range"] = _ranges(r.arg, base)
        ln = t.search_one("length")
        if ln is not None:
            info["length"] = _ranges(ln.arg, "uint64")
        patterns += [p.arg for p in t.search("pattern")]
        fd = t.search_one("fraction-digits")
        if fd is not None:
            info["fraction_digits"] = int(fd.arg)
    if base in INT_RANGES and "range" not in info:
        info["range"] = [list(INT_RANGES[base])]
    if patterns:
        info["patterns"] = patterns
    if base == "enumeration":
        info["enums"] = [e.arg for e in base_stmt.search("enum")]
    elif base == "identityref":
        bases = [f"{_module_name(b.i_identity)}:{b.i_identity.arg}" for b in base_stmt.search("base")]
        info["identity_bases"] = bases
        info["identities"] = sorted({i for b in bases for i in _derived(identities, b)})
    elif base == "union":
        info["union"] = [build_type(t, identities) for t in base_stmt.search("type")]
    elif base == "leafref":
        p = base_stmt.search_one("path")
        info["path"] = p.arg if p is not None else ""
    elif base == "bits":
        info["bits"] = [b.arg for b in base_stmt.search("bit")]
    return info


def _description(stmt: Any) -> str:
    d = stmt.search_one("description")
    return " ".join(d.arg.split()) if d is not None else ""


def _when(stmt: Any) -> dict[str, str] | None:
    w = stmt.search_one("when")
    if w is None:
        return None
    m = _WHEN_EQ.match(w.arg)
    if not m:
        return {"xpath": w.arg}
    value = m.group(3)
    if ":" in value:  # prefix -> module name, the RFC 7951 form of an identity
        pfx, name = value.split(":", 1)
        mod = getattr(stmt.i_module, "i_prefixes", {}).get(pfx)
        if mod is not None:
            value = f"{mod[0]}:{name}"
    return {"xpath": w.arg, "leaf": m.group(1), "equals": value}


def build_schema(ctx: Any, modules: list[Any], files: dict[str, str]) -> Schema:
    identities = _collect_identities(ctx)
    nodes: dict[str, Node] = {}
    roots: list[str] = []
    clashes: list[Diagnostic] = []

    def visit(stmt: Any, parent: str, notif: str | None) -> str | None:
        kind = stmt.keyword
        if kind in ("choice", "case"):  # schema-only nodes: their children sit in the data tree
            for c in stmt.i_children:
                visit(c, parent, notif)
            return None
        if kind not in DATA_KINDS and kind != "notification":
            return None
        path = f"{parent.rstrip('/')}/{stmt.arg}"
        mod = _module_name(stmt)
        cfg = getattr(stmt, "i_config", None)
        n = Node(
            path=path, name=stmt.arg, kind=kind, module=mod,
            config=bool(cfg) if notif is None and kind != "notification" else False,
            file=stmt.pos.ref, line=stmt.pos.line, description=_description(stmt),
            notification=notif if kind != "notification" else None,
        )
        if kind == "list":
            k = stmt.search_one("key")
            n.keys = k.arg.split() if k is not None else []
        if kind in ("leaf", "leaf-list"):
            n.type = build_type(stmt.search_one("type"), identities)
            dflt = getattr(stmt, "i_default_str", None)
            if kind == "leaf" and dflt not in (None, ""):
                n.default = dflt
            elif kind == "leaf" and stmt.search_one("default") is not None:
                n.default = stmt.search_one("default").arg
            m = stmt.search_one("mandatory")
            n.mandatory = m is not None and m.arg == "true"
        if kind == "container":
            n.presence = stmt.search_one("presence") is not None
        n.when = _when(stmt)
        prev = nodes.get(path)
        if prev is not None and prev.module != mod:
            # legal YANG (each in its own namespace), but paths, hooks and types name nodes
            # without module prefixes: the second would silently replace the first
            clashes.append(Diagnostic(n.file, n.line, f"{path}: also defined by module {prev.module} "
                                      f"({prev.file}:{prev.line}); rename one of them", "error"))
        nodes[path] = n
        for c in getattr(stmt, "i_children", []):
            cp = visit(c, path, stmt.arg if kind == "notification" else notif)
            if cp:
                n.children.append(cp)
        return path

    mods = []
    for m in modules:
        if m.keyword != "module":
            continue
        rev = m.search_one("revision")
        org = m.search_one("organization")
        mods.append(Module(
            name=m.arg, prefix=m.search_one("prefix").arg, namespace=m.search_one("namespace").arg,
            revision=rev.arg if rev is not None else "", organization=org.arg if org is not None else "",
            file=files.get(m.arg, ""),
            identities={k: v for k, v in identities.items() if k.split(":")[0] == m.arg},
        ))
        for c in m.i_children:
            p = visit(c, "/", None)
            if p:
                roots.append(p)
    if clashes:
        raise GenerationError(clashes)
    return Schema(modules=sorted(mods, key=lambda x: x.name), nodes=nodes, roots=roots)
