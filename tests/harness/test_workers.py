"""The in-process harness with its nodes shared out over worker processes (the scale mode of
`sdqkd bench net`): every link produces key across process boundaries, the controller relays a
key between two SAEs with no direct link and both ends get the same bytes through ETSI 014, and
stopping the network leaves no worker behind."""

from __future__ import annotations

import asyncio
import base64
import pickle
import ssl
from pathlib import Path

import httpx

from sdqkd.harness.inprocess import start_network

TOPO = {"nodes": [{"name": n} for n in "ABCD"],
        "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 15}, {"a": "C", "b": "D", "km": 5}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}]}
ENGINE = {"clock_scale": 0.01, "block_sifted_bits": 5e5, "cascade_variant": "original"}


def _ctx(ca: str, files: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(files["cert"], files["key"])
    return ctx


def test_worker_processes_bring_all_links_up_and_relay_a_key(tmp_path: Path):
    async def main() -> None:
        net = await start_network(TOPO, tmp_path, engine=ENGINE, workers=2, timeout=120)
        try:
            assert len(net.workers) == 2 and not net.nodes  # every node runs in a worker
            assert set(net.addresses) == set(net.endpoints) == set("ABCD")
            rows = net.controller.link_table()
            assert len(rows) == 3 and all(r["up"] and r["stored_keys"] > 0 for r in rows)
            route = await net.controller.request_keys("sae-a", "sae-c", 1000)
            assert route.path == ["A", "B", "C"] and route.virtual
            a, c = net.endpoints["A"], net.endpoints["C"]
            async with httpx.AsyncClient(verify=_ctx(a["ca"], a["saes"]["sae-a"])) as ha:
                for _ in range(100):
                    resp = await ha.post(f"https://{a['etsi014']}/api/v1/keys/sae-c/enc_keys",
                                         json={"number": 2, "size": 256})
                    if resp.status_code != 503:
                        break
                    await asyncio.sleep(0.3)
                assert resp.status_code == 200, resp.text
                keys = resp.json()["keys"]
            async with httpx.AsyncClient(verify=_ctx(c["ca"], c["saes"]["sae-c"])) as hc:
                back = await hc.post(f"https://{c['etsi014']}/api/v1/keys/sae-a/dec_keys",
                                     json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
                assert back.status_code == 200, back.text
            assert [(k["key_ID"], base64.b64decode(k["key"])) for k in back.json()["keys"]] == \
                   [(k["key_ID"], base64.b64decode(k["key"])) for k in keys]
        finally:
            await net.stop()
        assert all(p.returncode is not None for p in net.workers)

    asyncio.run(main())


def test_nodes_are_shared_out_by_link_ends(tmp_path: Path):
    """Three workers for five nodes, balanced by link ends: each worker hosts at least one node,
    and the hub (three link ends) has a worker of its own."""
    topo = {"nodes": [{"name": n} for n in "HWXYZ"],
            "links": [{"a": "H", "b": "W", "km": 5}, {"a": "H", "b": "X", "km": 5}, {"a": "H", "b": "Y", "km": 5},
                      {"a": "Y", "b": "Z", "km": 5}],
            "saes": []}

    async def main() -> None:
        net = await start_network(topo, tmp_path, engine=ENGINE, workers=3, wait_keys=False)
        try:
            assert len(net.workers) == 3 and set(net.addresses) == set("HWXYZ")
            await net.wait_all_links(120)
        finally:
            await net.stop()
        shares = [pickle.loads(f.read_bytes()) for f in sorted((tmp_path / "workers").iterdir())]
        names = [sorted(c.name for c in share) for share in shares]
        assert sorted(n for share in names for n in share) == list("HWXYZ")
        assert all(share for share in names)
        assert ["H"] in names  # the hub (3 link ends) has a worker of its own

    asyncio.run(main())
