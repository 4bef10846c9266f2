"""Encryptor key streams, for real: both peers (sae-a4 on A, sae-b2 on B, a direct link) open
the same ETSI 004 key stream; an AES-GCM encryptor rekeys from it every N bytes and the
decryptor follows by key index. No timings are asserted."""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from sdqkd.apps.encryptor import (
    HEADER,
    Decryptor,
    Encryptor,
    FrameRejected,
    KeyStarved,
    KeyStream,
    KeyStreamError,
    StreamQoS,
    link_to,
    parse_header,
    read_link_skr,
)
from sdqkd.apps.keyclient import Etsi004Client, ManagementIdentity, SaeIdentity

A, B = "sae-a4", "sae-b2"


@pytest.fixture(scope="module")
def clients(apps_net: Any) -> Iterator[tuple[Etsi004Client, Etsi004Client]]:
    apps_net.request_keys(A, B, rate=1000)
    with Etsi004Client(SaeIdentity.from_endpoints(apps_net.endpoints, A)) as a, \
            Etsi004Client(SaeIdentity.from_endpoints(apps_net.endpoints, B)) as b:
        yield a, b


@pytest.fixture
def pair(clients) -> Iterator[tuple[KeyStream, KeyStream]]:
    """A fresh stream per test: opened by A (the sender), joined by B (the receiver)."""
    a, b = clients
    tx = KeyStream.open(a, B, StreamQoS(chunk_size=32, timeout_ms=20000))
    rx = KeyStream.open(b, A, StreamQoS(chunk_size=32, timeout_ms=20000), key_stream_id=tx.key_stream_id)
    yield tx, rx
    tx.close()
    rx.close()


def check_never_reused(frames: list[bytes], rekey_bytes: int) -> dict[int, int]:
    """(key index, counter) unique, a key never protects more than rekey_bytes, indices only grow."""
    slots = [parse_header(f) for f in frames]
    assert len(set(slots)) == len(slots)
    per_key: dict[int, int] = defaultdict(int)
    for f, (index, _) in zip(frames, slots):
        per_key[index] += len(f) - HEADER.size - 16
    assert max(per_key.values()) <= rekey_bytes
    order = [i for i, _ in slots]
    assert order == sorted(order)
    return per_key


def test_round_trip_across_many_rekeys(pair):
    tx, rx = pair
    n = 1000
    enc, dec = Encryptor(tx, rekey_bytes=n), Decryptor(rx, rekey_bytes=n)
    rng = random.Random(7)
    msgs = [os.urandom(rng.randint(0, 400)) for _ in range(120)]
    frames = [enc.seal(m) for m in msgs]
    assert [dec.open(f) for f in frames] == msgs
    per_key = check_never_reused(frames, n)
    assert len(per_key) >= sum(map(len, msgs)) // n  # it really rekeyed many times
    assert tx.keys_taken == len(per_key) == rx.keys_taken
    use = enc.consumption()
    assert use.keys == len(per_key) and use.key_bits == 256 * len(per_key) and use.frames == len(msgs)
    assert "bit/s" in use.report(skr_bps=1e6)


def test_tampered_frames_are_rejected_without_changing_state(pair):
    tx, rx = pair
    enc, dec = Encryptor(tx, rekey_bytes=4096), Decryptor(rx, rekey_bytes=4096)
    frame = enc.seal(b"attack at dawn", aad=b"hdr")
    for pos in (HEADER.size + 3, len(frame) - 1, 15):  # ciphertext, tag, counter in the header
        bad = bytearray(frame)
        bad[pos] ^= 0x01
        with pytest.raises(FrameRejected) as e:
            dec.open(bytes(bad), aad=b"hdr")
        assert e.value.reason == "tampered"
    with pytest.raises(FrameRejected, match="tampered"):
        dec.open(frame, aad=b"other")  # associated data is bound too
    with pytest.raises(FrameRejected, match="malformed"):
        dec.open(b"QE" + frame[2:10])
    assert dec.open(frame, aad=b"hdr") == b"attack at dawn"  # the genuine frame still opens


