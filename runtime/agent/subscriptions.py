"""Subscribe fan-out: each STREAM subscription owns a queue; a commit (Set) or a state feed
publishes one batch of leaf changes, which every subscription filters by its paths. Matching
is prefix matching of concrete element tuples against the subscribed patterns ('*' keys)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .model import Elem

# One change: concrete path, schema path, new internal value (None = deleted)
Change = tuple[tuple[Elem, ...], str, Any]


def elem_match(pattern: Elem, concrete: Elem) -> bool:
    if pattern[0] != concrete[0]:
        return False
    if not pattern[1]:
        return True
    return all(pv == "*" or pv == cv for (_pk, pv), (_ck, cv) in zip(pattern[1], concrete[1]))


def covers(pattern: tuple[Elem, ...], path: tuple[Elem, ...]) -> bool:
    """True when `path` lies at or below `pattern` (or is an ancestor of it, for deletes)."""
    n = min(len(pattern), len(path))
    return all(elem_match(pattern[i], path[i]) for i in range(n))


@dataclass(eq=False)  # identity semantics: subscriptions live in a set
class StreamSub:
    """One STREAM subscription's interest in ON_CHANGE events."""

    patterns: list[tuple[Elem, ...]]
    queue: asyncio.Queue[list[Change]] = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))
    overflowed: bool = False

    def wants(self, path: tuple[Elem, ...], deleted: bool) -> bool:
        for p in self.patterns:
            if len(path) >= len(p) or deleted:
                if covers(p, path):
                    return True
        return False


class Hub:
    def __init__(self) -> None:
        self._subs: set[StreamSub] = set()

    def add(self, sub: StreamSub) -> None:
        self._subs.add(sub)

    def discard(self, sub: StreamSub) -> None:
        self._subs.discard(sub)

    def __len__(self) -> int:
        return len(self._subs)

    def listening(self, path: tuple[Elem, ...]) -> bool:
        """Some open STREAM subscription would receive a change at `path` (e.g. a notification)."""
        return any(sub.wants(path, False) for sub in self._subs)

    def publish(self, changes: Iterable[Change]) -> None:
        changes = list(changes)
        if not changes or not self._subs:
            return
        for sub in self._subs:
            mine = [c for c in changes if sub.wants(c[0], c[2] is None)]
            if not mine:
                continue
            try:
                sub.queue.put_nowait(mine)
            except asyncio.QueueFull:
                # a client that cannot keep up is cut off rather than slowing the node
                sub.overflowed = True
