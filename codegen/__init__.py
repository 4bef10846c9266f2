"""sdqkd's model-driven code generator: models/ (YANG + proto) -> generated/.

Three stages, in the spirit of ygot: `load` (pyang, grpcio-tools) -> `schema` (one
intermediate tree; fix-ups and renames by plugins) -> `emit` (Jinja2 templates, pyangbind).
"""

from .pipeline import GenerationResult, generate

__all__ = ["GenerationResult", "generate"]
