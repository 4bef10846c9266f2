"""The generated package of this repository: schema index, path builders, path text, and the
typed client driving a real gRPC gNMI server (a recording servicer on loopback)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sdqkd.generated import agent_skeleton, client, paths, schema
from sdqkd.generated.gnmi_support import parse_path, path_str
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc

LINK = "/qkd_node/qkd_links/qkd_link"


def test_schema_index_describes_etsi_and_augmentation():
    n = schema.NODES
    assert n[LINK]["keys"] == ["qkdl_id"] and n[LINK]["config"] is True
    assert n[f"{LINK}/qkdl_status"]["config"] is True  # writable as published
    assert n["/qkd_node/qkdn_status"]["config"] is False
    assert n[f"{LINK}/qkdl_type"]["type"]["identities"] == ["etsi-qkd-node-types:PHYS", "etsi-qkd-node-types:VIRT"]
    assert n[f"{LINK}/qkdl_id"]["type"]["typedef"] == "ietf-yang-types:uuid"
    assert n[f"{LINK}/qkdl_id"]["type"]["patterns"]
    assert n[f"{LINK}/phys_channel_att"]["when"]["equals"] == "etsi-qkd-node-types:PHYS"
    assert n[f"{LINK}/qkdl_performance/phys_perf"]["when"]["equals"] == "etsi-qkd-node-types:PHYS"
    assert n[f"{LINK}/qkdl_performance/skr"]["type"]["range"] == [[0, 4294967295]]
    ext = n[f"{LINK}/sdqkd-link/fibre-length-km"]
    assert ext["module"] == "sdqkd-node-ext" and ext["type"]["fraction_digits"] == 3
    assert n["/qkd_node/sdqkd-key-store/stored-bits"]["type"]["base"] == "uint64"
    assert n["/qkd_node/sdqkd-key-store"]["config"] is False
    assert len([x for x in n.values() if x["kind"] == "notification"]) == 11
    for path, node in n.items():  # children lists are consistent
        for c in node.get("children", []):
            assert c.startswith(path + "/") and c in n


def test_path_builders():
    p = paths.qkd_node().qkd_links().qkd_link(qkdl_id="x").qkdl_status
    assert isinstance(p, gnmi_pb2.Path)
    assert path_str(p) == "/qkd_node/qkd_links/qkd_link[qkdl_id=x]/qkdl_status"
    assert path_str(paths.qkd_node().qkd_links().qkd_link().path()) == "/qkd_node/qkd_links/qkd_link[qkdl_id=*]"
    assert path_str(paths.qkd_node().descendants()) == "/qkd_node/..."
    assert path_str(paths.qkd_node().qkd_interfaces().qkd_interface(qkdi_id=3).qkdi_status) == \
        "/qkd_node/qkd_interfaces/qkd_interface[qkdi_id=3]/qkdi_status"
    assert path_str(paths.sdqkdn_link_down()) == "/sdqkdn_link_down"
    assert paths.root() == gnmi_pb2.Path()


names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8)


@given(st.lists(st.tuples(names, st.dictionaries(names, st.text(max_size=6), max_size=2)), min_size=1, max_size=4))
@example([("\\:", {})])  # a backslash before a colon (path_str once unescaped it into a bare ':')
def test_path_text_round_trips(elems):
    p = gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n, key=k) for n, k in elems])
    assert parse_path(path_str(p)) == p


@pytest.mark.parametrize("bad", ["/a[b=c", "/a[=x]", "/a]b", "/a/[k=v]"])
def test_malformed_path_text_is_refused(bad: str):
    with pytest.raises(ValueError, match="malformed"):
        parse_path(bad)


def test_skeleton_hooks_and_models():
    assert agent_skeleton.HOOKS[LINK] == "qkd_link"
    assert agent_skeleton.HOOKS["/qkd_node/qkd_links/qkd_link/sdqkd-link"] == "sdqkd_link"
    assert "/qkd_node/sdqkd-key-store" not in agent_skeleton.HOOKS  # state only: no Set hook
    assert ("etsi-qkd-sdn-node", "ETSI ISG QKD", "2022-01-30") in agent_skeleton.MODELS
    # the hook interface is protocol-neutral: two phases per node, no gRPC in it
    assert not issubclass(agent_skeleton.ModelHooks, gnmi_pb2_grpc.gNMIServicer)
    for name in agent_skeleton.HOOKS.values():
        for phase in ("validate", "apply"):
            assert asyncio.iscoroutinefunction(getattr(agent_skeleton.ModelHooks, f"{phase}_{name}"))


class Recorder(gnmi_pb2_grpc.gNMIServicer):
    def __init__(self) -> None:
        self.requests: list = []
        self.metadata: list = []

    async def Get(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        val = gnmi_pb2.TypedValue(json_ietf_val=json.dumps({"qkdl_id": "x", "qkdl_enable": True}).encode())
        return gnmi_pb2.GetResponse(notification=[gnmi_pb2.Notification(update=[gnmi_pb2.Update(path=request.path[0], val=val)])])

    async def Set(self, request, context):
        self.requests.append(request)
        return gnmi_pb2.SetResponse()

    async def Subscribe(self, request_iterator, context):
        req = await request_iterator.__anext__()
        self.requests.append(req)
        val = gnmi_pb2.TypedValue(json_ietf_val=b'{"reason": "fibre cut"}')
        sub_path = req.subscribe.subscription[0].path
        yield gnmi_pb2.SubscribeResponse(update=gnmi_pb2.Notification(update=[gnmi_pb2.Update(path=sub_path, val=val)]))
        yield gnmi_pb2.SubscribeResponse(sync_response=True)


def test_typed_client_sends_model_paths_over_real_grpc():
    async def main() -> None:
        server = grpc.aio.server()
        rec = Recorder()
        gnmi_pb2_grpc.add_gNMIServicer_to_server(rec, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                c = client.ModelClient(ch, username="admin", password="pw")
                link = await c.get_qkd_link("x")
                assert link == {"qkdl_id": "x", "qkdl_enable": True}
                await c.create_qkd_link({"qkdl_id": "y", "qkdl_enable": False})
                await c.delete_qkd_link("y")
                got = [v async for v in c.subscribe_sdqkdn_link_down()]
                assert got == [{"reason": "fibre cut"}]
        finally:
            await server.stop(None)
        get, create, delete, sub = rec.requests
        assert path_str(get.path[0]) == f"{LINK}[qkdl_id=x]" and get.encoding == gnmi_pb2.JSON_IETF
        assert rec.metadata[0]["username"] == "admin" and rec.metadata[0]["password"] == "pw"
        assert path_str(create.update[0].path) == f"{LINK}[qkdl_id=y]"
        assert json.loads(create.update[0].val.json_ietf_val) == {"qkdl_id": "y", "qkdl_enable": False}
        assert path_str(delete.delete[0]) == f"{LINK}[qkdl_id=y]"
        assert path_str(sub.subscribe.subscription[0].path) == "/sdqkdn_link_down"
        assert sub.subscribe.subscription[0].mode == gnmi_pb2.ON_CHANGE

    asyncio.run(main())


def test_unknown_notification_is_refused():
    async def main() -> None:
        async with grpc.aio.insecure_channel("127.0.0.1:9") as ch:
            with pytest.raises(ValueError, match="unknown notification"):
                async for _ in client.ModelClient(ch).subscribe_notifications(["no_such"]):
                    pass

    asyncio.run(main())
