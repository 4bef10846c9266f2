"""`sdqkd gen [--check] [--root DIR]` and `python -m sdqkd.codegen`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming every out-of-date file")
    p.add_argument("--root", default=".", help="project tree with models/ (default: current directory)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print fix-ups and warnings")


def run(args: argparse.Namespace) -> int:
    from .pipeline import generate  # the generator's inputs (pyang, ...) load only for a run
    from .report import GenerationError

    try:
        result = generate(args.root, check=args.check)
    except GenerationError as e:
        for d in e.diagnostics:
            print(d, file=sys.stderr)
        print(f"sdqkd gen: {len(e.diagnostics)} error(s); nothing written", file=sys.stderr)
        return 2
    if not args.quiet:
        result.report.print()
    if args.check:
        if result.stale:
            for f in result.stale:
                print(f"out of date: {f}", file=sys.stderr)
            print("sdqkd gen --check: run `sdqkd gen` and commit generated/ with models/", file=sys.stderr)
            return 1
        print(f"generated/ is up to date ({len(result.files)} files, {result.seconds:.2f} s)")
        return 0
    print(f"wrote generated/ ({len(result.files)} files) in {result.seconds:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdqkd gen", description="models/ -> generated/")
    add_arguments(p)
    return run(p.parse_args(argv))
