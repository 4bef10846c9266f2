"""The fast ETSI 004 path: the h2-based gRPC server (runtime/lkms/h2grpc.py) answering batches
of pipelined GetKeyStream requests, and the pipelining bench client (runtime/bench/_h2stream.py).

Checked: both peer applications get identical bytes in index order whichever side streams
first (the peer side takes the slow path inside a batch), requests with explicit indices and
errors inside one stream keep request order, gRPC protocol behaviour grpcio clients rely on
(UNIMPLEMENTED, deadlines, cancellation, plaintext), and back-pressure: a client that does not
read cannot make the server buffer without bound or consume its requests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from lkmsnet import LoopThread, Net, Pki, net_ab

from sdqkd.bench._h2stream import client_context, get_keys
from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb
from sdqkd.lkms import h2grpc
from sdqkd.lkms.core import Limits

S = pb.Status


@pytest.fixture(scope="module")
def fast(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = net_ab(lt, tpki, tmp_path_factory.mktemp("fast"), limits=Limits(stream_prefetch_max=2048), keys=60000)
    yield net
    net.close()


def open_pair(net: Net, chunk: int = 32) -> str:
    ka, kb = net.kd("A", "a1"), net.kd("B", "b1")
    r = ka.OpenConnect(pb.OpenConnectRequest(source="a1", destination="b1", qos=pb.QoS(key_chunk_size=chunk,
                                                                                      timeout=5000)))
    assert r.status == S.PEER_NOT_CONNECTED
    assert kb.OpenConnect(pb.OpenConnectRequest(source="b1", destination="a1", key_stream_id=r.key_stream_id)
                          ).status == S.SUCCESSFUL
    return r.key_stream_id


def stream(net: Net, node: str, sae: str, ksid: str, n: int) -> tuple[list[bytes], list[int]]:
    addr = net.nodes[node].addresses["etsi004"]
    t = net.pki.sae(sae)
    r = net.run(get_keys(addr, ksid, n, client_context(str(t.ca), str(t.cert), str(t.key))), timeout=60)
    assert r.first_failure is None and r.grpc_status == 0, (r.first_failure, r.grpc_status, r.grpc_message)
    return r.keys, r.indices


def close(net: Net, ksid: str) -> None:
    net.kd("A", "a1").Close(pb.CloseRequest(key_stream_id=ksid))
    net.kd("B", "b1").Close(pb.CloseRequest(key_stream_id=ksid))


def test_batched_stream_owner_first_both_peers_identical(fast: Net) -> None:
    ksid = open_pair(fast)
    n = 20000
    ka, ia = stream(fast, "A", "a1", ksid, n)
    kb, ib = stream(fast, "B", "b1", ksid, n)
    assert ia == ib == list(range(n))
    assert ka == kb
    assert len(set(ka)) == n and {len(k) for k in ka} == {32}
    close(fast, ksid)


def test_batched_stream_peer_first_slow_path_in_batches(fast: Net) -> None:
    """The peer side has nothing assigned yet: inside its batches requests wait for the owner
    to assign (get_key), the rest of the batch is answered at once; order and bytes hold."""
    ksid = open_pair(fast, chunk=64)
    n = 6000
    kb, ib = stream(fast, "B", "b1", ksid, n)
    ka, ia = stream(fast, "A", "a1", ksid, n)
    assert ia == ib == list(range(n))
    assert ka == kb and len(set(ka)) == n and {len(k) for k in ka} == {64}
    close(fast, ksid)


def test_stream_explicit_indices_and_errors_keep_order(fast: Net) -> None:
    ksid = open_pair(fast)
    other = str(uuid.uuid4())
    reqs = [pb.GetKeyRequest(key_stream_id=ksid),                 # 0
            pb.GetKeyRequest(key_stream_id=ksid, index=10),       # 10, out of order
            pb.GetKeyRequest(key_stream_id=ksid),                 # 11 (the cursor follows the highest)
            pb.GetKeyRequest(key_stream_id=ksid, index=10),       # delivered already: 2
            pb.GetKeyRequest(key_stream_id=ksid, index=5),        # 5, skipped before
            pb.GetKeyRequest(key_stream_id=other),                # unknown stream: 4
            pb.GetKeyRequest(key_stream_id=ksid)]                 # 12
    got = list(fast.kd("A", "a1").GetKeyStream(iter(reqs)))
    assert [(r.status, r.index) for r in got] == [
        (S.SUCCESSFUL, 0), (S.SUCCESSFUL, 10), (S.SUCCESSFUL, 11), (S.GET_KEY_INSUFFICIENT_KEY_AVAILABLE, 10),
        (S.SUCCESSFUL, 5), (S.NO_QKD_CONNECTION_AVAILABLE, 0), (S.SUCCESSFUL, 12)]
    kb = fast.kd("B", "b1")
    for r in got:
        if r.status == S.SUCCESSFUL:
            assert kb.GetKey(pb.GetKeyRequest(key_stream_id=ksid, index=r.index)).key_buffer == r.key_buffer
    close(fast, ksid)


def test_stream_of_another_sae_is_permission_denied(fast: Net) -> None:
    ksid = open_pair(fast)
    with pytest.raises(grpc.RpcError) as e:
        list(fast.kd("A", "a2").GetKeyStream(iter([pb.GetKeyRequest(key_stream_id=ksid)])))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    close(fast, ksid)


def _server(net: Net, node: str) -> h2grpc.GrpcServer:
    srv = net.nodes[node]._h004
    assert isinstance(srv, h2grpc.GrpcServer)
    return srv


def _open_calls(srv: h2grpc.GrpcServer) -> int:
    return sum(len(c.calls) for c in srv._conns)


def test_unknown_method_deadline_and_cancel(fast: Net) -> None:
    addr = fast.nodes["A"].addresses["etsi004"]
    from sdqkd.lkms.tlsctx import grpc_channel_credentials

    ch = grpc.secure_channel(addr, grpc_channel_credentials(fast.pki.sae("a1")))
    try:
        nope = ch.unary_unary("/sdqkd.etsi004.v1.KeyDelivery/Nope", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            nope(b"")
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # A GET_KEY that waits for key (empty second link) longer than the call's deadline.
        q = fast.phys("A", "B")
        try:
            fast.app("app-empty", ("a2", "A"), [("b2", "B")], q)
            ka2, kb2 = fast.kd("A", "a2"), fast.kd("B", "b2")
            r = ka2.OpenConnect(pb.OpenConnectRequest(source="a2", destination="b2", qos=pb.QoS(timeout=10000)))
            kb2.OpenConnect(pb.OpenConnectRequest(source="b2", destination="a2", key_stream_id=r.key_stream_id))
            with pytest.raises(grpc.RpcError) as e:
                ka2.GetKey(pb.GetKeyRequest(key_stream_id=r.key_stream_id), timeout=0.3)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # A stream the client cancels while the server waits.
            call = ka2.GetKeyStream(iter([pb.GetKeyRequest(key_stream_id=r.key_stream_id)]))
            time.sleep(0.2)
            call.cancel()
            end = time.monotonic() + 5
            while _open_calls(_server(fast, "A")) and time.monotonic() < end:
                time.sleep(0.02)
            assert _open_calls(_server(fast, "A")) == 0  # nothing left behind on the server
        finally:
            for node in fast.nodes.values():
                node.unregister_app("app-empty")
                fast.run(node.remove_link(q))
        # ... and the server still serves.
        ksid = open_pair(fast)
        assert fast.kd("A", "a1").GetKey(pb.GetKeyRequest(key_stream_id=ksid)).status == S.SUCCESSFUL
        close(fast, ksid)
    finally:
        ch.close()


class _NoReader(asyncio.Protocol):
    """A GetKeyStream client that sends many requests and never reads a response (its receive
    window stays at 64 KiB)."""

    def __init__(self, ksid: str, n: int) -> None:
        req = pb.GetKeyRequest(key_stream_id=ksid).SerializeToString()
        self.data = (b"\0" + len(req).to_bytes(4, "big") + req) * n
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport
        c = self.h2
        c.initiate_connection()
        self.sid = c.get_next_available_stream_id()
        c.send_headers(self.sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                  (b":path", b"/sdqkd.etsi004.v1.KeyDelivery/GetKeyStream"),
                                  (b":authority", b"x"), (b"te", b"trailers"), (b"content-type", b"application/grpc")])
        self._send()

    def _send(self) -> None:
        c = self.h2
        while self.sent < len(self.data):
            k = min(c.local_flow_control_window(self.sid), c.max_outbound_frame_size, len(self.data) - self.sent)
            if k <= 0:
                break
            c.send_data(self.sid, self.data[self.sent:self.sent + k])
            self.sent += k
        self.t.write(c.data_to_send())

    def data_received(self, data: bytes) -> None:
        self.h2.receive_data(data)  # never acknowledged: the server's send window closes
        self._send()


def test_client_that_does_not_read_is_held_back(fast: Net) -> None:
    ksid = open_pair(fast)
    t = fast.pki.sae("a1")
    host, _, port = fast.nodes["A"].addresses["etsi004"].rpartition(":")
    n = 200_000  # 9 MB of requests: far more than the server may buffer or answer
    before = fast.nodes["A"].streams.streams[ksid].cursor

    async def run() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        tr, proto = await loop.create_connection(lambda: _NoReader(ksid, n), host, int(port),
                                                 ssl=client_context(str(t.ca), str(t.cert), str(t.key)),
                                                 server_hostname=host)
        await asyncio.sleep(1.0)
        srv = _server(fast, "A")
        calls = [c for conn in srv._conns for c in conn.calls.values() if c.method.endswith("GetKeyStream")]
        assert len(calls) == 1
        out = len(calls[0]._out)
        tr.close()
        return out, proto.sent, fast.nodes["A"].streams.streams[ksid].cursor

    unsent, sent, cursor = fast.run(run())
    answered = cursor - before
    frame = len(_NoReader(ksid, 1).data)
    assert unsent <= 256 * 1024 + 4096 * 64  # the high-water mark plus at most one batch
    assert answered < 20000  # the server consumed only what it could answer and hold ...
    # ... and reopened the client's window only for that and for the requests of its last read
    # (asyncio's TLS transport hands over up to 256 KiB at once; the handler acknowledges what it
    # parsed before it assigns keys to it): the rest of the 9 MB waits at the client.
    assert sent <= (1 << 20) + 65535 + (256 << 10) + (answered + 1) * frame
    close(fast, ksid)


def test_plaintext_h2_server(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> None:
    net = Net(lt, tpki, tmp_path_factory.mktemp("plain"), {"A": ["a1", "a2"], "B": ["b1"]}, tls=False)
    try:
        # two SAEs of one node share a stream ID: only certificates tell them apart, so no stream
        a = net.nodes["A"]
        a.register_app("app-aa", "a1", ["a2"], a.node_id, a.node_id, [])
        with pytest.raises(grpc.RpcError) as e:
            net.kd("A", "a1").OpenConnect(pb.OpenConnectRequest(source="a1", destination="a2"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "TLS" in str(e.value.details())
        assert not a.streams.streams
        q = net.phys("A", "B")
        net.app("app1", ("a1", "A"), [("b1", "B")], q)
        net.feed("A", "B", 500)
        ksid = open_pair(net)
        ra = list(net.kd("A", "a1").GetKeyStream(iter([pb.GetKeyRequest(key_stream_id=ksid)] * 50)))
        rb = list(net.kd("B", "b1").GetKeyStream(iter([pb.GetKeyRequest(key_stream_id=ksid)] * 50)))
        assert [r.index for r in ra] == [r.index for r in rb] == list(range(50))
        assert [r.key_buffer for r in ra] == [r.key_buffer for r in rb]
        r = net.run(get_keys(net.nodes["A"].addresses["etsi004"], ksid, 300, None))
        assert r.grpc_status == 0 and r.indices == list(range(50, 350))
    finally:
        net.close()
