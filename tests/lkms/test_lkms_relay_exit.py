"""A relay path that leaves the sdqkd network: A -- B -- G over ETSI 020 hops (one-time pad +
MAC), then from the gateway G to another vendor's KMS (tests/lkms/peer020.py, written from the
standard only) with plain ETSI 020 ext_keys. Our SAE at A gets a key only once the vendor's KMS
took it; refusals anywhere leave every hop's pools equal at both ends and the vendor holding
nothing for the refused request. Real servers, mutual TLS with two PKIs, real ETSI 014 clients."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lkmsnet import LoopThread, Net, Pki, wait_until
from peer020 import PeerKms as VendorKms

from sdqkd.lkms.core import Limits
from sdqkd.lkms.etsi020_client import PeerKms
from sdqkd.lkms.external import ExternalPeer

VENDOR_ID = "kms.vendorx.test"


class Chain:
    def __init__(self, lt: LoopThread, tpki: Pki, tmp: Path) -> None:
        self.vpki = Pki.create(tmp / "vendor")
        vfiles = self.vpki.node(VENDOR_ID)
        self.net = Net(lt, tpki, tmp / "net", {"A": ["a1"], "B": [], "G": []},
                       limits=Limits(ack_timeout_s=1.5, rpc_timeout_s=4))
        self.net.phys("A", "B")
        self.net.phys("B", "G")
        self.net.feed("A", "B", 300)
        self.net.feed("B", "G", 300)
        g = self.net.nodes["G"]
        # the vendor serves bx1 only; G is configured with bx1 and bx2 (bx2: the vendor refuses it)
        self.vendor = VendorKms(VENDOR_ID, ["bx1"], str(vfiles.cert), str(vfiles.key), str(vfiles.ca),
                                str(tpki.ca_path), g.node_id)
        self.vendor_url = self.net.run(self.vendor.start())
        self.configure("sync")
        self.virt = self.net.virt(["A", "B", "G"], exit_peer="vendorx")
        a = self.net.nodes["A"]
        for app, slave in (("appx", "bx1"), ("appy", "bx2"), ("appz", "bz9")):
            a.register_app(app, "a1", [slave], a.node_id, "vendorx", [self.virt])

    def configure(self, mode: str) -> None:
        peer = ExternalPeer("vendorx", PeerKms(self.vendor_url, VENDOR_ID, str(self.vpki.ca_path)), ("bx1", "bx2"),
                            str(uuid.uuid4()), mode)
        self.net.run(self.net.nodes["G"].add_external_peer(peer))

    def enc(self, slave: str, n: int) -> httpx.Response:
        return self.net.client("a1").post(self.net.url("A") + f"/{slave}/enc_keys", json={"number": n, "size": 256})

    def hops_agree(self) -> None:
        for x, y in (("A", "B"), ("B", "G")):
            q = self.net.links[frozenset((x, y))]
            assert self.net.states(x, q) == self.net.states(y, q), f"pools of {x}-{y} differ"

    def close(self) -> None:
        self.net.run(self.vendor.stop())
        self.net.close()


@pytest.fixture(scope="module")
def chain(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    c = Chain(lt, tpki, tmp_path_factory.mktemp("exit"))
    yield c
    c.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_keys_reach_the_vendor_through_two_hops(chain: Chain, mode: str) -> None:
    chain.configure(mode)
    ab = chain.net.links[frozenset(("A", "B"))]
    before = chain.net.nodes["A"].store.pool_stats(ab)
    assert before is not None
    r = chain.enc("bx1", 3)
    assert r.status_code == 200, r.text
    for k in r.json()["keys"]:
        # the vendor's SAE gets exactly our SAE's key, once, for the pair (a1 -> bx1)
        held = chain.vendor.keys[k["key_ID"]]
        assert (held.initiator, held.targets) == ("a1", ["bx1"])
        assert chain.vendor.take(k["key_ID"]) == base64.b64decode(k["key"])
        assert chain.vendor.take(k["key_ID"]) is None
    after = chain.net.nodes["A"].store.pool_stats(ab)
    assert after is not None and before.available_keys - after.available_keys == 4  # 3 pads + 1 MAC key
    chain.hops_agree()
    # keys made on demand: nothing sits in a pool of the virtual link at either end
    for n in ("A", "G"):
        st = chain.net.nodes[n].store.pool_stats(chain.virt)
        assert st is None or st.available_keys == 0
    assert chain.net.nodes["B"].store.pool_stats(chain.virt) is None


@pytest.mark.parametrize("slave", ["bx2", "bz9"])
def test_refused_at_the_vendor_or_the_gateway_gives_no_key(chain: Chain, slave: str) -> None:
    """bx2: the vendor's KMS answers 400 (not its SAE); bz9: the gateway's config does not route
    it to the vendor. Either way our SAE gets 503 and the vendor holds nothing of it."""
    chain.configure("sync")
    held = set(chain.vendor.keys)
    r = chain.enc(slave, 2)
    assert r.status_code == 503, r.text
    assert set(chain.vendor.keys) == held
    chain.hops_agree()


def test_a_gateway_without_the_exit_refuses_before_any_pad_is_used(chain: Chain) -> None:
    """A virtual link that leaves for the vendor at A and B but ends at G as an ordinary one: G
    refuses the hop (routing) before taking its pads, B puts its next-hop pads back, the first
    hop's pads are used at both ends, and no key is handed out."""
    net = chain.net
    v = str(uuid.uuid4())
    ids = net.ids
    g, b = net.nodes["G"], net.nodes["B"]
    a = net.nodes["A"]
    net.run(a.set_link(v, g.node_id, g.addresses["keysync"], kind="VIRT", next_hops=[ids["B"], ids["G"]],
                       exit_peer="vendorx"))
    net.run(b.set_link(v, g.node_id, g.addresses["keysync"], kind="VIRT", prev_hop=ids["A"], next_hops=[ids["G"]],
                       exit_peer="vendorx"))
    net.run(g.set_link(v, a.node_id, a.addresses["keysync"], kind="VIRT", prev_hop=ids["B"]))
    a.register_app("appw", "a1", ["bw1"], a.node_id, "vendorx", [v])
    ab = net.links[frozenset(("A", "B"))]
    before = a.store.pool_stats(ab)
    held = set(chain.vendor.keys)
    r = chain.enc("bw1", 1)
    assert r.status_code == 503, r.text
    assert set(chain.vendor.keys) == held
    after = a.store.pool_stats(ab)
    assert before is not None and after is not None
    assert after.available_keys == before.available_keys - 2  # consumed on A-B (B took them), none lost
    chain.hops_agree()


