"""Benchmarks behind `sdqkd bench NAME`: each module runtime/bench/NAME.py exposes
`main(argv: list[str]) -> int`. Figures are medians of repeated runs, printed as a table,
or as one JSON object with --json. Speed targets are checked here, never in timed tests.
SIGTERM stops a benchmark as Ctrl-C does, cleaning up (runtime/bench/_proc.py); exit code 130."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from sdqkd.bench._proc import sigterm_interrupts


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(name: str, argv: list[str]) -> int:
    if name not in available():
        raise SystemExit(f"sdqkd bench: unknown benchmark {name!r}; choose from {', '.join(available())}")
    try:
        with sigterm_interrupts():
            return int(importlib.import_module(f"{__name__}.{name}").main(argv) or 0)
    except KeyboardInterrupt:
        print(f"sdqkd bench {name}: interrupted", file=sys.stderr)
        return 130
