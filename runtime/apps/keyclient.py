"""Clients of the key delivery interfaces, as an application (SAE) sees them.

`Etsi014Client` speaks ETSI GS QKD 014 (REST over mutual TLS) with httpx, chosen because it is a
well-kept HTTP client with sync and async APIs, HTTP keep-alive and plain `ssl.SSLContext`
support for client certificates. `Etsi004Client` speaks our gRPC mapping of ETSI GS QKD 004.
`SaeIdentity.from_endpoints` reads the TLS material of one SAE from the harness' endpoints.json.

Both clients return keys as `Key(key_id, key)`; no method ever logs key bytes."""

from __future__ import annotations

import base64
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sdqkd.errors import SdqkdError
from sdqkd.pki import TlsFiles
from sdqkd.tls import https_client_context, sync_channel, tls_files


class KeyDeliveryError(SdqkdError, RuntimeError):
    """The KMS refused or could not serve a request; `status` is the HTTP or ETSI 004 status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Key:
    key_id: str
    key: bytes

    def __repr__(self) -> str:  # never print key bytes
        return f"Key(key_id={self.key_id!r}, {len(self.key) * 8} bits)"


@dataclass(frozen=True)
class SaeIdentity:
    """Who an application is and where its KMS listens (one node's entry of endpoints.json)."""

    sae_id: str
    ca: str
    cert: str
    key: str
    etsi014: str
    etsi004: str

    @classmethod
    def from_endpoints(cls, endpoints: dict[str, Any] | str | Path, sae_id: str) -> SaeIdentity:
        eps = json.loads(Path(endpoints).read_text()) if isinstance(endpoints, (str, Path)) else endpoints
        for node in eps.values():
            sae = node.get("saes", {}).get(sae_id)
            if sae is not None:
                return cls(sae_id, node["ca"], sae["cert"], sae["key"], node["etsi014"], node["etsi004"])
        raise KeyError(f"SAE {sae_id!r} is not attached to any node of the endpoints")

    def tls(self) -> TlsFiles:
        return tls_files(self.ca, self.cert, self.key)

    def ssl_context(self) -> ssl.SSLContext:
        return https_client_context(self.tls())


@dataclass(frozen=True)
class ManagementIdentity:
    """What a management client of one node needs (its entry of endpoints.json, `management`):
    the node's gNMI address, the CA, the management certificate and key, and the gNMI login
    where the node asks for one (`sdqkd net up`'s nodes do; in-process nodes do not)."""

    gnmi: str
    ca: str
    cert: str
    key: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, so never in a log

    @classmethod
    def from_endpoints(cls, endpoints: dict[str, Any] | str | Path, node: str) -> ManagementIdentity:
        eps = json.loads(Path(endpoints).read_text()) if isinstance(endpoints, (str, Path)) else endpoints
        if node not in eps:
            raise KeyError(f"node {node!r} is not in the endpoints (nodes: {', '.join(sorted(eps))})")
        ep = eps[node]
        m = ep.get("management")
        if m is None:
            raise KeyError(f"node {node!r} of the endpoints has no management identity")
        password = Path(m["password_file"]).read_text() if m.get("password_file") else None
        return cls(ep["gnmi"], ep["ca"], m["cert"], m["key"], m.get("username"), password)

    def tls(self) -> TlsFiles:
        return tls_files(self.ca, self.cert, self.key)

    def login(self) -> tuple[str, str] | None:
        """(username, password) for gNMI's call metadata, or None."""
        return (self.username, self.password or "") if self.username is not None else None


class Etsi014Client:
    """ETSI GS QKD 014 client of one SAE: `status`, `enc_keys` (master side), `dec_keys` (slave side).

    `retry_s` > 0 retries 503 (no key yet) for that long, which suits a network still warming up."""

    def __init__(self, me: SaeIdentity, timeout: float = 30.0) -> None:
        self.me = me
        self._http = httpx.Client(verify=me.ssl_context(), timeout=timeout,
                                  base_url=f"https://{me.etsi014}/api/v1/keys")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Etsi014Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self, slave_sae_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/{slave_sae_id}/status"))

    def enc_keys(self, slave_sae_id: str, number: int = 1, size: int = 256,
                 additional_slave_sae_ids: list[str] | None = None, retry_s: float = 0.0) -> list[Key]:
        body: dict[str, Any] = {"number": number, "size": size}
        if additional_slave_sae_ids:
            body["additional_slave_SAE_IDs"] = additional_slave_sae_ids
        deadline = time.monotonic() + retry_s
        while True:
            resp = self._http.post(f"/{slave_sae_id}/enc_keys", json=body)
            if resp.status_code != 503 or time.monotonic() >= deadline:
                return _keys(self._json(resp))
            time.sleep(0.2)

    def dec_keys(self, master_sae_id: str, key_ids: list[str]) -> list[Key]:
        resp = self._http.post(f"/{master_sae_id}/dec_keys", json={"key_IDs": [{"key_ID": k} for k in key_ids]})
        return _keys(self._json(resp))

    def dec_key(self, master_sae_id: str, key_id: str) -> bytes:
        return self.dec_keys(master_sae_id, [key_id])[0].key

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        if resp.status_code != 200:
            try:
                err = resp.json()
                msg = err.get("message", "") + (f" ({err['details']})" if err.get("details") else "")
            except ValueError:
                msg = resp.text[:200]
            raise KeyDeliveryError(f"ETSI 014 {resp.request.method} {resp.request.url.path}: "
                                   f"HTTP {resp.status_code}: {msg}", resp.status_code)
        return resp.json()


def _keys(body: dict[str, Any]) -> list[Key]:
    return [Key(k["key_ID"], base64.b64decode(k["key"])) for k in body["keys"]]


class Etsi004Client:
    """ETSI GS QKD 004 client of one SAE over our gRPC mapping: `open`, `get_key`, `close`.

    One instance holds one channel; `open` returns the key stream ID (the first of two peers gets a
    fresh one, the second passes it in). `get_key` returns (index, key bytes)."""

    def __init__(self, me: SaeIdentity) -> None:

        from sdqkd.generated.proto.sdqkd import etsi004_pb2, etsi004_pb2_grpc

        self.me, self.pb = me, etsi004_pb2
        self._channel = sync_channel(me.etsi004, me.tls())
        self.stub = etsi004_pb2_grpc.KeyDeliveryStub(self._channel)
        self.qos: Any = None

    def open(self, peer_sae_id: str, key_stream_id: str = "", *, chunk_size: int = 32, max_bps: int = 0,
             min_bps: int = 0, timeout_ms: int = 10000, ttl_s: int = 0) -> str:
        qos = self.pb.QoS(key_chunk_size=chunk_size, max_bps=max_bps, min_bps=min_bps, timeout=timeout_ms, ttl=ttl_s)
        resp = self.stub.OpenConnect(self.pb.OpenConnectRequest(
            source=self.me.sae_id, destination=peer_sae_id, qos=qos, key_stream_id=key_stream_id), timeout=60)
        if resp.status not in (self.pb.SUCCESSFUL, self.pb.PEER_NOT_CONNECTED):
            raise KeyDeliveryError(f"ETSI 004 OPEN_CONNECT to {peer_sae_id}: "
                                   f"{self.pb.Status.Name(resp.status)}", resp.status)
        self.qos = resp.qos
        return resp.key_stream_id

    def get_key(self, key_stream_id: str, index: int | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
        req = self.pb.GetKeyRequest(key_stream_id=key_stream_id)
        if index is not None:
            req.index = index
        resp = self.stub.GetKey(req, timeout=timeout)
        if resp.status != self.pb.SUCCESSFUL:
            raise KeyDeliveryError(f"ETSI 004 GET_KEY on {key_stream_id}: {self.pb.Status.Name(resp.status)}",
                                   resp.status)
        return resp.index, resp.key_buffer

    def close_stream(self, key_stream_id: str) -> int:
        return int(self.stub.Close(self.pb.CloseRequest(key_stream_id=key_stream_id), timeout=30).status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Etsi004Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
