"""Private files and directories: secrets (keys, key stores, passwords, configs that hold one)
are never readable by other users, whatever the process umask.

Directories are 0700 and files 0600. A file is created with mode 0600 from its first byte
(`os.open(..., 0o600)`, then `fchmod`, since the umask can only remove bits and an existing
file keeps its old mode), written to a temporary name beside the target and renamed over it,
so readers never see a half-written file and nobody can open it in between with wider rights.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path | str) -> Path:
    """Create `path` and the parents it lacks, each 0700 (mkdir's `parents` would give them the
    umask's mode), and make `path` itself 0700."""
    p = Path(path)
    missing = [d for d in (p, *p.parents) if not d.exists()]
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)
    os.chmod(p, DIR_MODE)
    return p


def private_file(path: Path | str) -> Path:
    """Create `path` empty if missing; in any case make it 0600 (its content is kept)."""
    p = Path(path)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return p


def write_private(path: Path | str, data: bytes | str) -> Path:
    """Write `data` to `path` as a 0600 file (atomically: temporary file, then rename)."""
    p = Path(path)
    if not p.parent.exists():
        private_dir(p.parent)
    raw = data.encode() if isinstance(data, str) else data
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, p)
    return p


def open_private_append(path: Path | str) -> int:
    """A 0600 file opened for appending (a log); returns the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd
