"""TLS contexts and gRPC credentials built from a node's `TlsFiles`, and caller identity.

ETSI 014 (HTTPS) asks for a client certificate but does not *require* one at the handshake
(CERT_OPTIONAL): a client without a certificate then gets a proper HTTP 401 with an Error body
instead of a bare handshake failure. A certificate that does not verify against our CA still
fails the handshake (OpenSSL verifies whatever is presented; Python offers no hook to turn that
into a 401). gRPC (ETSI 004, KeySync) requires and verifies client certificates.
"""

from __future__ import annotations

import ssl
from typing import Any

import grpc

from runtime.pki import TlsFiles


def https_server_context(tls: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_client_context(tls: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def grpc_channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def peercert_cn(peercert: dict[str, Any] | None) -> str | None:
    """CN of a verified peer certificate as `ssl.SSLSocket.getpeercert()` returns it."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return None


def grpc_caller_cn(context: grpc.aio.ServicerContext) -> str | None:
    """CN of the verified client certificate of a gRPC call (None without TLS)."""
    ac = context.auth_context()
    cns = ac.get("x509_common_name") if ac else None
    return cns[0].decode() if cns else None


def grpc_h2_server_context(tls: TlsFiles) -> ssl.SSLContext:
    """TLS for the h2-based gRPC server (h2grpc.py), as grpcio's would be: our certificate,
    client certificates required and verified against the CA, ALPN h2 (gRPC clients insist)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


def etsi020_server_context(tls: TlsFiles) -> ssl.SSLContext:
    """ETSI 020 server: client certificates required and verified (against our CA, plus the CA
    of each external peer KMS, added with `load_verify_locations`), TLS 1.3 or later as the
    standard asks."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx
