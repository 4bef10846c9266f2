"""Packaging contract: one import package, `sdqkd`, mapped from the top-level folders
runtime/, codegen/ and generated/; nothing else at the top of site-packages. And what
`pip install .` puts there: every data file the code reads at run time, and nothing the tree no
longer has.

setuptools copies only the package data pyproject.toml names; a file it leaves out works in the
editable install the tests use and breaks in a plain one (the generator's templates did:
`sdqkd gen` failed after `pip install .`). The check runs the steps of `pip install` that
decide and copy the Python side (`egg_info`, `build_py`; no compiler needed) on a clean copy of
the tree: a stale `*.egg-info` in a working tree lists files the config no longer names."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
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


PACKAGE_ROOTS = {"runtime": "sdqkd", "codegen": "sdqkd/codegen", "generated": "sdqkd/generated"}  # as setup.py maps them
NOT_SHIPPED = {".py", ".pyc", ".so", ".c", ".h"}  # sources are copied by rule; C is compiled, not shipped


def _data_files() -> dict[str, Path]:
    out = {}
    for folder, target in PACKAGE_ROOTS.items():
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and f.suffix not in NOT_SHIPPED and "__pycache__" not in f.parts:
                out[f"{target}/{f.relative_to(ROOT / folder)}"] = f
    return out


def _clean_copy(src: Path) -> None:
    """The files a clone has that packaging reads (no build folders, no *.egg-info, no *.so)."""
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGE_ROOTS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))


def test_the_sdist_holds_every_c_file_its_build_needs(tmp_path: Path) -> None:
    """`pip install sdqkd-*.tar.gz` compiles the engine from the sdist: setup.py names the .c
    files, MANIFEST.in the headers they include (without it the build stopped at cascade_core.h)."""
    src, dist = tmp_path / "src", tmp_path / "dist"
    src.mkdir()
    _clean_copy(src)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=src, check=True,
                   capture_output=True)
    (archive,) = dist.glob("sdqkd-*.tar.gz")
    with tarfile.open(archive) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    needed = {str(f.relative_to(ROOT)) for f in (ROOT / "runtime/engine/csrc").rglob("*") if f.suffix in (".c", ".h")}
    assert any(n.endswith(".h") for n in needed)
    assert not sorted(needed - names), f"not in the sdist: {sorted(needed - names)}"


def test_every_data_file_of_the_packages_is_installed(tmp_path: Path) -> None:
    data = _data_files()
    assert any(name.endswith(".j2") for name in data) and any(name.endswith("py.typed") for name in data)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _clean_copy(src)
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "build_py", "-d", str(out)], cwd=src, check=True,
                   capture_output=True)
    missing = sorted(name for name in data if not (out / name).is_file())
    assert not missing, f"not installed by `pip install .` (add to [tool.setuptools.package-data]): {missing}"
    shipped_c = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.suffix in (".c", ".h"))
    assert not shipped_c, f"C sources installed (they are compiled, not shipped): {shipped_c}"

    # pip builds in the tree and reuses its build folder: a file removed since must not linger
    (src / "generated" / "vendor_extra.py").write_text("X = 1\n")
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(out)], cwd=src, check=True,
                   capture_output=True)
    assert (out / "sdqkd/generated/vendor_extra.py").is_file()
    (src / "generated" / "vendor_extra.py").unlink()
    (out / "sdqkd/engine/_fake.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")  # build_ext's, kept
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(out)], cwd=src, check=True,
                   capture_output=True)
    assert not (out / "sdqkd/generated/vendor_extra.py").exists()
    assert (out / "sdqkd/engine/_fake.cpython-311-x86_64-linux-gnu.so").exists()
    assert not [name for name in data if not (out / name).is_file()]
