"""The node's transaction is all or nothing against a real node runtime (agent, LKMS with its
SQLite store, engine links) driven over gNMI: a refused Set starts nothing, a failing apply
is reported and converges on retry; YANG defaults reach the hooks; the engine's Cascade
variants are the model's."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from sdqkd.agent.model import elems_text, resolve
from sdqkd.agent.transaction import Datastore, Edit, Exists, InvalidPath, InvalidValue, NotFound, Rejected
from sdqkd.generated.gnmi_support import parse_path as P
from sdqkd.generated.proto.gnmi import gnmi_pb2, gnmi_pb2_grpc
from sdqkd.node.config import NodeConfig
from sdqkd.node.provisioning import CASCADE_VARIANTS
from sdqkd.node.runtime import NodeRuntime

LINKS = "/qkd_node/qkd_links/qkd_link"
EXT = "sdqkd-node-ext:sdqkd-link"


def _config(tmp: Path, bootstrap: Path, **kw: Any) -> NodeConfig:
    return NodeConfig(id=str(uuid.uuid4()), name="A", gnmi_listen="127.0.0.1:0", etsi014_listen="127.0.0.1:0",
                      etsi004_listen="127.0.0.1:0", data_dir=tmp / "A", tls=None, saes=[],
                      bootstrap={"*": bootstrap}, engine={"clock_scale": 0.01}, **kw)


def _link(node_id: str, lid: str, **ext: Any) -> dict[str, Any]:
    return {"qkdl_id": lid, "qkdl_local": {"qkdn_id": node_id}, "qkdl_remote": {"qkdn_id": str(uuid.uuid4())},
            "qkdl_type": "etsi-qkd-node-types:PHYS", "phys_qkd_role": "etsi-qkd-node-types:TRANSMITTER",
            EXT: {"classical-endpoint": "127.0.0.1:9", "channel-endpoint": "127.0.0.1:9", "fibre-length-km": "10",
                  **ext}}


def _update(lid: str, body: dict[str, Any]) -> gnmi_pb2.Update:
    return gnmi_pb2.Update(path=P(f"{LINKS}[qkdl_id={lid}]"),
                           val=gnmi_pb2.TypedValue(json_ietf_val=json.dumps(body).encode()))


class Node:
    """A started node runtime and a gNMI stub to it."""

    def __init__(self, rt: NodeRuntime, ch: grpc.aio.Channel):
        self.rt, self.ch = rt, ch
        self.stub = gnmi_pb2_grpc.gNMIStub(ch)

    def pools(self) -> set[str]:
        return set(self.rt.require_lkms().store.pools())

    def tree_links(self) -> set[str]:
        return {k[0] for k in self.rt.agent.root["qkd_node"].get("qkd_links", {}).get("qkd_link", {})}


async def _start(tmp: Path, bootstrap: Path, **kw: Any) -> Node:
    rt = NodeRuntime(_config(tmp, bootstrap, **kw))
    addrs = await rt.start()
    return Node(rt, grpc.aio.insecure_channel(addrs["gnmi"]))


async def _stop(node: Node) -> None:
    await node.ch.close()
    await node.rt.stop()


def test_refused_set_starts_no_engine_link_and_creates_no_pool(tmp_path: Path) -> None:
    """Defect 1: two new PHYS links, the second naming an unknown device profile: ABORTED,
    and neither the tree nor the engine nor the key store holds anything of it."""
    secret = tmp_path / "bootstrap"
    secret.write_bytes(b"s" * 32)

    async def main() -> None:
        node = await _start(tmp_path, secret)
        try:
            me = node.rt.cfg.id
            good, bad = str(uuid.uuid4()), str(uuid.uuid4())
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await node.stub.Set(gnmi_pb2.SetRequest(update=[
                    _update(good, _link(me, good)), _update(bad, _link(me, bad, **{"device-profile": "nosuch"}))]))
            assert e.value.code() == grpc.StatusCode.ABORTED
            assert bad in e.value.details() and "nosuch" in e.value.details()
            assert node.tree_links() == set() and node.rt.links == {} and node.pools() == set()
            # the same Set without the bad link goes through and runs exactly that link
            await node.stub.Set(gnmi_pb2.SetRequest(update=[_update(good, _link(me, good))]))
            assert node.tree_links() == {good} and set(node.rt.links) == {good} and node.pools() == {good}
        finally:
            await _stop(node)

    asyncio.run(main())


@pytest.mark.parametrize("erase", [False, True])
def test_a_deleted_link_keeps_its_pool_unless_configured_to_erase_it(tmp_path: Path, erase: bool) -> None:
    """Deleted over gNMI, a link's keys stay in the store and are there again when the link
    comes back; with `lkms.erase_deleted_links` they are erased with it (docs/reliability.md)."""
    secret = tmp_path / "bootstrap"
    secret.write_bytes(b"s" * 32)

    async def main() -> None:
        node = await _start(tmp_path, secret, erase_deleted_links=erase)
        try:
            me, lid = node.rt.cfg.id, str(uuid.uuid4())
            body = {**_link(me, lid), "qkdl_enable": False}  # no engine: the test stores the keys
            await node.stub.Set(gnmi_pb2.SetRequest(update=[_update(lid, body)]))
            store = node.rt.require_lkms().store
            ids = await store.add_block(lid, bytes(range(256)) * 4, 256, "blk-0")
            await node.stub.Set(gnmi_pb2.SetRequest(delete=[P(f"{LINKS}[qkdl_id={lid}]")]))
            assert node.rt.links == {} and lid not in node.rt.require_lkms().registry.links
            assert node.pools() == (set() if erase else {lid})
            await node.stub.Set(gnmi_pb2.SetRequest(update=[_update(lid, body)]))
            assert set(await store.key_states(lid)) == (set() if erase else set(ids))
        finally:
            await _stop(node)

    asyncio.run(main())


def test_failing_apply_is_reported_and_converges_on_retry(tmp_path: Path) -> None:
    """A valid Set whose apply fails (the bootstrap secret is unreadable): the change stays
    committed, an ETSI alarm and the link's state say so, nothing runs that the tree does not
    hold; once the cause is gone a retry converges."""
    secret = tmp_path / "bootstrap"  # configured but absent: reading it fails in the apply

    async def main() -> None:
        node = await _start(tmp_path, secret)
        try:
            me = node.rt.cfg.id
            lid = str(uuid.uuid4())
            alarms: list[dict[str, Any]] = []
            sub = node.rt.datastore.hub
            from sdqkd.agent.subscriptions import StreamSub

            watch = StreamSub(patterns=[(("alarm", ()),)])
            sub.add(watch)
            await node.stub.Set(gnmi_pb2.SetRequest(update=[_update(lid, _link(me, lid))]))
            while not watch.queue.empty():
                alarms.extend(v[1] for _e, _s, v in watch.queue.get_nowait())
            assert alarms and alarms[0]["link"]["qkdl_id"] == lid and "bootstrap" in alarms[0]["link"]["message"]
            failed = node.rt.datastore.failed
            assert list(failed) == [f"{LINKS}[qkdl_id={lid}]"]
            r = await node.stub.Get(gnmi_pb2.GetRequest(
                path=[P(f"{LINKS}[qkdl_id={lid}]/sdqkd-link/engine-state/last-abort-reason")],
                encoding=gnmi_pb2.JSON_IETF))
            assert "not applied" in json.loads(r.notification[0].update[0].val.json_ietf_val)
            assert node.tree_links() == {lid} and node.rt.links == {}
            assert node.pools() <= node.tree_links()
            secret.write_bytes(b"s" * 32)
            assert await node.rt.datastore.retry_failed() == {}
            assert set(node.rt.links) == {lid} and node.pools() == {lid}
            # a deletion is applied too: no engine link for what the tree no longer holds
            await node.stub.Set(gnmi_pb2.SetRequest(delete=[P(f"{LINKS}[qkdl_id={lid}]")]))
            assert node.tree_links() == set() and node.rt.links == {}
        finally:
            await _stop(node)

    asyncio.run(main())


def test_hooks_get_yang_defaults_and_node_local_ones() -> None:
    """RFC 7950 §7.6.1: absent leaves reach the hooks with their defaults; the stored tree
    keeps only what was written; a node-local default takes the schema's place."""
    from sdqkd.generated.agent_skeleton import ModelHooks

    seen: list[Any] = []

    class Hooks(ModelHooks):
        async def validate_qkd_link(self, txn: Any, old: Any, new: Any, *, qkdl_id: str) -> None:
            seen.append(new)

    async def main() -> None:
        node_id, lid = str(uuid.uuid4()), str(uuid.uuid4())
        path = [("qkd_node", {}), ("qkd_links", {}), ("qkd_link", {"qkdl_id": lid})]
        body = {"qkdl_id": lid, EXT: {"classical-endpoint": "127.0.0.1:9"}}
        for local, variant in (({}, "optimized"), ({f"{LINKS}/sdqkd-link/cascade-variant": "original"}, "original")):
            store = Datastore.for_node(node_id, hooks=Hooks(), local_defaults=local)
            await store.change([Edit("update", path, body)])
            ext = seen[-1][EXT]
            assert seen[-1]["qkdl_enable"] is True
            assert (ext["device-profile"], ext["cascade-variant"], ext["eve-fraction"]) == (
                "commercial", variant, "0.000")
            stored = store.root["qkd_node"]["qkd_links"]["qkd_link"][(lid,)]
            assert "qkdl_enable" not in stored and set(stored["sdqkd-link"]) == {"classical-endpoint"}

    asyncio.run(main())


