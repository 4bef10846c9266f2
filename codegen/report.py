"""Diagnostics of a generator run: errors stop it, warnings and fix-ups are printed."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from sdqkd.errors import SdqkdError

LEVELS = ("error", "warning", "fixup", "rename")  # error stops a run; the rest are printed (rename with -v)


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    message: str
    level: str  # "error" | "warning" | "fixup" | "rename"

    def __str__(self) -> str:
        label = {"fixup": "warning: fixed in memory, file unchanged", "rename": "note: renamed"}.get(self.level, self.level)
        where = f"{self.file}:{self.line}" if self.line else self.file  # 0: no line (a folder, a plugin)
        return f"{where}: {label}: {self.message}"


class GenerationError(SdqkdError):
    """A generator run that must not write anything; carries every `file:line: message`."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


@dataclass
class Report:
    items: list[Diagnostic] = field(default_factory=list)

    def add(self, file: str, line: int, message: str, level: str) -> None:
        """One diagnostic at `file:line`; `level` is one of LEVELS (a plugin's typo must not
        hide its message)."""
        if level not in LEVELS:
            raise ValueError(f"report level {level!r} is not one of {', '.join(LEVELS)}")
        self.items.append(Diagnostic(file, line, message, level))

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.level == "error"]

    def raise_if_errors(self) -> None:
        if self.errors():
            raise GenerationError(self.errors())

    def print(self, stream: TextIO | None = None, levels: tuple[str, ...] = ("warning", "fixup")) -> None:
        for d in self.items:
            if d.level in levels:
                print(d, file=stream or sys.stderr)  # (looked up now: a caller may have redirected it)
