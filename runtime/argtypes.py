"""argparse value types that refuse an out-of-range number before anything starts.

`sdqkd bench link --pairs 0` measured no pair and printed `"ok": false`; `--rtt abc` ended in a
traceback; `--seconds -1` ran a network for nothing. With these types argparse answers
`sdqkd bench link: error: argument --pairs: must be an integer >= 1, not '0'` (exit 2), the
convention of every other bad option. NaN and infinities are refused too.

    ap.add_argument("--pairs", type=integer(1))
    ap.add_argument("--warmup", type=number(0))                # >= 0
    ap.add_argument("--seconds", type=number(0, strict=True))  # > 0
    ap.add_argument("--rtt", type=numbers(0, strict=True))     # "1,5,20" -> [1.0, 5.0, 20.0]; "" -> []
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(lo: int) -> Callable[[str], int]:
    """An integer >= lo."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, not {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, not {text!r}")
        return v

    return parse


def number(lo: float, *, strict: bool = False) -> Callable[[str], float]:
    """A finite number >= lo (> lo with `strict`)."""
    want = f"a number {'>' if strict else '>='} {lo:g}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, not {text!r}") from None
        if not math.isfinite(v) or v < lo or (strict and v == lo):
            raise argparse.ArgumentTypeError(f"must be {want}, not {text!r}")
        return v

    return parse


def numbers(lo: float, *, strict: bool = False) -> Callable[[str], list[float]]:
    """A comma-separated list of such numbers (empty items skipped, so "" is the empty list)."""
    one = number(lo, strict=strict)

    def parse(text: str) -> list[float]:
        out = []
        for item in text.split(","):
            if item.strip():
                try:
                    out.append(one(item.strip()))
                except argparse.ArgumentTypeError as e:
                    raise argparse.ArgumentTypeError(f"each of {text!r} {e}") from None
        return out

    return parse