def test_datastore_errors_are_protocol_neutral() -> None:
    async def main() -> None:
        store = Datastore.for_node(str(uuid.uuid4()))
        with pytest.raises(InvalidPath, match="nope"):
            await store.change([Edit("update", [("qkd_node", {}), ("nope", {})], 1)])
        with pytest.raises(InvalidValue, match="qkdn_location_id"):
            await store.change([Edit("update", [("qkd_node", {}), ("qkdn_location_id", {})], 5)])
        with pytest.raises(Rejected, match="qkdn_id"):
            await store.change([Edit("update", [("qkd_node", {}), ("qkdn_id", {})], str(uuid.uuid4()))])
        link = [("qkd_node", {}), ("qkd_links", {}), ("qkd_link", {"qkdl_id": str(uuid.uuid4())})]
        with pytest.raises(NotFound, match="no data"):
            store.require(resolve(link))
        assert store.read(resolve(link), ietf=True) == [] and store.failed == {}

    asyncio.run(main())


def test_edit_requirements_are_checked_in_the_change() -> None:
    """`requires`: absent (create only) and present (the path holds data), judged on the
    committed tree inside the change; a failed one changes nothing, not even the other edits."""

    async def main() -> None:
        store = Datastore.for_node(str(uuid.uuid4()))
        app = [("qkd_node", {}), ("qkd_applications", {}), ("qkd_app", {"app_id": str(uuid.uuid4())})]
        loc = [("qkd_node", {}), ("qkdn_location_id", {})]
        body = {"server_app_id": "urn:sdqkd:sae:a", "client_app_id": ["urn:sdqkd:sae:b"]}
        with pytest.raises(NotFound, match="no data"):
            await store.change([Edit("update", loc, "moved"), Edit("update", app, body, requires="present")])
        assert store.root["qkd_node"]["qkdn_location_id"] == ""  # the first edit was not kept
        await store.change([Edit("update", app, body, requires="absent")])
        with pytest.raises(Exists, match="already exists"):
            await store.change([Edit("update", loc, "moved"), Edit("update", app, body, requires="absent")])
        assert store.root["qkd_node"]["qkdn_location_id"] == ""
        await store.change([Edit("delete", app, requires="present")])
        with pytest.raises(NotFound):
            await store.change([Edit("delete", app, requires="present")])
        await store.change([Edit("delete", app)])  # without a requirement: accepted silently (gNMI)

    asyncio.run(main())


