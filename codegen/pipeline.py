"""Runs the three stages and writes generated/ atomically (or, with check, compares only)."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import emit, load
from .plugin import load_plugins, run_transforms
from .report import GenerationError, Report
from .schema import build_schema

OUT_DIR = "generated"
_IGNORED = ("__pycache__",)


@dataclass
class GenerationResult:
    files: dict[str, str]  # path under generated/ -> text
    report: Report
    stale: list[str] = field(default_factory=list)  # with check: files out of date
    seconds: float = 0.0


def build(root: Path, report: Report) -> dict[str, str]:
    """Stages 1-3 in memory: {path under generated/: text}. Raises GenerationError."""
    plugins = load_plugins()
    loaded = load.load_yang(root, plugins, report)
    protos = load.compile_protos(root, report)
    schema = build_schema(loaded.ctx, loaded.modules, loaded.files)
    run_transforms(plugins, schema, report)
    report.raise_if_errors()
    files = emit.emit_all(schema, loaded, protos, plugins)
    return {k: files[k] for k in sorted(files)}


def _on_disk(out: Path) -> dict[str, bytes]:
    if not out.is_dir():
        return {}
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and not any(part in _IGNORED for part in p.parts) and p.suffix not in (".so", ".pyc")
    }


def generate(root: Path | str = ".", check: bool = False) -> GenerationResult:
    t0 = time.perf_counter()
    root = Path(root).resolve()
    report = Report()
    files = build(root, report)
    out = root / OUT_DIR
    result = GenerationResult(files=files, report=report)
    if check:
        disk = _on_disk(out)
        want = {k: v.encode("utf-8") for k, v in files.items()}
        result.stale = sorted(
            [f"{OUT_DIR}/{k}" for k in want if disk.get(k) != want[k]]
            + [f"{OUT_DIR}/{k} (not generated)" for k in disk if k not in want]
        )
    else:
        _swap_in(root, out, files)
    result.seconds = time.perf_counter() - t0
    return result


def _swap_in(root: Path, out: Path, files: dict[str, str]) -> None:
    """Write to a temporary tree beside generated/, then swap, so a failure leaves it as it was."""
    tmp = Path(tempfile.mkdtemp(prefix=".generated-new-", dir=root))
    try:
        for rel, text in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=".generated-old-", dir=root))
            old.rmdir()
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["GenerationError", "GenerationResult", "generate", "build"]
