"""Benchmarks behind `sdqkd bench NAME`: each module runtime/bench/NAME.py exposes
`main(argv: list[str]) -> int`; modules named `_*` are what they share (timing, processes,
relays, the pipelining ETSI 004 client), not benchmarks. Figures are medians of repeated runs,
printed as a table, or as one JSON object with --json. Speed targets are checked here, never in
timed tests. SIGTERM stops a benchmark as Ctrl-C does, cleaning up (runtime/bench/_proc.py);
exit code 130. Numeric options take their types from runtime/argtypes.py, so that a value out of
range is a usage error before anything runs (tests/test_argtypes.py lists one per benchmark)."""

from __future__ import annotations

import importlib
import pkgutil
import sys


def available() -> list[str]:
    """The runnable benchmarks, sorted (helpers are `_*`)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(name: str, argv: list[str]) -> int:
    """Run benchmark `name` with its own options; 2 (usage error) for a name that is not one."""
    from sdqkd.bench._proc import sigterm_interrupts  # (not at import: `sdqkd --help` lists the benchmarks)

    known = available()
    if name not in known:
        print(f"sdqkd bench: unknown benchmark {name!r}; the benchmarks are: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        with sigterm_interrupts():
            return int(importlib.import_module(f"{__name__}.{name}").main(argv) or 0)
    except KeyboardInterrupt:
        print(f"sdqkd bench {name}: interrupted", file=sys.stderr)
        return 130
