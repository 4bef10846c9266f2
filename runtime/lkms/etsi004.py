"""ETSI GS QKD 004 V2.1.1 as gRPC: the `KeyDelivery` service (semantics in streams.py).

Caller identity: with TLS, the CN of the verified client certificate must be the SAE named as
`source` (OPEN_CONNECT) or owning the stream (GET_KEY, CLOSE); without TLS (loopback
development) `source` must be an SAE attached to this node and the key stream ID is the
capability. Violations end the call with PERMISSION_DENIED; malformed input with
INVALID_ARGUMENT; everything else is an in-band status as the standard numbers it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from generated.proto.sdqkd import etsi004_pb2 as pb
from generated.proto.sdqkd import etsi004_pb2_grpc
from runtime.lkms.streams import CallerRefused, StreamManager
from runtime.lkms.tlsctx import grpc_caller_cn


class KeyDeliveryService(etsi004_pb2_grpc.KeyDeliveryServicer):
    def __init__(self, streams: StreamManager, tls: bool) -> None:
        self.streams, self.tls = streams, tls

    def _caller(self, context: grpc.aio.ServicerContext) -> str | None:
        return grpc_caller_cn(context) if self.tls else None

    async def OpenConnect(self, request: pb.OpenConnectRequest, context: grpc.aio.ServicerContext
                          ) -> pb.OpenConnectResponse:
        if not request.source or not request.destination:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "source and destination are required")
        try:
            return await self.streams.open_connect(request, self._caller(context))
        except CallerRefused as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        raise AssertionError("unreachable")

    async def GetKey(self, request: pb.GetKeyRequest, context: grpc.aio.ServicerContext) -> pb.GetKeyResponse:
        try:
            return await self.streams.get_key(request, self._caller(context))
        except CallerRefused as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        raise AssertionError("unreachable")

    async def GetKeyStream(self, request_iterator: AsyncIterator[pb.GetKeyRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GetKeyResponse]:
        caller = self._caller(context)
        get = self.streams.get_key
        try:
            async for request in request_iterator:
                yield await get(request, caller)
        except CallerRefused as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))

    async def Close(self, request: pb.CloseRequest, context: grpc.aio.ServicerContext) -> pb.CloseResponse:
        try:
            return await self.streams.close_stream(request, self._caller(context))
        except CallerRefused as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        raise AssertionError("unreachable")
