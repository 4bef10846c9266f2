"""The generator's plugin API, in the spirit of pyang's: a plugin is an object with any of
three hooks, each run at one stage of the pipeline.

- ``fixup_module(module, report)``: mend one parsed pyang module in memory before pyang
  validates it (the standard file on disk is never touched); report each correction.
- ``transform(schema, report)``: rename or fix nodes of the intermediate schema in place.
- ``emit(schema) -> dict[str, str]``: extra output files (relative path under generated/ ->
  text); a path that leaves generated/ or names a file the generator writes is refused.

A hook that raises stops the run with one message naming the plugin and the hook; nothing is
written. A rename made in ``transform`` reaches every output built from the schema (paths,
model types, hooks, client, RESTCONF map, schema index), not the pyangbind bindings, which
pyangbind builds from pyang's tree.

Built-in plugins live in ``sdqkd.codegen.fixups``; third-party ones register under the entry-point
group ``sdqkd.codegen`` and run after the built-ins, in name order.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .report import Diagnostic, GenerationError

if TYPE_CHECKING:
    from .report import Report
    from .schema import Schema

R = TypeVar("R")


@runtime_checkable
class Plugin(Protocol):
    name: str


def has_hook(plugin: Any, hook: str) -> bool:
    return callable(getattr(plugin, hook, None))


def plugin_name(plugin: Any) -> str:
    return str(getattr(plugin, "name", None) or type(plugin).__name__)


def call_hook(plugin: Any, hook: str, fn: Callable[..., R], *args: Any) -> R:
    """A plugin's hook; its failure stops the run with one message naming the plugin and the
    hook (a plugin's bug, not the user's model: no traceback, nothing written)."""
    try:
        return fn(*args)
    except GenerationError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of third-party code, reported as such
        where = f"plugin {plugin_name(plugin)!r}"
        raise GenerationError([Diagnostic(where, 0, f"{hook} failed: {type(e).__name__}: {e}", "error")]) from e


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
            call_hook(p, "fixup_module", p.fixup_module, module, report)


def run_transforms(plugins: list[Any], schema: Schema, report: Report) -> None:
    for p in plugins:
        if has_hook(p, "transform"):
            call_hook(p, "transform", p.transform, schema, report)