def test_vendor_ack_that_never_comes_voids_the_keys_there(chain: Chain) -> None:
    """Asynchronous mode towards the vendor, and its ack never comes: the gateway voids the keys at
    the vendor, the source gets them refused, our SAE gets 503 and the vendor holds none of them."""
    chain.configure("async")
    chain.vendor.never_ack = True
    try:
        held, calls = set(chain.vendor.keys), chain.vendor.requests
        r = chain.enc("bx1", 2)
        assert r.status_code == 503, r.text
        assert chain.vendor.requests == calls + 1 and set(chain.vendor.keys) == held  # received, then voided
        chain.hops_agree()
    finally:
        chain.vendor.never_ack = False
    assert chain.enc("bx1", 1).status_code == 200  # and the path works again


def test_trusted_node_killed_mid_transfer_leaves_the_vendor_nothing(chain: Chain) -> None:
    """B forwards the keys, G hands them to the vendor, and B dies before answering A: our SAE
    gets 503; once B is back, A's resend finds B's pads gone and voids the keys along the path,
    so the vendor's SAE cannot fetch keys our SAE never got; every hop's pools agree."""
    net = chain.net
    held, t, out = _b_paused_after_the_vendor_took_two_keys(chain)
    assert len(chain.vendor.keys) == len(held) + 2
    net.restart("B")  # the same ports, its links and the virtual link's entry installed again
    t.join(60)
    assert out and out[0].status_code == 503, out[0].text if out else "no answer"
    # A's resend backs off up to 10 s with a 4 s time-out per try while B is down, then the void
    # goes along the path with its own retry: a slow restart can take more than 30 s in all
    wait_until(lambda: set(chain.vendor.keys) == held, "the keys voided at the vendor", limit=90)
    wait_until(lambda: _hops_agree(chain), "every hop's pools equal at both ends")
    assert chain.enc("bx1", 1).status_code == 200  # and the path works again


def test_a_trusted_node_back_before_its_routes_names_the_pads_it_no_longer_holds(chain: Chain) -> None:
    """As above, but A's resend reaches B after its restart and before the controller installed
    its links again. B refuses the hop as a routing error, without touching anything. Its earlier
    self took the pads, though: the refusal must name them, or A puts its pads back (the two ends
    of A-B then differ) and never voids the keys the vendor holds. (Once a rare CI failure: a
    slow re-provisioning let A's resend in.)"""
    net = chain.net
    held, t, out = _b_paused_after_the_vendor_took_two_keys(chain)
    old = net.nodes["B"]
    b = net.restart("B", provision=False)  # up, but with no link installed yet
    t.join(60)
    assert out and out[0].status_code == 503, out[0].text if out else "no answer"
    # the controller installs B's physical links first: A's resend (in the background now)
    # reaches B's relay, which does not know the virtual link yet
    for link in old.registry.links.values():
        if link.kind == "PHYS":
            net.run(b.set_link(link.qkdl_id, link.peer_node_id, link.peer_kms_address, link.kind))
    ab = net.links[frozenset(("A", "B"))]
    a = net.nodes["A"]
    wait_until(lambda: (st := a.store.pool_stats(ab)) is not None and st.reserved_keys == 0,
               "A's pads settled by B's answer", limit=60)
    assert set(chain.vendor.keys) != held  # A's void, if any, met B without the route: sent again later
    net.provision("B", old)
    wait_until(lambda: set(chain.vendor.keys) == held, "the keys voided at the vendor", limit=60)
    wait_until(lambda: _hops_agree(chain), "every hop's pools equal at both ends")
    assert chain.enc("bx1", 1).status_code == 200


