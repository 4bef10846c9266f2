"""The registration and engine API of `Lkms` (what the agent and the engine call)."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lkmsnet import LoopThread, Net, Pki

from sdqkd.lkms.core import Limits
from sdqkd.lkms.node import Lkms


@pytest.fixture(scope="module")
def small(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = Net(lt, tpki, tmp_path_factory.mktemp("small"), {"A": ["sa"], "B": ["sb"]},
              limits=Limits(max_key_count=64))
    q = net.phys("A", "B")
    net.app("appS", ("sa", "A"), [("sb", "B")], q)
    yield net
    net.close()


def test_back_pressure_and_stats(small: Net) -> None:
    a = small.nodes["A"]
    q = small.links[frozenset(("A", "B"))]
    assert a.has_room(q)
    small.feed("A", "B", 64)
    assert not a.has_room(q)

    async def wait_room() -> bool:
        waiter = asyncio.ensure_future(a.wait_for_room(q))
        await asyncio.sleep(0)
        return waiter.done()

    assert small.run(wait_room()) is False
    waiter = asyncio.run_coroutine_threadsafe(a.wait_for_room(q), small.lt.loop)
    r = small.client("sa").post(small.url("A") + "/sb/enc_keys", json={"number": 2})
    assert r.status_code == 200
    waiter.result(10)  # released by the delivery (no timing assumption: it just has to happen)
    st = a.key_store_stats()
    assert st["max-key-count"] == 64 and st["stored-keys"] == 62 and st["stored-bits"] == 62 * 256
    assert st["pool"] == [{"qkdl-id": q, "stored-keys": 62, "stored-bits": 62 * 256, "delivered-keys": 2}]
    stats = a.app_stats("appS")
    assert stats["app_status"] == "ON" and stats["consumed_bits"] == 512 and stats["consumed_keys"] == 2
    assert stats["creation_time"].endswith("Z") and stats["statistics"][0]["consumed_bits"] == 512


def test_a_pair_gone_at_the_slaves_node_is_refused_with_why_and_keys_kept(small: Net) -> None:
    """The slave's node let go of the pair (it idled out there) before the master's node did: the
    master's request is 503 naming why, and no key of either pool is used up."""
    a, b = small.nodes["A"], small.nodes["B"]
    if a.key_store_stats()["stored-keys"] < 2:  # (run alone)
        small.feed("A", "B", 2)
    before = (a.key_store_stats()["stored-keys"], b.key_store_stats()["stored-keys"])
    b.unregister_app("appS")
    try:
        r = small.client("sa").post(small.url("A") + "/sb/enc_keys", json={"number": 1})
        assert r.status_code == 503, r.text
        assert r.json()["message"] == ("peer KMS refused the reservation: the SAE pair is not registered for this link "
                                       "at the slave SAE's node (disconnected there, or not provisioned yet)")
        assert (a.key_store_stats()["stored-keys"], b.key_store_stats()["stored-keys"]) == before
    finally:
        small.app("appS", ("sa", "A"), [("sb", "B")], small.links[frozenset(("A", "B"))])
    r = small.client("sa").post(small.url("A") + "/sb/enc_keys", json={"number": 1})
    assert r.status_code == 200, r.text


def test_unregister_and_remove_link(small: Net) -> None:
    q = small.links[frozenset(("A", "B"))]
    for n in small.nodes.values():
        n.unregister_app("appS")
    assert small.client("sa").get(small.url("A") + "/sb/enc_keys").status_code == 400
    with pytest.raises(KeyError):
        small.nodes["A"].app_stats("appS")
    for n in small.nodes.values():
        small.run(n.remove_link(q))
        assert n.store.pool_stats(q) is None and small.states("A", q) == {}
    with pytest.raises(KeyError):
        small.run(small.nodes["A"].add_block(q, bytes(32), 256, "late"))


def test_link_arguments_are_checked(small: Net) -> None:
    a = small.nodes["A"]
    with pytest.raises(ValueError):
        small.run(a.set_link("x", "far", "127.0.0.1:1", kind="VIRT", next_hops=["mid", "elsewhere"]))
    with pytest.raises(ValueError):
        small.run(a.set_link("x", "far", "127.0.0.1:1", kind="OTHER"))
    with pytest.raises(ValueError):
        a.register_app("bad", "sa", [], a.node_id, "far", ["x"])


def test_a_start_that_fails_part_way_closes_what_it_had_started(lt: LoopThread, tmp_path: Path) -> None:
    """All or nothing (Lkms.start): ETSI 014's port is taken, so the start fails after the store and
    the ETSI 020 server were up. Both are closed again (the port free, the store's thread gone, no
    task left), and once the port is free the same node starts."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    listen014 = f"127.0.0.1:{taken.getsockname()[1]}"
    lkms = Lkms(str(uuid.uuid4()), tmp_path / "data", None, etsi014_listen=listen014)

    async def tasks() -> set[asyncio.Task[Any]]:
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    def store_threads() -> int:
        return sum(t.name == "keystore:keys.sqlite" for t in threading.enumerate())

    tasks_before, threads_before = lt.run(tasks()), store_threads()
    with pytest.raises(OSError):
        lt.run(lkms.start())
    host, port = lkms.addresses["etsi020"].rsplit(":", 1)
    with socket.socket() as s:
        s.bind((host, int(port)))  # EADDRINUSE while the 020 server still listened
    assert store_threads() == threads_before
    assert lt.run(tasks()) == tasks_before

    taken.close()
    lt.run(lkms.start())
    try:
        assert lkms.addresses["etsi014"] == listen014
        assert store_threads() == threads_before + 1
    finally:
        lt.run(lkms.stop())
    assert store_threads() == threads_before


def test_a_grpcio_004_server_is_closed_when_keysync_cannot_listen(lt: LoopThread, tmp_path: Path) -> None:
    """The grpcio ETSI 004 server binds its port, then KeySync's port is taken: the start fails
    and the 004 port is free again (a grpcio server bound but never started would hold it)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    lkms = Lkms(str(uuid.uuid4()), tmp_path / "data", None, limits=Limits(etsi004_server="grpcio"),
                keysync_listen=f"127.0.0.1:{taken.getsockname()[1]}")
    try:
        with pytest.raises(OSError, match="cannot listen"):
            lt.run(lkms.start())
        host, port = lkms.addresses["etsi004"].rsplit(":", 1)
        with socket.socket() as s:
            s.bind((host, int(port)))  # EADDRINUSE while the 004 server held it
    finally:
        taken.close()
