"""The gNMI 0.10.0 wire layer of a node's agent over the ETSI GS QKD 015 tree (plus our
augmentation): Capabilities; Get; Set turned into the protocol-neutral `Datastore.change`
(delete, replace, update in that order; its errors mapped to INVALID_ARGUMENT / ABORTED);
Subscribe (ONCE, POLL, STREAM with SAMPLE / ON_CHANGE / TARGET_DEFINED) over the datastore's
change hub. Runtime components feed state through `agent.state` (the datastore's `StateFeed`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from functools import lru_cache
from typing import Any

import grpc

from sdqkd.errors import SdqkdError
from sdqkd.generated.agent_skeleton import GNMI_VERSION, MODELS, ModelHooks
from sdqkd.generated.gnmi_support import path_str
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc

from . import datastore as ds
from .model import Elem, PathError, Resolved, ValueError_, resolve_all
from .subscriptions import Hub, StreamSub
from .transaction import Datastore, Edit, EditOp, InvalidRequest, NotFound, Rejected, StateFeed

log = logging.getLogger("sdqkd.agent")

ENCODINGS: dict[int, bool] = {gnmi_pb2.JSON: False, gnmi_pb2.JSON_IETF: True}
GET_TYPES = {gnmi_pb2.GetRequest.ALL: ds.ALL, gnmi_pb2.GetRequest.CONFIG: ds.CONFIG,
             gnmi_pb2.GetRequest.STATE: ds.STATE, gnmi_pb2.GetRequest.OPERATIONAL: ds.STATE}
MIN_SAMPLE_NS = 10_000_000  # sample_interval 0 = "as fast as the target can": 10 ms here
# responses of one STREAM subscription waiting for the client to read them. Bounded, so that a
# client that stops reading backs up into its bounded change queue (subscriptions.StreamSub),
# whose overflow cuts it off; unbounded, the pump moved every change on into this queue and a
# stalled collector made the node's memory grow for as long as it stayed connected.
OUT_RESPONSES = 8
_RESULT_OP = {"delete": gnmi_pb2.UpdateResult.DELETE, "replace": gnmi_pb2.UpdateResult.REPLACE,
              "update": gnmi_pb2.UpdateResult.UPDATE}


class GnmiError(SdqkdError):
    """A gNMI RPC refused with a status code (the wire form of the datastore's errors)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> int:
    return time.time_ns()


def _elems_of(path: gnmi_pb2.Path) -> list[tuple[str, dict[str, str]]]:
    if path.elem:
        return [(e.name, dict(e.key)) for e in path.elem]
    return [(name, {}) for name in path.element]  # deprecated string elements


def _full(prefix: gnmi_pb2.Path | None, path: gnmi_pb2.Path) -> list[tuple[str, dict[str, str]]]:
    return (_elems_of(prefix) if prefix is not None else []) + _elems_of(path)


def to_path(elems: tuple[Elem, ...]) -> gnmi_pb2.Path:
    return gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n, key=dict(k)) for n, k in elems])


@lru_cache(maxsize=8192)
def _path_cached(elems: tuple[Elem, ...]) -> gnmi_pb2.Path:
    return to_path(elems)  # read-only use: protobuf copies it into each Update


def typed(value: Any, ietf: bool) -> gnmi_pb2.TypedValue:
    data = json.dumps(value, separators=(",", ":")).encode()
    return gnmi_pb2.TypedValue(json_ietf_val=data) if ietf else gnmi_pb2.TypedValue(json_val=data)


def raw_value(tv: gnmi_pb2.TypedValue, where: str) -> Any:
    """TypedValue of a Set -> JSON-like Python value."""
    kind = tv.WhichOneof("value")
    if kind in ("json_ietf_val", "json_val"):
        try:
            return json.loads(getattr(tv, kind))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError_(f"{where}: invalid JSON ({e})") from None
        except RecursionError:  # the C decoder recurses per nesting level
            raise ValueError_(f"{where}: invalid JSON (nested too deeply)") from None
    if kind in ("string_val", "int_val", "uint_val", "bool_val", "ascii_val"):
        return getattr(tv, kind)
    if kind in ("double_val", "float_val"):
        return getattr(tv, kind)
    if kind == "decimal_val":
        return str(Decimal(tv.decimal_val.digits).scaleb(-tv.decimal_val.precision))
    if kind == "leaflist_val":
        return [raw_value(e, where) for e in tv.leaflist_val.element]
    raise ValueError_(f"{where}: value encoding {kind or 'none'} is not supported (use JSON or JSON_IETF)")


