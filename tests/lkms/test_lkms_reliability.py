"""Reliability of the LKMS through restarts and uncertain outcomes (issue 18): durable KeySync
messages survive a restart before the links are provisioned again, and both ends of a link
converge to the same pool after any uncertainty."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from lkmsnet import LoopThread, Pki, net_ab, wait_until

from sdqkd.generated.proto.sdqkd import kms_pb2, kms_pb2_grpc
from sdqkd.lkms.core import Limits
from sdqkd.lkms.node import Lkms
from sdqkd.lkms.tlsctx import grpc_channel_credentials


def test_durable_confirm_survives_a_restart_before_the_link_is_provisioned(lt: LoopThread, tpki: Pki,
                                                                           tmp_path: Path) -> None:
    net = net_ab(lt, tpki, tmp_path, keys=64)
    try:
        a, b = net.nodes["A"], net.nodes["B"]
        # The Confirm cannot leave before A dies (in the field: B stalled, A killed).
        net.run(a.outbox.close())
        r = net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 5})
        assert r.status_code == 200, r.text
        assert [i.kind for i in net.run(a.store.outbox())] == ["confirm"]

        old = a
        a = net.restart("A", provision=False)  # the registry is empty until the controller comes
        time.sleep(1.5)  # the outbox sender runs meanwhile (it starts with the LKMS)
        assert [i.kind for i in net.run(a.store.outbox())] == ["confirm"]  # still owed

        net.provision("A", old)
        wait_until(lambda: not net.run(a.store.outbox()), "the Confirm to reach B")
        # Confirmed keys never expire as unconfirmed: the slave still gets every one of them.
        assert net.run(b.store.expire(time.time() + 1)) == 0
        ids = [{"key_ID": k["key_ID"]} for k in r.json()["keys"]]
        r2 = net.client("b1").post(net.url("B") + "/a1/dec_keys", json={"key_IDs": ids})
        assert r2.status_code == 200 and r2.json() == r.json()
    finally:
        net.close()


def test_outbox_items_of_a_removed_link_are_dropped_with_its_pool(lt: LoopThread, tpki: Pki, tmp_path: Path) -> None:
    net = net_ab(lt, tpki, tmp_path, keys=16)
    try:
        a = net.nodes["A"]
        q = net.links[frozenset(("A", "B"))]
        net.run(a.outbox.close())
        assert net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 1}).status_code == 200
        assert len(net.run(a.store.outbox())) == 1
        net.run(a.remove_link(q))  # definitively gone: its pool and what was owed about it
        assert net.run(a.store.outbox()) == []
    finally:
        net.close()


def pool_snapshot(node: Lkms, qkdl_id: str) -> dict[str, tuple[int, bytes]]:
    """Key ID -> (state, material) of one pool, read from the node's SQLite file (read-only)."""
    con = sqlite3.connect(f"file:{node.data_dir / 'keys.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT k.kid, k.state, k.material FROM all_keys k JOIN pools p ON k.pid = p.pid "
                           "WHERE p.qkdl_id = ?", (qkdl_id,)).fetchall()
    finally:
        con.close()
    return {str(uuid.UUID(bytes=k)): (s, m) for k, s, m in rows}


FAST_RECONCILE = {"reconcile_grace_s": 0.0, "reconcile_min_gap_s": 0.2}


def test_unknown_reserve_outcome_leaves_no_drift_and_a_full_pool_recovers(lt: LoopThread, tpki: Pki,
                                                                          tmp_path: Path) -> None:
    """B is down when A reserves: A erases its copies (outcome unknown) and its Release finds
    nothing at B. B's copies are stale; B's pool is full while A has room. Both ends must end up
    with the same pool, and B's engine must get room without anybody consuming key."""
    net = net_ab(lt, tpki, tmp_path, limits=Limits(max_key_count=64, **FAST_RECONCILE), keys=64)
    try:
        a, b = net.nodes["A"], net.nodes["B"]
        q = net.links[frozenset(("A", "B"))]
        net.run(b.stop())
        r = net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 5})
        assert r.status_code == 503, r.text
        assert len(pool_snapshot(a, q)) == 59 and len(pool_snapshot(b, q)) == 64
        b = net.restart("B")
        net.run(b.wait_for_room(q))  # the full pool is freed by reconciliation, not by consumption
        wait_until(lambda: pool_snapshot(a, q) == pool_snapshot(b, q), "both pools to agree")
        snap = pool_snapshot(b, q)
        assert len(snap) == 59 and {s for s, _ in snap.values()} == {0}
        # and the link still works end to end (once A's channel to the restarted B reconnects)
        got: list[httpx.Response] = []
        wait_until(lambda: got.append(net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 2}))
                   or got[-1].status_code == 200, "enc_keys to work again")
        r = got[-1]
        ids = [{"key_ID": k["key_ID"]} for k in r.json()["keys"]]
        r2 = net.client("b1").post(net.url("B") + "/a1/dec_keys", json={"key_IDs": ids})
        assert r2.status_code == 200 and r2.json() == r.json()
    finally:
        net.close()


