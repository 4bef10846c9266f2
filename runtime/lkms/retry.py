"""Background retries towards another KMS (a relay hop, another vendor's KMS), at one pace: wait
0.5 s, doubling up to 10 s, before each try, for as long as reservations live
(`Limits.unconfirmed_ttl_s`); and which refused void is worth sending again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

_NOT_READY = frozenset({"invalid_routing", "no_known_route"})  # a hop restarting, before its routes are back


async def backoff(ttl_s: float) -> AsyncIterator[None]:
    """Yields before each try: 0.5 s after the start, then at doubling intervals up to 10 s,
    until `ttl_s` has passed."""
    deadline = time.monotonic() + ttl_s
    delay = 0.5
    while time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
        yield


def void_again_after(status: int, body: Any) -> bool:
    """A refused void worth sending again: a time-out or a server error along the path, or a hop
    that does not know the route yet; not a request the far end cannot understand."""
    if status == 408 or status >= 500:
        return True
    details = body.get("details") if isinstance(body, dict) else None
    return status == 400 and isinstance(details, list) and any(
        isinstance(d, dict) and _NOT_READY & set(d) for d in details)
