"""gNMI 0.10 conformance with the raw generated stubs: every RPC, mode and option, and the
error codes (INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, UNAUTHENTICATED, ABORTED)."""

from __future__ import annotations

import time

import grpc
import pytest
from gnmiutil import LINKS, G, P, Stream, jv, sub_list, val

from sdqkd.generated.gnmi_support import path_str
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc

IETF, JSON = gnmi_pb2.JSON_IETF, gnmi_pb2.JSON


@pytest.fixture
def g(channel, target) -> G:
    return G(channel, target)


@pytest.fixture
def link(g: G):
    """A fresh PHYS link on the target, removed afterwards."""
    lid, body = g.new_link()
    g.set(update=[(f"{LINKS}[qkdl_id={lid}]", body)])
    yield lid, body
    g.set(delete=[f"{LINKS}[qkdl_id={lid}]"])


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


# ---------------------------------------------------------------- Capabilities


def test_capabilities(g: G):
    c = g.caps()
    models = {(m.name, m.version) for m in c.supported_models}
    assert ("etsi-qkd-sdn-node", "2022-01-30") in models
    assert any(m.name == "etsi-qkd-node-types" for m in c.supported_models)
    assert {gnmi_pb2.JSON, gnmi_pb2.JSON_IETF} <= set(c.supported_encodings)
    assert c.gNMI_version == "0.10.0"


# ---------------------------------------------------------------- Get


def test_get_leaf_json_ietf_and_json(g: G, link):
    lid, body = link
    r = g.get(f"{LINKS}[qkdl_id={lid}]/qkdl_type")
    assert len(r.notification) == 1 and r.notification[0].timestamp > 0
    assert val(r.notification[0].update[0].val) == "etsi-qkd-node-types:PHYS"
    assert g.value(f"{LINKS}[qkdl_id={lid}]/qkdl_enable", enc=JSON) is True


def test_get_one_notification_per_path(g: G, link):
    lid, _ = link
    r = g.get("/qkd_node/qkdn_id", f"{LINKS}[qkdl_id={lid}]/qkdl_enable")
    assert len(r.notification) == 2


def test_get_list_entry_and_wildcards(g: G, link):
    lid, body = link
    entry = g.value(f"{LINKS}[qkdl_id={lid}]")
    assert entry["qkdl_id"] == lid and entry["qkdl_remote"] == body["qkdl_remote"]
    r = g.get(f"{LINKS}[qkdl_id=*]/qkdl_enable")
    paths = {path_str(u.path) for u in r.notification[0].update}
    assert f"{LINKS}[qkdl_id={lid}]/qkdl_enable" in paths
    r = g.get(LINKS)  # a list path without keys: every entry
    assert any(val(u.val)["qkdl_id"] == lid for u in r.notification[0].update)
    r = g.get(f"{LINKS}[qkdl_id={lid}]/...")
    leaf_paths = {path_str(u.path) for u in r.notification[0].update}
    assert f"{LINKS}[qkdl_id={lid}]/qkdl_remote/qkdn_id" in leaf_paths


def test_get_with_wildcard_element_names(g: G, link):
    lid, body = link
    r = g.get(f"{LINKS}[qkdl_id={lid}]/*/qkdn_id")  # qkdl_local and qkdl_remote
    got = {path_str(u.path): val(u.val) for u in r.notification[0].update}
    assert got[f"{LINKS}[qkdl_id={lid}]/qkdl_local/qkdn_id"] == body["qkdl_local"]["qkdn_id"]
    assert got[f"{LINKS}[qkdl_id={lid}]/qkdl_remote/qkdn_id"] == body["qkdl_remote"]["qkdn_id"]
    s = Stream(g, sub_list(f"{LINKS}[qkdl_id={lid}]/*/qkdi_id", updates_only=True))
    s.until_sync()
    g.set(update=[(f"{LINKS}[qkdl_id={lid}]/qkdl_remote/qkdi_id", 9)])
    assert s.updates_until(lambda got: got) == [(f"{LINKS}[qkdl_id={lid}]/qkdl_remote/qkdi_id", 9)]
    s.close()


