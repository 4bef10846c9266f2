"""Small helpers for KeySync messages shared by both sides.

Conventions on top of kms.proto (kept compatible with it; see the report to the lead):
- Reserve carries the size of the *application* keys it makes (the peer groups the listed link
  keys the same way) in call metadata `sdqkd-key-bits`; without it each link key is one key.
- A refusal's `reason` names the key IDs that are unknown/busy at the peer
  ("keys not available; unknown=<ids>; busy=<ids>") so the master can erase keys the peer
  does not have instead of offering them again. Key IDs are not secret; material never appears.
- StreamAssign may carry the link keys of several consecutive chunks (index, index+1, ...),
  grouped by the stream's chunk size; an AssignStream with no keys asks the stream's owner to
  assign chunks up to `index`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdqkd.generated.proto.sdqkd import kms_pb2
from sdqkd.lkms.keys import AppKey

KEY_BITS_MD = "sdqkd-key-bits"


def key_refs(keys: Sequence[AppKey]) -> list[kms_pb2.KeyRef]:
    return [kms_pb2.KeyRef(key_id=p, size=b) for k in keys for p, b in k.parts]


def refusal(unknown: Sequence[str], busy: Sequence[str], reason: str = "keys not available") -> str:
    return f"{reason}; unknown={','.join(unknown)}; busy={','.join(busy)}"


def parse_refusal(reason: str) -> tuple[list[str], list[str]]:
    """(unknown, busy) key IDs named in a refusal reason."""
    unknown: list[str] = []
    busy: list[str] = []
    for part in reason.split(";"):
        k, _, v = part.strip().partition("=")
        ids = [x for x in v.split(",") if x]
        if k == "unknown":
            unknown = ids
        elif k == "busy":
            busy = ids
    return unknown, busy


def metadata_bits(metadata: Sequence[tuple[str, str | bytes]] | None) -> int | None:
    for k, v in metadata or ():
        if k == KEY_BITS_MD:
            try:
                return int(v)
            except ValueError:
                return None
    return None
