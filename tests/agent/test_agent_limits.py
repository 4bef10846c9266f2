"""Hostile Set payloads (issue 18): JSON nested deeper than the decoder can follow is
INVALID_ARGUMENT naming the update, not UNKNOWN, and changes nothing."""

from __future__ import annotations

import asyncio
import copy
import uuid

import grpc
import pytest

from sdqkd.agent.server import GnmiError, NodeAgent
from sdqkd.generated.proto.gnmi import gnmi_pb2


@pytest.mark.parametrize("doc", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000])
def test_deeply_nested_json_in_a_set_is_invalid_argument(doc: str) -> None:
    a = NodeAgent(str(uuid.uuid4()))
    before = copy.deepcopy(a.root)
    path = gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name="qkd_node")])
    req = gnmi_pb2.SetRequest(update=[gnmi_pb2.Update(path=path, val=gnmi_pb2.TypedValue(json_ietf_val=doc.encode()))])
    with pytest.raises(GnmiError) as e:
        asyncio.run(a.set(req))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested too deeply" in e.value.message and "update[0]" in e.value.message
    assert a.root == before