def test_get_with_prefix_and_target_echo(g: G, link):
    lid, _ = link
    prefix = P(f"{LINKS}[qkdl_id={lid}]")
    if g.target.name:
        prefix.target = g.target.name
    r = g.get("qkdl_enable", prefix=prefix)
    n = r.notification[0]
    assert val(n.update[0].val) is True
    if g.target.name:
        assert n.prefix.target == g.target.name


def test_get_root_is_rfc7951(g: G, link):
    """The root in JSON_IETF loads into the pyangbind bindings (a strict RFC 7951 reader)."""
    from pyangbind.lib import pybindJSON

    from sdqkd.generated import bindings

    r = g.get("/")
    doc = val(r.notification[0].update[0].val)
    assert "etsi-qkd-sdn-node:qkd_node" in doc
    node = doc["etsi-qkd-sdn-node:qkd_node"]
    assert node["qkdn_status"].startswith("etsi-qkd-node-types:")
    import json

    obj = pybindJSON.loads_ietf(json.dumps(doc), bindings, "etsi_qkd_sdn_node")
    assert lid_in(obj, link[0])


def lid_in(obj, lid: str) -> bool:
    return lid in obj.qkd_node.qkd_links.qkd_link


def test_get_config_and_state_filters(g: G, link):
    cfg = val(g.get("/qkd_node", type=gnmi_pb2.GetRequest.CONFIG).notification[0].update[0].val)
    assert "qkdn_id" in cfg and "qkdn_status" not in cfg
    st = val(g.get("/qkd_node", type=gnmi_pb2.GetRequest.STATE).notification[0].update[0].val)
    assert "qkdn_status" in st and "qkdn_id" not in st
    op = val(g.get("/qkd_node", type=gnmi_pb2.GetRequest.OPERATIONAL).notification[0].update[0].val)
    assert "qkdn_id" not in op


@pytest.mark.parametrize("path, code, words", [
    ("/qkd_node/no_such_leaf", grpc.StatusCode.INVALID_ARGUMENT, "no_such_leaf"),
    ("/qkd_node/qkd_links/qkd_link[qkdl_id=not-a-uuid]", grpc.StatusCode.INVALID_ARGUMENT, "not-a-uuid"),
    ("/qkd_node/qkd_links/qkd_link[nokey=1]", grpc.StatusCode.INVALID_ARGUMENT, "nokey"),
    ("/qkd_node/qkd_links/qkd_link[qkdl_id=00000000-0000-4000-8000-00000000dead]", grpc.StatusCode.NOT_FOUND,
     "00000000-0000-4000-8000-00000000dead"),
])
def test_get_errors_name_the_path(g: G, path: str, code: grpc.StatusCode, words: str):
    c, msg = code_of(lambda: g.get(path))
    assert c == code and words in msg


def test_get_unsupported_encoding(g: G):
    c, msg = code_of(lambda: g.get("/qkd_node/qkdn_id", enc=gnmi_pb2.PROTO))
    assert c == grpc.StatusCode.UNIMPLEMENTED and "PROTO" in msg


# ---------------------------------------------------------------- Set


def test_set_update_replace_delete_in_one_transaction(g: G, link):
    lid, body = link
    lid2, body2 = g.new_link()
    p1, p2 = f"{LINKS}[qkdl_id={lid}]", f"{LINKS}[qkdl_id={lid2}]"
    r = g.set(delete=[f"{p1}/qkdl_applications"], replace=[(f"{p1}/qkdl_remote", {"qkdn_id": body2["qkdl_remote"]["qkdn_id"]})],
              update=[(p2, body2), (f"{p1}/qkdl_enable", False)])
    assert [u.op for u in r.response] == [gnmi_pb2.UpdateResult.DELETE, gnmi_pb2.UpdateResult.REPLACE,
                                          gnmi_pb2.UpdateResult.UPDATE, gnmi_pb2.UpdateResult.UPDATE]
    assert g.value(f"{p1}/qkdl_enable") is False
    assert g.value(f"{p1}/qkdl_remote/qkdn_id") == body2["qkdl_remote"]["qkdn_id"]
    assert g.value(f"{p2}/qkdl_id") == lid2
    g.set(delete=[p2])
    c, _ = code_of(lambda: g.get(p2))
    assert c == grpc.StatusCode.NOT_FOUND


