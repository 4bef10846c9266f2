"""ETSI GS QKD 014 over real HTTPS with client certificates between two real LKMS nodes."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
import uuid

import httpx
import pytest
from lkmsnet import LONG_BLOB, Net, Pki, RenderedLogs

from sdqkd import pki
from sdqkd.lkms.tlsctx import https_client_context

STATUS_FIELDS = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size", "stored_key_count",
                 "max_key_count", "max_key_per_request", "max_key_size", "min_key_size", "max_SAE_ID_count"}


def stored(net: Net) -> int:
    r = net.client("a1").get(net.url("A") + "/b1/status")
    assert r.status_code == 200
    return int(r.json()["stored_key_count"])


def enc(net: Net, master: str = "a1", slave: str = "b1", **body: object) -> list[dict[str, str]]:
    r = net.client(master).post(f"{net.url('A')}/{slave}/enc_keys", json=body)
    assert r.status_code == 200, r.text
    return list(r.json()["keys"])


def dec(net: Net, slave: str, master: str, ids: list[str]) -> httpx.Response:
    return net.client(slave).post(f"{net.url('B')}/{master}/dec_keys", json={"key_IDs": [{"key_ID": i} for i in ids]})


def refusal(r: httpx.Response, *key_ids: str) -> str:
    """A 400 body with the key IDs it names blanked: equal for unknown keys and other pairs' (no oracle)."""
    assert r.status_code == 400, r.text
    text = r.text
    for k in key_ids:
        assert k in r.json()["message"] and k in r.json()["details"][0]["key_IDs_not_found"], r.text
        text = text.replace(k, "<id>")
    return text


def test_status(net2: Net) -> None:
    r = net2.client("a1").get(net2.url("A") + "/b1/status")
    assert r.status_code == 200
    st = r.json()
    assert set(st) == STATUS_FIELDS
    assert (st["source_KME_ID"], st["target_KME_ID"]) == (net2.ids["A"], net2.ids["B"])
    assert (st["master_SAE_ID"], st["slave_SAE_ID"], st["key_size"]) == ("a1", "b1", 256)
    assert st["stored_key_count"] > 0


def test_plain_get_then_dec_keys_once(net2: Net) -> None:
    r = net2.client("a1").get(net2.url("A") + "/b1/enc_keys")  # no body, no query
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert len(keys) == 1 and len(base64.b64decode(keys[0]["key"])) == 32
    kid = keys[0]["key_ID"]
    r2 = net2.client("b1").get(net2.url("B") + "/a1/dec_keys", params={"key_ID": kid})
    assert r2.status_code == 200 and r2.json() == {"keys": keys}
    again = net2.client("b1").get(net2.url("B") + "/a1/dec_keys", params={"key_ID": kid})
    other = str(uuid.uuid4())
    nonexistent = net2.client("b1").get(net2.url("B") + "/a1/dec_keys", params={"key_ID": other})
    assert refusal(again, kid) == refusal(nonexistent, other)


@pytest.mark.parametrize("size", [256, 512, 128, 1024, 64, 8192])
def test_sizes_and_numbers(net2: Net, size: int) -> None:
    keys = enc(net2, number=3, size=size)
    assert len(keys) == 3 and all(len(base64.b64decode(k["key"])) * 8 == size for k in keys)
    r = dec(net2, "b1", "a1", [k["key_ID"] for k in keys])
    assert r.status_code == 200 and r.json()["keys"] == keys


def test_get_with_query(net2: Net) -> None:
    r = net2.client("a1").get(net2.url("A") + "/b1/enc_keys", params={"number": 2, "size": 512})
    assert r.status_code == 200 and len(r.json()["keys"]) == 2
    assert dec(net2, "b1", "a1", [k["key_ID"] for k in r.json()["keys"]]).json() == r.json()


def test_multicast(net2: Net) -> None:
    keys = enc(net2, slave="b2", number=2, additional_slave_SAE_IDs=["b3"])
    ids = [k["key_ID"] for k in keys]
    assert dec(net2, "b2", "a1", ids).json()["keys"] == keys
    assert dec(net2, "b3", "a1", ids).json()["keys"] == keys
    assert dec(net2, "b3", "a1", ids).status_code == 400  # each slave once


