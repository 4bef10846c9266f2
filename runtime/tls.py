"""The one place that builds TLS contexts and gRPC credentials from PEM files (`TlsFiles`: CA,
certificate, key). Every network door uses TLS 1.2 or later with certificates of the network's
CA; servers verify client certificates (gRPC always, HTTPS optionally so that ETSI 014 can
answer a missing certificate with a proper 401); clients verify the server against the CA.

Why one place: six copies of "read three files, build credentials" drifted apart (argument
order of `ssl_channel_credentials`, ALPN, minimum version); here each form is written once."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from sdqkd.pki import TlsFiles

ChannelOptions = Sequence[tuple[str, Any]]


def tls_files(ca: str | Path, cert: str | Path, key: str | Path) -> TlsFiles:
    return TlsFiles(Path(ca), Path(cert), Path(key))


# ------------------------------------------------------------------ ssl (HTTPS, h2)


def https_client_context(tls: TlsFiles, *, alpn: Sequence[str] = (),
                         minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2, check_hostname: bool = True) -> ssl.SSLContext:
    """Client side: verify the server against the CA (and its host name, unless the caller
    checks the certificate's identity itself), present our certificate."""
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.check_hostname = check_hostname
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.minimum_version = minimum
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def https_server_context(tls: TlsFiles, *, require_client_cert: bool = False, alpn: Sequence[str] = (),
                         minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """Server side: our certificate; client certificates verified against the CA, required or
    optional (an absent one is then the application's to refuse)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.minimum_version = minimum
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


# ------------------------------------------------------------------ gRPC


def grpc_channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def grpc_server_credentials(tls: TlsFiles, *, mutual: bool = True) -> grpc.ServerCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca if mutual else None,
                                       require_client_auth=mutual)


def aio_channel(address: str, tls: TlsFiles | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """An asyncio gRPC channel: mutual TLS with `tls`, plain text without (loopback setups)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, grpc_channel_credentials(tls), options=list(options))


def sync_channel(address: str, tls: TlsFiles, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking gRPC channel with mutual TLS."""
    return grpc.secure_channel(address, grpc_channel_credentials(tls), options=list(options))
