"""Reading the project's YAML files (node configs, topologies) with one kind of error message.

A file is parsed twice by PyYAML: once into plain data, once into its node tree, from which
`Lines` keeps the line of every mapping key and list item, so that a problem found later (by the
schema in `sdqkd.schemas`, or a cross-reference check) can be reported as `FILE:LINE: where:
what`. Duplicate keys in one mapping, which PyYAML silently resolves to the last, are refused
here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]


class Lines:
    """Line numbers (1-based) of the places in one YAML document, by path of keys and indexes."""

    def __init__(self, source: str, lines: dict[Loc, int] | None = None):
        self.source = source
        self._lines = lines or {}

    def at(self, loc: Loc) -> int | None:
        """The line of `loc`, or of its nearest enclosing place that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self._lines:
                return self._lines[loc]
            loc = loc[:-1]
        return None

    def where(self, loc: Loc) -> str:
        """`FILE:LINE` for `loc` (just `FILE` when the data did not come from a file)."""
        line = self.at(loc)
        return f"{self.source}:{line}" if line else self.source


def _walk(node: yaml.Node, loc: Loc, out: dict[Loc, int], dups: list[str], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            here = (*loc, k)
            if k in seen:
                dups.append(f"{source}:{key.start_mark.line + 1}: {dotted(here)}: duplicate key")
            seen.add(k)
            out[here] = key.start_mark.line + 1
            _walk(value, here, out, dups, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*loc, i)] = item.start_mark.line + 1
            _walk(item, (*loc, i), out, dups, source)


def dotted(loc: Loc) -> str:
    """`links[0].km` for ("links", 0, "km")."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if part.replace("_", "").replace("-", "").isalnum() else repr(part)
            out += f".{name}" if out else name
    return out


def read_yaml_lines(path: str | Path, error: type[Exception]) -> tuple[Any, Lines]:
    """The document in `path` and its line map; `error("FILE:LINE: what is wrong")` when it cannot
    be read, is not YAML, or repeats a key in one mapping."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise error(f"{p}: cannot read (not UTF-8 text: {e.reason})") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise error(f"{at}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None
    lines: dict[Loc, int] = {}
    dups: list[str] = []
    if root is not None:
        _walk(root, (), lines, dups, str(p))
    if dups:
        raise error("\n".join(dups))
    return data, Lines(str(p), lines)


def read_yaml(path: str | Path, error: type[Exception]) -> Any:
    """The document in `path`; `error("FILE: what is wrong")` when it cannot be read or parsed."""
    return read_yaml_lines(path, error)[0]
