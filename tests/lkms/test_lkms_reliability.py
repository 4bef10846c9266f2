"""Reliability of the LKMS through restarts and uncertain outcomes (issue 18): durable KeySync
messages survive a restart before the links are provisioned again, and both ends of a link
converge to the same pool after any uncertainty."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lkmsnet import LoopThread, Net, Pki, net_ab


def wait_until(cond: Callable[[], object], what: str, limit: float = 30.0) -> None:
    """Poll `cond` (a safety net against hangs, not a timing assertion)."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


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
