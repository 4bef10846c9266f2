"""Hypothesis fuzz of Get and Set requests: no crash, only gNMI status codes, and a refused Set
changes nothing (a successful one leaves a tree that passes the model's checks)."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdqkd.agent import datastore as ds
from sdqkd.agent.server import GnmiError, NodeAgent
from sdqkd.generated import schema
from sdqkd.generated.proto.gnmi import gnmi_pb2

NODE = str(uuid.uuid4())
LIDS = [str(uuid.uuid4()) for _ in range(2)]
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED,
           grpc.StatusCode.UNIMPLEMENTED}
DATA_PATHS = [p for p, n in schema.NODES.items() if n["kind"] != "notification" and "notification" not in n]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["etsi-qkd-node-types:PHYS", "VIRT", "1.5", "20.000", NODE, *LIDS]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["qkdl_id", "qkdl_enable", "qkdl_type", "qkdl_local", "qkdn_id", "x", "sdqkd-node-ext:sdqkd-link",
                         "fibre-length-km", "etsi-qkd-sdn-node:qkd_node"]) | st.text(max_size=5), inner, max_size=4),
    max_leaves=8)


@st.composite
def paths(draw) -> gnmi_pb2.Path:
    if draw(st.booleans()):
        spath = draw(st.sampled_from(DATA_PATHS))
        elems = []
        cur = ""
        for name in spath.strip("/").split("/"):
            cur += "/" + name
            node = schema.NODES[cur]
            keys = {}
            for k in node.get("keys", []):
                if draw(st.integers(0, 4)):
                    keys[k] = draw(st.sampled_from([*LIDS, "*", "7", "x y", NODE]))
            elems.append(gnmi_pb2.PathElem(name=name, key=keys))
        return gnmi_pb2.Path(elem=elems)
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=0, max_size=4))
    return gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n) for n in names])


@st.composite
def typed_values(draw) -> gnmi_pb2.TypedValue:
    kind = draw(st.sampled_from(["json_ietf", "json", "string", "int", "bool", "bytes", "raw"]))
    if kind in ("json_ietf", "json"):
        data = json.dumps(draw(json_values)).encode()
        return gnmi_pb2.TypedValue(**{f"{kind}_val": data})
    if kind == "raw":
        return gnmi_pb2.TypedValue(json_ietf_val=draw(st.binary(max_size=20)))
    if kind == "string":
        return gnmi_pb2.TypedValue(string_val=draw(st.text(max_size=10)))
    if kind == "int":
        return gnmi_pb2.TypedValue(int_val=draw(st.integers(-(2**63), 2**63 - 1)))
    if kind == "bool":
        return gnmi_pb2.TypedValue(bool_val=draw(st.booleans()))
    return gnmi_pb2.TypedValue(bytes_val=draw(st.binary(max_size=8)))


def _agent() -> NodeAgent:
    a = NodeAgent(NODE)
    for lid in LIDS[:1]:
        a.root["qkd_node"]["qkd_links"] = {"qkd_link": {(lid,): {"qkdl_id": lid, "qkdl_enable": True}}}
    return a


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(paths(), max_size=3), st.sampled_from([0, 1, 2, 3, 4, 99]), st.sampled_from([0, 1, 2, 3, 4, 7]))
def test_get_never_crashes(ps, enc, typ):
    a = _agent()
    before = copy.deepcopy(a.root)
    try:
        a.get(gnmi_pb2.GetRequest(path=ps, encoding=enc, type=typ))
    except GnmiError as e:
        assert e.code in ALLOWED
    assert a.root == before


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(paths(), max_size=2), st.lists(st.tuples(paths(), typed_values()), max_size=3),
       st.lists(st.tuples(paths(), typed_values()), max_size=3))
def test_set_is_all_or_nothing(deletes, replaces, updates):
    a = _agent()
    before = copy.deepcopy(a.root)
    req = gnmi_pb2.SetRequest(delete=deletes, replace=[gnmi_pb2.Update(path=p, val=v) for p, v in replaces],
                              update=[gnmi_pb2.Update(path=p, val=v) for p, v in updates])
    try:
        asyncio.run(a.set(req))
    except GnmiError as e:
        assert e.code in ALLOWED, e.message
        assert a.root == before
        return
    assert ds.check_tree(a.root) == [] and a.datastore.check_references(a.root) == []


LEAVES = [p for p in DATA_PATHS if schema.NODES[p]["kind"] == "leaf" and schema.NODES[p]["config"]]


def _leaf_value(draw, t: dict) -> object:
    base = t.get("base")
    if base == "boolean":
        return draw(st.booleans() | st.just("true"))
    if base and (base.startswith("int") or base.startswith("uint")):
        lo, hi = t["range"][0]
        return draw(st.integers(int(lo) - 2, int(hi) + 2) if isinstance(lo, int) else st.integers())
    if base == "decimal64":
        return draw(st.decimals(allow_nan=False, allow_infinity=False, places=draw(st.integers(0, 4)),
                                min_value=-2000, max_value=2000).map(str))
    if base == "identityref":
        return draw(st.sampled_from(t["identities"] + ["nope", "etsi-qkd-node-types:nope"]))
    if base == "enumeration":
        return draw(st.sampled_from(t["enums"] + ["nope"]))
    return draw(st.sampled_from([NODE, *LIDS, "127.0.0.1:7000", "commercial", "", "x" * 300]))


@st.composite
def leaf_updates(draw) -> gnmi_pb2.Update:
    spath = draw(st.sampled_from(LEAVES))
    elems, cur = [], ""
    for name in spath.strip("/").split("/"):
        cur += "/" + name
        node = schema.NODES[cur]
        elems.append(gnmi_pb2.PathElem(name=name, key={k: draw(st.sampled_from(LIDS)) for k in node.get("keys", [])}))
    value = _leaf_value(draw, schema.NODES[spath]["type"])
    return gnmi_pb2.Update(path=gnmi_pb2.Path(elem=elems),
                           val=gnmi_pb2.TypedValue(json_ietf_val=json.dumps(value).encode()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(leaf_updates(), min_size=1, max_size=4))
def test_schema_aware_set_is_all_or_nothing(updates):
    a = _agent()
    before = copy.deepcopy(a.root)
    try:
        asyncio.run(a.set(gnmi_pb2.SetRequest(update=updates)))
    except GnmiError as e:
        assert e.code in ALLOWED, e.message
        assert a.root == before
        return
    assert ds.check_tree(a.root) == [] and a.datastore.check_references(a.root) == []
    # what was written reads back through Get
    for u in updates:
        a.get(gnmi_pb2.GetRequest(path=[u.path], encoding=gnmi_pb2.JSON_IETF))
