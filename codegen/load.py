"""Stage 1, load: pyang parses and validates every module of models/yang (fix-up plugins mend
known quirks of published modules in memory first); protoc (grpcio-tools) compiles models/proto
into Python modules of the `sdqkd.generated.proto` package."""

from __future__ import annotations

import importlib.metadata
import optparse
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyang import context, error, repository

from .plugin import run_fixups
from .report import Report

PROTO_PACKAGE = "sdqkd/generated/proto"  # where protoc output lands, as a Python package path


@dataclass
class Loaded:
    ctx: Any  # pyang Context, validated
    modules: list[Any]  # the modules of models/yang, by file name order
    files: dict[str, str]  # module name -> relative file path (for diagnostics)


def _pyang_bundled_modules() -> list[str]:
    """IETF modules shipped with pyang (ietf-yang-types, ietf-inet-types, ...)."""
    dist = importlib.metadata.distribution("pyang")
    dirs = {str(Path(str(dist.locate_file(f))).resolve().parent) for f in dist.files or [] if str(f).endswith(".yang")}
    return sorted(dirs)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def load_yang(root: Path, plugins: list[Any], report: Report) -> Loaded:
    ydir = root / "models" / "yang"
    files = sorted(p for p in ydir.rglob("*.yang")) if ydir.is_dir() else []
    if not files:
        report.add(_rel(ydir, root), 0, f"no YANG modules found in {ydir} (--root names the project tree that "
                   "holds models/yang; default: the current directory)", "error")
        report.raise_if_errors()
    search = [str(d) for d in sorted({p.parent for p in files})] + _pyang_bundled_modules()
    repo = repository.FileRepository(os.pathsep.join(search), use_env=False)
    ctx = context.Context(repo)
    # Options pyang's own validation and pyangbind read; set here so no CLI parsing is needed.
    ctx.opts = optparse.Values(
        dict(
            use_xpathhelper=False, split_class_dir=None, pybind_interested_exts=[], use_extmethods=False,
            build_rpcs=True, generate_presence=True, build_notifications=False, verbose=False,
        )
    )
    ctx.lax_quote_checks = True
    modules, names = [], {}
    for f in files:
        text = f.read_text(encoding="utf-8")
        m = ctx.add_module(_rel(f, root), text, primary_module=True)
        if m is not None:
            modules.append(m)
            names[m.arg] = _rel(f, root)
    for m in modules:
        run_fixups(plugins, m, report)
    ctx.validate()
    for pos, tag, args in ctx.errors:
        level = "error" if error.is_error(error.err_level(tag)) else "warning"
        # pyang reports unused imports of bundled modules; they are noise for a vendor
        if tag in ("UNUSED_IMPORT", "UNUSED_TYPEDEF", "UNUSED_GROUPING"):
            continue
        report.add(_rel(Path(pos.ref), root) if pos.ref else "?", pos.line or 0, error.err_to_str(tag, args), level)
    report.raise_if_errors()
    ctx.errors = []  # warnings are reported; pyangbind aborts on any entry left here
    return Loaded(ctx=ctx, modules=modules, files=names)


# ---------------------------------------------------------------- protos

_IMPORT_RE = re.compile(r'^(\s*import\s+(?:public\s+|weak\s+)?")([^"]+)(";)', re.M)


def _map_import(imp: str, protos: list[str]) -> str | None:
    """Map an import path onto a file of models/proto: exact match, else the unique file whose
    relative path is the longest suffix of the import (e.g. github.com/openconfig/gnmi/proto/
    gnmi_ext/gnmi_ext.proto -> gnmi/gnmi_ext.proto)."""
    if imp in protos:
        return imp
    parts = imp.split("/")
    for i in range(1, len(parts)):
        suffix = "/".join(parts[i:])
        hits = [p for p in protos if p == suffix or p.endswith("/" + suffix)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            return None
    return None


def _run_capturing_fd2(fn: Any) -> tuple[int, str]:
    """protoc is C++ and writes its diagnostics to file descriptor 2 directly."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            rc = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        buf.seek(0)
        return rc, buf.read().decode("utf-8", "replace")


def compile_protos(root: Path, report: Report) -> dict[str, str]:
    """Compile every models/proto/**/*.proto; return {path under generated/: text}."""
    from grpc_tools import protoc  # heavy import, only when generating

    pdir = root / "models" / "proto"
    protos = sorted(str(p.relative_to(pdir)) for p in pdir.rglob("*.proto")) if pdir.is_dir() else []
    if not protos:
        return {}
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sdqkd-proto-") as tmp:
        stage = Path(tmp) / "in"
        dest = Path(tmp) / "out"
        dest.mkdir()
        for rel in protos:
            text = (pdir / rel).read_text(encoding="utf-8")

            def repl(m: re.Match[str], rel: str = rel, text: str = text) -> str:
                imp = m.group(2)
                if imp.startswith("google/protobuf/"):
                    return m.group(0)
                target = _map_import(imp, protos)
                line = text[: m.start()].count("\n") + 1
                if target is None:
                    report.add(f"models/proto/{rel}", line, f"import {imp!r} matches no file of models/proto", "error")
                    return m.group(0)
                if target != imp:
                    report.add(f"models/proto/{rel}", line, f"import {imp!r} mapped to models/proto/{target}", "fixup")
                return f"{m.group(1)}{PROTO_PACKAGE}/{target}{m.group(3)}"

            staged = _IMPORT_RE.sub(repl, text)
            (stage / PROTO_PACKAGE / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / PROTO_PACKAGE / rel).write_text(staged, encoding="utf-8")
        report.raise_if_errors()
        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{stage}", f"-I{include}", f"--python_out={dest}", f"--pyi_out={dest}",
                f"--grpc_python_out={dest}"] + [f"{PROTO_PACKAGE}/{rel}" for rel in protos]
        rc, err = _run_capturing_fd2(lambda: protoc.main(args))
        if rc != 0:
            for line in (err or "protoc failed").splitlines():
                m = re.match(r"(.+?\.proto):(\d+):(?:\d+:)?\s*(.*)", line)
                if m:
                    file = m.group(1).replace(f"{stage}/", "").replace(PROTO_PACKAGE + "/", "models/proto/")
                    report.add(file, int(m.group(2)), m.group(3), "error")
                else:
                    report.add("models/proto", 0, line, "error")
            report.raise_if_errors()
        for f in sorted(dest.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(dest / "sdqkd" / "generated"))] = f.read_text(encoding="utf-8")
    return out
