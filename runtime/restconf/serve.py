"""Serving the RESTCONF application: TLS or mutual TLS (ssl contexts from the node's PEM files),
plain HTTP on loopback addresses only unless the config explicitly allows more."""

from __future__ import annotations

import ssl

from aiohttp import web

from .adapter import ModelAdapter
from .auth import Credentials
from .server import RestconfServer


def tls_context(ca: str, cert: str, key: str, mutual: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if mutual:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def start_restconf(adapter: ModelAdapter, listen: str, *, ssl_context: ssl.SSLContext | None = None,
                         credentials: Credentials | None = None, allow_plain_outside_loopback: bool = False
                         ) -> tuple[web.AppRunner, int, RestconfServer]:
    """Serve RESTCONF on `listen` (port 0: the OS picks); returns the runner, the bound port
    and the server. Without TLS only loopback addresses, unless explicitly allowed."""
    from sdqkd.agent.serve import is_loopback

    if ssl_context is None and not is_loopback(listen) and not allow_plain_outside_loopback:
        raise ValueError(f"restconf.listen {listen!r}: without TLS RESTCONF binds loopback addresses only")
    server = RestconfServer(adapter, credentials)
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = listen.rsplit(":", 1)
    site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=ssl_context, reuse_address=False)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])  # the port the OS picked for port 0
    return runner, bound, server