def test_other_pairs_key_is_indistinguishable_from_nonexistent(net2: Net) -> None:
    mine = enc(net2, master="a2", slave="b1")[0]  # app3: a2 -> b1
    nowhere = str(uuid.uuid4())
    ref = refusal(dec(net2, "b1", "a1", [nowhere]), nowhere)
    wrong_master = dec(net2, "b1", "a1", [mine["key_ID"]])  # b1 claims it came from a1
    other = enc(net2, slave="b2", additional_slave_SAE_IDs=["b3"])[0]
    wrong_slave = net2.client("b1").get(net2.url("B") + "/a1/dec_keys", params={"key_ID": other["key_ID"]})
    assert refusal(wrong_master, mine["key_ID"]) == refusal(wrong_slave, other["key_ID"]) == ref
    # Nothing was consumed by the refused attempts.
    assert dec(net2, "b1", "a2", [mine["key_ID"]]).json()["keys"] == [mine]


def test_unauthenticated(net2: Net, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> None:
    url = net2.url("A") + "/b1/enc_keys"
    before = stored(net2)
    no_cert = httpx.Client(verify=ssl.create_default_context(cafile=str(tpki.ca_path)))
    # Each 401 says what was wrong (it said "does not identify an SAE of this KME" for all).
    r = no_cert.get(url)
    assert (r.status_code, r.json()["message"]) == (
        401, "unauthorized: no client certificate (an SAE's certificate is required)")
    stranger = httpx.Client(verify=https_client_context(tpki.sae("not-registered")))
    r = stranger.get(url)
    assert (r.status_code, r.json()["message"]) == (
        401, "unauthorized: certificate of 'not-registered', which is not an SAE known to this node")
    # b1 is a registered SAE but not attached to node A.
    r = net2.client("b1").get(url.replace("/b1/", "/a1/"))
    assert (r.status_code, r.json()["message"]) == (
        401, f"unauthorized: certificate of SAE 'b1', which is attached to node {net2.ids['B']}, "
             f"not this node ({net2.ids['A']})")
    # A certificate from another CA (with a registered SAE's name) never gets through TLS.
    d = tmp_path_factory.mktemp("otherca")
    ca2, ca2_path = pki.write_ca(d)
    forged = pki.write_identity(ca2, ca2_path, d, "a1", server=False)
    ctx = ssl.create_default_context(cafile=str(tpki.ca_path))
    ctx.load_cert_chain(str(forged.cert), str(forged.key))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.Client(verify=ctx).get(url)
    for c in (no_cert, stranger):
        c.close()
    assert stored(net2) == before


@pytest.mark.parametrize("body, query", [
    (b"{not json", None), (b"[1, 2]", None), (b'"x"', None),
    (b'{"number": 0}', None), (b'{"number": 129}', None), (b'{"number": true}', None),
    (b'{"number": "2"}', None), (b'{"size": 100}', None), (b'{"size": 56}', None), (b'{"size": 8200}', None),
    (b'{"additional_slave_SAE_IDs": ["b3", "b3"]}', None), (b'{"additional_slave_SAE_IDs": "b3"}', None),
    (b'{"additional_slave_SAE_IDs": ["x1", "x2", "x3", "x4", "x5"]}', None),
    (b'{"additional_slave_SAE_IDs": ["b2"]}', None),  # b2 is not in app1
    (b'{"extension_mandatory": [{"abc": 1}]}', None), (b'{"extension_optional": 5}', None),
    (None, {"number": "-1"}), (None, {"number": "x"}), (None, {"size": "12"}), (None, {"number": ["1", "2"]}),
    (b'{"numbr": 1}', None), (b'{"number": 1, "Size": 512}', None), (b'{"number": null}', None),
    (None, {"numbr": "2"}),
])
def test_bad_requests_are_400_and_change_nothing(net2: Net, body: bytes | None, query: dict[str, str] | None) -> None:
    before = stored(net2)
    url = net2.url("A") + "/b1/enc_keys"
    c = net2.client("a1")
    r = c.post(url, content=body, headers={"Content-Type": "application/json"}) if body is not None \
        else c.get(url, params=query)
    assert r.status_code == 400, r.text
    assert isinstance(r.json().get("message"), str)
    assert stored(net2) == before


def test_refusals_name_what_was_wrong(net2: Net) -> None:
    """QA walkthrough: {"numbr": 1} gave 200 with the default key (a typo silently gave defaults);
    number=-1 and number=0 were worded differently; a batch's `key not found` named no key."""
    c, url = net2.client("a1"), net2.url("A") + "/b1/enc_keys"
    r = c.post(url, json={"numbr": 1})
    assert (r.status_code, r.json()["message"]) == (400, "Key request: unknown member 'numbr' (known: "
                                                         "additional_slave_SAE_IDs, extension_mandatory, "
                                                         "extension_optional, number, size)")
    r = c.get(url, params={"numbr": "2"})
    assert (r.status_code, r.json()["message"]) == (400, "unknown query parameter 'numbr' (known: number, size)")
    for v, got in (("-1", "-1"), ("0", "0"), ("x", "'x'"), ("129", "129")):
        r = c.get(url, params={"number": v})
        assert (r.status_code, r.json()["message"]) == (400, f"number must be an integer between 1 and 128 (got {got})")
    for body, got in (({"number": -1}, "-1"), ({"number": 0}, "0"), ({"number": "2"}, "'2'"), ({"number": True}, "True")):
        r = c.post(url, json=body)
        assert (r.status_code, r.json()["message"]) == (400, f"number must be an integer between 1 and 128 (got {got})")
    r = c.post(url, json={"size": 100})
    assert r.json()["message"] == "size must be an integer multiple of 8 between 64 and 8192 (got 100)"
    # a batch with one key that is not there: named, and nothing of the batch is taken
    keys = enc(net2, number=2)
    gone = str(uuid.uuid4())
    r = dec(net2, "b1", "a1", [keys[0]["key_ID"], gone, keys[1]["key_ID"]])
    assert (r.status_code, r.json()["message"]) == (400, f"key not found: {gone}")
    assert r.json()["details"][0]["key_IDs_not_found"] == [gone]
    assert dec(net2, "b1", "a1", [k["key_ID"] for k in keys]).json()["keys"] == keys
    b = net2.client("b1").post(net2.url("B") + "/a1/dec_keys", json={"key_IDs": [{"key_ID": gone, "kid": 1}]})
    assert (b.status_code, b.json()["message"]) == (400, "key_IDs[0]: unknown member 'kid' (known: key_ID, "
                                                         "key_ID_extension)")


def test_bad_dec_requests(net2: Net) -> None:
    c, url = net2.client("b1"), net2.url("B") + "/a1/dec_keys"
    for body in (b"{", b'{"key_IDs": []}', b'{"key_IDs": [{"key_ID": "nope"}]}', b'{"key_IDs": [1]}',
                 b'{"key_IDs": "x"}'):
        r = c.post(url, content=body)
        assert r.status_code == 400 and "message" in r.json(), body
    assert c.get(url).status_code == 400  # no key_ID
    k = str(uuid.uuid4())
    assert c.post(url, json={"key_IDs": [{"key_ID": k}, {"key_ID": k}]}).status_code == 400
    assert net2.client("b1").get(net2.url("B") + "/zz/dec_keys", params={"key_ID": k}).status_code == 400


def test_unknown_pair_and_link_down(net2: Net) -> None:
    assert net2.client("a1").get(net2.url("A") + "/nobody/status").status_code == 400
    assert net2.client("a1").get(net2.url("A") + "/nobody/enc_keys").status_code == 400
    q = net2.links[frozenset(("A", "B"))]
    net2.run(net2.nodes["A"].set_link_status(q, False))
    try:
        r = net2.client("a1").get(net2.url("A") + "/b1/enc_keys")
        assert r.status_code == 503 and "message" in r.json()
        assert net2.nodes["A"].app_stats("app1")["app_status"] == "DISCONNECTED"
    finally:
        net2.run(net2.nodes["A"].set_link_status(q, True))
    assert net2.nodes["A"].app_stats("app1")["app_status"] == "ON"


def test_concurrent_dec_keys_deliver_once(net2: Net) -> None:
    kid = enc(net2)[0]["key_ID"]
    results: list[int] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        with httpx.Client(verify=https_client_context(net2.pki.sae("b1"))) as c:  # own connection
            barrier.wait()
            results.append(c.get(net2.url("B") + "/a1/dec_keys", params={"key_ID": kid}).status_code)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [400] * 7


def test_curl_client(net2: Net, tpki: Pki) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    sae = tpki.sae("a1")
    out = subprocess.run([curl, "-sS", "--fail-with-body", "--cacert", str(sae.ca), "--cert", str(sae.cert),
                          "--key", str(sae.key), "-H", "Content-Type: application/json", "-d", '{"number": 2}',
                          net2.url("A") + "/b1/enc_keys"], capture_output=True, text=True, timeout=30, check=True)
    keys = json.loads(out.stdout)["keys"]
    assert dec(net2, "b1", "a1", [k["key_ID"] for k in keys]).json()["keys"] == keys


def test_app_stats_count_consumption(net2: Net) -> None:
    a, b = net2.nodes["A"].app_stats("app1"), net2.nodes["B"].app_stats("app1")
    keys = enc(net2, number=2, size=512)
    dec(net2, "b1", "a1", [k["key_ID"] for k in keys])
    a2, b2 = net2.nodes["A"].app_stats("app1"), net2.nodes["B"].app_stats("app1")
    assert a2["consumed_bits"] - a["consumed_bits"] == 1024 == b2["consumed_bits"] - b["consumed_bits"]
    assert set(a2) >= {"app_status", "creation_time", "consumed_bits", "statistics"}
    ks = net2.nodes["A"].key_store_stats()
    assert ks["pool"][0]["delivered-keys"] > 0 and ks["stored-keys"] == ks["pool"][0]["stored-keys"]


def test_no_key_bytes_in_logs(net2: Net) -> None:
    with RenderedLogs() as logs:
        keys = enc(net2, number=4) + enc(net2, number=2, size=512, slave="b2", additional_slave_SAE_IDs=["b3"])
        dec(net2, "b1", "a1", [k["key_ID"] for k in keys[:4]])
        dec(net2, "b2", "a1", [k["key_ID"] for k in keys[4:]])
        dec(net2, "b1", "a1", [keys[0]["key_ID"]])  # an error path too
    text = logs.text
    assert logs.lines, "expected DEBUG records from the exchange"
    for k in keys:
        raw = base64.b64decode(k["key"])
        for needle in (k["key"], raw.hex(), raw.hex().upper(), base64.b64encode(raw[:12]).decode(), raw[:12].hex()):
            assert needle not in text
    assert not LONG_BLOB.search(text)


def test_pypi_client_requests_have_no_unknown_members(net2: Net, tpki: Pki) -> None:
    """etsi-qkd-014-client 0.9.0's POST bodies (number, size, additional slaves; key_IDs) pass the
    check that refuses members the standard does not have."""
    client_mod = pytest.importorskip("etsi_qkd_014_client.client")

    def client(node: str, sae: str) -> object:
        files = tpki.sae(sae)
        return client_mod.QKD014Client(net2.nodes[node].addresses["etsi014"], str(files.cert), str(files.key),
                                       str(files.ca))

    a1, b1 = client("A", "a1"), client("B", "b1")
    code, got = a1.get_key("b1", number=2, size=512)  # type: ignore[attr-defined]
    assert code == 200, got
    ids = [k.key_id for k in got.keys]
    code, back = b1.get_key_with_key_IDs("a1", ids)  # type: ignore[attr-defined]
    assert code == 200 and [k.key for k in back.keys] == [k.key for k in got.keys]
    code, _ = client("A", "a1").get_key("b2", number=1, additional_slave_sae_ids=["b3"])  # type: ignore[attr-defined]
    assert code == 200