class NodeAgent(gnmi_pb2_grpc.gNMIServicer):
    """gNMI servicer of one node: a wire layer (paths, TypedValue, error -> status code,
    Subscribe) over the node's protocol-neutral `Datastore`; runtime behaviour plugs in as the
    datastore's generated hooks (`hooks=`)."""

    MODELS = MODELS

    def __init__(self, node_id: str, *, target: str = "", location: str = "", version: str = "sdqkd 0.1.0",
                 hooks: ModelHooks | None = None, datastore: Datastore | None = None):
        self.target = target
        self.datastore = datastore if datastore is not None else Datastore.for_node(
            node_id, location=location, version=version, hooks=hooks)
        self.open_streams = 0

    @property
    def node_id(self) -> str:
        return self.datastore.node_id

    @property
    def root(self) -> dict[str, Any]:
        """The committed data tree (read it; change it only through the datastore)."""
        return self.datastore.root

    @property
    def hub(self) -> Hub:
        return self.datastore.hub

    @property
    def state(self) -> StateFeed:
        return self.datastore.state

    # ---------------------------------------------------------------- helpers

    def _check_target(self, prefix: gnmi_pb2.Path) -> None:
        if prefix.target and self.target and prefix.target != self.target:
            raise GnmiError(grpc.StatusCode.NOT_FOUND, f"unknown target {prefix.target!r}; this is {self.target!r}")

    @staticmethod
    def _encoding(enc: int) -> bool:
        if enc not in ENCODINGS:
            name = gnmi_pb2.Encoding.Name(enc) if enc in gnmi_pb2.Encoding.values() else str(enc)
            raise GnmiError(grpc.StatusCode.UNIMPLEMENTED, f"encoding {name} not supported; use JSON or JSON_IETF")
        return ENCODINGS[enc]

    def _prefix_out(self, prefix: gnmi_pb2.Path | None) -> gnmi_pb2.Path | None:
        if prefix is not None and prefix.target:
            return gnmi_pb2.Path(target=prefix.target)
        return None

    def updates_for(self, r: Resolved, ietf: bool, filt: str = ds.ALL, leaf_level: bool = False
                    ) -> list[gnmi_pb2.Update]:
        """Current data matching a resolved path, one Update per match (or per leaf)."""
        return [gnmi_pb2.Update(path=to_path(e), val=typed(j, ietf))
                for e, j in self.datastore.read(r, ietf=ietf, filt=filt, leaf_level=leaf_level)]

    # ---------------------------------------------------------------- RPCs

    async def Capabilities(self, request: gnmi_pb2.CapabilityRequest, context: Any) -> gnmi_pb2.CapabilityResponse:
        return gnmi_pb2.CapabilityResponse(
            supported_models=[gnmi_pb2.ModelData(name=n, organization=o, version=v) for n, o, v in self.MODELS],
            supported_encodings=[gnmi_pb2.JSON, gnmi_pb2.JSON_IETF],
            gNMI_version=GNMI_VERSION,
        )

    async def Get(self, request: gnmi_pb2.GetRequest, context: Any) -> gnmi_pb2.GetResponse:
        try:
            return self.get(request)
        except GnmiError as e:
            await context.abort(e.code, e.message)
            raise  # abort raises; the type checker cannot know it

    def get(self, request: gnmi_pb2.GetRequest) -> gnmi_pb2.GetResponse:
        ietf = self._encoding(request.encoding)
        if request.type not in GET_TYPES:
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown Get data type {request.type}")
        filt = GET_TYPES[request.type]
        prefix = request.prefix if request.HasField("prefix") else None
        if prefix is not None:
            self._check_target(prefix)
        notifications = []
        for p in request.path or [gnmi_pb2.Path()]:
            full = _full(prefix, p)
            text = path_str(gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n, key=k) for n, k in full]))
            try:
                rs = resolve_all(full)
            except (PathError, ValueError_) as e:
                raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, f"Get {text}: {e}") from None
            if any(r.notification for r in rs):
                raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Get {text}: notifications are delivered through Subscribe")
            if not full:  # the root: one update, module-qualified members
                val = ds.encode("/", self.root, ietf=True if ietf else False, filt=filt)
                ups = [gnmi_pb2.Update(path=gnmi_pb2.Path(), val=typed(val, ietf))]
            else:
                ups = [u for r in rs for u in self.updates_for(r, ietf, filt)]
                if not ups and len(rs) == 1:
                    try:
                        self.datastore.require(rs[0])
                    except NotFound:
                        raise GnmiError(grpc.StatusCode.NOT_FOUND, f"Get {text}: no data at this path") from None
            notifications.append(gnmi_pb2.Notification(timestamp=_now(), prefix=self._prefix_out(prefix), update=ups))
        return gnmi_pb2.GetResponse(notification=notifications)

    async def Set(self, request: gnmi_pb2.SetRequest, context: Any) -> gnmi_pb2.SetResponse:
        try:
            return await self.set(request)
        except GnmiError as e:
            await context.abort(e.code, e.message)
            raise  # abort raises; the type checker cannot know it

    async def set(self, request: gnmi_pb2.SetRequest) -> gnmi_pb2.SetResponse:
        prefix = request.prefix if request.HasField("prefix") else None
        if prefix is not None:
            self._check_target(prefix)
        if not (request.delete or request.replace or request.update or request.union_replace):
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "Set carries no operation")
        if request.union_replace:
            raise GnmiError(grpc.StatusCode.UNIMPLEMENTED, "union_replace is not supported")
        edits, results = self._edits(prefix, request)
        try:
            await self.datastore.change(edits)
        except InvalidRequest as e:
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        except Rejected as e:
            raise GnmiError(grpc.StatusCode.ABORTED, f"Set rejected, nothing changed: {e}") from None
        return gnmi_pb2.SetResponse(prefix=self._prefix_out(prefix), response=results, timestamp=_now())

    @staticmethod
    def _edits(prefix: gnmi_pb2.Path | None, request: gnmi_pb2.SetRequest
               ) -> tuple[list[Edit], list[gnmi_pb2.UpdateResult]]:
        """The Set's operations as datastore edits (delete, replace, update: gNMI 3.4.3 order)."""
        edits: list[Edit] = []
        results: list[gnmi_pb2.UpdateResult] = []
        ops: list[tuple[EditOp, int, gnmi_pb2.Path, gnmi_pb2.TypedValue | None]] = []
        ops.extend(("delete", i, d, None) for i, d in enumerate(request.delete))
        ops.extend(("replace", i, u.path, u.val) for i, u in enumerate(request.replace))
        ops.extend(("update", i, u.path, u.val) for i, u in enumerate(request.update))
        for op, i, path, val in ops:
            full = _full(prefix, path)
            where = f"{op}[{i}] {path_str(gnmi_pb2.Path(elem=[gnmi_pb2.PathElem(name=n, key=k) for n, k in full]))}"
            value, problem = None, None
            if val is not None:
                try:
                    value = raw_value(val, where)
                except ValueError_ as e:
                    problem = str(e)
            edits.append(Edit(op, full, value, where, problem))
            results.append(gnmi_pb2.UpdateResult(path=path, op=_RESULT_OP[op]))
        return edits, results

    # ---------------------------------------------------------------- Subscribe

    async def Subscribe(self, request_iterator: AsyncIterator[gnmi_pb2.SubscribeRequest],
                        context: Any) -> AsyncIterator[gnmi_pb2.SubscribeResponse]:
        self.open_streams += 1
        try:
            async for resp in self._subscribe(request_iterator):
                yield resp
        except GnmiError as e:
            await context.abort(e.code, e.message)
            raise  # abort raises; the type checker cannot know it
        finally:
            self.open_streams -= 1

    def _sub_paths(self, sl: gnmi_pb2.SubscriptionList) -> list[tuple[Resolved, gnmi_pb2.Subscription]]:
        prefix = sl.prefix if sl.HasField("prefix") else None
        if prefix is not None:
            self._check_target(prefix)
        if not sl.subscription:
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "SubscriptionList has no subscription")
        out: list[tuple[Resolved, gnmi_pb2.Subscription]] = []
        for i, s in enumerate(sl.subscription):
            full = _full(prefix, s.path)
            try:
                out.extend((r, s) for r in resolve_all(full))
            except (PathError, ValueError_) as e:
                raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, f"subscription[{i}]: {e}") from None
        return out

    def _snapshot(self, subs: Iterable[tuple[Resolved, Any]], ietf: bool, prefix: gnmi_pb2.Path | None
                  ) -> list[gnmi_pb2.SubscribeResponse]:
        out = []
        for r, _s in subs:
            ups = self.updates_for(r, ietf, leaf_level=True)
            if ups:
                out.append(gnmi_pb2.SubscribeResponse(update=gnmi_pb2.Notification(
                    timestamp=_now(), prefix=self._prefix_out(prefix), update=ups)))
        return out

    async def _subscribe(self, requests: AsyncIterator[gnmi_pb2.SubscribeRequest]
                         ) -> AsyncIterator[gnmi_pb2.SubscribeResponse]:
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        if not first.HasField("subscribe"):
            raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "the first SubscribeRequest must carry a SubscriptionList")
        sl = first.subscribe
        ietf = self._encoding(sl.encoding)
        subs = self._sub_paths(sl)
        prefix = sl.prefix if sl.HasField("prefix") else None
        sync = gnmi_pb2.SubscribeResponse(sync_response=True)

        if sl.mode == gnmi_pb2.SubscriptionList.ONCE:
            if not sl.updates_only:
                for resp in self._snapshot(subs, ietf, prefix):
                    yield resp
            yield sync
            return
        if sl.mode == gnmi_pb2.SubscriptionList.POLL:
            if not sl.updates_only:
                for resp in self._snapshot(subs, ietf, prefix):
                    yield resp
            yield sync
            async for req in requests:
                if req.HasField("poll"):
                    for resp in self._snapshot(subs, ietf, prefix):
                        yield resp
                    yield sync
                else:
                    raise GnmiError(grpc.StatusCode.INVALID_ARGUMENT, "only poll requests may follow a POLL subscription")
            return
        async for resp in self._stream(requests, subs, sl, ietf, prefix):
            yield resp

    async def _stream(self, requests: AsyncIterator[gnmi_pb2.SubscribeRequest],
                      subs: list[tuple[Resolved, gnmi_pb2.Subscription]], sl: gnmi_pb2.SubscriptionList,
                      ietf: bool, prefix: gnmi_pb2.Path | None) -> AsyncIterator[gnmi_pb2.SubscribeResponse]:
        out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None] = asyncio.Queue(maxsize=OUT_RESPONSES)
        on_change = [(r, s) for r, s in subs if s.mode in (gnmi_pb2.ON_CHANGE, gnmi_pb2.TARGET_DEFINED)]
        sampled = [(r, s) for r, s in subs if s.mode == gnmi_pb2.SAMPLE]
        stream_sub = StreamSub(patterns=[r.elems for r, _s in on_change])
        tasks: list[asyncio.Task[Any]] = []
        # Listen before the snapshot: a change made once the client has seen sync_response must
        # reach it (the generator resumes only when the next message is asked for). A change
        # between this and the snapshot may come twice, never not at all.
        if on_change:
            self.hub.add(stream_sub)
        try:
            # what the sync covers (sent or, with updates_only, not), as each SAMPLE subscription's
            # first `suppress_redundant` baseline: taken with the snapshot, no await between
            sent = [self._sample_state(self.updates_for(r, ietf, leaf_level=True)) for r, _s in sampled]
            if not sl.updates_only:
                for resp in self._snapshot(subs, ietf, prefix):
                    yield resp
            yield gnmi_pb2.SubscribeResponse(sync_response=True)
            if on_change:
                tasks.append(asyncio.create_task(self._pump_changes(stream_sub, out, ietf, prefix)))
                for r, s in on_change:
                    if s.heartbeat_interval:
                        tasks.append(asyncio.create_task(self._heartbeat(r, s.heartbeat_interval, out, ietf, prefix)))
            for (r, s), baseline in zip(sampled, sent):
                tasks.append(asyncio.create_task(self._sample(r, s, out, ietf, prefix, baseline)))
            tasks.append(asyncio.create_task(self._drain(requests, out)))
            while True:
                queued = await out.get()
                if queued is None:
                    if stream_sub.overflowed:  # the client learns why, after what was queued for it
                        raise GnmiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"subscription cut off: the client fell more than "
                                        f"{stream_sub.queue.maxsize} changes behind; subscribe again")
                    return
                yield queued
        finally:
            self.hub.discard(stream_sub)
            for t in tasks:
                t.cancel()

    async def _drain(self, requests: AsyncIterator[gnmi_pb2.SubscribeRequest],
                     out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None]) -> None:
        """Read (and ignore) further requests; the client half-closing ends nothing, an error ends all."""
        try:
            async for _ in requests:
                pass
        except Exception:  # noqa: BLE001 - the client went away
            await out.put(None)

    async def _pump_changes(self, sub: StreamSub, out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None],
                            ietf: bool, prefix: gnmi_pb2.Path | None) -> None:
        while True:
            batch = await sub.queue.get()
            while not sub.queue.empty() and len(batch) < 5000:  # coalesce what piled up
                batch.extend(sub.queue.get_nowait())
            if sub.overflowed:
                await out.put(None)
                return
            ups, dels = [], []
            for elems, spath, value in batch:
                if value is None:
                    dels.append(to_path(elems))
                elif isinstance(value, tuple) and value and value[0] == "notification":
                    ups.append(gnmi_pb2.Update(path=to_path(elems), val=typed(value[1], ietf)))
                else:
                    j = ds.encode(spath, value, ietf=ietf)
                    ups.append(gnmi_pb2.Update(path=_path_cached(elems), val=typed(j, ietf)))
            await out.put(gnmi_pb2.SubscribeResponse(update=gnmi_pb2.Notification(
                timestamp=_now(), prefix=self._prefix_out(prefix), update=ups, delete=dels)))

    async def _heartbeat(self, r: Resolved, interval_ns: int, out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None],
                         ietf: bool, prefix: gnmi_pb2.Path | None) -> None:
        while True:
            await asyncio.sleep(max(interval_ns, MIN_SAMPLE_NS) / 1e9)
            for resp in self._snapshot([(r, None)], ietf, prefix):
                await out.put(resp)

    @staticmethod
    def _sample_state(ups: list[gnmi_pb2.Update]) -> dict[bytes, bytes]:
        return {u.path.SerializeToString(): u.val.SerializeToString() for u in ups}

    async def _sample(self, r: Resolved, s: gnmi_pb2.Subscription,
                      out: asyncio.Queue[gnmi_pb2.SubscribeResponse | None], ietf: bool,
                      prefix: gnmi_pb2.Path | None, baseline: dict[bytes, bytes]) -> None:
        """Sample every sample_interval; with suppress_redundant only the leaves whose value
        differs from the last one sent (the sync's first), all of them again once every
        heartbeat_interval."""
        interval = max(s.sample_interval, MIN_SAMPLE_NS) / 1e9
        heartbeat = s.heartbeat_interval / 1e9 if s.heartbeat_interval else None
        last = baseline
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            ups = self.updates_for(r, ietf, leaf_level=True)
            now = time.monotonic()
            if s.suppress_redundant and not (heartbeat and now - last_full >= heartbeat):
                current = self._sample_state(ups)
                ups = [u for u in ups if last.get(u.path.SerializeToString()) != u.val.SerializeToString()]
                last = current
            else:
                last = self._sample_state(ups)
                last_full = now
            if ups:
                await out.put(gnmi_pb2.SubscribeResponse(update=gnmi_pb2.Notification(
                    timestamp=_now(), prefix=self._prefix_out(prefix), update=ups)))
