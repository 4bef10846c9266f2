"""Key stores are private whatever the umask (issue 18, security 1): the data directory is 0700
and keys.sqlite with its -wal and -shm files 0600, also when an older store had looser modes."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
from lkmsnet import LoopThread

from sdqkd.lkms.node import Lkms


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def run_store(lt: LoopThread, d: Path) -> None:
    lkms = Lkms(str(uuid.uuid4()), d, None)
    lt.run(lkms.start())
    try:
        q = str(uuid.uuid4())
        lt.run(lkms.set_link(q, str(uuid.uuid4()), "127.0.0.1:1"))
        lt.run(lkms.add_block(q, os.urandom(64 * 32), 256, "b1"))  # the WAL holds key material now
        for f in ("keys.sqlite", "keys.sqlite-wal", "keys.sqlite-shm"):
            assert mode(d / f) == 0o600, f
        assert mode(d) == 0o700
    finally:
        lt.run(lkms.stop())


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_store_files_are_private_whatever_the_umask(lt: LoopThread, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        run_store(lt, tmp_path / "data")
    finally:
        os.umask(old)


def test_a_store_left_world_readable_is_tightened_at_open(lt: LoopThread, tmp_path: Path) -> None:
    d = tmp_path / "data"
    run_store(lt, d)
    d.chmod(0o755)
    for f in d.iterdir():
        f.chmod(0o644)
    run_store(lt, d)
