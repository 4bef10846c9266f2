"""Ordered proof of transit on the shared in-process network. The chain A -> B -> C -> B uses
sae-a5 (ingress), sae-b3 (transit), sae-c5 (transit), sae-b4 (egress); on every hop the upstream
SAE is the master. Hop keys come from the
KMSs through ETSI 014; the controller-side provisioner only relays key_IDs."""

from __future__ import annotations

import dataclasses

import pytest

from sdqkd.apps import opot
from sdqkd.apps.keyclient import Etsi014Client, KeyDeliveryError, SaeIdentity
from sdqkd.controller.opot import OpotProvisioner, shamir_profiles

CHAIN = ("sae-a5", "sae-b3", "sae-c5", "sae-b4")
MASTERS = {"sae-a5", "sae-b3", "sae-c5"}


class SpyKms:
    """An Etsi014Client that records which key_IDs it drew (enc_keys) or took (dec_keys)."""

    def __init__(self, client: Etsi014Client):
        self.client, self.enc, self.dec = client, [], []

    def enc_keys(self, slave, number=1, size=256, **kw):
        keys = self.client.enc_keys(slave, number=number, size=size, **kw)
        self.enc += [(slave, k.key_id) for k in keys]
        return keys

    def dec_keys(self, master, key_ids):
        keys = self.client.dec_keys(master, key_ids)
        self.dec += [(master, k.key_id) for k in keys]
        return keys


@pytest.fixture(scope="module")
def chain(apps_net):
    clients = {s: Etsi014Client(SaeIdentity.from_endpoints(apps_net.endpoints, s)) for s in set(CHAIN)}
    nodes = [opot.OpotNode(s, SpyKms(clients[s]), name=f"{s}#{i}") for i, s in enumerate(CHAIN)]
    prov = OpotProvisioner(lambda m, s: apps_net.request_keys(m, s, rate=1000))
    record = prov.provision(nodes, masters=MASTERS)
    yield nodes, record, clients
    for c in clients.values():
        c.close()


def test_correct_chain_verifies_with_hop_masks_from_etsi014_keys(chain):
    nodes, record, clients = chain
    pid = record.profile_id
    assert [(h.master, h.slave) for h in record.hops] == [("sae-a5", "sae-b3"), ("sae-b3", "sae-c5"),
                                                          ("sae-c5", "sae-b4")]
    for h in record.hops:
        up, down = nodes[h.index], nodes[h.index + 1]
        master, slave = (up, down) if up.sae_id == h.master else (down, up)
        assert (h.slave, h.key_id) in master.kms.enc and (h.master, h.key_id) in slave.kms.dec
        assert up.status()[pid]["down_key_ID"] == down.status()[pid]["up_key_ID"] == h.key_id
        # a KMS key: delivered once, so nobody can take it again
        with pytest.raises(KeyDeliveryError) as err:
            clients[h.slave].dec_keys(h.master, [h.key_id])
        assert err.value.status == 400
        # both ends derive the same per-packet masks; they change with every packet
        su, sd = up._state(pid), down._state(pid)
        assert su.down.masks(7, opot.PRIME) == sd.up.masks(7, opot.PRIME) != sd.up.masks(8, opot.PRIME)
    assert len({h.key_id for h in record.hops}) == 3
    # no key bytes in the controller's record or any status
    text = repr(record) + repr(nodes) + "".join(repr(n.status()) for n in nodes)
    for n in nodes:
        for side in (n._state(pid).up, n._state(pid).down):
            if side is not None:
                assert side._key.hex() not in text

    for _ in range(1000):
        assert opot.run_chain(nodes, pid)
    # on the wire: 28 bytes of metadata between nodes
    meta = nodes[0].stamp(pid)
    for n in nodes[1:-1]:
        meta = opot.OpotMeta.unpack(n.transit(opot.OpotMeta.unpack(meta.pack())).pack())
    assert nodes[-1].verify(meta).ok
    assert nodes[-1].status()[pid]["verified"] == 1001 and nodes[-1].status()[pid]["failed"] == 0


