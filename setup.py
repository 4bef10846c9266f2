"""Build of the C engine: every folder runtime/engine/csrc/<name>/ becomes the
extension module runtime.engine._<name> (C11). Setuptools stays in pyproject.toml;
this file only lists the extensions, because their set follows the source tree."""

import os
from pathlib import Path

from setuptools import Extension, setup

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
                    f"runtime.engine._{folder.name}",
                    sources=sources,
                    include_dirs=[str(CSRC / folder.name), str(CSRC)],
                    extra_compile_args=cflags,
                    extra_link_args=ldflags,
                )
            )
    return exts


setup(ext_modules=_extensions())