def test_set_delete_then_update_same_path_order(g: G, link):
    lid, _ = link
    p = f"{LINKS}[qkdl_id={lid}]/qkdl_enable"
    g.set(delete=[p], update=[(p, False)])  # delete runs first, so the update wins
    assert g.value(p) is False


def test_set_with_json_encoding_and_scalar_values(g: G, link):
    lid, _ = link
    p = f"{LINKS}[qkdl_id={lid}]"
    g.set(update=[(f"{p}/qkdl_enable", True)], ietf=False)
    g.set(update=[(f"{p}/phys_channel_att", gnmi_pb2.TypedValue(string_val="7.125"))])
    assert g.value(f"{p}/phys_channel_att") == "7.125"
    g.set(update=[(f"{p}/qkdl_enable", gnmi_pb2.TypedValue(bool_val=False))])
    assert g.value(f"{p}/qkdl_enable") is False


def _snapshot(g: G) -> dict:
    return val(g.get("/qkd_node", type=gnmi_pb2.GetRequest.CONFIG).notification[0].update[0].val)


@pytest.mark.parametrize("make, code, words", [
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/qkdl_enable", "yes")]}, "INVALID_ARGUMENT", "boolean"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/phys_channel_att", "1.23456")]}, "INVALID_ARGUMENT",
     "fraction digits"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/qkdl_local/qkdi_id", -1)]}, "INVALID_ARGUMENT", "range"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/qkdl_type", "etsi-qkd-node-types:NOPE")]},
     "INVALID_ARGUMENT", "NOPE"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/no_such", 1)]}, "INVALID_ARGUMENT", "no_such"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]", {**b, "qkdl_id": "11111111-1111-4111-8111-111111111111"})]},
     "INVALID_ARGUMENT", "conflicts"),
    (lambda lid, b: {"update": [(LINKS, [b])]}, "INVALID_ARGUMENT", "key"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/qkdl_performance/skr", 5)]}, "INVALID_ARGUMENT",
     "config false"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]", gnmi_pb2.TypedValue(json_ietf_val=b"{not json"))]},
     "INVALID_ARGUMENT", "invalid JSON"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/qkdl_local/qkdn_id", "22222222-2222-4222-8222-222222222222")]},
     "ABORTED", "qkdl_local/qkdn_id"),
    (lambda lid, b: {"update": [(f"{LINKS}[qkdl_id={lid}]/qkdl_type", "etsi-qkd-node-types:VIRT"),
                                (f"{LINKS}[qkdl_id={lid}]/phys_channel_att", "3.0")]}, "ABORTED", "phys_channel_att"),
])
def test_bad_set_is_refused_and_changes_nothing(g: G, link, make, code: str, words: str):
    lid, body = link
    before = _snapshot(g)
    # a good operation rides along: all or nothing means it must not land either
    lid2, body2 = g.new_link()
    ops = make(lid, body)
    ops.setdefault("update", [])
    ops["update"] = [(f"{LINKS}[qkdl_id={lid2}]", body2)] + list(ops["update"])
    c, msg = code_of(lambda: g.set(**ops))
    assert c == getattr(grpc.StatusCode, code), msg
    assert words in msg
    assert _snapshot(g) == before


def test_set_of_the_node_id_is_refused(g: G):
    c, msg = code_of(lambda: g.set(update=[("/qkd_node/qkdn_id", "33333333-3333-4333-8333-333333333333")]))
    assert c in (grpc.StatusCode.ABORTED, grpc.StatusCode.INVALID_ARGUMENT) and "qkdn_id" in msg


