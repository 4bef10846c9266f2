"""Serving the agent: grpc.aio server with TLS or mutual TLS, username/password call
metadata, gRPC reflection and health. Without TLS it binds loopback addresses only."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc
from sdqkd.pki import TlsFiles
from sdqkd.tls import grpc_server_credentials

from .server import NodeAgent

GNMI_SERVICE = gnmi_pb2.DESCRIPTOR.services_by_name["gNMI"].full_name
MAX_MESSAGE = 4 * 1024 * 1024
# A manager's keepalive pings (ours: every 2 s, to notice a lost node within seconds) are accepted
# down to one a second, with or without a call open. gRPC's server default allows one per 5 min
# while it sends nothing: a quiet Subscribe stream (a network whose pools are full) then ended
# with GOAWAY "too_many_pings", and the controller took every node for lost.
KEEPALIVE_ACCEPTED = (("grpc.http2.min_ping_interval_without_data_ms", 1000),
                      ("grpc.keepalive_permit_without_calls", 1))


def server_credentials(tls: TlsFiles, mutual: bool) -> grpc.ServerCredentials:
    return grpc_server_credentials(tls, mutual=mutual)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """username/password in call metadata (gNMI specification, 'Authentication'), checked
    in constant time, for the gNMI service; health and reflection stay open."""

    def __init__(self, users: dict[str, str]):
        self._users = {u.encode(): p.encode() for u, p in users.items()}

    def _ok(self, md: tuple[tuple[str, Any], ...] | None) -> bool:
        meta = dict(md or ())
        user, pw = meta.get("username"), meta.get("password")
        if not isinstance(user, str) or not isinstance(pw, str):
            return False
        want = self._users.get(user.encode())
        # compare against a dummy when the user is unknown, so timing says nothing
        return hmac.compare_digest(pw.encode(), want if want is not None else b"\0" * 32) and want is not None

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{GNMI_SERVICE}/") or self._ok(details.invocation_metadata):
            return handler

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "valid username and password metadata required")

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "valid username and password metadata required")
            yield  # pragma: no cover - makes this an async generator

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny_stream, handler.request_deserializer,
                                                         handler.response_serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(deny_unary, handler.request_deserializer,
                                                   handler.response_serializer)


async def start_gnmi(agent: NodeAgent, listen: str, *, tls: TlsFiles | None = None, mutual: bool = True,
                     users: dict[str, str] | None = None,
                     extra_handlers: tuple[grpc.GenericRpcHandler, ...] = ()) -> tuple[grpc.aio.Server, int]:
    """Start the agent's gNMI server; returns it and the bound port (listen may use port 0).
    With `tls`, clients must present a certificate of its CA unless `mutual` is False."""
    if tls is None and not is_loopback(listen):
        raise ValueError(f"gnmi.listen {listen!r}: without TLS the agent binds loopback addresses only")
    interceptors = [AuthInterceptor(users)] if users else []
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_concurrent_streams", 4096), *KEEPALIVE_ACCEPTED])
    gnmi_pb2_grpc.add_gNMIServicer_to_server(agent, server)
    if extra_handlers:  # other services of the node process on the same port
        server.add_generic_rpc_handlers(extra_handlers)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([GNMI_SERVICE, reflection.SERVICE_NAME, "grpc.health.v1.Health"], server)
    port = server.add_secure_port(listen, server_credentials(tls, mutual)) if tls else server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen!r} (in use or not a local address)")
    await server.start()
    await health.set(GNMI_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
