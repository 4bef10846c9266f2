"""ETSI GS QKD 020 between an sdqkd node and another vendor's KMS (tests/lkms/peer020.py, written
from the standard only), both as sender and receiver, synchronous and asynchronous, and the
faults: lost, repeated and unknown acks, void after delivery, replayed bodies, wrong identity.
Real servers, real mutual TLS with two separate PKIs, real ETSI 014 clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lkmsnet import LoopThread, Net, Pki
from peer020 import PeerKms as VendorKms

from sdqkd.lkms.core import Limits
from sdqkd.lkms.etsi020_client import Etsi020Client, PeerKms
from sdqkd.lkms.external import ExternalPeer
from sdqkd.lkms.tlsctx import https_client_context

VENDOR_ID = "kms.vendorx.test"


class Setup:
    def __init__(self, lt: LoopThread, tpki: Pki, tmp: Path) -> None:
        self.vpki = Pki.create(tmp / "vendor")
        vfiles = self.vpki.node(VENDOR_ID)
        self.net = Net(lt, tpki, tmp / "net", {"A": ["a1"]}, limits=Limits(ack_timeout_s=1.5, rpc_timeout_s=3))
        self.a = self.net.nodes["A"]
        self.vendor = VendorKms(VENDOR_ID, ["bx1", "bx2"], str(vfiles.cert), str(vfiles.key), str(vfiles.ca),
                                str(tpki.ca_path), self.a.node_id)
        self.vendor_url = self.net.run(self.vendor.start())
        self.a_url = f"https://{self.a.addresses['etsi020']}"
        self.qkdl = str(uuid.uuid4())
        self.configure("sync")
        self.net.nodes["A"].register_app("appx", "a1", ["bx1"], self.a.node_id, "vendorx", [self.qkdl])

    def configure(self, mode: str, identity: str = VENDOR_ID) -> None:
        peer = ExternalPeer("vendorx", PeerKms(self.vendor_url, identity, str(self.vpki.ca_path)), ("bx1", "bx2"),
                            self.qkdl, mode)
        self.net.run(self.a.add_external_peer(peer))

    def restart_a(self, configure: bool = True) -> None:
        """Node A stopped and started again on its data, its registry empty as a new process's;
        `configure`: then given its external peer and app again, as its config would."""
        self.a = self.net.restart("A", provision=False)
        if configure:
            self.reconfigure()

    def reconfigure(self) -> None:
        self.configure("async")
        self.a.register_app("appx", "a1", ["bx1"], self.a.node_id, "vendorx", [self.qkdl])

    def enc(self, n: int = 2) -> httpx.Response:
        return self.net.client("a1").post(self.net.url("A") + "/bx1/enc_keys", json={"number": n, "size": 256})

    def dec(self, ids: list[str]) -> httpx.Response:
        return self.net.client("a1").post(self.net.url("A") + "/bx1/dec_keys",
                                          json={"key_IDs": [{"key_ID": k} for k in ids]})

    def send(self, n: int, asynchronous: bool = False, keys: dict[str, bytes] | None = None
             ) -> tuple[dict[str, bytes], tuple[int, Any]]:
        keys = keys or {str(uuid.uuid4()): os.urandom(32) for _ in range(n)}
        return keys, self.net.run(self.vendor.send_keys(self.a_url, keys, "bx1", ["a1"], asynchronous))

    def close(self) -> None:
        self.net.run(self.vendor.stop())
        self.net.close()


@pytest.fixture(scope="module")
def setup(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(lt, tpki, tmp_path_factory.mktemp("e020"))
    yield s
    s.close()


def wait_for(s: Setup, cond: Any, what: str) -> None:
    import asyncio

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.02)

    try:
        s.net.run(poll(), timeout=10)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_our_sae_to_theirs(setup: Setup, mode: str) -> None:
    setup.configure(mode)
    r = setup.enc(3)
    assert r.status_code == 200, r.text
    for k in r.json()["keys"]:
        # their SAE gets exactly our SAE's key, once
        assert setup.vendor.take(k["key_ID"]) == __import__("base64").b64decode(k["key"])
        assert setup.vendor.take(k["key_ID"]) is None


@pytest.mark.parametrize("asynchronous", [False, True])
def test_their_sae_to_ours(setup: Setup, asynchronous: bool) -> None:
    acks_before = len(setup.vendor.acks)
    keys, (status, body) = setup.send(4, asynchronous)
    if asynchronous:
        assert status == 202
        wait_for(setup, lambda: len(setup.vendor.acks) > acks_before, "the relayed ack")
        ack = setup.vendor.acks[-1]
        assert ack["ack_status"] == "relayed" and ack["target_sae_id"] == "a1"
        assert sorted(x["key_id"] for x in ack["key_ids"]) == sorted(keys)
    else:
        assert (status, body) == (200, {"status": "success"})
    r = setup.dec(list(keys))
    assert r.status_code == 200, r.text
    got = {k["key_ID"]: __import__("base64").b64decode(k["key"]) for k in r.json()["keys"]}
    assert got == keys
    assert setup.dec(list(keys)[:1]).status_code == 400  # each key once


def test_versions_and_callers_by_identity(setup: Setup, tpki: Pki) -> None:
    intruder = setup.vpki.node("kms.intruder.test")  # right CA, wrong identity
    stranger = tpki.node(str(uuid.uuid4()))  # our CA, but no link to A

    async def call(files: Any) -> tuple[int, Any]:
        c = Etsi020Client("x", str(files.cert), str(files.key), str(setup.vpki.ca_path))
        try:
            return await c.call(PeerKms(setup.a_url, setup.a.node_id, str(tpki.ca_path)), "GET", "/kmapi/versions")
        finally:
            await c.close()

    assert setup.net.run(call(setup.vpki.node(VENDOR_ID))) == (200, {"versions": ["v1"]})
    for files in (intruder, stranger):
        status, body = setup.net.run(call(files))
        assert status == 401 and body["message"] == "unauthorized" and body["details"]


def test_wrong_peer_identity_gets_nothing(setup: Setup) -> None:
    before = setup.vendor.requests
    setup.configure("sync", identity="kms.other.test")
    try:
        r = setup.enc(1)
        assert r.status_code == 503
        assert setup.vendor.requests == before  # not a byte of key left for the wrong peer
    finally:
        setup.configure("sync")


def test_no_common_version_no_transfer(setup: Setup) -> None:
    setup.configure("sync")
    setup.a.kms020.client._versions.clear()  # negotiate afresh
    setup.vendor.supported = ["v2"]
    before = setup.vendor.requests
    try:
        assert setup.enc(1).status_code == 503
        assert setup.vendor.requests == before  # nothing sent to a peer we share no version with
    finally:
        setup.vendor.supported = ["v1"]
        setup.a.kms020.client._versions.clear()
    assert setup.enc(1).status_code == 200


def test_ack_never_arrives_keys_are_voided(setup: Setup) -> None:
    setup.configure("async")
    setup.vendor.never_ack = True
    try:
        held = set(setup.vendor.keys)
        r = setup.enc(2)
        assert r.status_code == 503  # our SAE got nothing ...
        assert set(setup.vendor.keys) == held  # ... and the peer voided what it had taken
    finally:
        setup.vendor.never_ack = False


def test_a_void_the_peer_refuses_for_now_is_sent_again(setup: Setup) -> None:
    """The peer answers the void 503 twice (overloaded, restarting): the void is sent again,
    backing off, until it takes, so the keys our SAE never got do not stay usable there."""
    with voids_refused(setup, 2):
        held, voids = set(setup.vendor.keys), len(setup.vendor.void_ids)
        assert setup.enc(2).status_code == 503  # our SAE got nothing
        setup.net.run(asyncio.wait_for(_until(lambda: set(setup.vendor.keys) == held), 15))  # 0.5 s, then 1 s
        assert len(setup.vendor.void_ids) - voids == 3 and setup.vendor.void_fails == 0


@contextlib.contextmanager
def voids_refused(setup: Setup, fails: int = 10_000) -> Iterator[None]:
    """The peer takes keys, never acks them and answers `fails` voids 503 (or until reset)."""
    setup.configure("async")
    setup.vendor.never_ack = True
    setup.vendor.void_fails = fails
    try:
        yield
    finally:
        setup.vendor.never_ack = False
        setup.vendor.void_fails = 0


def test_voids_waiting_for_the_same_peer_are_sent_again_together(setup: Setup) -> None:
    """Two requests' voids refused while the peer is overloaded go out again as one void, not one
    each: a peer that is down gets one request per pair of SAEs and try, however many wait."""
    with voids_refused(setup):
        held = set(setup.vendor.keys)
        assert setup.enc(1).status_code == 503
        assert setup.enc(2).status_code == 503
        taken = set(setup.vendor.keys) - held
        assert len(taken) == 3  # the peer still holds what it took
        # the next tries carry both requests' keys in one void, refused while the peer is down
        setup.net.run(asyncio.wait_for(_until(lambda: any(set(v or ()) == taken for v in setup.vendor.void_ids)), 30))

        async def back() -> int:  # on the loop, between two requests: no void is counted wrongly
            setup.vendor.void_fails = 0  # the peer is back
            return len(setup.vendor.void_ids)

        before = setup.net.run(back())
        setup.net.run(asyncio.wait_for(_until(lambda: set(setup.vendor.keys) == held), 30))
        setup.net.run(asyncio.sleep(1.5))  # a second void, if any, would come now
        assert [set(v or ()) for v in setup.vendor.void_ids[before:]] == [taken]


def test_a_void_still_owed_is_sent_again_after_a_restart(setup: Setup) -> None:
    """Our node stops while the peer still refuses a void: the store keeps the void, and the node
    started again on the same data sends it once the peer is configured again, so the keys our SAE
    never got do not stay usable there because we restarted."""
    with voids_refused(setup):
        held = set(setup.vendor.keys)
        assert setup.enc(2).status_code == 503
        taken = set(setup.vendor.keys) - held
        assert len(taken) == 2
        owed = setup.net.run(setup.a.store.pending_voids("external"))
        assert [(set(v.ids), v.to, v.master, v.slaves) for v in owed] == [(taken, "vendorx", "a1", ("bx1",))]

        setup.restart_a(configure=False)
        voids = len(setup.vendor.void_ids)
        setup.net.run(asyncio.sleep(1.0))
        assert len(setup.vendor.void_ids) == voids  # nothing is sent to a peer not configured (yet)
        setup.vendor.void_fails = 0  # the peer is back ...
        setup.reconfigure()  # ... and so is our node's configuration of it
        setup.net.run(asyncio.wait_for(_until(lambda: set(setup.vendor.keys) == held), 15))
        assert [set(v or ()) for v in setup.vendor.void_ids[voids:]] == [taken]
        setup.net.run(asyncio.wait_for(_no_voids_owed(setup), 5))  # settled once its answer is in: a later start sends nothing


def test_a_void_recorded_past_its_expiry_is_dropped_at_start(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """A void whose keys the peer has erased by now (past `unconfirmed_ttl_s`) is not sent after a
    restart: it is dropped, and the log says the keys may have stayed usable there."""
    from sdqkd.lkms.store_api import PendingVoid

    stale = PendingVoid("external", "vendorx", (str(uuid.uuid4()),), "a1", ("bx1",), expires=1.0)
    setup.net.run(setup.a.store.add_void(stale))
    voids = len(setup.vendor.void_ids)
    with caplog.at_level("ERROR", logger="sdqkd.lkms.external"):
        setup.restart_a()
    assert setup.net.run(setup.a.store.pending_voids("external")) == []
    setup.net.run(asyncio.sleep(1.0))
    assert len(setup.vendor.void_ids) == voids
    assert any("never delivered" in r.getMessage() for r in caplog.records)


def test_a_void_for_a_peer_not_configured_again_leaves_the_store_as_it_expires(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """A void recorded before a restart whose peer the restarted node is not given again: nothing
    can be sent, and the store does not keep the record past its expiry (not until a later start)."""
    from sdqkd.lkms.store_api import PendingVoid

    soon = PendingVoid("external", "vendorx", (str(uuid.uuid4()),), "a1", ("bx1",), expires=time.time() + 1.5)
    setup.net.run(setup.a.store.add_void(soon))
    voids = len(setup.vendor.void_ids)
    with caplog.at_level("ERROR", logger="sdqkd.lkms.external"):
        setup.restart_a(configure=False)
        try:
            assert [v.ids for v in setup.net.run(setup.a.store.pending_voids("external"))] == [soon.ids]
            setup.net.run(asyncio.wait_for(_no_voids_owed(setup), 10))
        finally:
            setup.reconfigure()  # for the tests after this one
    assert len(setup.vendor.void_ids) == voids  # never sent: the peer is not configured
    assert any("never sent: the peer was not configured again" in r.getMessage() for r in caplog.records)


def test_a_void_given_up_while_its_peer_is_configured_again_leaves_the_store(setup: Setup) -> None:
    """The expirer gives up a void (out of memory, then out of the store) and the peer is
    configured again while the store's write is still under way: `add` cancels the expirer,
    and the write still completes, so no row is left that memory no longer holds (a later start
    would report it as never delivered). The store is slowed so that the write is in progress.
    The void expires 3 s on: after the restart (an expired one is dropped at start instead)."""
    from sdqkd.lkms.store_api import PendingVoid

    soon = PendingVoid("external", "vendorx", (str(uuid.uuid4()),), "a1", ("bx1",), expires=time.time() + 3.0)
    setup.net.run(setup.a.store.add_void(soon))
    setup.restart_a(configure=False)
    store = setup.a.store
    writes: list[int] = []
    done_now = store.voids_done

    async def slow_voids_done(vids: Sequence[int]) -> None:
        writes.append(len(vids))
        await asyncio.sleep(1.0)
        await done_now(vids)

    store.voids_done = slow_voids_done  # type: ignore[method-assign]
    try:
        setup.net.run(asyncio.wait_for(_until(lambda: bool(writes)), 10))
        setup.reconfigure()  # cancels the expirer, whose write is in its 1 s
        setup.net.run(asyncio.wait_for(_no_voids_owed(setup), 5))
    finally:
        store.voids_done = done_now  # type: ignore[method-assign]
    assert writes == [1]


async def _no_voids_owed(setup: Setup) -> None:
    while await setup.a.store.pending_voids("external"):
        await asyncio.sleep(0.05)


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.05)


def test_ack_twice_and_for_unknown_ids(setup: Setup) -> None:
    setup.configure("async")
    setup.vendor.ack_twice = True
    try:
        r = setup.enc(1)
        assert r.status_code == 200
        kid = r.json()["keys"][0]["key_ID"]
    finally:
        setup.vendor.ack_twice = False
    ack = [{"key_ids": [{"key_id": kid}], "ack_status": "relayed", "initiator_sae_id": "a1", "target_sae_id": "bx1"}]
    url = setup.a_url + "/kmapi/v1/ext_keys/ack"
    assert setup.net.run(setup.vendor.call(url, ack))[0] == 200  # repeated: accepted, changes nothing
    other = dict(ack[0], ack_status="failed")
    status, body = setup.net.run(setup.vendor.call(url, [other]))
    assert status == 400 and body["message"] == "key not present"
    unknown = dict(ack[0], key_ids=[{"key_id": str(uuid.uuid4())}])
    status, body = setup.net.run(setup.vendor.call(url, [ack[0], unknown]))
    assert status == 400 and body == {"message": "key not present", "details": [
        {"key_not_present": "The acknowledged key ID(s) are not known to this KME."}]}
    assert setup.vendor.take(kid) is not None  # the key was delivered to their side all the same


def test_void_after_delivery_and_replayed_body(setup: Setup) -> None:
    keys, (status, _) = setup.send(3)
    assert status == 200
    ids = list(keys)
    # replay: the same body again is answered the same and stores nothing twice
    _, (status, body) = setup.send(0, keys=keys)
    assert (status, body) == (200, {"status": "success"})
    assert setup.dec(ids[:1]).status_code == 200
    status, body = setup.net.run(setup.vendor.call(setup.a_url + "/kmapi/v1/ext_keys/void", {
        "key_ids": ids + [str(uuid.uuid4())], "initiator_sae_id": "bx1", "target_sae_ids": ["a1"]}))
    assert status == 200 and body["status"] == "partial_success"
    by = {a["ack_status"]: sorted(x["key_id"] for x in a["key_ids"]) for a in body["ack_containers"]}
    assert by["failed"] == ids[:1] and by["voided"] == sorted(ids[1:]) and len(by["key not present"]) == 1
    assert setup.dec(ids[1:2]).status_code == 400  # voided: refused by ETSI 014
    # a replay after the void does not bring the keys back
    _, (status, body) = setup.send(0, keys={k: keys[k] for k in ids[1:]})
    assert setup.dec(ids[1:2]).status_code == 400


def _void(setup: Setup, ids: list[str] | None) -> dict[str, list[str]]:
    body: dict[str, Any] = {"initiator_sae_id": "bx1", "target_sae_ids": ["a1"]}
    if ids is not None:
        body["key_ids"] = ids
    status, r = setup.net.run(setup.vendor.call(setup.a_url + "/kmapi/v1/ext_keys/void", body,
                                                "" if ids is not None else "?all_confirmation=true"))
    assert status == 200, r
    if r["status"] == "success":
        return {"voided": sorted(ids or [])}
    return {a["ack_status"]: sorted(x["key_id"] for x in a["key_ids"]) for a in r["ack_containers"]}


def test_void_twice_answers_voided_again(setup: Setup) -> None:
    """QA walkthrough: K1 delivered, K2 voided; a second void (by ID, or of all the SAEs' keys)
    answered K2 `failed` ("delivered, the source keeps it") though K2 was erased."""
    keys, (status, _) = setup.send(2)
    assert status == 200
    k1, k2 = list(keys)
    assert setup.dec([k1]).status_code == 200
    nowhere = str(uuid.uuid4())
    first = _void(setup, [k1, k2, nowhere])
    assert first == {"failed": [k1], "voided": [k2], "key not present": [nowhere]}
    assert _void(setup, [k1, k2, nowhere]) == first  # idempotent: a retried void, the same answer
    every = _void(setup, None)
    assert k2 in every["voided"] and k1 in every["failed"] and k2 not in every.get("failed", [])
    assert _void(setup, [k2]) == {"voided": [k2]}
    # a replay of the transfer does not bring K2 back, and says so
    _, (status, body) = setup.send(0, keys={k2: keys[k2]})
    assert status == 200 and body["status"] == "partial_success", body
    assert [(a["ack_status"], a.get("message")) for a in body["ack_containers"]] == [("failed", "key voided")]
    assert setup.dec([k2]).status_code == 400


def test_void_without_ids_needs_confirmation(setup: Setup) -> None:
    keys, _ = setup.send(2)
    url = setup.a_url + "/kmapi/v1/ext_keys/void"
    body = {"initiator_sae_id": "bx1", "target_sae_ids": ["a1"]}
    status, r = setup.net.run(setup.vendor.call(url, body))
    assert status == 400 and r["message"] == "no_key_ids_or_confirmation"
    assert setup.dec(list(keys)[:1]).status_code == 200  # refused: nothing changed
    status, r = setup.net.run(setup.vendor.call(url, body, "?all_confirmation=true"))
    assert status == 200
    assert setup.dec(list(keys)[1:]).status_code == 400


def test_plain_keys_only_from_external_peers(setup: Setup, tpki: Pki) -> None:
    """An sdqkd node must protect keys on its hop: a plain ext_keys from one is refused."""
    b = tpki.node(str(uuid.uuid4()))
    setup.net.run(setup.a.set_link(str(uuid.uuid4()), b.cert.stem, "127.0.0.1:1"))

    async def go() -> tuple[int, Any]:
        c = Etsi020Client(b.cert.stem, str(b.cert), str(b.key), str(tpki.ca_path))
        try:
            return await c.post(PeerKms(setup.a_url, setup.a.node_id), "ext_keys", {
                "keys": [{"key_id": str(uuid.uuid4()), "value": "AAAA"}], "initiator_sae_id": "x",
                "target_sae_ids": ["a1"]})
        finally:
            await c.close()

    status, body = setup.net.run(go())
    assert status == 400 and body["message"] == "key routing error"


def test_https_client_context_still_works(setup: Setup) -> None:
    # the 014 side of the same node is unaffected by the 020 server's TLS 1.3-only context
    c = httpx.Client(verify=https_client_context(setup.net.pki.sae("a1")))
    r = c.get(setup.net.url("A") + "/bx1/status")
    assert r.status_code == 200
    c.close()


# --- fuzzing: any body gets 200/202/400 with the standard's error body, never a 500 -----------
FIELDS = ["keys", "key_id", "value", "initiator_sae_id", "target_sae_ids", "ack_callback_url", "key_ids",
          "ack_status", "target_sae_id", "extension_mandatory", "extension_optional", "extension", "sdqkd_hop",
          "relay_id", "path", "hop_index", "pad_key_ids", "mac_key_ids", "tag", "message"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                     st.text(max_size=30), st.sampled_from(["a1", "bx1", "relayed", "voided", "AAAA", "====",
                                                            str(uuid.UUID(int=7)), "https://127.0.0.1:1/x"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4),
                       max_leaves=14)
_bodies = st.one_of(st.binary(max_size=64),
                    st.dictionaries(st.sampled_from(FIELDS), _values, max_size=6).map(lambda d: json.dumps(d).encode()),
                    _values.map(lambda v: json.dumps(v).encode()))


@pytest.fixture(scope="module")
def vendor_http(setup: Setup) -> Iterator[httpx.Client]:
    import ssl

    f = setup.vpki.node(VENDOR_ID)
    ctx = ssl.create_default_context(cafile=str(setup.net.pki.ca_path))
    ctx.load_cert_chain(str(f.cert), str(f.key))
    c = httpx.Client(verify=ctx, timeout=20)
    yield c
    c.close()


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(op=st.sampled_from(["ext_keys", "ext_keys/void", "ext_keys/ack", "ext_keys/void?all_confirmation=true",
                           "ext_keys/void?all_confirmation=maybe"]), body=_bodies)
def test_fuzzed_bodies_get_400_never_500(setup: Setup, vendor_http: httpx.Client, op: str, body: bytes) -> None:
    r = vendor_http.post(f"{setup.a_url}/kmapi/v1/{op}", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 202, 400), r.text
    if r.status_code == 400:
        data = r.json()
        assert isinstance(data["message"], str) and data["message"]
        assert isinstance(data["details"], list) and all(isinstance(d, dict) for d in data["details"])