def test_a_full_pool_asks_for_a_pass_once_and_after_the_grace_then_only_after_a_change(
        lt: LoopThread, tpki: Pki, tmp_path: Path) -> None:
    """A link waits for room anew every second while its pool is full. Each wait used to ask for
    a reconciliation pass over the whole pool: one every reconcile_min_gap_s for as long as the
    pool stayed full (half a core for an idle 3-node network of full 100,000-key pools). The
    grace is set by hand to stand for the time that passes."""
    net = net_ab(lt, tpki, tmp_path, limits=Limits(max_key_count=16, reconcile_grace_s=3600.0), keys=16)
    try:
        a = net.nodes["A"]
        q = net.links[frozenset(("A", "B"))]
        net.run(asyncio.sleep(0.2))  # the store's word of the fill (a callback on the loop) has come
        asked: list[str] = []
        a.reconciler.request = lambda qkdl_id, reverse=True: asked.append(qkdl_id)  # type: ignore[method-assign]

        async def still_full() -> bool:
            try:
                await asyncio.wait_for(a.wait_for_room(q), 0.2)
            except TimeoutError:
                return True
            return False

        def waits(n: int) -> None:
            assert all(net.run(still_full()) for _ in range(n))

        waits(4)
        assert asked == [q]  # once for the full pool, not once per wait
        a.limits.reconcile_grace_s = 0.0  # the grace has passed: once more, for keys young at the first
        waits(3)
        assert asked == [q, q]
        waits(3)
        assert asked == [q, q]  # unchanged since: nothing more, however long it stays full
        r = net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 1})
        assert r.status_code == 200, r.text
        net.feed("A", "B", 1)  # the pool changed, and is full again
        net.run(asyncio.sleep(0.2))
        waits(1)
        assert asked == [q, q, q]
        a.limits.reconcile_grace_s = 3600.0
        assert net.client("a1").post(net.url("A") + "/b1/enc_keys", json={"number": 1}).status_code == 200
        net.feed("A", "B", 1)  # changed again, within the grace of the last ask: nothing more
        net.run(asyncio.sleep(0.2))
        waits(2)
        assert asked == [q, q, q]
    finally:
        net.close()


def test_reconcile_spares_young_and_reserved_keys_and_only_answers_the_peer(lt: LoopThread, tpki: Pki,
                                                                           tmp_path: Path) -> None:
    net = net_ab(lt, tpki, tmp_path, keys=8)
    try:
        a, b = net.nodes["A"], net.nodes["B"]
        q = net.links[frozenset(("A", "B"))]
        ids, _ = net.run(a.store.available_ids(q, time.time() + 1, 0, 100))
        assert len(ids) == 8
        assert net.run(a.store.available_ids(q, time.time() - 3600, 0, 100)) == ([], 0)  # all younger
        page, cursor = net.run(a.store.available_ids(q, time.time() + 1, 0, 3))
        assert page == ids[:3] and net.run(a.store.available_ids(q, time.time() + 1, cursor, 100))[0] == ids[3:]
        # a reserved key is never erased as stale
        net.run(a.store.reserve_out(q, "t1", [1], 256, False))
        assert net.run(a.store.erase_available(q, ids)) == 7
        assert [s for s, _ in pool_snapshot(a, q).values()] == [1]
        # Reconcile is answered to the link's peer only
        ch = grpc.secure_channel(b.addresses["keysync"], grpc_channel_credentials(tpki.node(str(uuid.uuid4()))))
        try:
            with pytest.raises(grpc.RpcError) as e:
                kms_pb2_grpc.KeySyncStub(ch).Reconcile(kms_pb2.ReconcileRequest(qkdl_id=q, key_ids=ids[:1]))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            ch.close()
        stranger = str(uuid.uuid4())
        resp = net.keysync("B", "A").Reconcile(kms_pb2.ReconcileRequest(qkdl_id=q, key_ids=[ids[0], stranger]))
        assert resp.ok and list(resp.unknown) == [stranger]
    finally:
        net.close()
