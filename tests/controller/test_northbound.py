"""The controller's northbound request checks (issue 18): `rate` must be a finite number of bit/s
within virt_bandwidth's uint32 range (JSON 1e400 reads as infinity in Python), the SAE IDs
non-empty strings; each refusal names the field, an unknown SAE too; every error of the API,
aiohttp's 404 and 405 included, is JSON `{"message"}`. (Authentication and the HTTP answers of a
running network are exercised in tests/e2e/test_network.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdqkd.controller.controller import Controller, NodeEndpoint
from sdqkd.controller.service import MAX_RATE_BPS, _app_request, api_app
from sdqkd.controller.topology import parse


@pytest.mark.parametrize("body, field", [
    (b'{"master": "a", "slave": "b", "rate": 1e400}', "rate"),
    (b'{"master": "a", "slave": "b", "rate": -1e400}', "rate"),
    (b'{"master": "a", "slave": "b", "rate": 1e12}', "rate"),
    (b'{"master": "a", "slave": "b", "rate": -1}', "rate"),
    (b'{"master": "a", "slave": "b", "rate": NaN}', "rate"),
    (b'{"master": "a", "slave": "b", "rate": true}', "rate"),
    (b'{"master": "a", "slave": "b", "rate": "10"}', "rate"),
    (b'{"master": "", "slave": "b"}', "master"),
    (b'{"master": "a", "slave": 5}', "slave"),
    (b'[1]', "body"),
    (b'{"master": ' * 100_000, "body"),
])
def test_bad_app_requests_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        _app_request(body)


def test_good_app_request() -> None:
    assert _app_request(b'{"master": "a", "slave": "b"}') == ("a", "b", 0.0)
    assert _app_request(f'{{"master": "a", "slave": "b", "rate": {MAX_RATE_BPS}}}'.encode())[2] == MAX_RATE_BPS


TOPO = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 10}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-b", "node": "B"}],
        "external_peers": [{"name": "vendorx", "node": "B", "saes": ["bx1"]}]}


async def _answers(requests: list[tuple[str, str, Any, bool]]) -> list[tuple[int, Any, str]]:
    """(status, JSON body, Allow header) of each (method, path, JSON body, with the token) at the
    API of a controller of TOPO (not started: nothing here reaches a node)."""
    from aiohttp.test_utils import TestClient, TestServer

    ctl = Controller(parse(TOPO), {n: NodeEndpoint(n, "id", "127.0.0.1:1", "127.0.0.1:1") for n in ("A", "B")})
    client = TestClient(TestServer(api_app(ctl, "tok", lambda: False)))
    await client.start_server()
    out = []
    try:
        for method, path, body, token in requests:
            r = await client.request(method, path, json=body, headers={"Authorization": "Bearer tok"} if token else {})
            assert r.content_type == "application/json", (method, path, await r.text())
            out.append((r.status, await r.json(), r.headers.get("Allow", "")))
    finally:
        await client.close()
    return out


def test_api_errors_are_json_and_name_the_field() -> None:
    got = asyncio.run(_answers([
        ("POST", "/apps", {"master": "sae-a", "slave": "sae-x"}, True),
        ("POST", "/apps", {"master": "sae-x", "slave": "sae-a"}, True),
        ("POST", "/apps", {"master": "sae-x", "slave": "bx1"}, True),  # an external KMS's SAE as slave
        ("POST", "/apps", {"master": "sae-a", "slave": "sae-a"}, True),
        ("GET", "/nowhere", None, True),
        ("GET", "/apps", None, True),
        ("GET", "/nowhere", None, False),  # without the token nothing is told, not even 404
    ]))
    (s1, b1, _), (s2, b2, _), (s3, b3, _), (s4, b4, _), (s5, b5, _), (s6, b6, allow), (s7, b7, _) = got
    assert s1 == 400 and b1["message"].startswith("bad request: slave: unknown SAE 'sae-x' (known: bx1, sae-a, sae-b)")
    assert s2 == 400 and b2["message"].startswith("bad request: master: unknown SAE 'sae-x'")
    assert s3 == 400 and b3["message"].startswith("bad request: master: unknown SAE 'sae-x'")
    assert s4 == 400 and b4["message"].startswith("bad request: slave: ")
    assert s5 == 404 and b5 == {"message": "not found: GET /nowhere (the API serves GET /status and POST /apps)"}
    assert s6 == 405 and b6 == {"message": "method not allowed: GET /apps (allowed: POST)"} and allow == "POST"
    assert s7 == 401 and b7["message"].startswith("unauthorized")