def test_skipped_or_swapped_nodes_and_tampered_metadata_fail(chain):
    nodes, record, _ = chain
    pid = record.profile_id
    ing, t1, t2, egr = nodes
    assert not opot.run_chain([ing, t2, egr], pid)  # t1 skipped
    assert not opot.run_chain([ing, t1, egr], pid)  # t2 skipped
    assert not opot.run_chain([ing, egr], pid)  # both skipped
    v = opot.run_chain([ing, t2, t1, egr], pid)  # swapped
    assert not v and "out of order" in v.reason

    def through(meta):
        for n in (t1, t2):
            meta = n.transit(meta)
        return meta

    for field_, delta in (("rnd", 1), ("cml", 1), ("seq", 1)):
        meta = ing.stamp(pid)
        bad = dataclasses.replace(meta, **{field_: getattr(meta, field_) + delta})
        assert not egr.verify(through(bad)), field_
    meta = through(ing.stamp(pid))  # tampered after the last transit node
    assert not egr.verify(dataclasses.replace(meta, cml=(meta.cml + 1) % opot.PRIME))
    with pytest.raises(opot.OpotError, match="no OPoT profile"):  # a transit node drops it
        t1.transit(dataclasses.replace(ing.stamp(pid), profile_id=pid ^ 1))
    v = egr.verify(dataclasses.replace(through(ing.stamp(pid)), profile_id=pid ^ 1))
    assert not v and "unknown profile" in v.reason

    good = through(ing.stamp(pid))
    assert egr.verify(good) and not egr.verify(good)  # a replay of a verified packet
    assert "replay" in egr.verify(good).reason
    assert opot.run_chain(nodes, pid)  # the chain still works after all that


def test_plain_pot_misses_a_swap_that_opot_catches():
    """Without the QKD-keyed hop masks (plain IETF PoT) a swap goes unnoticed; a skip does not."""
    nodes = [opot.OpotNode(f"sae-{i}") for i in range(4)]
    pid = OpotProvisioner().provision(nodes, ordered=False).profile_id
    ing, t1, t2, egr = nodes
    assert opot.run_chain(nodes, pid)
    assert opot.run_chain([ing, t2, t1, egr], pid)  # order not enforced by PoT alone
    assert not opot.run_chain([ing, t1, egr], pid)


def test_provisioning_and_processing_errors_are_clear():
    with pytest.raises(ValueError, match="same SAE 'sae-x'"):
        OpotProvisioner().provision([opot.OpotNode("sae-x"), opot.OpotNode("sae-x")])
    with pytest.raises(ValueError, match="neither SAE is among the allowed masters"):
        OpotProvisioner().provision([opot.OpotNode("sae-x"), opot.OpotNode("sae-y")], masters={"sae-z"})
    with pytest.raises(opot.OpotError, match="no KMS client"):
        OpotProvisioner().provision([opot.OpotNode("sae-x"), opot.OpotNode("sae-y")])
    with pytest.raises(ValueError, match="at least 2 nodes"):
        shamir_profiles(["sae-x"], 1)
    n = opot.OpotNode("sae-x")
    with pytest.raises(opot.OpotError, match="no OPoT profile 5 installed"):
        n.stamp(5)
    profs = shamir_profiles(["a", "b", "c"], 5)
    assert all(str(p.y) not in repr(p) for p in profs) and "secret" not in repr(profs[-1])
    n.install(profs[1])
    with pytest.raises(opot.OpotError, match="stamp\\(\\) is for the ingress"):
        n.stamp(5)
    with pytest.raises(opot.OpotError, match="no upstream hop key"):
        n.transit(opot.OpotMeta(5, 1, 2, 3))
    with pytest.raises(ValueError, match="28 bytes"):
        opot.OpotMeta.unpack(b"short")
