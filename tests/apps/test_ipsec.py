"""IPsec without IKE (I2NSF IKE-less): the controller allocates SPIs and decides the SAs, the two
NSF agents fetch their keys from the QKD network (ETSI 014: master enc_keys, slave dec_keys) and
install them in two network namespaces joined by a veth pair; real packets (ICMP echo, UDP, TCP)
cross as ESP both ways; a wrong key is rejected; a rekey before lifetime expiry keeps traffic
flowing on new SPIs and new keys. Both data planes are parametrised: the kernel's xfrm (skipped,
naming the kernel's refusal, where it has no ESP) and the userspace ESP (scapy) over TUN.
Pair used: sae-b2 (master, node B) with sae-c1 (slave, node C): a direct link."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sdqkd.apps import ipsec_netns
from sdqkd.apps.ipsec import IpsecError, IpsecNsf, Lifetime, QkdKeyRef, SadEntry, keymat
from sdqkd.apps.ipsec_esp import EspIntegrityError, EspReplayError, EspSa, ReplayWindow
from sdqkd.apps.ipsec_netns import Capture, NsPair, ping, tcp_exchange, udp_exchange
from sdqkd.apps.ipsec_xfrm import KernelXfrm, kernel_esp_unavailable, parse_state_counters
from sdqkd.apps.keyclient import SaeIdentity
from sdqkd.controller.ipsec import IkelessController, SaParams, SpiAllocator

MASTER, SLAVE = "sae-b2", "sae-c1"
INNER_L, INNER_R = "10.199.1.1", "10.199.1.2"
PARAMS = SaParams(soft=Lifetime(seconds=600, bytes=40_000, packets=100_000),
                  hard=Lifetime(seconds=900, bytes=4_000_000, packets=1_000_000), grace_s=0.2)


@pytest.fixture(scope="module")
def nspair() -> Iterator[NsPair]:
    why = ipsec_netns.available()
    if why:
        pytest.skip(f"cannot create network namespaces: {why}")
    pair = NsPair.create()
    try:
        yield pair
    finally:
        pair.destroy()


@dataclass
class Site:
    pair: NsPair
    master: IpsecNsf
    slave: IpsecNsf
    ctl: IkelessController


@pytest.fixture(scope="module", params=["kernel", "userspace"])
def site(request: pytest.FixtureRequest, apps_net, nspair: NsPair) -> Iterator[Site]:
    if request.param == "kernel":
        why = kernel_esp_unavailable(nspair.left)
        if why:
            pytest.skip(f"this kernel has no ESP ({why}); the userspace ESP path is tested instead")
    eps = apps_net.endpoints
    master = IpsecNsf("nsf-left", nspair.left, SaeIdentity.from_endpoints(eps, MASTER), outer=nspair.left_addr,
                      inner=INNER_L, backend=request.param)
    slave = IpsecNsf("nsf-right", nspair.right, SaeIdentity.from_endpoints(eps, SLAVE), outer=nspair.right_addr,
                     inner=INNER_R, backend=request.param)
    ctl = IkelessController(request_keys=apps_net.request_keys)
    try:
        master.start()
        slave.start()
        ctl.create_tunnel("t1", master, slave, PARAMS)
        yield Site(nspair, master, slave, ctl)
    finally:
        ctl.close()
        master.close()
        slave.close()


def _counts(site: Site) -> dict[tuple[str, str], int]:
    return {(nsf, sa): st.counters.packets for nsf, sas in site.ctl.state("t1").items() for sa, st in sas.items()}


def test_sas_carry_controller_spis_and_qkd_key_ids_never_keys(site: Site):
    g = site.ctl.tunnels["t1"].current
    assert g is not None and g.number == 1
    # both ends hold the same SAs: same SPI, same key_ID, mirrored direction
    for (m, s) in zip(g.master, g.slave, strict=True):
        assert (m.name, m.spi, m.qkd.key_id) == (s.name, s.spi, s.qkd.key_id)
        assert {m.direction, s.direction} == {"inbound", "outbound"}
        assert m.spi >= 256 and m.qkd.role == "master" and s.qkd.role == "slave"
    assert len(set(g.key_ids.values())) == 2  # one QKD key per SA direction
    assert site.master.installed().keys() == site.slave.installed().keys() == set(g.names)
    cfg = site.ctl.ikeless_config(site.master)["ietf-i2nsf-ikeless:ipsec-ikeless"]
    sad = cfg["sad"]["sad-entry"]
    assert {e["ipsec-sa-config"]["spi"] for e in sad} == set(g.spis.values())
    enc = [e["ipsec-sa-config"]["esp-sa"]["encryption"] for e in sad]
    assert all(x["encryption-algorithm"] == 20 and x["key-length"] == 256 and "key" not in x for x in enc)
    assert {x["sdqkd-ipsec:qkd-key"]["key-id"] for x in enc} == set(g.key_ids.values())
    assert len(cfg["spd"]["spd-entry"]) == 2
    json.dumps(cfg)  # serialisable as it would go over NETCONF/RESTCONF


def test_real_packets_cross_as_esp_both_ways(site: Site):
    p = site.pair
    before = _counts(site)
    with Capture(p.right, p.right_if) as cap:
        assert ping(p.left, INNER_R, b"MARKER-ping-l2r") is not None
        assert ping(p.right, INNER_L, b"MARKER-ping-r2l") is not None
        assert udp_exchange(p.left, p.right, INNER_R, b"MARKER-udp-req", b"MARKER-udp-rep") == \
            (b"MARKER-udp-req", b"MARKER-udp-rep")
        assert udp_exchange(p.right, p.left, INNER_L, b"MARKER-udp-req2", b"MARKER-udp-rep2", port=40402) == \
            (b"MARKER-udp-req2", b"MARKER-udp-rep2")
        req, rep = b"MARKER-tcp-" * 300, b"MARKER-back-" * 300  # several segments each way
        assert tcp_exchange(p.left, p.right, INNER_R, req, rep) == (req, rep)
    after = _counts(site)
    assert all(after[k] > before[k] for k in before), (before, after)  # every SA at both ends carried packets
    assert set(cap.ip_protocols()) == {50}, "only ESP on the wire between the namespaces"
    assert not cap.contains(b"MARKER"), "cleartext payload seen on the wire"


def test_wrong_key_on_one_side_is_rejected_then_rekey_heals(site: Site):
    p, t = site.pair, site.ctl.tunnels["t1"]
    assert t.current is not None
    inbound = t.current.slave[0]  # m2s as the slave receives it
    assert inbound.direction == "inbound"
    be = site.slave.backend
    assert be is not None
    be.del_sa(inbound)
    be.add_sa(inbound, keymat(os.urandom(32), inbound.spi))  # same SPI, a key the sender does not have
    fails0 = site.slave.stats().get("XfrmInStateProtoError", 0)
    got, _ = udp_exchange(p.left, p.right, INNER_R, b"MARKER-must-not-arrive", b"x", timeout=1.0)
    assert got is None
    assert site.slave.stats().get("XfrmInStateProtoError", 0) > fails0
    assert site.slave.sa_state([inbound.name])[inbound.name].counters.integrity_failed >= 1
    site.ctl.rekey("t1")  # fresh SPIs and QKD keys on both sides
    assert udp_exchange(p.left, p.right, INNER_R, b"after-rekey", b"ok") == (b"after-rekey", b"ok")


def test_rekey_before_lifetime_expiry_keeps_traffic_flowing(site: Site):
    p, t = site.pair, site.ctl.tunnels["t1"]
    old = t.current
    assert old is not None
    sent = lost = 0
    site.ctl.watch(interval_s=0.05)
    try:
        extra = 0
        while extra < 15:  # traffic until the soft byte limit triggers a rekey, then some more
            assert sent < 400, "no rekey although the soft byte lifetime was passed"
            msg = sent.to_bytes(4, "big") + b"." * 996
            got, back = udp_exchange(p.left, p.right, INNER_R, msg, b"ack" + msg[:4], timeout=2.0)
            sent += 1
            lost += (got != msg) + (back != b"ack" + msg[:4])
            for states in site.ctl.state("t1").values():
                assert not any(s.hard_expired for s in states.values())
            if t.current is not None and t.current.number > old.number:
                extra += 1
    finally:
        site.ctl.stop_watch()
    new = t.current
    assert new is not None and new.number == old.number + 1
    assert lost == 0, f"{lost} of {sent} datagrams/replies lost across the rekey"
    assert set(new.spis.values()).isdisjoint(old.spis.values())
    assert set(new.key_ids.values()).isdisjoint(old.key_ids.values())
    assert any(what.startswith("rekeyed (SA ") and "past soft lifetime" in what
               for _, name, what in site.ctl.events if name == "t1")
    for nsf in (site.master, site.slave):
        assert set(nsf.installed()) == set(new.names)  # old SAs removed at both ends
        for e in old.master:
            assert nsf.backend is not None and not nsf.backend.counters(e).present
    # the new SAs carry the traffic
    assert all(s.counters.packets > 0 for sas in site.ctl.state("t1").values() for s in sas.values())


# ---------------------------------------------------------------------- no namespaces needed
def _entry(direction: str, spi: int = 0x1234, window: int = 64) -> SadEntry:
    out = direction == "outbound"
    return SadEntry("t/g1/m2s", 1, spi, direction, "tunnel", "10.0.0.1" if out else "10.0.0.2",  # type: ignore[arg-type]
                    "10.0.0.2" if out else "10.0.0.1", "10.1.0.1/32" if out else "10.1.0.2/32",
                    "10.1.0.2/32" if out else "10.1.0.1/32", Lifetime(), Lifetime(), QkdKeyRef("master", "p"),
                    replay_window=window)


def test_userspace_esp_library_between_two_sides():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.ipsec import ESP

    qkd_key = os.urandom(32)
    a, b = EspSa(_entry("outbound"), keymat(qkd_key, 0x1234)), EspSa(_entry("inbound"), keymat(qkd_key, 0x1234))
    inner = bytes(IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=5, dport=6) / b"MARKER-payload")
    wire = [a.seal(inner) for _ in range(3)]
    for i, w in enumerate(wire, 1):
        assert b"MARKER" not in w and IP(w)[ESP].spi == 0x1234 and IP(w)[ESP].seq == i
        assert bytes(IP(w)[ESP])[8:16] == i.to_bytes(8, "big")  # counter IV, unique per key
    assert b.open(wire[1]) == inner and b.open(wire[0]) == inner  # out of order within the window
    with pytest.raises(EspReplayError):
        b.open(wire[1])
    tampered = bytearray(wire[2])
    tampered[-20] ^= 1
    with pytest.raises(EspIntegrityError):
        b.open(bytes(tampered))
    assert b.open(wire[2]) == inner  # a forged copy does not burn the genuine packet's number
    wrong = EspSa(_entry("inbound"), keymat(os.urandom(32), 0x1234))
    with pytest.raises(EspIntegrityError):
        wrong.open(a.seal(inner))
    assert wrong.integrity_failed == 1 and b.integrity_failed == 1 and b.replay_dropped == 1
    # the same QKD key under another SPI gives another KEYMAT
    assert keymat(qkd_key, 0x1234) != keymat(qkd_key, 0x1235) and len(keymat(qkd_key, 1)) == 36


def test_replay_window_edges():
    w = ReplayWindow(4)
    for s in (1, 2, 5):
        assert w.fresh(s)
        w.mark(s)
    assert not w.fresh(0) and not w.fresh(1) and not w.fresh(5)  # 1 is left of the window now
    assert w.fresh(3) and w.fresh(4) and w.fresh(100)
    w.mark(100)
    assert not w.fresh(96) and w.fresh(97) and not w.fresh(100)


def test_spi_allocator_unique_per_destination_and_above_255():
    draws = iter([5, 5, 5, 7, 5, 0xFFFFFFFF - 256])
    alloc = SpiAllocator(rng=lambda n: next(draws))
    a1 = alloc.allocate("10.0.0.1")
    a2 = alloc.allocate("10.0.0.1")  # 5 again collides, retried
    b1 = alloc.allocate("10.0.0.2")  # same value allowed for another destination
    assert (a1, a2, b1) == (261, 263, 261)
    assert alloc.allocate("10.0.0.2") == 0xFFFFFFFF
    alloc.release("10.0.0.1", 261)
    assert alloc.in_use("10.0.0.1") == {263}
    real = SpiAllocator()
    spis = [real.allocate("d") for _ in range(2000)]
    assert len(set(spis)) == 2000 and min(spis) >= 256


def test_lifetimes_and_params_are_checked():
    soft = Lifetime(seconds=10, bytes=1000)
    assert not soft.reached(9.9, 999, 0) and soft.reached(10, 0, 0) and soft.reached(0, 1000, 0)
    assert not Lifetime().reached(1e9, 10**12, 10**9)  # 0 = no limit
    with pytest.raises(ValueError, match="soft bytes"):
        SaParams(soft=Lifetime(seconds=10), hard=Lifetime(seconds=20, bytes=100))
    with pytest.raises(ValueError, match="mode"):
        SaParams(mode="beet")  # type: ignore[arg-type]
    with pytest.raises(IpsecError, match="reserved"):
        _entry("outbound", spi=255)


def test_kernel_state_counters_parse_without_keeping_the_key():
    text = """src 10.0.0.1 dst 10.0.0.2
