"""sdqkd's model-driven code generator: models/ (YANG + proto) -> generated/.

Three stages, in the spirit of ygot: `load` (pyang, grpcio-tools) -> `schema` (one
intermediate tree; fix-ups and renames by plugins) -> `emit` (Jinja2 templates, pyangbind).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import GenerationResult, generate

__all__ = ["GenerationResult", "generate"]


def __getattr__(name: str) -> Any:
    """The pipeline (and the generator's inputs, the `gen` extra) load on first use, so that
    `sdqkd --help` and every other command work on a node installed without them."""
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'codegen' has no attribute {name!r}")
