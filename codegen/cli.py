"""`sdqkd gen [--check] [--root DIR]` and `python -m sdqkd.codegen`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming every out-of-date file")
    p.add_argument("--root", default=".", help="project tree with models/ (default: current directory)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print fix-ups and warnings")
    p.add_argument("-v", "--verbose", action="store_true", help="also print every rename (YANG name -> Python name)")


def run(args: argparse.Namespace) -> int:
    from sdqkd.errors import MissingExtra

    try:
        from .pipeline import generate  # the generator's inputs (pyang, ...) load only for a run
        from .report import GenerationError

        result = generate(args.root, check=args.check)
    except ModuleNotFoundError as e:
        print(MissingExtra("sdqkd gen", "gen", e.name or str(e)), file=sys.stderr)
        return 2
    except GenerationError as e:
        for d in e.diagnostics:
            print(d, file=sys.stderr)
        print(f"sdqkd gen: {len(e.diagnostics)} error(s); nothing written", file=sys.stderr)
        return 2
    if not args.quiet:
        result.report.print(levels=("warning", "fixup", "rename") if args.verbose else ("warning", "fixup"))
    if args.check:
        if result.stale:
            for f in result.stale:
                print(f"out of date: {f}", file=sys.stderr)
            print("sdqkd gen --check: run `sdqkd gen` and commit generated/ with models/", file=sys.stderr)
            return 1
        print(f"generated/ is up to date ({len(result.files)} files, {result.seconds:.2f} s)")
        return 0
    print(f"wrote generated/ ({len(result.files)} files) in {result.seconds:.2f} s")
    note = _installed_elsewhere(Path(args.root))
    if note:
        print(note, file=sys.stderr)
    return 0


def _installed_elsewhere(root: Path) -> str | None:
    """After a run: whether the `sdqkd.generated` Python imports is another copy than the one just
    written (a plain `pip install .` copies it into site-packages; only an editable install reads
    the tree), so that a vendor knows the new bindings are not in use yet."""
    import importlib.util

    spec = importlib.util.find_spec("sdqkd.generated")
    origin = Path(spec.origin).resolve().parent if spec is not None and spec.origin else None
    written = (root / "generated").resolve()
    if origin is None or origin == written:
        return None
    return (f"note: the installed sdqkd.generated is {origin}, not {written}: "
            "pip install . again (or pip install -e . once) to use what was written")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdqkd gen", description="models/ -> generated/")
    add_arguments(p)
    return run(p.parse_args(argv))