def test_engine_cascade_variants_are_the_yang_enum() -> None:
    """The engine runs exactly the variants the model lets a Set name."""
    from sdqkd.engine import cascade

    assert set(cascade.VARIANTS) == set(CASCADE_VARIANTS)


PHYS, VIRT = "etsi-qkd-node-types:PHYS", "etsi-qkd-node-types:VIRT"


def test_deleting_a_leaf_of_an_entry_publishes_that_leaf_not_the_entry() -> None:
    """A subscriber must not be told a link was removed when one of its leaves was."""
    from sdqkd.agent.subscriptions import StreamSub

    async def main() -> None:
        lid = str(uuid.uuid4())
        store = Datastore.for_node(str(uuid.uuid4()))
        link = [("qkd_node", {}), ("qkd_links", {}), ("qkd_link", {"qkdl_id": lid})]
        await store.change([Edit("update", link, {"qkdl_id": lid, "qkdl_type": PHYS, "qkdl_enable": True})])
        watch = StreamSub(patterns=[(("qkd_node", ()),)])
        store.hub.add(watch)
        await store.change([Edit("delete", link + [("qkdl_enable", {})])])
        (batch,) = [watch.queue.get_nowait() for _ in range(watch.queue.qsize())]
        assert [(elems_text(e), v) for e, _s, v in batch] == [(f"{LINKS}[qkdl_id={lid}]/qkdl_enable", None)]
        await store.change([Edit("delete", link)])
        (batch,) = [watch.queue.get_nowait() for _ in range(watch.queue.qsize())]
        assert [(elems_text(e), v) for e, _s, v in batch] == [(f"{LINKS}[qkdl_id={lid}]", None)]

    asyncio.run(main())


