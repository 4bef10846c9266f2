"""A link entry the node takes but cannot run (ETSI GS QKD 015 leaves our augmentation's
endpoints out: an ETSI-only client does not know them) says why: qkdl_status OFF and
`sdqkd-link/engine-state/last-abort-reason` naming the leaf it lacks, until it has it. A PHYS
link without `phys_qkd_role` transmits from the end whose node ID sorts first."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
from minimalnode import write_node_config

from sdqkd.generated.gnmi_support import parse_path as P
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc
from sdqkd.node.config import load_config
from sdqkd.node.runtime import NodeRuntime

T = "etsi-qkd-node-types:"
EXT = "sdqkd-node-ext:sdqkd-link"


def _update(path: str, value: Any) -> gnmi_pb2.SetRequest:
    return gnmi_pb2.SetRequest(update=[gnmi_pb2.Update(
        path=P(path), val=gnmi_pb2.TypedValue(json_ietf_val=json.dumps(value).encode()))])


def test_a_link_without_its_endpoints_says_why_it_does_not_run(tmp_path: Path) -> None:
    cfg = load_config(write_node_config(tmp_path))
    peer, lid = "ffffffff-ffff-4fff-bfff-ffffffffffff", str(uuid.uuid4())  # this node's ID sorts first
    link = f"/qkd_node/qkd_links/qkd_link[qkdl_id={lid}]"

    async def main() -> None:
        rt = NodeRuntime(cfg)
        addrs = await rt.start()
        ch = grpc.aio.insecure_channel(addrs["gnmi"])

        def state(qkdl_id: str = lid) -> tuple[str, str]:
            entry = rt.agent.root["qkd_node"]["qkd_links"]["qkd_link"][(qkdl_id,)]
            return entry.get("qkdl_status", ""), entry["sdqkd-link"].get("engine-state", {}).get("last-abort-reason", "")

        try:
            stub = gnmi_pb2_grpc.gNMIStub(ch)
            await stub.Set(_update(link, {  # what an ETSI-only client writes
                "qkdl_id": lid, "qkdl_local": {"qkdn_id": cfg.id}, "qkdl_remote": {"qkdn_id": peer},
                "qkdl_enable": True, "qkdl_type": f"{T}PHYS"}))
            assert rt.links == {}
            assert state() == (f"{T}OFF", f"not started: no {EXT}/classical-endpoint (the key-relay host:port of "
                                          f"node {peer}): the link runs once it has one")
            await stub.Set(_update(f"{link}/{EXT}/classical-endpoint", "127.0.0.1:9"))
            assert rt.links == {}  # the transmitter still lacks the receiver's channel
            assert state() == (f"{T}OFF", f"not started: this end transmits but has no {EXT}/channel-endpoint "
                                          f"(node {peer}'s classical channel host:port)")
            await stub.Set(_update(f"{link}/{EXT}/channel-endpoint", "127.0.0.1:9"))
            assert set(rt.links) == {lid} and rt.links[lid].p.role == "alice"  # runs (its peer is not there)
            low, lid2 = "00000000-0000-4000-8000-000000000000", str(uuid.uuid4())  # sorts before this node
            await stub.Set(_update(f"/qkd_node/qkd_links/qkd_link[qkdl_id={lid2}]", {
                "qkdl_id": lid2, "qkdl_remote": {"qkdn_id": low}, "qkdl_enable": True, "qkdl_type": f"{T}PHYS",
                EXT: {"classical-endpoint": "127.0.0.1:9"}}))
            assert rt.links[lid2].p.role == "bob"  # receives: needs no channel-endpoint
            await stub.Set(_update(f"/qkd_node/qkd_links/qkd_link[qkdl_id={lid2}]/phys_qkd_role", f"{T}TRANSMITTER"))
            assert lid2 not in rt.links  # a given role holds: this end transmits, so it needs the channel
            assert state(lid2)[1].startswith(f"not started: this end transmits but has no {EXT}/channel-endpoint")
        finally:
            await ch.close()
            await rt.stop()

    asyncio.run(main())