def test_out_of_order_is_accepted_within_the_window_and_replays_are_not(pair):
    tx, rx = pair
    n = 100
    enc = Encryptor(tx, rekey_bytes=n)
    dec = Decryptor(rx, rekey_bytes=n, window=4, keep_keys=2, max_skip=3)
    frames = [enc.seal(bytes([i]) * 50) for i in range(12)]  # 2 frames per key: keys k0..k5
    idx = [parse_header(f)[0] for f in frames]
    assert dec.open(frames[1]) == bytes([1]) * 50  # counter 1 before counter 0: fine
    assert dec.open(frames[0]) == bytes([0]) * 50
    with pytest.raises(FrameRejected) as e:
        dec.open(frames[0])
    assert e.value.reason == "replayed"
    assert dec.open(frames[3])  # next key first ...
    assert dec.open(frames[2])  # ... then the late frame of the previous key
    assert dec.open(frames[6])  # jumps to the 4th key: the first two are discarded
    with pytest.raises(FrameRejected) as e:
        dec.open(frames[1])
    assert e.value.reason in ("too-old", "replayed")
    assert dec.open(frames[5]) and dec.open(frames[4])  # 3rd key still held (keep_keys=2)
    forged = bytearray(frames[7])
    forged[4:12] = (idx[7] + 50).to_bytes(8, "big")
    taken = rx.keys_taken
    with pytest.raises(FrameRejected) as e:
        dec.open(bytes(forged))
    assert e.value.reason == "too-far-ahead" and rx.keys_taken == taken  # no key fetched for it
    assert [dec.open(f) for f in frames[7:]] == [bytes([i]) * 50 for i in range(7, 12)]
    with pytest.raises(FrameRejected, match="replayed"):
        dec.open(frames[11])


def test_window_edge_too_old(pair):
    tx, rx = pair
    enc, dec = Encryptor(tx, rekey_bytes=10_000), Decryptor(rx, rekey_bytes=10_000, window=4)
    frames = [enc.seal(b"x") for _ in range(6)]
    dec.open(frames[5])
    with pytest.raises(FrameRejected) as e:
        dec.open(frames[1])  # counter 1 < 5 - 4 + 1
    assert e.value.reason == "too-old"
    assert dec.open(frames[2]) == b"x"


def test_demand_above_supply_is_a_clear_status_and_never_reuses_key(clients):
    """A stream paced at 2 keys/s with a 50 ms GET_KEY timeout, an encryptor that wants a key
    per frame as fast as it can: the KMS answers status 6 and the encryptor stops sending."""
    a, b = clients
    qos = StreamQoS(chunk_size=32, max_bps=512, timeout_ms=50)
    tx = KeyStream.open(a, B, qos)
    rx = KeyStream.open(b, A, StreamQoS(chunk_size=32, timeout_ms=20000), key_stream_id=tx.key_stream_id)
    try:
        assert tx.max_bps == 512
        n = 256
        enc, dec = Encryptor(tx, rekey_bytes=n), Decryptor(rx, rekey_bytes=n)
        frames: list[bytes] = []
        sent: list[bytes] = []
        starved: list[KeyStarved] = []
        deadline = time.monotonic() + 15  # a loaded machine may starve the first attempts too
        i = 0
        while i < 20 or not frames and time.monotonic() < deadline:
            i += 1
            before = (enc.frames, tx.keys_taken)
            try:
                frames.append(enc.seal(bytes([i % 256]) * n))  # a full key's worth: every frame needs a new key
                sent.append(bytes([i % 256]) * n)
            except KeyStarved as e:
                starved.append(e)
                assert (enc.frames, tx.keys_taken) == before  # nothing sent, no key taken
        assert starved, "the paced stream never ran short"
        assert frames, "the paced stream never granted a key"
        assert {e.status for e in starved} <= {2, 6}
        assert "TIMEOUT_ERROR" in str(starved[0]) or "INSUFFICIENT" in str(starved[0])
        assert "nothing sent" in str(starved[0])
        per_key = check_never_reused(frames, n)
        assert len(per_key) == len(frames)  # each frame its own key, none stretched past n bytes
        assert [dec.open(f) for f in frames] == sent
        use = enc.consumption()
        assert use.starved == len(starved) and use.granted_max_bps == 512
        assert "starved" in use.report()
    finally:
        tx.close()
        rx.close()