QBER = "qkdl_performance/phys_perf[perf_type=etsi-qkd-node-types:QBER]/value"


def _qber(store: Datastore, lid: str) -> Any:
    perf = store.root["qkd_node"]["qkd_links"]["qkd_link"][(lid,)].get("qkdl_performance", {})
    return perf.get("phys_perf")


def test_state_under_a_false_when_is_not_written_and_never_blocks_a_change() -> None:
    """QA's wedge: a replace left a link without qkdl_type, the runtime's state feed went on
    writing phys_perf (`when ../qkdl_type = 'PHYS'`) under it, and every later change, even of
    qkdn_location_id, was refused for that state. State under a false `when` is not written,
    state a change makes stale is removed with it (RFC 7950 §8.2), and a change is judged on
    the configuration it produces."""

    async def main() -> None:
        node_id, lid = str(uuid.uuid4()), str(uuid.uuid4())
        store = Datastore.for_node(node_id)
        link = [("qkd_node", {}), ("qkd_links", {}), ("qkd_link", {"qkdl_id": lid})]
        loc = [("qkd_node", {}), ("qkdn_location_id", {})]
        await store.change([Edit("update", link, {"qkdl_id": lid, "qkdl_type": PHYS})])
        store.state.update({f"{LINKS}[qkdl_id={lid}]/{QBER}": "0.020"})
        assert _qber(store, lid) is not None  # PHYS: the QBER is there
        # the model alone (no node hooks) accepts a replace without qkdl_type
        await store.change([Edit("replace", link, {"qkdl_id": lid, "qkdl_enable": True})])
        store.state.update({f"{LINKS}[qkdl_id={lid}]/{QBER}": "0.021",
                            f"{LINKS}[qkdl_id={lid}]/qkdl_performance/skr": 5})
        assert _qber(store, lid) is None  # not PHYS: no phys_perf; the rest of the feed is written
        assert store.root["qkd_node"]["qkd_links"]["qkd_link"][(lid,)]["qkdl_performance"] == {"skr": 5}
        await store.change([Edit("update", loc, "building 2b")])
        assert store.root["qkd_node"]["qkdn_location_id"] == "building 2b"

        # a tree that already holds such state (written before this fix) does not block a change:
        # the change removes it
        entry = store.root["qkd_node"]["qkd_links"]["qkd_link"][(lid,)]
        entry["qkdl_performance"]["phys_perf"] = {("etsi-qkd-node-types:QBER",): {
            "perf_type": "etsi-qkd-node-types:QBER", "value": "0.022"}}
        await store.change([Edit("update", loc, "building 3")])
        assert store.root["qkd_node"]["qkdn_location_id"] == "building 3" and _qber(store, lid) is None

    asyncio.run(main())


