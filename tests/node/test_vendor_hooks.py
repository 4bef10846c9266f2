"""A vendor's hooks in `sdqkd node` (node config `hooks:`, docs/node-config.md): a subclass of the
node's NodeProvisioning, imported by module or from a file beside the config; its validate_X /
apply_X run in the node's transaction beside ours, and a bad reference stops the node before it
starts, naming the file, line and key."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
import pytest
from minimalnode import write_node_config

from sdqkd.generated.gnmi_support import parse_path as P
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc
from sdqkd.node.config import ConfigError, load_config
from sdqkd.node.runtime import NodeRuntime

VENDOR = '''\
from sdqkd.generated.agent_skeleton import HookVeto
from sdqkd.node.provisioning import NodeProvisioning

APPLIED = []


class VendorHooks(NodeProvisioning):
    async def validate_qkd_link(self, txn, old, new, *, qkdl_id):
        await super().validate_qkd_link(txn, old, new, qkdl_id=qkdl_id)
        if new is not None and new.get("qkdl_enable") is False:
            raise HookVeto("vendor policy: our links are never disabled")

    async def apply_qkd_link(self, txn, old, new, *, qkdl_id):
        await super().apply_qkd_link(txn, old, new, qkdl_id=qkdl_id)
        APPLIED.append(qkdl_id)
'''



def _write(tmp: Path, hooks: str) -> Path:
    (tmp / "vendor_hooks.py").write_text(VENDOR)
    return write_node_config(tmp, f"hooks: {hooks}\n")


def _set(me: str, lid: str, enable: bool) -> gnmi_pb2.SetRequest:
    body = {"qkdl_id": lid, "qkdl_local": {"qkdn_id": me}, "qkdl_remote": {"qkdn_id": str(uuid.uuid4())},
            "qkdl_enable": enable, "qkdl_type": "etsi-qkd-node-types:PHYS",
            "phys_qkd_role": "etsi-qkd-node-types:TRANSMITTER",
            "sdqkd-node-ext:sdqkd-link": {"classical-endpoint": "127.0.0.1:9", "channel-endpoint": "127.0.0.1:9",
                                          "fibre-length-km": "10"}}
    return gnmi_pb2.SetRequest(update=[gnmi_pb2.Update(
        path=P(f"/qkd_node/qkd_links/qkd_link[qkdl_id={lid}]"),
        val=gnmi_pb2.TypedValue(json_ietf_val=json.dumps(body).encode()))])


def test_a_vendors_hooks_run_beside_the_nodes_own(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "vendor_hooks.py:VendorHooks"))
    assert cfg.hooks is not None and cfg.hooks.__name__ == "VendorHooks"
    applied = __import__(cfg.hooks.__module__, fromlist=["APPLIED"]).APPLIED

    async def main() -> None:
        rt = NodeRuntime(cfg)
        addrs = await rt.start()
        ch = grpc.aio.insecure_channel(addrs["gnmi"])
        try:
            stub = gnmi_pb2_grpc.gNMIStub(ch)
            refused, good = str(uuid.uuid4()), str(uuid.uuid4())
            with pytest.raises(grpc.aio.AioRpcError) as e:  # the vendor's veto: nothing changes
                await stub.Set(_set(cfg.id, refused, enable=False))
            assert e.value.code() == grpc.StatusCode.ABORTED and "vendor policy" in e.value.details()
            assert rt.links == {} and applied == []
            await stub.Set(_set(cfg.id, good, enable=True))
            assert set(rt.links) == {good} and applied == [good]  # ours started the engine, theirs ran after
            with pytest.raises(grpc.aio.AioRpcError) as e:  # ours still validate: an unknown profile
                await stub.Set(gnmi_pb2.SetRequest(update=[gnmi_pb2.Update(
                    path=P(f"/qkd_node/qkd_links/qkd_link[qkdl_id={good}]/sdqkd-node-ext:sdqkd-link/device-profile"),
                    val=gnmi_pb2.TypedValue(json_ietf_val=b'"nosuch"'))]))
            assert e.value.code() == grpc.StatusCode.ABORTED and "nosuch" in e.value.details()
        finally:
            await ch.close()
            await rt.stop()

    asyncio.run(main())


@pytest.mark.parametrize("hooks, words", [
    ("missing.py:VendorHooks", "hooks: no such file"),
    ("vendor_hooks.py:Nope", "hooks: vendor_hooks.py:Nope is not a subclass of sdqkd.node.provisioning."
                             "NodeProvisioning (vendor_hooks.py has no Nope)"),
    ("vendor_hooks.py:HookVeto", "hooks: vendor_hooks.py:HookVeto is not a subclass"),
    ("no_such_vendor_module:Hooks", "hooks: cannot import no_such_vendor_module: ModuleNotFoundError"),
    ("json:JSONDecoder", "hooks: json:JSONDecoder is not a subclass"),
    ("not a reference", "hooks: "),
])
def test_a_bad_hooks_reference_is_named_before_the_node_starts(tmp_path: Path, hooks: str, words: str) -> None:
    f = _write(tmp_path, json.dumps(hooks))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert f"{f}:9: " in str(e.value) and words in str(e.value)
    assert not (tmp_path / "data").exists()
