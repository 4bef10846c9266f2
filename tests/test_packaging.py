"""Packaging contract: one import package, `sdqkd`, mapped from the top-level folders
runtime/, codegen/ and generated/; nothing else at the top of site-packages."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_only_sdqkd_is_a_top_level_name(tmp_path: Path) -> None:
    top = importlib.metadata.distribution("sdqkd").read_text("top_level.txt") or ""
    assert top.split() == ["sdqkd"]
    for old in ("runtime", "generated", "codegen"):
        r = _py(f"import {old}", tmp_path)  # a neutral directory: only what is installed counts
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (old, r.stderr)


def test_folders_map_onto_subpackages(tmp_path: Path) -> None:
    r = _py("import sdqkd, sdqkd.codegen, sdqkd.generated, sdqkd.engine._pa as pa; "
            "print(sdqkd.__file__); print(sdqkd.codegen.__file__); print(sdqkd.generated.__file__); "
            "print(pa.__name__)", tmp_path)
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert Path(paths[0]).parent.name in ("runtime", "sdqkd")  # editable: the source folder
    assert Path(paths[1]).parent.name == "codegen"
    assert Path(paths[2]).parent.name == "generated"
    assert paths[3] == "sdqkd.engine._pa"
