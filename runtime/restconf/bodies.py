"""RESTCONF request bodies: reading them (media type, size, JSON), their one top-level member
(RFC 8040 §4.4-4.6), the RFC 7951 rules a strict body is held to (members module-qualified
exactly where the module changes, §4; every leaf value in its type's JSON form, §6, from the
generated leaf codecs), and the RESTCONF error for an edit the model refused."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sdqkd.generated import restconf as rc

from . import uri
from .adapter import EditRefused
from .errors import RestconfError, protocol

YANG_JSON = "application/yang-data+json"


async def read_body(request: web.Request, strict: bool) -> Any:
    """The JSON of a write; strict requests must send application/yang-data+json."""
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if strict and ctype != YANG_JSON:
        what = "YANG Patch (RFC 8072) is not supported" if "yang-patch" in ctype else \
            f"Content-Type {ctype or 'none'} not supported"
        raise protocol("invalid-value", f"{what}; send {YANG_JSON}", status=415)
    raw = await request.read()
    if not raw.strip():
        raise protocol("malformed-message", "the request needs a body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise protocol("malformed-message", f"the body is not JSON: {e}") from None



def single_member(body: Any, where: str) -> tuple[str, str, Any]:
    """(module, local name, value) of a body's one top-level member (RFC 7951: qualified)."""
    if not isinstance(body, dict) or len(body) != 1:
        raise RestconfError("malformed-message", "the body must be a JSON object with exactly one member",
                            path=where, error_type="protocol")
    (member, value), = body.items()
    module, colon, name = member.rpartition(":")
    if not colon:
        raise RestconfError("malformed-message", f"top-level member {member!r} must be module-qualified "
                            "(RFC 7951 §4)", path=where, error_type="protocol")
    return module, name, value



def check_target_member(target: uri.Target, module: str, name: str) -> None:
    res = target.resource
    assert res is not None
    if name != target.name or module != res.module:
        raise RestconfError("invalid-value", f"the body's member {module}:{name} is not the target "
                            f"{res.module}:{target.name}", path=target.instance_id(), error_type="protocol")



def check_value(spath: str, value: Any, where: str) -> None:
    """RFC 7951 forms of the value of the node at `spath`."""
    res = rc.RESOURCES[spath]
    if res.kind in ("leaf", "leaf-list"):
        _check_leaf_json(res, value, where)
    else:
        check_member_names(spath, value, where)



def list_entry(value: Any, target: uri.Target) -> Any:
    if not isinstance(value, list) or len(value) != 1:
        raise RestconfError("invalid-value", "a list instance is written as a JSON array of exactly one entry",
                            path=target.instance_id(), error_type="protocol")
    return value[0]



_JSON_KINDS: dict[str, tuple[type, ...]] = {
    "number": (int,), "int64": (str,), "decimal64": (str,), "boolean": (bool,), "string": (str,),
    "identityref": (str,), "enumeration": (str,)}


def _check_leaf_json(res: rc.Resource, value: Any, where: str) -> None:
    """RFC 7951 §6: 8- to 32-bit integers are JSON numbers, 64-bit integers and decimal64 JSON
    strings, booleans true / false, empty [null]; the generated codec of the leaf says which."""
    values = value if res.kind == "leaf-list" and isinstance(value, list) else [value]
    kinds = _JSON_KINDS.get(res.codec)
    for v in values:
        if res.codec == "empty":
            ok = v == [None]
        elif kinds is None:  # union: any member's form
            ok = True
        else:
            ok = isinstance(v, kinds) and not (res.codec == "number" and isinstance(v, bool))
        if not ok:
            form = {"number": "a JSON number", "int64": "a JSON string (64-bit integer)",
                    "decimal64": "a JSON string (decimal64)", "boolean": "true or false", "empty": "[null]"}.get(
                res.codec, "a JSON string")
            raise RestconfError("invalid-value", f"{res.path.rsplit('/', 1)[1]}: {v!r} must be {form} "
                                "(RFC 7951 §6)", path=where, error_type="protocol")


def check_member_names(spath: str, value: Any, where: str) -> None:
    """RFC 7951 in a strict body: a member is module-qualified exactly where its module differs
    from its parent's (every member at the top of the datastore, §4), and every leaf value has
    its type's JSON form (§6)."""
    if isinstance(value, list):
        for entry in value:
            check_member_names(spath, entry, where)
        return
    if not isinstance(value, dict):
        return
    parent = rc.RESOURCES[spath].module if spath in rc.RESOURCES else None
    for member, v in value.items():
        module, colon, name = member.rpartition(":")
        child = rc.CHILDREN.get(spath, {}).get(name)
        if child is None:
            continue  # the model's decoder names unknown members
        res = rc.RESOURCES[child]
        if colon and module != res.module:
            raise RestconfError("unknown-namespace", f"member {member!r}: {name} is defined in {res.module}",
                                path=where, error_type="protocol")
        if res.module != parent and not colon:
            raise RestconfError("invalid-value", f"member {member!r} must be written {res.module}:{name} (RFC 7951 "
                                "§4: its module differs from its parent's)", path=where, error_type="protocol")
        if res.module == parent and colon:
            raise RestconfError("invalid-value", f"member {member!r} must be written {name} (RFC 7951 §4: same "
                                "module as its parent)", path=where, error_type="protocol")
        if res.kind in ("leaf", "leaf-list"):
            _check_leaf_json(res, v, where)
        else:
            check_member_names(child, v, where)


def refusal(e: EditRefused, where: str) -> RestconfError:
    """The RESTCONF error of an edit the model or the node refused."""
    if e.kind == "exists":
        return RestconfError("data-exists", "the resource already exists; PUT replaces, PATCH merges", path=where)
    if e.kind == "missing":
        return RestconfError("data-missing", "the resource does not exist", path=where, status=404)
    if e.kind == "too-big":
        return RestconfError("too-big", e.message, path=where)
    if e.kind == "unsupported":
        return RestconfError("operation-not-supported", e.message, path=where)
    tag = "unknown-element" if "unknown member" in e.message or "unknown path" in e.message else "invalid-value"
    return RestconfError(tag, e.message, path=where)
