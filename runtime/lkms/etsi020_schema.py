"""ETSI GS QKD 020 (Interoperable Key Management System API) data formats: parsing and
checking of the request bodies a KMS receives, and the bodies it sends.

Field names, enum values and error bodies are spelled as the standard spells them
(`ext_key_container`, `void_container`, `ack_container`, `version_container`,
`message_data`). Where the published OpenAPI (draft 0.4.1) contradicts the text we follow the
text (docs/etsi020.md lists each case):

- `ack_callback_url` is optional in `ext_key_container`: without it the call is synchronous
  ("blocking mode": 200 once the keys are relayed), with it asynchronous (202, then acks);
- `key_ids` is optional in `void_container` when `all_confirmation=true` is passed;
- `ack_container.key_ids` is a `key_id_container` (objects `{"key_id": ...}`) as published; we
  also accept bare UUID strings there (the text calls them "key IDs").

Every problem is a `Bad` naming the field (`keys[3].value: ...`); the server answers it as
400 with a `message_data` body, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from sdqkd.errors import SdqkdError

API_VERSIONS = ("v1",)  # GET /kmapi/versions; paths are /kmapi/<version>/...
ACK_STATUSES = ("relayed", "voided", "failed", "key not present")
MAX_KEYS = 100_000  # keys per ext_keys request we accept (bounds memory, not a standard limit)
MAX_SAE_IDS = 16
MAX_ID_LEN = 256
MAX_URL_LEN = 2048

JsonObj = dict[str, Any]


class Bad(SdqkdError):
    """A request the standard says to refuse; `status` 400 unless stated, body `message_data`."""

    def __init__(self, message: str, detail_key: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{message}: {detail}")
        self.status, self.message, self.detail_key, self.detail = status, message, detail_key, detail

    def body(self) -> JsonObj:
        return message_data(self.message, {self.detail_key: self.detail})


def message_data(message: str, *details: JsonObj) -> JsonObj:
    body: JsonObj = {"message": message}
    if details:
        body["details"] = list(details)
    return body


def _missing(name: str) -> Bad:
    return Bad("missing parameters", "missing_parameters", f"{name}: required")


def _malformed(name: str, what: str) -> Bad:
    return Bad("bad request format", "bad_request_format", f"{name}: {what}")


def _obj(v: Any, name: str) -> JsonObj:
    if not isinstance(v, dict):
        raise _malformed(name, "expected a JSON object")
    return v


def _sae_id(v: Any, name: str) -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_ID_LEN:
        raise _malformed(name, f"expected a non-empty string of at most {MAX_ID_LEN} characters")
    return v


def _sae_ids(v: Any, name: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise _malformed(name, "expected a non-empty array of SAE IDs")
    if len(v) > MAX_SAE_IDS:
        raise _malformed(name, f"at most {MAX_SAE_IDS} SAE IDs")
    ids = tuple(_sae_id(x, f"{name}[{i}]") for i, x in enumerate(v))
    if len(set(ids)) != len(ids):
        raise _malformed(name, "repeated SAE ID")
    return ids


_KEY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_key_id(v: Any) -> bool:
    """A UUID in canonical lower-case form (as keys.is_uuid, without building a uuid.UUID:
    a relay request carries thousands of them)."""
    return isinstance(v, str) and _KEY_ID.fullmatch(v) is not None


def _key_id(v: Any, name: str) -> str:
    if not is_key_id(v):
        raise _malformed(name, "expected a key ID in UUID format (lower case)")
    return str(v)


def _url(v: Any, name: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_URL_LEN or not v.startswith(("https://", "http://")):
        raise _malformed(name, "expected an https:// URL")
    return v


def _extension(v: Any, name: str) -> JsonObj:
    if v is None:
        return {}
    ext = _obj(v, name)
    for k in ext:
        if not isinstance(k, str) or not k:
            raise _malformed(name, "extension names must be non-empty strings")
    return ext


def decode_value(v: Any, name: str) -> bytes:
    """A key `value`: base64 (RFC 4648, standard alphabet, padded); at least one byte."""
    if not isinstance(v, str) or not v:
        raise _malformed(name, "expected base64 key data")
    try:
        raw = base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _malformed(name, "not valid base64 (RFC 4648 alphabet, with padding)") from None
    if not raw:
        raise _malformed(name, "empty key")
    return raw


def encode_value(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class ExtKey:
    key_id: str
    value: bytes = field(repr=False)
    extension: JsonObj = field(default_factory=dict)


@dataclass(frozen=True)
class ExtKeyContainer:
    keys: tuple[ExtKey, ...]
    initiator_sae_id: str
    target_sae_ids: tuple[str, ...]
    ack_callback_url: str | None
    extension_mandatory: JsonObj
    extension_optional: JsonObj


def _keys(keys_v: list[Any]) -> tuple[ExtKey, ...]:
    """The `keys` array. A tight loop for well-formed keys (a relay request carries hundreds);
    anything irregular is parsed again by `_keys_checked`, which names what is wrong."""
    keys: list[ExtKey] = []
    match, a2b = _KEY_ID.fullmatch, binascii.a2b_base64
    try:
        for k in keys_v:
            kid, v = k["key_id"], k["value"]
            if type(kid) is not str or match(kid) is None or type(v) is not str:
                raise ValueError
            raw = a2b(v, strict_mode=True)  # the alphabet and padding checks of decode_value
            ext = k.get("extension")
            if not raw or ext is not None and not isinstance(ext, dict):
                raise ValueError
            keys.append(ExtKey(kid, raw, _extension(ext, "extension") if ext is not None else {}))
    except (TypeError, KeyError, ValueError, AttributeError, binascii.Error, Bad):
        return _keys_checked(keys_v)
    if len({k.key_id for k in keys}) != len(keys):
        return _keys_checked(keys_v)
    return tuple(keys)


def _keys_checked(keys_v: list[Any]) -> tuple[ExtKey, ...]:
    keys: list[ExtKey] = []
    seen: set[str] = set()
    for i, kv in enumerate(keys_v):
        k = _obj(kv, f"keys[{i}]")
        if "key_id" not in k or "value" not in k:
            raise _missing(f"keys[{i}].{'key_id' if 'key_id' not in k else 'value'}")
        kid = _key_id(k["key_id"], f"keys[{i}].key_id")
        if kid in seen:
            raise _malformed(f"keys[{i}].key_id", "repeated key ID")
        seen.add(kid)
        ext = k.get("extension")
        keys.append(ExtKey(kid, decode_value(k["value"], f"keys[{i}].value"),
                           _extension(ext, f"keys[{i}].extension") if ext is not None else {}))
    return tuple(keys)


def parse_ext_key_container(body: Any) -> ExtKeyContainer:
    b = _obj(body, "ext_key_container")
    for name in ("keys", "initiator_sae_id", "target_sae_ids"):
        if name not in b:
            raise _missing(name)
    keys_v = b["keys"]
    if not isinstance(keys_v, list) or not keys_v:
        raise _malformed("keys", "expected a non-empty array of keys")
    if len(keys_v) > MAX_KEYS:
        raise _malformed("keys", f"at most {MAX_KEYS} keys per request")
    url = b.get("ack_callback_url")
    return ExtKeyContainer(_keys(keys_v), _sae_id(b["initiator_sae_id"], "initiator_sae_id"),
                           _sae_ids(b["target_sae_ids"], "target_sae_ids"),
                           None if url is None else _url(url, "ack_callback_url"),
                           _extension(b.get("extension_mandatory"), "extension_mandatory"),
                           _extension(b.get("extension_optional"), "extension_optional"))


def ext_key_container(keys: list[tuple[str, bytes]], initiator: str, targets: list[str],
                      ack_callback_url: str | None = None, extension_mandatory: JsonObj | None = None) -> JsonObj:
    body: JsonObj = {"keys": [{"key_id": k, "value": encode_value(v)} for k, v in keys],
                     "initiator_sae_id": initiator, "target_sae_ids": targets}
    if ack_callback_url is not None:
        body["ack_callback_url"] = ack_callback_url
    if extension_mandatory:
        body["extension_mandatory"] = extension_mandatory
    return body


@dataclass(frozen=True)
class VoidContainer:
    key_ids: tuple[str, ...] | None  # None: every key shared between the SAEs (all_confirmation)
    initiator_sae_id: str
    target_sae_ids: tuple[str, ...]
    ack_callback_url: str | None
    extension: JsonObj


def parse_void_container(body: Any, all_confirmation: bool) -> VoidContainer:
    b = _obj(body, "void_container")
    for name in ("initiator_sae_id", "target_sae_ids"):
        if name not in b:
            raise _missing(name)
    ids: tuple[str, ...] | None = None
    if b.get("key_ids") is None:
        if not all_confirmation:
            raise Bad("no_key_ids_or_confirmation", "no_key_ids_or_confirmation",
                      "When no key_ids are passed, all keys shared between the SAEs will be voided; "
                      "set all_confirmation=true for that, or list key_ids")
    else:
        v = b["key_ids"]
        if not isinstance(v, list) or not v or len(v) > MAX_KEYS:
            raise Bad("void request not understood", "key_voiding_error",
                      f"key_ids: expected a non-empty array of at most {MAX_KEYS} key IDs")
        ids = tuple(_key_id(x, f"key_ids[{i}]") for i, x in enumerate(v))
        if len(set(ids)) != len(ids):
            raise Bad("void request not understood", "key_voiding_error", "key_ids: repeated key ID")
    url = b.get("ack_callback_url")
    return VoidContainer(ids, _sae_id(b["initiator_sae_id"], "initiator_sae_id"),
                         _sae_ids(b["target_sae_ids"], "target_sae_ids"),
                         None if url is None else _url(url, "ack_callback_url"),
                         _extension(b.get("extension"), "extension"))


def void_container(key_ids: list[str], initiator: str, targets: list[str], ack_callback_url: str | None,
                   extension: JsonObj | None = None) -> JsonObj:
    body: JsonObj = {"key_ids": key_ids, "initiator_sae_id": initiator, "target_sae_ids": targets}
    if ack_callback_url is not None:
        body["ack_callback_url"] = ack_callback_url
    if extension:
        body["extension"] = extension
    return body


@dataclass(frozen=True)
class AckContainer:
    key_ids: tuple[str, ...]
    ack_status: str
    initiator_sae_id: str
    target_sae_id: str
    message: str | None = None
    extension: JsonObj = field(default_factory=dict)

    def to_json(self) -> JsonObj:
        body: JsonObj = {"key_ids": [{"key_id": k} for k in self.key_ids], "ack_status": self.ack_status,
                         "initiator_sae_id": self.initiator_sae_id, "target_sae_id": self.target_sae_id}
        if self.message:
            body["message"] = self.message
        if self.extension:
            body["extension"] = self.extension
        return body


def _ack_not_understood(detail: str) -> Bad:
    return Bad("ack not understood", "ack_not_understood", detail)


def parse_ack_containers(body: Any) -> list[AckContainer]:
    if not isinstance(body, list) or not body:
        raise _ack_not_understood("expected a non-empty array of ack_container objects")
    out: list[AckContainer] = []
    for i, a in enumerate(body):
        if not isinstance(a, dict):
            raise _ack_not_understood(f"[{i}]: expected an ack_container object")
        for name in ("key_ids", "ack_status", "initiator_sae_id", "target_sae_id"):
            if name not in a:
                raise _ack_not_understood(f"[{i}].{name}: required")
        ids_v = a["key_ids"]
        if not isinstance(ids_v, list) or not ids_v or len(ids_v) > MAX_KEYS:
            raise _ack_not_understood(f"[{i}].key_ids: expected a non-empty array")
        ids: list[str] = []
        for j, x in enumerate(ids_v):
            kid = x.get("key_id") if isinstance(x, dict) else x
            if not is_key_id(kid):
                raise _ack_not_understood(f"[{i}].key_ids[{j}]: expected a key ID in UUID format")
            ids.append(str(kid))
        if a["ack_status"] not in ACK_STATUSES:
            raise _ack_not_understood(f"[{i}].ack_status: one of {', '.join(ACK_STATUSES)}")
        msg = a.get("message")
        if msg is not None and not isinstance(msg, str):
            raise _ack_not_understood(f"[{i}].message: expected a string")
        try:
            out.append(AckContainer(tuple(ids), a["ack_status"], _sae_id(a["initiator_sae_id"], "initiator_sae_id"),
                                    _sae_id(a["target_sae_id"], "target_sae_id"), msg,
                                    _extension(a.get("extension"), "extension")))
        except Bad as e:
            raise _ack_not_understood(f"[{i}].{e.detail}") from None
    return out


def acked_ids(acks: Any, status: str) -> set[str]:
    """Key IDs that a list of ack_container objects (as received) gives `status`."""
    out: set[str] = set()
    for a in acks if isinstance(acks, list) else []:
        if isinstance(a, dict) and a.get("ack_status") == status:
            for x in a.get("key_ids") or []:
                kid = x.get("key_id") if isinstance(x, dict) else x
                if isinstance(kid, str):
                    out.add(kid)
    return out


def parse_versions(body: Any) -> tuple[str, ...]:
    b = _obj(body, "version_container")
    v = b.get("versions")
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _malformed("versions", "expected an array of version strings")
    return tuple(v)


def negotiate(theirs: tuple[str, ...]) -> str | None:
    """The most recent version both sides support ("v2" > "v1"), None if there is none."""
    common = [v for v in API_VERSIONS if v in theirs]
    if not common:
        return None
    return max(common, key=lambda v: int(v[1:]) if v[1:].isdigit() else 0)