def test_qos_not_satisfiable_is_refused_with_status_7(clients):
    """min_bps above the link's measured key rate is refused (the KMS grants it while the rate
    is still unknown, just after start, so ask again until the rate is measured)."""
    a, _ = clients
    deadline = time.monotonic() + 30
    while True:
        try:
            KeyStream.open(a, B, StreamQoS(chunk_size=32, min_bps=2**32 - 1)).close()
        except KeyStreamError as e:
            assert e.status == 7 and "QOS_NOT_SATISFIED" in str(e) and "min_bps" in str(e)
            return
        assert time.monotonic() < deadline, "a 4 Gbit/s min_bps was never refused"
        time.sleep(0.5)


def test_bad_parameters_are_clear_errors(pair):
    tx, _ = pair
    with pytest.raises(ValueError, match="exceeds rekey_bytes"):
        Encryptor(tx, rekey_bytes=16).seal(b"x" * 17)
    with pytest.raises(ValueError, match="rekey_bytes must be positive"):
        Encryptor(tx, rekey_bytes=0)
    with pytest.raises(ValueError, match="min_bps must be in"):
        StreamQoS(min_bps=10**12)


def test_no_key_bytes_in_reprs(pair):
    tx, rx = pair
    enc, dec = Encryptor(tx, rekey_bytes=64), Decryptor(rx, rekey_bytes=64)
    dec.open(enc.seal(b"hello"))
    for obj in (tx, rx, enc, dec):
        text = repr(obj)
        assert "bytearray" not in text and "AESGCM" not in text


def test_the_link_between_two_nodes_and_its_skr_by_gnmi(apps_net: Any):
    """link_to finds A's physical link to B by its qkdl_remote, none to C (a relay path), and
    read_link_skr reads that link's rate, all with the network's management identity: the
    in-process harness's endpoints carry it as net up's endpoints.json does (without a login,
    which in-process nodes do not ask for)."""
    eps, pki = apps_net.endpoints, apps_net.state / "pki" / "controller"
    mgmt = ManagementIdentity.from_endpoints(eps, "A")
    assert (mgmt.gnmi, mgmt.ca) == (eps["A"]["gnmi"], eps["A"]["ca"])
    assert (mgmt.cert, mgmt.key) == (str(pki / "sdqkd-controller.pem"), str(pki / "sdqkd-controller.key"))
    assert mgmt.login() is None
    route = apps_net.request_keys(A, B, rate=1000)
    qkdl_id = link_to(mgmt, eps["B"]["id"])
    assert qkdl_id == route["qkdl_id"]
    assert link_to(mgmt, eps["C"]["id"]) is None
    assert link_to(mgmt, eps["A"]["id"]) is None
    deadline = time.monotonic() + 30
    while not (skr := read_link_skr(mgmt, qkdl_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert skr is not None and skr > 0


def test_a_management_identity_from_endpoints_names_what_is_missing(tmp_path):
    """endpoints.json of `net up` (docs/endpoints.md): the node's gNMI address, CA and management
    identity, the password read from its file; an unknown node or one without `management` is a
    KeyError naming it."""
    pw = tmp_path / "gnmi-password"
    pw.write_text("s3cret")
    eps = {"A": {"gnmi": "127.0.0.1:1", "ca": "ca.pem",
                 "management": {"cert": "c.pem", "key": "c.key", "username": "ops", "password_file": str(pw)}},
           "B": {"gnmi": "127.0.0.1:2", "ca": "ca.pem"}}
    m = ManagementIdentity.from_endpoints(eps, "A")
    assert (m.gnmi, m.ca, m.cert, m.key, m.login()) == ("127.0.0.1:1", "ca.pem", "c.pem", "c.key", ("ops", "s3cret"))
    with pytest.raises(KeyError, match="node 'C' is not in the endpoints"):
        ManagementIdentity.from_endpoints(eps, "C")
    with pytest.raises(KeyError, match="node 'B' of the endpoints has no management identity"):
        ManagementIdentity.from_endpoints(eps, "B")
    assert "s3cret" not in repr(m)  # a secret: never in a repr, so never in a log
