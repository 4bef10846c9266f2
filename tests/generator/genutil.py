from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"


def run_gen(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m codegen` in another process, as a vendor would run it."""
    return subprocess.run([sys.executable, "-m", "codegen", "--root", str(root), *args],
                          capture_output=True, text=True, cwd=root, timeout=120)


def run_py(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Python with `root` first on sys.path, so `generated` is that tree's package."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=120)


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}
