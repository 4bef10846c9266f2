"""The type gate: mypy over the one import package `sdqkd` (config: [tool.mypy] in pyproject.toml).

`sdqkd` is assembled from three folders (setup.py PACKAGE_ROOTS: runtime/ -> sdqkd,
codegen/ -> sdqkd.codegen, generated/ -> sdqkd.generated). mypy cannot follow setuptools'
editable import hook, so this lays the package out as symbolic links in a temporary directory,
checks it there with `-p sdqkd`, and reports every path as the file in the source tree.
Usage: python .ci/typecheck.py [mypy options]; exit status is mypy's."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"codegen": "codegen", "generated": "generated"}  # sdqkd.<name> -> folder


def link_tree(dest: Path) -> Path:
    """dest/sdqkd: runtime/'s entries, plus codegen/ and generated/ as subpackages."""
    pkg = dest / "sdqkd"
    pkg.mkdir()
    for entry in (ROOT / "runtime").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in SUBPACKAGES.items():
        (pkg / name).symlink_to(ROOT / folder)
    return pkg


def source_path(line: str, pkg: Path) -> str:
    """A mypy line with the link tree's paths turned back into the source tree's."""
    for name, folder in SUBPACKAGES.items():
        line = line.replace(f"{pkg}/{name}/", f"{folder}/")
    return line.replace(f"{pkg}/", "runtime/")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="sdqkd-typecheck-") as tmp:
        pkg = link_tree(Path(tmp))
        os.environ["MYPYPATH"] = tmp
        out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "-p", "sdqkd", *argv])
        sys.stdout.write("".join(source_path(ln, pkg) + "\n" for ln in out.splitlines()))
        sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
