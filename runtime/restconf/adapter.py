"""The RESTCONF server's one door into the node's model: reads of the agent's data tree,
RFC 7951 encoding, and edits committed through the agent's own Set transaction.

Narrow on purpose. Everything RESTCONF does to data goes through `ModelAdapter`:
- `find` / `exists` read the committed tree (the same `datastore.find` gNMI Get uses);
- `encode` is the JSON / JSON_IETF encoder of the gNMI path (RFC 7951 with `ietf=True`);
- `commit` turns RESTCONF edits into one gNMI SetRequest and runs `NodeAgent.set`: the same
  copy-on-write decode, validation, whole-tree checks, typed hooks, commit and publish as
  gNMI, so a RESTCONF change shows in a gNMI Subscribe and a refused one changes nothing;
- `subscribe` hands out a subscription on the agent's change hub (event streams).

When the protocol-neutral transaction (runtime/agent/transaction.py) lands, `commit` calls it
instead of building a SetRequest; nothing else in runtime/restconf needs to change.

Known gap until then: the existence pre-checks of POST (must not exist) and DELETE/PATCH
(must exist) run under this adapter's lock, not the agent's, so a gNMI Set landing between
check and commit is not seen by the check (the commit itself stays all-or-nothing)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import grpc

from generated.proto.gnmi import gnmi_pb2
from runtime.agent import datastore as ds
from runtime.agent.model import NODES, Elem, PathError, ValueError_, resolve
from runtime.agent.server import GnmiError, NodeAgent, to_path
from runtime.agent.subscriptions import StreamSub

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


class EditRefused(ValueError):
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


_KINDS = {grpc.StatusCode.INVALID_ARGUMENT: "malformed", grpc.StatusCode.ABORTED: "rejected",
          grpc.StatusCode.RESOURCE_EXHAUSTED: "too-big", grpc.StatusCode.UNIMPLEMENTED: "unsupported",
          grpc.StatusCode.NOT_FOUND: "missing"}


class ModelAdapter:
    def __init__(self, agent: NodeAgent):
        self._agent = agent
        self._lock = asyncio.Lock()
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
        from runtime.agent.model import decode_leaf

        return decode_leaf(NODES[spath], text, spath, lenient_strings=True)

    def modified(self) -> float:
        """When configuration last changed (a commit replaces the agent's root object)."""
        if self._agent.root is not self._seen_root:
            self._seen_root = self._agent.root
            self._modified = time.time()
        return self._modified

    # ---------------------------------------------------------------- edits

    async def commit(self, edits: list[Edit], *, absent: tuple[tuple[Elem, ...], ...] = (),
                     present: tuple[tuple[Elem, ...], ...] = ()) -> None:
        """Apply `edits` as one transaction; `absent`/`present`: paths that must not / must
        hold data first. Raises EditRefused; on success configuration changed."""
        req = gnmi_pb2.SetRequest()
        for e in edits:
            if e.op == DELETE:
                req.delete.append(to_path(e.elems))
            else:
                upd = gnmi_pb2.Update(path=to_path(e.elems), val=gnmi_pb2.TypedValue(
                    json_ietf_val=json.dumps(e.value, separators=(",", ":")).encode()))
                (req.replace if e.op == REPLACE else req.update).append(upd)
        async with self._lock:
            for elems in absent:
                if self.exists(elems):
                    raise EditRefused("exists", "the resource already exists")
            for elems in present:
                if not self.exists(elems):
                    raise EditRefused("missing", "the resource does not exist")
            try:
                await self._agent.set(req)
            except GnmiError as e:
                raise EditRefused(_KINDS.get(e.code, "rejected"), e.message) from None
            self._seen_root = self._agent.root
            self._modified = time.time()

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