def test_a_change_that_turns_a_when_false_removes_the_state_under_it() -> None:
    """A PHYS link with a QBER becomes VIRT: the change goes through, its phys_perf goes with
    it (subscribers see the deletion), and the tree the change started from is left alone;
    configuration under a false `when` is still refused, naming it."""
    from sdqkd.agent.subscriptions import StreamSub

    async def main() -> None:
        node_id, lid = str(uuid.uuid4()), str(uuid.uuid4())
        store = Datastore.for_node(node_id)
        link = [("qkd_node", {}), ("qkd_links", {}), ("qkd_link", {"qkdl_id": lid})]
        await store.change([Edit("update", link, {"qkdl_id": lid, "qkdl_type": PHYS,
                                                  "phys_qkd_role": "etsi-qkd-node-types:RECEIVER"})])
        store.state.update({f"{LINKS}[qkdl_id={lid}]/{QBER}": "0.020"})
        with pytest.raises(Rejected, match=r"phys_qkd_role: present but its condition .* is false"):
            await store.change([Edit("update", link + [("qkdl_type", {})], VIRT)])
        assert _qber(store, lid) is not None
        before = store.root
        watch = StreamSub(patterns=[(("qkd_node", ()),)])
        store.hub.add(watch)
        await store.change([Edit("delete", link + [("phys_qkd_role", {})]),
                            Edit("update", link + [("qkdl_type", {})], VIRT)])
        entry = store.root["qkd_node"]["qkd_links"]["qkd_link"][(lid,)]
        assert entry["qkdl_type"] == VIRT and "qkdl_performance" not in entry
        old = before["qkd_node"]["qkd_links"]["qkd_link"][(lid,)]
        assert old["qkdl_performance"]["phys_perf"] and old["qkdl_type"] == PHYS  # copy on write
        published = [c for _ in range(watch.queue.qsize()) for c in watch.queue.get_nowait()]
        gone = {elems_text(e) for e, _s, v in published if v is None}
        assert gone == {f"{LINKS}[qkdl_id={lid}]/phys_qkd_role",
                        f"{LINKS}[qkdl_id={lid}]/qkdl_performance/phys_perf[perf_type=etsi-qkd-node-types:QBER]"}

    asyncio.run(main())