def test_delete_of_absent_path_is_accepted(g: G):
    g.set(delete=[f"{LINKS}[qkdl_id=44444444-4444-4444-8444-444444444444]"])


def test_oversized_set_is_refused(g: G, link):
    lid, _ = link
    huge = "x" * (5 * 1024 * 1024)
    c, _ = code_of(lambda: g.set(update=[(f"{LINKS}[qkdl_id={lid}]/phys_channel_att", huge)]))
    assert c in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)


# ---------------------------------------------------------------- Subscribe


def test_subscribe_once(g: G, link):
    lid, _ = link
    s = Stream(g, sub_list(f"{LINKS}[qkdl_id={lid}]", mode=gnmi_pb2.SubscriptionList.ONCE))
    before = s.until_sync()
    paths = {path_str(u.path) for r in before for u in r.update.update}
    assert f"{LINKS}[qkdl_id={lid}]/qkdl_enable" in paths
    assert s.next() is StopIteration  # ONCE ends after sync_response
    s.close()


def test_subscribe_poll(g: G, link):
    lid, _ = link
    p = f"{LINKS}[qkdl_id={lid}]/qkdl_enable"
    s = Stream(g, sub_list(p, mode=gnmi_pb2.SubscriptionList.POLL))
    first = s.until_sync()
    assert [val(u.val) for r in first for u in r.update.update] == [True]
    g.set(update=[(p, False)])
    s.poll()
    second = s.until_sync()
    assert [val(u.val) for r in second for u in r.update.update] == [False]
    s.poll()
    assert [val(u.val) for r in s.until_sync() for u in r.update.update] == [False]
    s.close()


def test_stream_on_change_updates_and_deletes(g: G):
    lid, body = g.new_link()
    p = f"{LINKS}[qkdl_id={lid}]"
    s = Stream(g, sub_list(p))  # the path does not exist yet: stays subscribed
    assert s.until_sync() == []
    g.set(update=[(p, body)])
    seen = s.updates_until(lambda got: any(path.endswith("/qkdl_enable") for path, _ in got))
    assert (f"{p}/qkdl_enable", True) in seen
    g.set(update=[(f"{p}/qkdl_enable", False)])
    assert s.updates_until(lambda got: got)[-1] == (f"{p}/qkdl_enable", False)
    g.set(delete=[p])
    assert (p, "<deleted>") in s.updates_until(lambda got: any(v == "<deleted>" for _, v in got))
    s.close()


def test_stream_sees_nothing_of_a_failed_set(g: G, link):
    lid, _ = link
    p = f"{LINKS}[qkdl_id={lid}]"
    s = Stream(g, sub_list(p, updates_only=True))
    assert s.until_sync() == []
    with pytest.raises(grpc.RpcError):
        g.set(update=[(f"{p}/qkdl_enable", False), (f"{p}/qkdl_local/qkdi_id", "bad")])
    g.set(update=[(f"{p}/qkdl_remote/qkdi_id", 7)])  # a marker that must be the first thing seen
    seen = s.updates_until(lambda got: got)
    assert seen[0] == (f"{p}/qkdl_remote/qkdi_id", 7)
    s.close()


def test_stream_updates_only_and_target_defined(g: G, link):
    lid, _ = link
    p = f"{LINKS}[qkdl_id={lid}]/qkdl_enable"
    s = Stream(g, sub_list(p, sub_mode=gnmi_pb2.TARGET_DEFINED, updates_only=True))
    assert s.until_sync() == []
    g.set(update=[(p, False)])
    assert s.updates_until(lambda got: got) == [(p, False)]
    s.close()


