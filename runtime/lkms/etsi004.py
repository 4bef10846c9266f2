"""ETSI GS QKD 004 V2.1.1 as gRPC: the `KeyDelivery` service (semantics in streams.py).

Caller identity: with TLS, the CN of the verified client certificate must be the SAE named as
`source` (OPEN_CONNECT) or owning the stream (GET_KEY, CLOSE); without TLS (loopback
development) `source` must be an SAE attached to this node and the key stream ID is the
capability. Violations end the call with PERMISSION_DENIED; malformed input with
INVALID_ARGUMENT; everything else is an in-band status as the standard numbers it.
"""

from __future__ import annotations

import asyncio
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
                           context: grpc.aio.ServicerContext) -> None:
        """Responses in request order. A separate task reads requests ahead into a queue, so
        reading and writing overlap instead of alternating (about 1.6x the messages/s)."""
        caller = self._caller(context)
        get = self.streams.get_key
        queue: asyncio.Queue[pb.GetKeyRequest | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for request in request_iterator:
                    queue.put_nowait(request)
            finally:
                queue.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(pump())
        try:
            while (request := await queue.get()) is not None:
                await context.write(await get(request, caller))
        except CallerRefused as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def Close(self, request: pb.CloseRequest, context: grpc.aio.ServicerContext) -> pb.CloseResponse:
        try:
            return await self.streams.close_stream(request, self._caller(context))
        except CallerRefused as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        raise AssertionError("unreachable")
