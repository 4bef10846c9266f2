"""Built-in plugins: fix-ups of known quirks in published modules, and the renames that turn
YANG names into Python identifiers. Every correction is reported with file and line."""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from typing import Any

from .report import Report
from .schema import Node, Schema

_QUOTED_QNAME = re.compile(r"""(['"])([A-Za-z_][\w.-]*):([A-Za-z_][\w.-]*)\1""")


def _walk(stmt: Any) -> Iterator[Any]:
    yield stmt
    for s in stmt.substmts:
        yield from _walk(s)


class WhenPrefixFix:
    """XPath literals in `when`/`must` that name an identity with the *module name* where the
    import *prefix* belongs (ETSI GS QKD 015 2022-01-30 writes 'etsi-qkd-node-types:VIRT'):
    rewrite to the prefix, in memory, before pyang validates."""

    name = "when-prefix"

    def fixup_module(self, module: Any, report: Report) -> None:
        own = module.search_one("prefix")
        prefixes = {own.arg} if own is not None else set()
        by_module = {module.arg: own.arg if own is not None else module.arg}
        for imp in module.search("import"):
            p = imp.search_one("prefix")
            if p is not None:
                prefixes.add(p.arg)
                by_module[imp.arg] = p.arg
        for st in _walk(module):
            if st.keyword not in ("when", "must") or not isinstance(st.arg, str):
                continue

            def repl(m: re.Match[str], st: Any = st) -> str:
                q, pfx, name = m.groups()
                if pfx in prefixes or pfx not in by_module:
                    return m.group(0)
                fixed = f"{q}{by_module[pfx]}:{name}{q}"
                report.add(st.pos.ref, st.pos.line,
                           f"{st.keyword} {m.group(0)}: module name used as prefix, read as {fixed}", "fixup")
                return fixed

            st.arg = _QUOTED_QNAME.sub(repl, st.arg)


class QualifyWhenIdentities:
    """A `when` comparing an identityref leaf with an unqualified identity ('PHYS') is read as
    the identity of the leaf's base module, so RFC 7951 qualified values satisfy it too."""

    name = "when-identity"

    def transform(self, schema: Schema, report: Report) -> None:
        for node in schema.nodes.values():
            cond = node.when
            if cond is None or ":" in cond.get("equals", ":"):
                continue
            target = schema.resolve_relative(node, cond["leaf"])
            if target is None or target.type.get("base") != "identityref":
                continue
            for ident in target.type.get("identities", []):
                if ident.split(":", 1)[1] == cond["equals"]:
                    report.add(node.file, node.line,
                               f"when on {node.path}: identity {cond['equals']!r} read as {ident!r}", "fixup")
                    cond["equals"] = ident
                    break


class PythonNames:
    """YANG names to Python identifiers (hyphen -> underscore, keywords get a trailing `_`),
    plus a unique short name per list/container/notification for hooks, methods and types."""

    name = "python-names"

    def transform(self, schema: Schema, report: Report) -> None:
        for node in schema.nodes.values():
            py = node.name.replace("-", "_").replace(".", "_")
            if keyword.iskeyword(py) or py in ("path", "self"):
                py += "_"
            if py != node.name:
                report.add(node.file, node.line, f"{node.path}: Python name {py!r}", "rename")
            node.pyname = py
        # siblings must stay distinct after renaming
        for node in list(schema.nodes.values()):
            seen: dict[str, Node] = {}
            for child in schema.children(node):
                other = seen.get(child.pyname)
                if other is not None:
                    # two modules may augment the same name into one place (each in its namespace)
                    report.add(child.file, child.line,
                               f"{child.path}: Python name {child.pyname!r} collides with {other.path} of "
                               f"{other.file}:{other.line}; rename one of them", "error")
                seen[child.pyname] = child
        self._unique(schema)

    @staticmethod
    def _unique(schema: Schema) -> None:
        """Shortest suffix of the Python path that is unique among the data tree's lists and
        containers (qkd_link, qkdl_local, ...); nodes inside a notification are named after
        it (sdqkdn_link_down_qkd_link) so they never take a data node's name."""
        named = [n for n in schema.nodes.values() if n.kind in ("container", "list", "notification")]
        data = [n for n in named if n.notification is None and n.kind != "notification"]
        chains = {n.path: [a.pyname for a in schema.ancestors(n)] + [n.pyname] for n in data}
        depth = {p: 1 for p in chains}
        while True:
            names: dict[str, list[str]] = {}
            for p, chain in chains.items():
                names.setdefault("_".join(chain[-depth[p]:]), []).append(p)
            clashes = [ps for ps in names.values() if len(ps) > 1]
            grew = False
            for ps in clashes:
                for p in ps:
                    if depth[p] < len(chains[p]):
                        depth[p] += 1
                        grew = True
            if not grew:
                break
        for n in data:
            n.unique = "_".join(chains[n.path][-depth[n.path]:])
        for n in named:
            if n not in data:
                n.unique = "_".join([a.pyname for a in schema.ancestors(n)] + [n.pyname])


def _typed_node(n: Node) -> bool:
    return n.kind in ("leaf", "leaf-list")


BUILTIN: list[Any] = [WhenPrefixFix(), QualifyWhenIdentities(), PythonNames()]
