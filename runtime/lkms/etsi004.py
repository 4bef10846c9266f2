"""ETSI GS QKD 004 V2.1.1 as gRPC: the `KeyDelivery` service (semantics in streams.py), for
two servers: the h2-based one of h2grpc.py (`h2_handlers`, the default: a pipelined
GetKeyStream costs both nodes together about 26 us of CPU per 256-bit key, against about 190 us
with grpcio's) and grpcio's (`KeyDeliveryService`, kept as `Limits.etsi004_server = "grpcio"`).

Caller identity: with TLS, the CN of the verified client certificate must be the SAE named as
`source` (OPEN_CONNECT) or owning the stream (GET_KEY, CLOSE); without TLS (loopback
development) `source` must be an SAE attached to this node and the key stream ID is the
capability. Violations end the call with PERMISSION_DENIED; malformed input with
INVALID_ARGUMENT; everything else is an in-band status as the standard numbers it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb
from sdqkd.generated.proto.sdqkd import etsi004_pb2_grpc
from sdqkd.lkms.streams import CallerRefused, StreamManager, TooManyStreams
from sdqkd.lkms.tlsctx import grpc_caller_cn

if TYPE_CHECKING:
    from sdqkd.lkms import h2grpc

_M = TypeVar("_M", bound=Message)


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
        except TooManyStreams as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
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


_SERVICE = "/sdqkd.etsi004.v1.KeyDelivery/"


def h2_handlers(streams: StreamManager) -> dict[str, h2grpc.Handler]:
    """The same service for the h2-based server (h2grpc.py): same semantics and gRPC status
    codes as `KeyDeliveryService`; GetKeyStream answers every request of a batch that needs no
    waiting at once (StreamManager.get_key_now) and writes the batch's responses together."""
    from sdqkd.lkms import h2grpc  # needs the h2 package

    def refused(e: CallerRefused) -> h2grpc.GrpcError:
        return h2grpc.GrpcError(grpc.StatusCode.PERMISSION_DENIED, str(e))

    def parse(cls: type[_M], data: bytes) -> _M:
        try:
            return cls.FromString(data)
        except DecodeError:
            raise h2grpc.GrpcError(grpc.StatusCode.INTERNAL, "malformed request message") from None

    async def open_connect(data: bytes, call: h2grpc.Call) -> bytes:
        request = parse(pb.OpenConnectRequest, data)
        if not request.source or not request.destination:
            raise h2grpc.GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "source and destination are required")
        try:
            return (await streams.open_connect(request, call.caller)).SerializeToString()
        except CallerRefused as e:
            raise refused(e) from None
        except TooManyStreams as e:
            raise h2grpc.GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except ValueError as e:
            raise h2grpc.GrpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    async def get_key(data: bytes, call: h2grpc.Call) -> bytes:
        try:
            return (await streams.get_key(parse(pb.GetKeyRequest, data), call.caller)).SerializeToString()
        except CallerRefused as e:
            raise refused(e) from None

    async def close(data: bytes, call: h2grpc.Call) -> bytes:
        try:
            return (await streams.close_stream(parse(pb.CloseRequest, data), call.caller)).SerializeToString()
        except CallerRefused as e:
            raise refused(e) from None

    async def get_key_stream(call: h2grpc.Call) -> None:
        caller = call.caller
        now, wait, send = streams.get_key_now, streams.get_key, call.send
        from_bytes = pb.GetKeyRequest.FromString
        try:
            while (batch := await call.batch()) is not None:
                for data in batch:
                    try:
                        request = from_bytes(data)
                    except DecodeError:
                        raise h2grpc.GrpcError(grpc.StatusCode.INTERNAL, "malformed request message") from None
                    r = now(request, caller)
                    if r is None:
                        call.flush()  # what is answered goes out while this one waits
                        r = await wait(request, caller)
                    send(r.SerializeToString())
                await call.drain()
        except CallerRefused as e:
            raise refused(e) from None

    return {_SERVICE + "OpenConnect": h2grpc.Unary(open_connect), _SERVICE + "GetKey": h2grpc.Unary(get_key),
            _SERVICE + "Close": h2grpc.Unary(close), _SERVICE + "GetKeyStream": h2grpc.Stream(get_key_stream)}
