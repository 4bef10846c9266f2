"""The controller's northbound request checks (issue 18): `rate` must be a finite number of bit/s
within virt_bandwidth's uint32 range (JSON 1e400 reads as infinity in Python), the SAE IDs
non-empty strings; each refusal names the field. (Authentication and the HTTP answers are
exercised on a real network in tests/e2e/test_network.py.)"""

from __future__ import annotations

import pytest

from sdqkd.controller.service import MAX_RATE_BPS, _app_request


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
