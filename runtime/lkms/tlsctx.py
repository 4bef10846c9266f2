"""The LKMS's TLS contexts and gRPC credentials (built by `sdqkd.tls`), and caller identity.

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

from sdqkd import tls as tls_build
from sdqkd.pki import TlsFiles
from sdqkd.tls import grpc_channel_credentials, https_client_context

__all__ = ["grpc_caller_cn", "grpc_channel_credentials", "grpc_h2_server_context", "grpc_server_credentials",
           "https_client_context", "https_server_context", "peercert_cn"]


def https_server_context(tls: TlsFiles) -> ssl.SSLContext:
    """ETSI 014: client certificate optional at the handshake (see above)."""
    return tls_build.https_server_context(tls, require_client_cert=False)


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    return tls_build.grpc_server_credentials(tls, mutual=True)


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
    return tls_build.https_server_context(tls, require_client_cert=True, alpn=["h2"])


def etsi020_server_context(tls: TlsFiles) -> ssl.SSLContext:
    """ETSI 020 server: client certificates required and verified (against our CA, plus the CA
    of each external peer KMS, added with `load_verify_locations`), TLS 1.3 or later as the
    standard asks."""
    return tls_build.https_server_context(tls, require_client_cert=True, minimum=ssl.TLSVersion.TLSv1_3)
