"""Credentials of the RESTCONF server: HTTP Basic (RFC 7617) against the node's users and
bearer tokens (RFC 6750) from its config, both compared in constant time."""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field


@dataclass
class Credentials:
    """Who may call: `users` (HTTP Basic) and `tokens` (bearer). Both empty: no check."""

    users: dict[str, str] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._users = {u.encode(): p.encode() for u, p in self.users.items()}
        self._tokens = [t.encode() for t in self.tokens]

    @property
    def required(self) -> bool:
        return bool(self._users or self._tokens)

    def check(self, header: str) -> bool:
        scheme, _, cred = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                user, _, pw = base64.b64decode(cred.strip(), validate=True).partition(b":")
            except ValueError:
                return False
            want = self._users.get(user)
            # compare with a dummy when the user is unknown, so timing says nothing
            return hmac.compare_digest(pw, want if want is not None else b"\0" * 32) and want is not None
        if scheme == "bearer":
            token = cred.strip().encode()
            ok = False
            for t in self._tokens:  # every token compared: the time does not depend on which matched
                ok = hmac.compare_digest(token, t) | ok
            return ok
        return False