def test_a_replace_that_drops_what_a_link_needs_is_refused_and_unrelated_sets_go_through(tmp_path: Path) -> None:
    """QA's repro against a node: `replace` of a PHYS link with only its key and qkdl_enable
    was accepted, the link lost its type, ends and role and stopped, and its QBER state then
    refused every Set. Now the node refuses that replace, naming what is missing, and changes
    nothing; a link with a QBER can still become VIRT (its phys_perf goes); unrelated Sets
    go through all along."""
    from sdqkd.node import statepaths

    secret = tmp_path / "bootstrap"
    secret.write_bytes(b"s" * 32)

    async def get(node: Node, path: str) -> Any:
        r = await node.stub.Get(gnmi_pb2.GetRequest(path=[P(path)], encoding=gnmi_pb2.JSON_IETF))
        ups = r.notification[0].update
        return json.loads(ups[0].val.json_ietf_val) if ups else None

    async def main() -> None:
        node = await _start(tmp_path, secret)
        try:
            me, lid = node.rt.cfg.id, str(uuid.uuid4())
            p = f"{LINKS}[qkdl_id={lid}]"
            location = gnmi_pb2.Update(path=P("/qkd_node/qkdn_location_id"),
                                       val=gnmi_pb2.TypedValue(json_ietf_val=b'"building 2b"'))
            await node.stub.Set(gnmi_pb2.SetRequest(update=[_update(lid, _link(me, lid))]))
            node.rt.agent.state.update({statepaths.link(lid).qber_value: "0.020"})
            config = await node.stub.Get(gnmi_pb2.GetRequest(path=[P(p)], type=gnmi_pb2.GetRequest.CONFIG,
                                                             encoding=gnmi_pb2.JSON_IETF))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await node.stub.Set(gnmi_pb2.SetRequest(replace=[_update(lid, {"qkdl_id": lid, "qkdl_enable": True})]))
            assert e.value.code() == grpc.StatusCode.ABORTED
            assert f"{p}: qkdl_type and qkdl_remote/qkdn_id missing" in e.value.details()
            again = await node.stub.Get(gnmi_pb2.GetRequest(path=[P(p)], type=gnmi_pb2.GetRequest.CONFIG,
                                                            encoding=gnmi_pb2.JSON_IETF))

            def configured(r: gnmi_pb2.GetResponse) -> dict[str, Any]:
                # qkdl_status is the engine's to write: the link's dial to port 9 may change it meanwhile
                body = json.loads(r.notification[0].update[0].val.json_ietf_val)
                body.pop("qkdl_status", None)
                return dict(body)

            assert configured(again) == configured(config)
            assert set(node.rt.links) == {lid}  # the engine link still runs
            await node.stub.Set(gnmi_pb2.SetRequest(update=[location]))
            assert await get(node, "/qkd_node/qkdn_location_id") == "building 2b"
            # the link becomes VIRT (its PHYS-only role goes in the same Set): its QBER goes with it
            virt = gnmi_pb2.Update(path=P(f"{p}/qkdl_type"),
                                   val=gnmi_pb2.TypedValue(json_ietf_val=b'"etsi-qkd-node-types:VIRT"'))
            await node.stub.Set(gnmi_pb2.SetRequest(delete=[P(f"{p}/phys_qkd_role")], update=[virt]))
            assert node.rt.links == {}  # no engine for a VIRT link
            node.rt.agent.state.update({statepaths.link(lid).qber_value: "0.021"})  # a late block
            assert await get(node, f"{p}/qkdl_performance/phys_perf") is None
            location.val.json_ietf_val = b'"building 3"'
            await node.stub.Set(gnmi_pb2.SetRequest(update=[location]))
            assert await get(node, "/qkd_node/qkdn_location_id") == "building 3"
        finally:
            await _stop(node)

    asyncio.run(main())


def test_a_change_to_one_link_checks_that_link_not_every_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's checks (`when`, mandatory leaves) of a change to one link entry read that
    entry, not the node's other links, whose checks cannot depend on it: as many `when`s are
    judged next to 1 other link as next to 150, and a bad edit of that link is still refused.
    A change of the node's own leaf, which a link's `when` could read, still judges every link."""
    from sdqkd.agent import datastore as ds

    def link(lid: str) -> list[tuple[str, dict[str, str]]]:
        return [("qkd_node", {}), ("qkd_links", {}), ("qkd_link", {"qkdl_id": lid})]

    def body(lid: str) -> dict[str, Any]:
        return {"qkdl_id": lid, "qkdl_type": PHYS, "phys_qkd_role": "etsi-qkd-node-types:RECEIVER"}

    async def whens_judged(others: int) -> tuple[int, int]:
        store = Datastore.for_node(str(uuid.uuid4()))
        for _ in range(others):
            lid = str(uuid.uuid4())
            await store.change([Edit("update", link(lid), body(lid))])
        calls: list[int] = []
        judge = ds.when_false
        monkeypatch.setattr(ds, "when_false", lambda when, stack: calls.append(1) or judge(when, stack))
        lid = str(uuid.uuid4())
        await store.change([Edit("update", link(lid), body(lid))])
        one_link = len(calls)
        with pytest.raises(Rejected, match=r"virt_next_hop: present but its condition .* is false"):
            await store.change([Edit("update", link(lid) + [("virt_next_hop", {})], [str(uuid.uuid4())])])
        calls.clear()
        await store.change([Edit("update", [("qkd_node", {}), ("qkdn_location_id", {})], "building 3")])
        node_leaf = len(calls)
        monkeypatch.setattr(ds, "when_false", judge)
        return one_link, node_leaf

    async def main() -> None:
        few, many = await whens_judged(1), await whens_judged(150)
        assert few[0] == many[0] > 0, (few, many)  # 8 here: one link's PHYS/VIRT conditions
        assert many[1] > 10 * few[1], (few, many)  # every link's: 926 against 32 here

    asyncio.run(main())
