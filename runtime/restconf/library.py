"""The server's own read-only modules under /restconf/data: ietf-yang-library (RFC 8525: the
module set generated/restconf.py lists, one schema for the running and operational datastores)
and ietf-restconf-monitoring (RFC 8040 §9: capabilities and the event stream's location)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from sdqkd.generated import restconf as rc

from .errors import RestconfError, not_found

STREAM = "NETCONF"  # RFC 8040 §6.2: the default stream, every notification of the model
LIBRARY = "ietf-yang-library:yang-library"
MONITORING = "ietf-restconf-monitoring:restconf-state"
# modules the server itself implements beside the compiled ones (name, revision, namespace)
SERVER_MODULES = [
    ("ietf-yang-library", "2019-01-04", "urn:ietf:params:xml:ns:yang:ietf-yang-library"),
    ("ietf-restconf-monitoring", "2017-01-26", "urn:ietf:params:xml:ns:yang:ietf-restconf-monitoring"),
    ("ietf-datastores", "2018-02-14", "urn:ietf:params:xml:ns:yang:ietf-datastores"),
]
SERVER_IMPORT_ONLY = [("ietf-restconf", "2017-01-26", "urn:ietf:params:xml:ns:yang:ietf-restconf")]
CAPABILITIES = [
    "urn:ietf:params:restconf:capability:defaults:1.0?basic-mode=explicit",
    "urn:ietf:params:restconf:capability:depth:1.0",
    "urn:ietf:params:restconf:capability:fields:1.0",
    "urn:ietf:params:restconf:capability:with-defaults:1.0",
]
TOP = (LIBRARY, MONITORING)


def _mods(rows: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"name": n, "revision": r, "namespace": ns} for n, r, ns in sorted(rows)]


def yang_library() -> dict[str, Any]:
    return {
        "module-set": [{"name": "sdqkd", "module": _mods(rc.MODULES + SERVER_MODULES),
                        "import-only-module": _mods(rc.IMPORT_ONLY + SERVER_IMPORT_ONLY)}],
        "schema": [{"name": "sdqkd", "module-set": ["sdqkd"]}],
        "datastore": [{"name": "ietf-datastores:running", "schema": "sdqkd"},
                      {"name": "ietf-datastores:operational", "schema": "sdqkd"}],
        "content-id": rc.CONTENT_ID,
    }


def restconf_state(base_url: str) -> dict[str, Any]:
    return {
        "capabilities": {"capability": list(CAPABILITIES)},
        "streams": {"stream": [{
            "name": STREAM, "description": "Every ETSI GS QKD 015 notification of this node",
            "replay-support": False,
            "access": [{"encoding": "json", "location": f"{base_url}/restconf/streams/{STREAM}/json"}],
        }]},
    }


def top_level(base_url: str) -> dict[str, Any]:
    return {LIBRARY: yang_library(), MONITORING: restconf_state(base_url)}


def lookup(raw: str, base_url: str) -> tuple[str, Any] | None:
    """(member name, value) of a path into these modules, None if it is not one of theirs."""
    segments = [s for s in raw.strip("/").split("/")]
    first = unquote(segments[0].partition("=")[0])
    if first not in TOP:
        return None
    value: Any = yang_library() if first == LIBRARY else restconf_state(base_url)
    module = first.partition(":")[0]
    name = first
    for seg in segments[1:]:
        ident, eq, key = seg.partition("=")
        name = unquote(ident).rpartition(":")[2]
        if not isinstance(value, dict) or name not in value:
            raise not_found("/" + raw.strip("/"), f"no node {name!r} here")
        value = value[name]
        if eq:
            want = unquote(key)
            hit = [e for e in value if isinstance(e, dict) and next(iter(e.values()), None) == want]
            if not isinstance(value, list) or not hit:
                raise not_found("/" + raw.strip("/"), f"no {name} entry {want!r}")
            value = [hit[0]]
    return (name if name == first else f"{module}:{name}"), value


def read_only(raw: str) -> RestconfError:
    return RestconfError("operation-not-supported", "this module is read-only (config false)", path=raw,
                         status=405, headers={"Allow": "GET, HEAD, OPTIONS"})
