"""Small helpers for the conformance tests (raw generated stubs, sync gRPC)."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from typing import Any

import grpc

from sdqkd.generated.gnmi_support import parse_path, path_str
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc

LINKS = "/qkd_node/qkd_links/qkd_link"


def P(text: str) -> gnmi_pb2.Path:
    return parse_path(text)


def jv(obj: Any, ietf: bool = True) -> gnmi_pb2.TypedValue:
    data = json.dumps(obj).encode()
    return gnmi_pb2.TypedValue(json_ietf_val=data) if ietf else gnmi_pb2.TypedValue(json_val=data)


def val(tv: gnmi_pb2.TypedValue) -> Any:
    kind = tv.WhichOneof("value")
    return json.loads(getattr(tv, kind)) if kind in ("json_val", "json_ietf_val") else getattr(tv, kind)


class G:
    """A gNMI stub that adds the target's credentials to every call."""

    def __init__(self, channel: grpc.Channel, target: Any):
        self.stub = gnmi_pb2_grpc.gNMIStub(channel)
        self.md = target.metadata()
        self.target = target

    def caps(self) -> gnmi_pb2.CapabilityResponse:
        return self.stub.Capabilities(gnmi_pb2.CapabilityRequest(), metadata=self.md, timeout=10)

    def get(self, *paths: str, enc: int = gnmi_pb2.JSON_IETF, type: int = 0,
            prefix: gnmi_pb2.Path | None = None) -> gnmi_pb2.GetResponse:
        return self.stub.Get(gnmi_pb2.GetRequest(path=[P(p) for p in paths], encoding=enc, type=type, prefix=prefix),
                             metadata=self.md, timeout=10)

    def value(self, path: str, **kw: Any) -> Any:
        r = self.get(path, **kw)
        return val(r.notification[0].update[0].val)

    def set(self, *, delete: list[str] = (), replace: list[tuple[str, Any]] = (), update: list[tuple[str, Any]] = (),
            ietf: bool = True, prefix: gnmi_pb2.Path | None = None) -> gnmi_pb2.SetResponse:
        req = gnmi_pb2.SetRequest(
            prefix=prefix, delete=[P(d) for d in delete],
            replace=[gnmi_pb2.Update(path=P(p), val=v if isinstance(v, gnmi_pb2.TypedValue) else jv(v, ietf))
                     for p, v in replace],
            update=[gnmi_pb2.Update(path=P(p), val=v if isinstance(v, gnmi_pb2.TypedValue) else jv(v, ietf))
                    for p, v in update])
        return self.stub.Set(req, metadata=self.md, timeout=10)

    def node_id(self) -> str:
        return self.value("/qkd_node/qkdn_id")

    def new_link(self, **extra: Any) -> tuple[str, dict[str, Any]]:
        lid = str(uuid.uuid4())
        link = {"qkdl_id": lid, "qkdl_enable": True, "qkdl_local": {"qkdn_id": self.node_id()},
                "qkdl_remote": {"qkdn_id": str(uuid.uuid4())}, "qkdl_type": "etsi-qkd-node-types:PHYS", **extra}
        return lid, link


class Stream:
    """A Subscribe call read by a background thread into a queue."""

    def __init__(self, g: G, sl: gnmi_pb2.SubscriptionList, polls: int = 0):
        self.requests: queue.Queue[gnmi_pb2.SubscribeRequest | None] = queue.Queue()
        self.requests.put(gnmi_pb2.SubscribeRequest(subscribe=sl))
        self.responses: queue.Queue[Any] = queue.Queue()

        def gen():
            while True:
                r = self.requests.get()
                if r is None:
                    return
                yield r

        self.call = g.stub.Subscribe(gen(), metadata=g.md)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.responses.put(e)
        self.responses.put(StopIteration)

    def next(self, timeout: float = 10) -> Any:
        r = self.responses.get(timeout=timeout)
        if isinstance(r, grpc.RpcError):
            raise r
        return r

    def until_sync(self, timeout: float = 10) -> list[gnmi_pb2.SubscribeResponse]:
        got = []
        while True:
            r = self.next(timeout)
            if r is StopIteration:
                raise AssertionError("stream ended before sync_response")
            if r.sync_response:
                return got
            got.append(r)

    def poll(self) -> None:
        self.requests.put(gnmi_pb2.SubscribeRequest(poll=gnmi_pb2.Poll()))

    def updates_until(self, pred, timeout: float = 10) -> list[tuple[str, Any]]:
        """Collect (path, value|'<deleted>') until pred(collected) is true."""
        seen: list[tuple[str, Any]] = []
        while not pred(seen):
            r = self.next(timeout)
            if r is StopIteration:
                raise AssertionError(f"stream ended; saw {seen}")
            if r.HasField("update"):
                n = r.update
                seen += [(path_str(u.path), val(u.val)) for u in n.update]
                seen += [(path_str(d), "<deleted>") for d in n.delete]
        return seen

    def close(self) -> None:
        self.call.cancel()
        self.requests.put(None)


def sub_list(*paths: str, mode: int = gnmi_pb2.SubscriptionList.STREAM, sub_mode: int = gnmi_pb2.ON_CHANGE,
             enc: int = gnmi_pb2.JSON_IETF, **kw: Any) -> gnmi_pb2.SubscriptionList:
    sample = kw.pop("sample_interval", 0)
    hb = kw.pop("heartbeat_interval", 0)
    sr = kw.pop("suppress_redundant", False)
    return gnmi_pb2.SubscriptionList(mode=mode, encoding=enc, subscription=[
        gnmi_pb2.Subscription(path=P(p), mode=sub_mode, sample_interval=sample, heartbeat_interval=hb,
                              suppress_redundant=sr) for p in paths], **kw)
