"""One root for the project's errors: every exception class sdqkd defines on purpose derives
from `sdqkd.errors.SdqkdError`, so a caller can tell a refusal from a bug."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import sdqkd
from sdqkd.errors import SdqkdError

# modules that need an optional extra or root to import are still scanned when importable
_INTERNAL = {"_Rollback"}  # a private control-flow signal inside one store transaction


def _modules() -> list[str]:
    names = ["sdqkd.codegen.report", "sdqkd.generated.agent_skeleton"]
    for info in pkgutil.walk_packages(sdqkd.__path__, "sdqkd."):
        if not info.name.split(".")[-1].startswith("_"):
            names.append(info.name)
    return names


def test_every_project_exception_derives_from_the_root() -> None:
    found, outside = [], []
    for name in _modules():
        try:
            mod = importlib.import_module(name)
        except ImportError:  # an optional extra not installed here
            continue
        for cls_name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__ or not issubclass(cls, BaseException) or cls_name in _INTERNAL:
                continue
            found.append(cls_name)
            if not issubclass(cls, SdqkdError):
                outside.append(f"{name}.{cls_name}")
    assert len(found) > 20 and outside == []
