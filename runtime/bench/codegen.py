"""`sdqkd bench codegen`: full regeneration time of generated/ (the whole pipeline: pyang,
pyangbind, protoc, schema, templates), as a library call and as the `sdqkd gen` command, and
the import time of the generated package in a fresh interpreter. Targets: regeneration <= 3 s,
import <= 0.3 s."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdqkd.argtypes import integer

IMPORT_ALL = ("import sdqkd.generated.schema, sdqkd.generated.paths, sdqkd.generated.client, sdqkd.generated.agent_skeleton, "
              "sdqkd.generated.model_types, sdqkd.generated.bindings, sdqkd.generated.proto.gnmi.gnmi_pb2_grpc, "
              "sdqkd.generated.proto.sdqkd.etsi004_pb2_grpc, sdqkd.generated.proto.sdqkd.kms_pb2_grpc")


def _import_seconds(root: Path) -> float:
    code = f"import time; t = time.perf_counter(); {IMPORT_ALL}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": ""})
    return float(out.stdout.strip())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sdqkd bench codegen")
    ap.add_argument("--runs", type=integer(1), default=7)
    ap.add_argument("--root", default=".", help="project tree with models/ (default: current directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from sdqkd.codegen import generate

    src = Path(args.root).resolve()
    if not (src / "models").is_dir():
        raise SystemExit(f"sdqkd bench codegen: no models/ under {src}")
    with tempfile.TemporaryDirectory(prefix="sdqkd-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(src / "models", root / "models")
        lib, cmd, imp = [], [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            generate(root)
            lib.append(time.perf_counter() - t)
        for _ in range(args.runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-P", "-m", "sdqkd.codegen", "-q", "--root", str(root)], check=True,
                           capture_output=True)
            cmd.append(time.perf_counter() - t)
        _import_seconds(root)  # first import writes __pycache__, as any installed package has
        for _ in range(args.runs):
            imp.append(_import_seconds(root))
    fig = {
        "regen_library_s_median": round(statistics.median(lib), 3),
        "regen_command_s_median": round(statistics.median(cmd), 3),
        "import_generated_s_median": round(statistics.median(imp), 3),
        "runs": args.runs,
        "targets": {"regen_s": 3.0, "import_s": 0.3},
    }
    fig["regen_ok"] = fig["regen_command_s_median"] <= 3.0
    fig["import_ok"] = fig["import_generated_s_median"] <= 0.3
    if args.json:
        print(json.dumps(fig))
    else:
        print(f"regeneration (library call)      median {fig['regen_library_s_median']:.3f} s")
        print(f"regeneration (`sdqkd gen` process) median {fig['regen_command_s_median']:.3f} s   target <= 3 s")
        print(f"import of the generated package   median {fig['import_generated_s_median']:.3f} s   target <= 0.3 s")
        print(f"({args.runs} runs each)")
    return 0 if fig["regen_ok"] and fig["import_ok"] else 1
