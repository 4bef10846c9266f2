"""The pytest plugin's fixture, in-process: a 3-node line, a relayed key via ETSI 004 (gRPC)
at both ends, and the LKMS key store seen through gNMI."""

from __future__ import annotations

import grpc
import pytest

from sdqkd.generated.proto.sdqkd import etsi004_pb2, etsi004_pb2_grpc

TOPO = {"nodes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
        "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}]}


def _stub(ep: dict, sae: str) -> tuple[grpc.Channel, etsi004_pb2_grpc.KeyDeliveryStub]:
    from pathlib import Path

    f = ep["saes"][sae]
    creds = grpc.ssl_channel_credentials(Path(ep["ca"]).read_bytes(), Path(f["key"]).read_bytes(),
                                         Path(f["cert"]).read_bytes())
    ch = grpc.secure_channel(ep["etsi004"], creds)
    return ch, etsi004_pb2_grpc.KeyDeliveryStub(ch)


@pytest.mark.parametrize("workers", [0, 2])
def test_inprocess_network_relayed_key_through_etsi004(sdqkd_network, workers):
    net = sdqkd_network(TOPO, workers=workers)
    route = net.request_keys("sae-a", "sae-c", rate=1000)
    assert route["path"] == ["A", "B", "C"]
    cha, a = _stub(net.endpoints["A"], "sae-a")
    chc, c = _stub(net.endpoints["C"], "sae-c")
    qos = etsi004_pb2.QoS(key_chunk_size=32, timeout=20000)
    oa = a.OpenConnect(etsi004_pb2.OpenConnectRequest(source="sae-a", destination="sae-c", qos=qos), timeout=30)
    # the first application to open learns its key stream ID; its peer is not connected yet
    assert oa.status in (etsi004_pb2.SUCCESSFUL, etsi004_pb2.PEER_NOT_CONNECTED) and oa.key_stream_id
    oc = c.OpenConnect(etsi004_pb2.OpenConnectRequest(source="sae-c", destination="sae-a", qos=qos,
                                                      key_stream_id=oa.key_stream_id), timeout=30)
    assert oc.status == etsi004_pb2.SUCCESSFUL
    ka = a.GetKey(etsi004_pb2.GetKeyRequest(key_stream_id=oa.key_stream_id), timeout=30)
    kc = c.GetKey(etsi004_pb2.GetKeyRequest(key_stream_id=oa.key_stream_id, index=ka.index), timeout=30)
    assert ka.status == kc.status == etsi004_pb2.SUCCESSFUL
    assert ka.key_buffer == kc.key_buffer and len(ka.key_buffer) == 32
    cha.close()
    chc.close()
