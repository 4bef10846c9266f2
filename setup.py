"""Packaging that follows the source tree, which pyproject.toml alone cannot express:

- one import package, `sdqkd`, mapped from the top-level folders the project keeps:
  runtime/ -> sdqkd, codegen/ -> sdqkd.codegen, generated/ -> sdqkd.generated
  (nothing else lands at the top of site-packages);
- the C engine: every folder runtime/engine/csrc/<name>/ becomes the extension module
  sdqkd.engine._<name> (C11);
- no stale files: pip builds in the source tree and reuses build/lib, so a file since removed
  from the tree (a vendor's dropped proto or plugin output under generated/) would still be
  installed; build_py removes what it no longer copies.

Everything else (metadata, dependencies, extras) stays in pyproject.toml."""

import os
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
CSRC = Path("runtime") / "engine" / "csrc"


def _flags() -> tuple[list[str], list[str]]:
    cflags = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
    ldflags: list[str] = []
    if os.environ.get("SDQKD_SANITIZE"):
        # ASan + UBSan build used by `tox -e sanitize`; abort on the first UB report.
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
        cflags = [f for f in cflags if f != "-O3"] + san
        ldflags += ["-fsanitize=address,undefined"]
    extra = os.environ.get("SDQKD_CFLAGS")
    if extra:
        cflags += extra.split()
    return cflags, ldflags


def _extensions() -> list[Extension]:
    cflags, ldflags = _flags()
    exts = []
    base = HERE / CSRC
    only = set(filter(None, os.environ.get("SDQKD_ONLY", "").split(",")))  # dev: rebuild a subset
    for folder in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        if only and folder.name not in only:
            continue
        sources = sorted(str(CSRC / folder.name / f.name) for f in folder.iterdir() if f.suffix == ".c")
        if sources:
            exts.append(
                Extension(
                    f"sdqkd.engine._{folder.name}",
                    sources=sources,
                    include_dirs=[str(CSRC / folder.name), str(CSRC)],
                    extra_compile_args=cflags,
                    extra_link_args=ldflags,
                )
            )
    return exts


# import package -> source folder; sdqkd.codegen and sdqkd.generated live beside runtime/, not in it
PACKAGE_ROOTS = {"sdqkd": "runtime", "sdqkd.codegen": "codegen", "sdqkd.generated": "generated"}


def _packages() -> list[str]:
    out = []
    for pkg, folder in PACKAGE_ROOTS.items():
        out.append(pkg)
        out += [f"{pkg}.{sub}" for sub in find_packages(where=str(HERE / folder))]
    return sorted(out)


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        copied = {os.path.abspath(p) for p in self.get_outputs(include_bytecode=False)}
        for folder, _dirs, files in os.walk(os.path.join(self.build_lib, "sdqkd")):
            for name in files:
                path = os.path.abspath(os.path.join(folder, name))
                if path not in copied and not name.endswith((".so", ".pyc")):  # C: build_ext's
                    os.remove(path)


setup(packages=_packages(), package_dir=dict(PACKAGE_ROOTS), ext_modules=_extensions(),
      cmdclass={"build_py": BuildPy})
