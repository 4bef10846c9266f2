"""The generator's plugin API, in the spirit of pyang's: a plugin is an object with any of
three hooks, each run at one stage of the pipeline.

- ``fixup_module(module, report)``: mend one parsed pyang module in memory before pyang
  validates it (the standard file on disk is never touched); report each correction.
- ``transform(schema, report)``: rename or fix nodes of the intermediate schema in place.
- ``emit(schema) -> dict[str, str]``: extra output files (path under generated/ -> text).

Built-in plugins live in ``sdqkd.codegen.fixups``; third-party ones register under the entry-point
group ``sdqkd.codegen`` and run after the built-ins, in name order.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .report import Report
    from .schema import Schema


@runtime_checkable
class Plugin(Protocol):
    name: str


def has_hook(plugin: Any, hook: str) -> bool:
    return callable(getattr(plugin, hook, None))


def load_plugins() -> list[Any]:
    from . import fixups

    plugins: list[Any] = list(fixups.BUILTIN)
    for ep in sorted(entry_points(group="sdqkd.codegen"), key=lambda e: e.name):
        obj = ep.load()
        plugins.append(obj() if isinstance(obj, type) else obj)
    return plugins


def run_fixups(plugins: list[Any], module: Any, report: Report) -> None:
    for p in plugins:
        if has_hook(p, "fixup_module"):
            p.fixup_module(module, report)


def run_transforms(plugins: list[Any], schema: Schema, report: Report) -> None:
    for p in plugins:
        if has_hook(p, "transform"):
            p.transform(schema, report)