def test_stream_sample_with_suppress_redundant_and_heartbeat(g: G, link):
    lid, _ = link
    p = f"{LINKS}[qkdl_id={lid}]/qkdl_enable"
    s = Stream(g, sub_list(p, sub_mode=gnmi_pb2.SAMPLE, sample_interval=50_000_000))
    s.until_sync()
    two = s.updates_until(lambda got: len(got) >= 2)  # sampled again without any change
    assert two[:2] == [(p, True), (p, True)]
    s.close()
    # suppress_redundant: the sync counts as sent, so an unchanged leaf comes again only with the
    # heartbeat (1 s), not with the first of the samples (every 50 ms) after the sync
    s = Stream(g, sub_list(p, sub_mode=gnmi_pb2.SAMPLE, sample_interval=50_000_000, suppress_redundant=True,
                           heartbeat_interval=1_000_000_000))
    assert [path_str(u.path) for r in s.until_sync() for u in r.update.update] == [p]  # the sync sent it
    t0 = time.monotonic()
    first = s.updates_until(lambda got: len(got) >= 1)
    t1 = time.monotonic()
    assert first == [(p, True)] and t1 - t0 >= 0.8  # the heartbeat, after about 20 silent samples
    g.set(update=[(p, False)])
    nxt = s.updates_until(lambda got: len(got) >= 1)
    assert nxt == [(p, False)]
    again = s.updates_until(lambda got: len(got) >= 1)  # nothing changed: only the heartbeat resends
    assert again == [(p, False)] and time.monotonic() - t1 >= 0.8
    s.close()


def test_stream_heartbeat_on_change(g: G, link):
    lid, _ = link
    p = f"{LINKS}[qkdl_id={lid}]/qkdl_enable"
    sl = sub_list(p, heartbeat_interval=100_000_000)
    s = Stream(g, sl)
    s.until_sync()
    assert s.updates_until(lambda got: len(got) >= 2)[:2] == [(p, True), (p, True)]
    s.close()


@pytest.mark.parametrize("sl, code", [
    (sub_list("/qkd_node/nope"), grpc.StatusCode.INVALID_ARGUMENT),
    (sub_list("/qkd_node/qkdn_id", enc=gnmi_pb2.PROTO), grpc.StatusCode.UNIMPLEMENTED),
    (gnmi_pb2.SubscriptionList(mode=gnmi_pb2.SubscriptionList.STREAM), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_subscribe_errors(g: G, sl, code):
    s = Stream(g, sl)
    with pytest.raises(grpc.RpcError) as e:
        s.until_sync()
    assert e.value.code() == code
    s.close()


# ---------------------------------------------------------------- security and services


def test_missing_or_wrong_credentials(channel, target):
    if not target.user:
        pytest.skip("target configured without username/password")
    stub = gnmi_pb2_grpc.gNMIStub(channel)
    for md in [(), (("username", target.user), ("password", "wrong"))]:
        with pytest.raises(grpc.RpcError) as e:
            stub.Get(gnmi_pb2.GetRequest(path=[P("/qkd_node/qkdn_id")]), metadata=md, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Subscribe(iter([gnmi_pb2.SubscribeRequest(subscribe=sub_list("/qkd_node/qkdn_id"))]), timeout=10))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_client_without_certificate_is_refused(target):
    if target.insecure or not target.ours:
        pytest.skip("mutual TLS is checked on the suite's own node")
    ch = target.channel(with_cert=False)
    with pytest.raises(grpc.RpcError) as e:
        gnmi_pb2_grpc.gNMIStub(ch).Capabilities(gnmi_pb2.CapabilityRequest(), metadata=target.metadata(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    ch.close()


def test_reflection_and_health(channel, target):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    h = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="gnmi.gNMI"), timeout=10)
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    resp = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=10)))
    names = {s.name for s in resp.list_services_response.service}
    assert "gnmi.gNMI" in names


def test_json_value_of_set_can_be_json_or_ietf(g: G):
    lid, body = g.new_link()
    p = f"{LINKS}[qkdl_id={lid}]"
    g.set(update=[(p, gnmi_pb2.TypedValue(json_val=jv(body).json_ietf_val))])
    assert g.value(f"{p}/qkdl_id") == lid
    g.set(delete=[p])
