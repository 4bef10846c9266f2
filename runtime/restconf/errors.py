"""RESTCONF errors (RFC 8040 §7): every refusal is one `ietf-restconf:errors` body whose
error-tag fixes the HTTP status (the table of §7), with an error-path naming the resource
and an error-message naming what was wrong."""

from __future__ import annotations

from typing import Any

from .adapter import ModelError

# error-tag -> HTTP status (RFC 8040 §7; where it allows several, the one this server uses)
STATUS = {
    "in-use": 409, "invalid-value": 400, "too-big": 413, "missing-attribute": 400, "bad-attribute": 400,
    "unknown-attribute": 400, "bad-element": 400, "unknown-element": 400, "unknown-namespace": 400,
    "access-denied": 403, "lock-denied": 409, "resource-denied": 409, "rollback-failed": 500,
    "data-exists": 409, "data-missing": 409, "operation-not-supported": 501, "operation-failed": 500,
    "partial-operation": 500, "malformed-message": 400,
}


class RestconfError(ModelError):
    """A request refused with nothing applied. `status` overrides the tag's default where
    RFC 8040 names another (404 for a missing instance, 405, 406, 412, 415, 401)."""

    def __init__(self, tag: str, message: str, *, path: str | None = None, status: int | None = None,
                 error_type: str = "application", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.path = path
        self.status = status if status is not None else STATUS[tag]
        self.error_type = error_type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"error-type": self.error_type, "error-tag": self.tag}
        if self.path:
            err["error-path"] = self.path
        err["error-message"] = self.message
        return {"ietf-restconf:errors": {"error": [err]}}


def not_found(path: str, what: str = "no data at this path") -> RestconfError:
    return RestconfError("invalid-value", what, path=path, status=404)  # RFC 8040 §4.3


def protocol(tag: str, message: str, status: int | None = None, **kw: Any) -> RestconfError:
    return RestconfError(tag, message, status=status, error_type="protocol", **kw)
