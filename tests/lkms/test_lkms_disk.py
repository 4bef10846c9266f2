"""A full disk or a read-only data directory (issue 18): on a small tmpfs mounted for the test
(a real ENOSPC / EROFS from the kernel), ETSI 014 answers 503 naming the cause, nothing wedges,
and the node recovers without a restart when space returns; a node refuses to start on a
read-only data directory with a clear message and no traceback."""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lkmsnet import LoopThread, Net, Pki

from sdqkd.lkms.node import Lkms
from sdqkd.lkms.store_api import StoreUnavailable


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write `path` until the file system is full (ENOSPC)."""
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)


def test_full_disk_answers_503_and_recovers_when_space_returns(lt: LoopThread, tpki: Pki, small_fs: Path) -> None:
    net = Net(lt, tpki, small_fs, {"A": ["a1"], "B": ["b1"]})
    try:
        q = net.phys("A", "B")
        net.app("app1", ("a1", "A"), [("b1", "B")], q)
        net.feed("A", "B", 200)
        a = net.nodes["A"]
        assert isinstance(a, Lkms)
        a.store._ops_since_ckpt = 10**6  # type: ignore[attr-defined]  # the next group checkpoints
        filler = small_fs / "filler"
        fill(filler)
        for _ in range(3):  # every call answers (nothing waits on a dead writer thread)
            r = net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 2})
            assert r.status_code == 503, r.text
            assert r.json()["message"] == f"disk is full: {small_fs / 'A'}"
        assert net.client("a1").get(net.url("A") + "/b1/status").status_code == 200
        with pytest.raises(StoreUnavailable, match="disk is full"):
            net.run(a.store.add_block(q, bytes(64), 256, "while-full"))

        filler.unlink()  # space returns: no restart
        r = net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 2})
        assert r.status_code == 200, r.text
        ids = [{"key_ID": k["key_ID"]} for k in r.json()["keys"]]
        r2 = net.client("b1").post(net.url("B") + "/a1/dec_keys", json={"key_IDs": ids})
        assert r2.status_code == 200 and r2.json() == r.json()
    finally:
        net.close()


def test_read_only_data_dir_is_refused_with_a_clear_message(lt: LoopThread, tpki: Pki, small_fs: Path,
                                                           tmp_path: Path) -> None:
    node_id = str(uuid.uuid4())
    existing = small_fs / "existing"
    lkms = Lkms(node_id, existing, None)  # a store made earlier...
    lt.run(lkms.start())
    lt.run(lkms.stop())
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)  # ...on a disk now read-only
    for d in (existing, small_fs / "fresh"):
        with pytest.raises(StoreUnavailable) as e:
            lt.run(Lkms(node_id, d, None).start())
        assert str(e.value) == f"data directory is read-only: {d}"

    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"id": node_id, "name": "ro", "data_dir": str(existing),
                                   **{k: {"listen": "127.0.0.1:0"} for k in ("gnmi", "etsi014", "etsi004")}}))
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "node", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"data directory is read-only: {existing}" in r.stderr and "Traceback" not in r.stderr, r.stderr
