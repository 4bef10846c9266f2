"""KeySync client side: one gRPC channel per peer LKMS address, mutual TLS with the node's
certificate (or plaintext on loopback development without TLS)."""

from __future__ import annotations

import json

import grpc

from sdqkd.generated.proto.sdqkd import kms_pb2_grpc
from sdqkd.lkms.tlsctx import grpc_channel_credentials
from sdqkd.pki import TlsFiles

# A restarted peer: calls wait for the channel to reconnect (within their deadline) instead of
# failing at once while it backs off (waitForReady), and the reconnection is retried within
# 2 s (gRPC's default backoff grows to 120 s). A call refused that way was never sent, but
# its caller cannot tell: every one would be a transaction with an uncertain outcome.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{"service": "sdqkd.kms.v1.KeySync"}],
                                                "waitForReady": True}]})
# Keepalive pings go out only while a call is open (keepalive_permit_without_calls is off), and
# every KeySync call is unary with a deadline of seconds (Limits.rpc_timeout_s): the KeySync
# server's default ping policy (one per 5 min without data, GOAWAY "too_many_pings" at the second
# strike; the agent's had to change, docs/gnmi.md) never sees one from us.
_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.service_config", _SERVICE_CONFIG)]


class PeerClients:
    def __init__(self, tls: TlsFiles | None) -> None:
        self._creds = grpc_channel_credentials(tls) if tls else None
        self._stubs: dict[str, kms_pb2_grpc.KeySyncStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> kms_pb2_grpc.KeySyncStub:
        st = self._stubs.get(address)
        if st is None:
            if self._creds is not None:
                ch = grpc.aio.secure_channel(address, self._creds, options=_OPTIONS)
            else:
                ch = grpc.aio.insecure_channel(address, options=_OPTIONS)
            self._channels[address] = ch
            st = self._stubs[address] = kms_pb2_grpc.KeySyncStub(ch)
        return st

    async def forget(self, address: str) -> None:
        ch = self._channels.pop(address, None)
        self._stubs.pop(address, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        for addr in list(self._channels):
            await self.forget(addr)
