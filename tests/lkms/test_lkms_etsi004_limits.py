"""ETSI 004 stream resources (issue 18, security 6): streams opened but never joined nor used
expire (at both nodes), and an SAE may hold at most `max_streams_per_sae` streams at a node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lkmsnet import LoopThread, Net, Pki, net_ab, wait_until

from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb
from sdqkd.lkms.core import Limits

LIMITS = Limits(stream_unused_s=1.0, max_streams_per_sae=3)


@pytest.fixture
def net(lt: LoopThread, tpki: Pki, tmp_path: Path) -> Iterator[Net]:
    n = net_ab(lt, tpki, tmp_path, limits=LIMITS, keys=256)
    yield n
    n.close()



def open_stream(net: Net, timeout_ms: int = 0) -> pb.OpenConnectResponse:
    return net.kd("A", "a1").OpenConnect(pb.OpenConnectRequest(source="a1", destination="b1",
                                                                qos=pb.QoS(timeout=timeout_ms)))


def test_streams_per_sae_are_capped_and_unused_ones_expire(net: Net) -> None:
    a, b = net.nodes["A"], net.nodes["B"]
    opened = [open_stream(net) for _ in range(3)]
    assert all(o.status == pb.PEER_NOT_CONNECTED for o in opened)
    with pytest.raises(grpc.RpcError) as e:
        open_stream(net)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "a1" in (e.value.details() or "")
    assert len(b.streams.streams) == 3  # announced at the peer node too
    wait_until(lambda: not a.streams.streams and not b.streams.streams, "the unused streams to expire at both nodes")
    assert open_stream(net).status == pb.PEER_NOT_CONNECTED  # room again


def test_a_joined_stream_does_not_expire_while_idle(net: Net) -> None:
    a = net.nodes["A"]
    o = open_stream(net)
    ksid = o.key_stream_id
    j = net.kd("B", "b1").OpenConnect(pb.OpenConnectRequest(source="b1", destination="a1", key_stream_id=ksid))
    assert j.status == pb.SUCCESSFUL
    never = open_stream(net)  # a second one nobody joins
    wait_until(lambda: never.key_stream_id not in a.streams.streams, "the unjoined stream to expire")
    assert ksid in a.streams.streams
    r = net.kd("A", "a1").GetKey(pb.GetKeyRequest(key_stream_id=ksid))
    assert r.status == pb.SUCCESSFUL and len(r.key_buffer) == 32
