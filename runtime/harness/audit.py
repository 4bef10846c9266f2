"""A permissions audit of a network's state dir: which files hold a secret yet are readable
by other users. Used by the tests over a whole `sdqkd net up` state dir.

Public by nature (may be readable): certificates (*.pem) and the JSON descriptions, status
and readiness files, which hold addresses, IDs and file paths only. Every other file is
treated as secret and must grant nothing to group or others; besides, no file that others
can read may contain a private key or one of the `secrets` given (e.g. the gNMI password)."""

from __future__ import annotations

import stat
from pathlib import Path

PUBLIC_NAMES = {"network.json", "endpoints.json", "controller-status.json", "pids.json", "ready.json", "netns.json"}


def _public(p: Path) -> bool:
    return p.suffix == ".pem" or p.name in PUBLIC_NAMES


def exposed(state: Path, secrets: tuple[str, ...] = ()) -> list[str]:
    """Problems found under `state`, one line each ("PATH: mode 0644, holds a secret")."""
    problems: list[str] = []
    for p in [state, *sorted(state.rglob("*"))]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        if p.is_symlink():
            continue
        if p.is_dir():
            if mode & 0o077:
                problems.append(f"{p}: directory mode {mode:04o}, expected 0700")
            continue
        open_to_others = bool(mode & 0o077)
        if not open_to_others:
            continue
        if not _public(p):
            problems.append(f"{p}: mode {mode:04o}, holds a secret (expected 0600)")
            continue
        data = p.read_bytes()
        if b"PRIVATE KEY" in data or any(s.encode() in data for s in secrets if s):
            problems.append(f"{p}: mode {mode:04o}, contains a secret")
    return problems
