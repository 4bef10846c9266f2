"""The RESTCONF server's one door into the node's model: path resolution, reads of the
datastore's tree, RFC 7951 encoding, and edits committed through the node's protocol-neutral
transaction (runtime/agent/transaction.py).

Narrow on purpose. Everything RESTCONF does to data goes through `ModelAdapter`:
- `find` / `exists` read the committed tree (the same `datastore.find` gNMI Get uses);
- `encode` is the JSON / JSON_IETF encoder of the gNMI path (RFC 7951 with `ietf=True`);
- `commit` turns RESTCONF edits into `Datastore.change` edits: the same decode, validation,
  whole-tree checks, validate hooks, commit, publish and apply hooks as a gNMI Set, so a
  RESTCONF change shows in a gNMI Subscribe and a refused one changes nothing. The existence
  checks of POST (must not exist) and PATCH / DELETE (must exist) are the edits' own
  `requires`, checked by the transaction under its lock: no other change (gNMI Set, another
  RESTCONF request) can land between check and commit;
- `subscribe` hands out a subscription on the datastore's change hub (event streams);
- `locate` asks the node where another node's key-relay (KeySync) server listens (the
  compatibility dialect's VIRT links), when the node offers it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sdqkd.agent import datastore as ds
from sdqkd.agent import transaction as tx
from sdqkd.agent.model import NODES, Elem, PathError, ValueError_, elems_text, resolve
from sdqkd.agent.server import NodeAgent
from sdqkd.agent.subscriptions import StreamSub
from sdqkd.errors import SdqkdError

MERGE, REPLACE, DELETE = "merge", "replace", "delete"
ALL, CONFIG, STATE = ds.ALL, ds.CONFIG, ds.STATE  # read filters (RESTCONF content=all|config|nonconfig)
ModelError = PathError  # the agent's error for what the model does not have (RestconfError's base)
__all__ = ["ALL", "CONFIG", "DELETE", "MERGE", "REPLACE", "STATE", "Edit", "EditRefused", "Elem", "ModelAdapter",
           "ModelError", "resolve_path"]


def resolve_path(elems: list[tuple[str, dict[str, str]]], keyless_last: bool) -> tuple[Elem, ...]:
    """(name, {key: text}) elements checked against the model, keys canonical and in schema
    order ('*' for a last list named without keys). ValueError naming the problem."""
    try:
        return resolve(elems, allow_wildcards=keyless_last).elems
    except (PathError, ValueError_) as e:
        raise ValueError(str(e)) from None


class EditRefused(SdqkdError, ValueError):
    """The model or the node refused an edit; nothing changed. `kind`: malformed (bad path or
    value), rejected (breaks the model or a hook vetoed it), exists, missing, too-big,
    unsupported."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Edit:
    op: str  # merge | replace | delete
    elems: tuple[Elem, ...]
    value: Any = None  # RFC 7951 JSON of the node at `elems` (merge, replace)
    requires: tx.Requirement = ""  # "absent" (POST), "present" (PATCH, DELETE): checked atomically


_OPS: dict[str, tx.EditOp] = {MERGE: "update", REPLACE: "replace", DELETE: "delete"}


# where does node X's key-relay server listen, asked along `via` (the path to X, X last)
Locator = Callable[[str, Sequence[str]], Awaitable[str]]


class ModelAdapter:
    def __init__(self, agent: NodeAgent, locator: Locator | None = None):
        self._agent = agent
        self.locator = locator  # set by the node once its LKMS runs
        self._seen_root: object = agent.root
        self._modified = time.time()

    @property
    def node_id(self) -> str:
        return self._agent.node_id

    # ---------------------------------------------------------------- reads

    def find(self, elems: tuple[Elem, ...]) -> list[tuple[tuple[Elem, ...], str, Any]]:
        """Committed (elems, schema path, internal value) matching `elems` ('*' keys). The
        values are the live tree: read them, never change them."""
        return list(ds.find(self._agent.root, elems))

    def root(self) -> dict[str, Any]:
        return self._agent.root

    def exists(self, elems: tuple[Elem, ...]) -> bool:
        return next(ds.find(self._agent.root, elems), None) is not None

    @staticmethod
    def encode(spath: str, value: Any, *, ietf: bool, filt: str = ds.ALL, entry: bool = False) -> Any:
        """Internal value -> JSON (RFC 7951 when `ietf`); None when `filt` leaves nothing."""
        if entry:
            return ds.encode_entry(spath, value, ietf=ietf, filt=filt)
        return ds.encode(spath, value, ietf=ietf, filt=filt)

    @staticmethod
    def decode_default(spath: str, text: str) -> Any:
        """A YANG default (canonical text) as the internal value of its leaf."""
        from sdqkd.agent.model import decode_leaf

        return decode_leaf(NODES[spath], text, spath, lenient_strings=True)

    def modified(self) -> float:
        """When configuration last changed (a commit replaces the agent's root object)."""
        if self._agent.root is not self._seen_root:
            self._seen_root = self._agent.root
            self._modified = time.time()
        return self._modified

    # ---------------------------------------------------------------- edits

    async def commit(self, edits: list[Edit]) -> None:
        """Apply `edits` as one transaction (their `requires` checked in it). Raises
        EditRefused; on success configuration changed."""
        change = [tx.Edit(_OPS[e.op], [(n, dict(k)) for n, k in e.elems], e.value,
                          label=f"{_OPS[e.op]} {elems_text(e.elems)}", requires=e.requires) for e in edits]
        try:
            await self._agent.datastore.change(change)
        except tx.InvalidRequest as e:
            raise EditRefused("malformed", str(e)) from None
        except tx.Exists:
            raise EditRefused("exists", "the resource already exists") from None
        except tx.Rejected as e:
            raise EditRefused("rejected", str(e)) from None
        except tx.NotFound:  # only a `present` requirement raises it
            raise EditRefused("missing", "the resource does not exist") from None
        self._seen_root = self._agent.root
        self._modified = time.time()

    async def locate(self, node_id: str, via: Sequence[str]) -> str:
        """host:port of node `node_id`'s key-relay server; EditRefused("rejected") naming why not."""
        if self.locator is None:
            raise EditRefused("rejected", "this node cannot look up other nodes (no LKMS)")
        try:
            return await self.locator(node_id, via)
        except SdqkdError as e:
            raise EditRefused("rejected", str(e)) from None

    # ---------------------------------------------------------------- state and events

    @staticmethod
    def notification_json(spath: str, content: dict[str, Any]) -> dict[str, Any]:
        """An ETSI notification's content (as the runtime emitted it) in RFC 7951."""
        return ds.encode(spath, ds.decode(spath, content, spath, config_only=False), ietf=True) or {}

    def feed_state(self, values: dict[str, Any]) -> None:
        """State leaves the RESTCONF server owns (its figures), through the agent's state door."""
        self._agent.state.update(values)

    def subscribe(self, patterns: list[tuple[Elem, ...]]) -> StreamSub:
        sub = StreamSub(patterns=patterns)
        self._agent.hub.add(sub)
        return sub

    def unsubscribe(self, sub: StreamSub) -> None:
        self._agent.hub.discard(sub)
