"""Helpers of the RESTCONF conformance suite: the target, a plain HTTP client (httpx) with
mutual TLS and credentials, and the media types of RFC 8040."""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

YANG = "application/yang-data+json"
H = {"Accept": YANG}
HW = {"Accept": YANG, "Content-Type": YANG}
DATA = "/restconf/data"
NODE = f"{DATA}/etsi-qkd-sdn-node:qkd_node"
LINKS = f"{NODE}/qkd_links"
T = "etsi-qkd-node-types:"


@dataclass(frozen=True)
class RestconfTarget:
    base: str  # https://host:port
    ca: str | None
    cert: str | None
    key: str | None
    user: str | None
    password: str | None
    token: str | None
    ours: bool
    etsi014: str | None = None  # ours: its ETSI 014 server and an SAE attached to it
    sae: tuple[str, str] | None = None

    def client(self, *, with_cert: bool = True, auth: bool = True) -> httpx.Client:
        verify: Any = True
        if self.base.startswith("https"):
            ctx = ssl.create_default_context(cafile=self.ca) if self.ca else ssl.create_default_context()
            if with_cert and self.cert and self.key:
                ctx.load_cert_chain(self.cert, self.key)
            verify = ctx
        headers = {}
        basic = None
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth and self.user:
            basic = httpx.BasicAuth(self.user, self.password or "")
        return httpx.Client(base_url=self.base, verify=verify, auth=basic, headers=headers, timeout=15.0)


def new_link(node_id: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """A fresh PHYS link entry naming this node (its peer does not exist: nothing runs)."""
    lid = str(uuid.uuid4())
    entry = {"qkdl_id": lid, "qkdl_type": f"{T}PHYS", "qkdl_enable": True,
             "qkdl_local": {"qkdn_id": node_id}, "qkdl_remote": {"qkdn_id": str(uuid.uuid4())}, **extra}
    return lid, entry


def errors(r: httpx.Response) -> list[dict[str, Any]]:
    """The ietf-restconf:errors list of a refusal (asserting its form)."""
    assert r.headers["content-type"].startswith(YANG), r.headers
    body = r.json()
    errs = body["ietf-restconf:errors"]["error"]
    assert errs and all({"error-type", "error-tag"} <= set(e) for e in errs), body
    return errs