def test_a_void_that_meets_a_trusted_node_down_is_sent_again_once_it_is_back(chain: Chain) -> None:
    """A void along the path that finds B down (connection refused) was sent once and lost, so
    the vendor kept keys our SAE never got (on a loaded machine, the test above lost its void so
    when B's restart was slow). Now it is sent again, backing off, until B answers."""
    net = chain.net
    kid = _a_void_that_meets_b_down(chain)
    net.restart("B")
    wait_until(lambda: kid not in chain.vendor.keys, "the void delivered once B is back", limit=60)  # backoff <= 10 s


def test_a_void_still_owed_when_the_source_restarts_is_sent_again(chain: Chain) -> None:
    """B is down when A voids a key along the path, and A restarts before B is back: A's key
    store kept the void, and A, provisioned again, sends it once B answers, so the vendor does not
    keep a key our SAE never got because the source restarted."""
    net = chain.net
    kid = _a_void_that_meets_b_down(chain)
    a = net.nodes["A"]
    assert [(o.to, o.ids, o.master, o.slaves) for o in net.run(a.store.pending_voids("relay"))] == [
        (chain.virt, (kid,), "a1", ("bx1",))]
    a = net.restart("A")  # its links and apps provisioned again, as the controller does
    assert kid in chain.vendor.keys
    net.restart("B")
    wait_until(lambda: kid not in chain.vendor.keys, "the void delivered once B is back", limit=60)
    wait_until(lambda: not net.run(a.store.pending_voids("relay")), "the void settled in A's store")


def test_a_void_whose_virtual_link_is_not_provisioned_again_says_so_as_it_expires(
        chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    """A void recorded before a restart along a virtual link that the restarted node is not given
    again (deleted meanwhile): it is never sent, leaves the store as it expires, and the log says
    why, not that a hop failed to take it."""
    from sdqkd.lkms.store_api import PendingVoid

    net = chain.net
    gone = str(uuid.uuid4())  # a virtual link no one provisions
    hop = json.dumps({"virt_qkdl_id": gone, "path": [net.nodes["A"].node_id, net.nodes["B"].node_id,
                                                     net.nodes["G"].node_id], "hop_index": 0})
    owed = PendingVoid("relay", gone, (str(uuid.uuid4()),), "a1", ("bx1",), expires=time.time() + 2.0, hop=hop)
    net.run(net.nodes["A"].store.add_void(owed))
    requests = chain.vendor.requests
    with caplog.at_level("ERROR", logger="sdqkd.lkms.relay"):
        a = net.restart("A")  # its links and apps provisioned again: not `gone`
        wait_until(lambda: not net.run(a.store.pending_voids("relay")), "the void dropped as it expired", limit=15)
    assert chain.vendor.requests == requests
    said = [r.getMessage() for r in caplog.records if gone in r.getMessage()]
    assert said and "never sent: the virtual link or its first hop was not provisioned again" in said[0], said


def _a_void_that_meets_b_down(chain: Chain) -> str:
    """A key our SAE got through A -- B -- G, still held at the vendor; then B stops and A voids
    the key along the path: not delivered. Returns its ID."""
    from sdqkd.lkms.relay import _Source

    net = chain.net
    r = chain.enc("bx1", 1)
    assert r.status_code == 200, r.text
    kid: str = r.json()["keys"][0]["key_ID"]
    assert kid in chain.vendor.keys  # not fetched by the vendor's SAE: still voidable there
    a = net.nodes["A"]
    virt = a.registry.links[chain.virt]
    first = a.registry.phys_link_to(net.nodes["B"].node_id)
    assert first is not None and virt.next_hops
    src = _Source(a.relay, virt, first, [a.node_id, *virt.next_hops], ("a1", ["bx1"]), [(kid, b"")], keep=False)
    net.run(net.nodes["B"].stop())
    assert net.run(a.relay._void_path(src, [kid])) == set()  # not delivered: nothing known used
    assert kid in chain.vendor.keys
    return kid


def _b_paused_after_the_vendor_took_two_keys(chain: Chain
                                             ) -> tuple[set[str], threading.Thread, list[httpx.Response]]:
    """Our SAE asks for 2 keys; B forwards them, G hands them to the vendor and B pauses before
    answering A. Returns the vendor's keys before, the SAE's thread and where its answer goes."""
    chain.configure("sync")
    held, calls = set(chain.vendor.keys), chain.vendor.requests
    chain.net.nodes["B"].core.fault = "pause_before_020_reply"
    out: list[httpx.Response] = []
    t = threading.Thread(target=lambda: out.append(chain.enc("bx1", 2)))
    t.start()
    wait_until(lambda: chain.vendor.requests > calls, "the keys at the vendor")
    return held, t, out


def _hops_agree(chain: Chain) -> bool:
    try:
        chain.hops_agree()
    except AssertionError:
        return False
    return True
