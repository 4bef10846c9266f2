from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"


def run_gen(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sdqkd.codegen` in another process, as a vendor would run it."""
    return subprocess.run([sys.executable, "-m", "sdqkd.codegen", "--root", str(root), *args],
                          capture_output=True, text=True, cwd=root, timeout=120)


# A vendor's copy of the project installs its own generated/ as `sdqkd.generated`; without
# installing it, the child binds that tree's folder to the name before running `code`.
_BIND_GENERATED = """\
import importlib.util, sys
_spec = importlib.util.spec_from_file_location(
    "sdqkd.generated", {init!r}, submodule_search_locations=[{folder!r}])
import sdqkd
_mod = importlib.util.module_from_spec(_spec)
sys.modules["sdqkd.generated"] = _mod
_spec.loader.exec_module(_mod)
"""


def run_py(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Python in which `sdqkd.generated` is the package of `root`/generated (not the installed one)."""
    folder = root / "generated"
    prelude = _BIND_GENERATED.format(init=str(folder / "__init__.py"), folder=str(folder))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=root,
                          timeout=120)


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}