\tproto esp spi 0x00001000(4096) reqid 1(0x00000001) mode tunnel
\treplay-window 64 seq 0x00000000 flag  (0x00000000)
\taead rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223 (288 bits) 128
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\tlifetime current:
\t  4242(bytes), 17(packets)
\t  add 2025-01-01 00:00:00 use 2025-01-01 00:00:01
\tstats:
\t  replay-window 0 replay 2 failed 3
"""
    c = parse_state_counters(text)
    assert (c.bytes, c.packets, c.replay_dropped, c.integrity_failed, c.present) == (4242, 17, 2, 3, True)
    assert "0001020304" not in repr(c)
    assert parse_state_counters("").present is False


def test_kernel_path_passes_keys_on_stdin_only(nspair: NsPair, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[list[str], str | None]] = []
    real = subprocess.run

    def spy(argv, *a, **kw):
        calls.append((list(argv), kw.get("input")))
        return real(argv, *a, **kw)

    monkeypatch.setattr(ipsec_netns.subprocess, "run", spy)
    mat = keymat(os.urandom(32), 0x4321)
    entry = _entry("outbound", spi=0x4321)
    be = KernelXfrm(nspair.left, "10.0.0.1", None)
    try:
        be.add_sa(entry, mat)
        be.del_sa(entry)  # a kernel with ESP took it
    except IpsecError as e:  # a kernel without ESP refuses it: the error names the SA, not the key
        assert entry.name in str(e) and "0x00004321" in str(e) and mat.hex() not in str(e)
        assert kernel_esp_unavailable(nspair.left) is not None
    assert calls and all(mat.hex() not in " ".join(argv) for argv, _ in calls)
    assert any(stdin and mat.hex() in stdin for _, stdin in calls)


def test_auto_backend_takes_the_kernel_or_falls_back_naming_why(apps_net, nspair: NsPair):
    sae = SaeIdentity.from_endpoints(apps_net.endpoints, MASTER)
    why = kernel_esp_unavailable(nspair.left)
    with NsPair.create(prefix="10.199.2") as other:
        with IpsecNsf("probe", other.left, sae, outer=other.left_addr, inner="10.199.3.1") as nsf:
            assert nsf.kind == ("userspace" if why else "kernel")
            assert (nsf.fallback_reason is not None) == bool(why)
        if why:
            with pytest.raises(IpsecError, match="kernel ESP unavailable"), \
                    IpsecNsf("k", other.left, sae, outer=other.left_addr, inner="10.199.3.1", backend="kernel"):
                pass


def test_kernel_policies_and_routes_are_installed_and_cleaned(nspair: NsPair):
    """The kernel's SPD part works even where it has no ESP: policies, inner address, route."""
    from sdqkd.apps.ipsec import SpdEntry
    from sdqkd.apps.ipsec_netns import ip

    with NsPair.create(prefix="10.199.4") as other:
        be = KernelXfrm(other.left, other.left_addr, "10.199.5.1")
        be.setup()
        sps = [SpdEntry(f"t/{d}", 7, d, "tunnel", other.left_addr, other.right_addr, "10.199.5.1/32",  # type: ignore[arg-type]
                        "10.199.5.2/32") for d in ("outbound", "inbound")]
        for sp in sps:
            be.add_policy(sp)
        pol = ip(other.left, "xfrm", "policy", "list")
        assert "dir out" in pol and "dir in" in pol and pol.count("reqid 7") == 2 and "mode tunnel" in pol
        assert "src 10.199.5.1" in ip(other.left, "route", "get", "10.199.5.2")
        be.del_policy(sps[0])
        assert "dir out" not in ip(other.left, "xfrm", "policy", "list")
        be.close()
        assert ip(other.left, "xfrm", "policy", "list").strip() == ""
        assert "10.199.5.1" not in ip(other.left, "addr", "show", "dev", "lo")
