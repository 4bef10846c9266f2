"""Fuzzing the ETSI 014 REST surface: any body or query gets 200/400/401/503 with a proper
body (never a 500), and a 400 changes no key store."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lkmsnet import Net

FIELDS = ["number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional", "key_IDs",
          "key_ID"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 8, 64, 256, 512, 129]),
                    st.floats(allow_nan=False), st.text(max_size=40), st.sampled_from(["b1", "b2", "b3", "a1"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=5).map(lambda d: json.dumps(d).encode()),
    values.map(lambda v: json.dumps(v).encode()),
)
queries = st.dictionaries(st.sampled_from(["number", "size", "key_ID", "x"]),
                          st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
                          | st.sampled_from(["1", "2", "256", "0", "-1", "99999999999"]), max_size=3)
targets = st.sampled_from([("A", "a1", "status"), ("A", "a1", "enc_keys"), ("B", "b1", "dec_keys")])
saes = st.sampled_from(["b1", "b2", "a1", "nobody", "a-b_c.d"])


def _stored(net: Net) -> tuple[Any, ...]:
    q = net.links[frozenset(("A", "B"))]
    return tuple(net.nodes[n].store.pool_stats(q) for n in ("A", "B"))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=targets, sae=saes, method=st.sampled_from(["GET", "POST"]), body=bodies, query=queries)
def test_rest_fuzz(net2: Net, target: tuple[str, str, str], sae: str, method: str, body: bytes | None,
                   query: dict[str, str]) -> None:
    node, client, ep = target
    url = f"{net2.url(node)}/{sae}/{ep}"
    before = _stored(net2)
    r = net2.client(client).request(method, url, params=query, content=body if method == "POST" else None)
    assert r.status_code in (200, 400, 401, 405, 503), r.text
    data = r.json()
    if r.status_code == 200:
        assert ("keys" in data) or ("stored_key_count" in data)
    else:
        assert isinstance(data.get("message"), str)
    if r.status_code == 400:
        assert _stored(net2) == before
