"""The ETSI 015 application-registration workflow on an in-process network (real gRPC, HTTPS,
mutual TLS on loopback; nodes and controller as objects, so their state can be inspected):
first requests register pairs, same-node pairs, unknown SAEs, no path, controller gone,
idle and CLOSE disconnection with `sdqkdn_application_disconnected` and release at both ends.
The process-level tests with third-party clients are in test_app_registration.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from sdqkd.generated.client import ModelClient
from sdqkd.harness.inprocess import InProcessNetwork, start_network
from sdqkd.lkms.registry import app_id_for
from sdqkd.node.apps import IDLE_CHECK_S

# A - B - C line, and an island node D (no link): SAEs on A (two), C and D.
TOPO = {
    "nodes": [{"name": n} for n in "ABCD"],
    "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}],
    "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-a2", "node": "A"}, {"name": "sae-c", "node": "C"},
             {"name": "sae-c2", "node": "C"}, {"name": "sae-c3", "node": "C"}, {"name": "sae-c4", "node": "C"},
             {"name": "sae-b", "node": "B"},
             {"name": "sae-d", "node": "D"}],
    # long enough that no pair idles out between a test's steps on a loaded machine; tests of the
    # idle time-out shorten it while they run (short_idle)
    "settings": {"app_idle_timeout_s": 60.0},
    "apps": [{"master": "sae-c4", "slave": "sae-a2", "rate": 0, "priority": 3}],  # explicit registration
}


class Loop:
    """The network's event loop on the test's thread (each test drives it with run())."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.net: InProcessNetwork = self.run(start_network(TOPO, tmp, timeout=120.0))
        self.net.owns_state_dir = True  # removed at stop: its PKI and key stores leave nothing behind

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        self.run(self.net.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    lp = Loop(tmp_path_factory.mktemp("appreg"))
    try:
        yield lp
    finally:
        lp.close()


def client(lp: Loop, node: str, sae: str) -> httpx.AsyncClient:
    """An HTTPS client of SAE `sae` (its own certificate, wherever it sits) to node `node`."""
    e = lp.net.endpoints[node]
    files = next(n["saes"][sae] for n in lp.net.endpoints.values() if sae in n["saes"])
    ctx = ssl.create_default_context(cafile=e["ca"])
    ctx.load_cert_chain(files["cert"], files["key"])
    return httpx.AsyncClient(verify=ctx, base_url=f"https://{e['etsi014']}", timeout=30)


async def tree_get(lp: Loop, node: str, path: str) -> Any:
    """A value of `node`'s tree over gNMI, as the controller reads it."""
    e, ident = lp.net.endpoints[node], lp.net.state / "pki" / "controller"
    creds = grpc.ssl_channel_credentials(Path(e["ca"]).read_bytes(), (ident / "sdqkd-controller.key").read_bytes(),
                                         (ident / "sdqkd-controller.pem").read_bytes())
    async with grpc.aio.secure_channel(e["gnmi"], creds) as ch:
        return await ModelClient(ch).get_value(path)


@contextlib.contextmanager
def short_idle(lp: Loop, seconds: float = 1.0) -> Iterator[None]:
    """Every node's application idle time-out set to `seconds` while the block runs."""
    regs = [n.registrar for n in lp.net.nodes.values() if n.registrar is not None]
    saved = [r.settings.idle_timeout_s for r in regs]
    for r in regs:
        r.settings.idle_timeout_s = seconds
    lp.run(asyncio.sleep(IDLE_CHECK_S + 0.25))  # each node's idle check has run once with it
    try:
        yield
    finally:
        for r, s in zip(regs, saved, strict=True):
            r.settings.idle_timeout_s = s


async def _get(lp: Loop, node: str, sae: str, path: str, **params: Any) -> httpx.Response:
    async with client(lp, node, sae) as c:
        return await c.get(path, params=params)


def test_same_node_pair_served_without_link_or_controller(net: Loop) -> None:
    ctl = net.net.controller
    assert ctl is not None
    r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-a2/enc_keys", number=3, size=512))
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert len(keys) == 3 and len({k["key_ID"] for k in keys}) == 3
    assert all(len(base64.b64decode(k["key"])) == 64 for k in keys)
    back = net.run(_get(net, "A", "sae-a2", "/api/v1/keys/sae-a/dec_keys", key_ID=keys[1]["key_ID"]))
    assert back.status_code == 200 and back.json()["keys"] == [keys[1]]
    again = net.run(_get(net, "A", "sae-a2", "/api/v1/keys/sae-a/dec_keys", key_ID=keys[1]["key_ID"]))
    assert again.status_code == 400  # each key once
    st = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-a2/status"))
    assert st.status_code == 200 and st.json()["source_KME_ID"] == st.json()["target_KME_ID"]
    app_id = app_id_for("sae-a", ["sae-a2"])
    app = net.net.nodes["A"].lkms.registry.apps[app_id]  # type: ignore[union-attr]
    assert app.is_local and app.backing_qkdl_ids == ()

    async def recorded() -> None:  # sdqkdn_application_new told the controller, which needed to do nothing
        while ("app-registered", (app_id, ("A",))) not in ctl.events:  # (ctl.apps: it may idle out first)
            await asyncio.sleep(0.05)

    net.run(recorded(), timeout=10)
    route = ctl.apps.get(app_id)
    assert route is None or (route.path == ["A"] and route.qkdl_id == "")


def test_topology_app_registered_at_start_and_never_idles_out(net: Loop) -> None:
    ctl = net.net.controller
    assert ctl is not None
    app_id = app_id_for("sae-c4", ["sae-a2"])

    async def registered() -> None:
        while app_id not in ctl.apps:
            await asyncio.sleep(0.05)

    net.run(registered(), timeout=30)
    assert ctl.apps[app_id].priority == 3 and ctl.apps[app_id].path == ["C", "B", "A"]
    with short_idle(net):
        net.run(asyncio.sleep(2.0))  # twice the idle timeout
    assert app_id in net.net.nodes["C"].lkms.registry.apps  # type: ignore[union-attr]
    entry = net.net.nodes["A"].agent.root["qkd_node"]["qkd_applications"]["qkd_app"][(app_id,)]
    assert entry["app_priority"] == 3
    r = net.run(_get(net, "C", "sae-c4", "/api/v1/keys/sae-a2/enc_keys"))
    assert r.status_code == 200, r.text


def test_errors_stay_400_401(net: Loop) -> None:
    r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-nobody/enc_keys"))
    assert r.status_code == 400 and "sae-nobody" in r.json()["message"]
    r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-a/enc_keys"))
    assert r.status_code == 400
    r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-c/enc_keys", number="x"))
    assert r.status_code == 400
    r = net.run(_get(net, "A", "sae-c", "/api/v1/keys/sae-a/enc_keys"))  # sae-c's certificate at node A
    ids = {n: net.net.nodes[n].lkms.node_id for n in "AC"}  # type: ignore[union-attr]
    assert (r.status_code, r.json()["message"]) == (401, f"unauthorized: certificate of SAE 'sae-c', which is "
                                                         f"attached to node C ({ids['C']}), not this node (A ({ids['A']}))")
    assert app_id_for("sae-a", ["sae-nobody"]) not in net.net.nodes["A"].registrar.regs  # type: ignore[union-attr]


def test_first_request_relayed_then_idle_disconnect_releases_both_ends(net: Loop) -> None:
    import grpc

    app_id = app_id_for("sae-a", ["sae-c"])
    ctl = net.net.controller
    assert ctl is not None
    e = net.net.endpoints["A"]
    ident = net.net.state / "pki" / "controller"
    creds = grpc.ssl_channel_credentials(Path(e["ca"]).read_bytes(), (ident / "sdqkd-controller.key").read_bytes(),
                                         (ident / "sdqkd-controller.pem").read_bytes())

    async def scenario() -> tuple[dict[str, Any], str]:
        async with grpc.aio.secure_channel(e["gnmi"], creds) as ch:
            notes = ModelClient(ch).subscribe_sdqkdn_application_disconnected()
            first = asyncio.ensure_future(anext(notes))
            await asyncio.sleep(0.3)  # subscribed before the pair can idle out
            r = await _get(net, "A", "sae-a", "/api/v1/keys/sae-c/enc_keys")
            assert r.status_code == 200, r.text
            # read at once (same event loop): a dec_keys slower than the 1 s idle time-out (a
            # loaded machine) lets the pair idle out at A before a later look
            assert ctl.apps[app_id].path == ["A", "B", "C"] and ctl.apps[app_id].virtual
            virt = ctl.apps[app_id].qkdl_id
            k = r.json()["keys"][0]
            back = await _get(net, "C", "sae-c", "/api/v1/keys/sae-a/dec_keys", key_ID=k["key_ID"])
            assert back.json()["keys"] == [k]  # taken before any idle-out: still delivered
            note = await first
            while app_id not in str(note):  # (other pairs of node A idle out too)
                note = await anext(notes)
            return dict(note), virt

    async def released() -> None:
        while app_id in ctl.apps or any(app_id in n.lkms.registry.apps for n in net.net.nodes.values()  # type: ignore[union-attr]
                                        ) or any(virt in n.lkms.registry.links for n in net.net.nodes.values()):  # type: ignore[union-attr]
            await asyncio.sleep(0.05)

    with short_idle(net):
        note, virt = net.run(scenario(), timeout=60)
        assert note == {"qkd_application": {"app_id": app_id}}
        net.run(released(), timeout=15)
    # and the pair registers again on its next request
    r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-c/enc_keys"))
    assert r.status_code == 200, r.text


def test_no_path_is_503_with_reason(net: Loop) -> None:
    """The controller finds no path to the island node D: the first request says so (503, with
    the reason). A controller slower than the node's wait (`first_request_wait_s`, a loaded
    machine) first gets "being set up", as any client would, which retries after Retry-After."""
    async def first_answer() -> httpx.Response:
        while True:
            r = await _get(net, "A", "sae-a", "/api/v1/keys/sae-d/enc_keys")
            if r.status_code != 503 or "being set up" not in r.json()["message"]:
                return r
            await asyncio.sleep(int(r.headers["Retry-After"]))

    r = net.run(first_answer(), timeout=60)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
    assert "no key-relay path" in r.json()["message"], r.text
    r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-d/status"))
    assert r.status_code == 503 and "Retry-After" in r.headers
    # registered, with no key path: DISCONNECTED (the model has no "pending" state)
    app = f"/qkd_node/qkd_applications/qkd_app[app_id={app_id_for('sae-a', ['sae-d'])}]/app_status"
    assert net.run(tree_get(net, "A", app)) == "etsi-qkd-node-types:DISCONNECTED"


def test_etsi004_open_connect_mistakes_are_invalid_argument(net: Loop) -> None:
    """An unknown destination SAE or the caller itself: ETSI 014 says why (400); OPEN_CONNECT gave
    status 4 (no QKD connection), which reads as an outage. Now INVALID_ARGUMENT with the reason."""
    from sdqkd.apps.keyclient import Etsi004Client, SaeIdentity

    def opened(dest: str) -> grpc.RpcError:
        with Etsi004Client(SaeIdentity.from_endpoints(net.net.endpoints, "sae-a")) as a:
            with pytest.raises(grpc.RpcError) as e:
                a.open(dest)
            return e.value

    for dest, why in (("sae-zzz", "unknown SAE 'sae-zzz': no SAE of that ID in this network"),
                      ("sae-a", "source and destination must differ (both 'sae-a')")):
        err = net.run(asyncio.to_thread(opened, dest))
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, why)  # type: ignore[attr-defined]
    assert app_id_for("sae-a", ["sae-zzz"]) not in net.net.nodes["A"].registrar.regs  # type: ignore[union-attr]


def test_etsi004_close_disconnects(net: Loop) -> None:
    from sdqkd.apps.keyclient import Etsi004Client, SaeIdentity
    from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb

    eps = net.net.endpoints
    app_id = app_id_for("sae-b", ["sae-c2"])

    def session() -> tuple[bytes, bytes]:
        with Etsi004Client(SaeIdentity.from_endpoints(eps, "sae-b")) as b, \
                Etsi004Client(SaeIdentity.from_endpoints(eps, "sae-c2")) as c:
            ksid = b.open("sae-c2")  # first OPEN_CONNECT of the pair: registers it
            assert c.open("sae-b", ksid) == ksid
            kb, kc = b.get_key(ksid, 0)[1], c.get_key(ksid, 0)[1]
            assert b.close_stream(ksid) == pb.SUCCESSFUL and c.close_stream(ksid) == pb.SUCCESSFUL
            return kb, kc

    kb, kc = net.run(asyncio.to_thread(session))
    assert kb == kc and len(kb) == 32

    async def gone() -> None:
        while app_id in net.net.nodes["B"].lkms.registry.apps:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)

    net.run(gone(), timeout=10)


def test_dec_keys_first_at_the_slaves_node_registers_the_pair(net: Loop) -> None:
    import uuid

    kid = str(uuid.uuid4())
    r = net.run(_get(net, "B", "sae-b", "/api/v1/keys/sae-a/dec_keys", key_ID=kid))
    assert r.status_code == 400 and r.json()["message"] == f"key not found: {kid}", r.text  # not "no application"
    ctl = net.net.controller
    app_id = app_id_for("sae-a", ["sae-b"])
    # registered over A-B (the node's answer, after first_request_wait_s at most, may come before
    # the controller has recorded it)
    assert ctl is not None

    async def registered() -> None:
        while ("app-registered", (app_id, ("A", "B"))) not in ctl.events:
            await asyncio.sleep(0.05)

    net.run(registered(), timeout=30)
    r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-b/enc_keys"))
    assert r.status_code == 200, r.text
    k = r.json()["keys"][0]
    back = net.run(_get(net, "B", "sae-b", "/api/v1/keys/sae-a/dec_keys", key_ID=k["key_ID"]))
    assert back.json()["keys"] == [k]


def test_multicast_first_request_registers_one_app_for_all_slaves(net: Loop) -> None:
    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client(net, "A", "sae-a2") as c:
            r = await c.post("/api/v1/keys/sae-c/enc_keys", json={"number": 1, "additional_slave_SAE_IDs": ["sae-c3"]})
        assert r.status_code == 200, r.text
        kid = r.json()["keys"][0]["key_ID"]
        return (r, await _get(net, "C", "sae-c", "/api/v1/keys/sae-a2/dec_keys", key_ID=kid),
                await _get(net, "C", "sae-c3", "/api/v1/keys/sae-a2/dec_keys", key_ID=kid))

    r, c1, c3 = net.run(go())
    assert c1.json()["keys"] == c3.json()["keys"] == r.json()["keys"]
    ctl = net.net.controller
    assert ctl is not None
    app_id = app_id_for("sae-a2", ["sae-c", "sae-c3"])  # one app, named by its master and all its slaves
    assert ("app-registered", (app_id, ("A", "B", "C"))) in ctl.events
    assert ctl.apps[app_id].more_slaves == ["sae-c3"]


def test_a_pair_does_not_idle_out_while_a_request_is_being_served(net: Loop) -> None:
    """Regression: the idle clock of a pair registered on request ran from the end of the wait for
    the controller, not from the end of the request. Serving a relayed pair's first keys took
    longer than the idle time-out on a loaded machine (its relay fills first), the pair idled out
    meanwhile, the controller removed the far end's app, and the request got 503 from the far end.
    Here the key store at A takes 2.5 s to reserve, with a 1 s idle time-out."""
    store = net.net.nodes["A"].lkms.store  # type: ignore[union-attr]
    reserve_out = store.reserve_out

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(2.5)
        return await reserve_out(*args, **kwargs)

    with short_idle(net):
        store.reserve_out = slow  # type: ignore[method-assign]
        try:
            r = net.run(_get(net, "A", "sae-a2", "/api/v1/keys/sae-c2/enc_keys"))
        finally:
            del store.reserve_out
        assert r.status_code == 200, r.text
    back = net.run(_get(net, "C", "sae-c2", "/api/v1/keys/sae-a2/dec_keys", key_ID=r.json()["keys"][0]["key_ID"]))
    assert back.json()["keys"] == r.json()["keys"]


def test_a_pair_in_use_at_the_masters_node_does_not_idle_out_at_the_slaves(net: Loop) -> None:
    """Regression: the slave's node, where the pair was registered (its SAE asked first), saw only
    its own SAE's requests. A master taking keys at its node every 0.25 s, its slave not asking,
    lost the pair after the idle time-out. The keys reserved at the slave's node count as use."""
    import uuid

    app_id = app_id_for("sae-a2", ["sae-b"])
    regs = net.net.nodes["B"].registrar.regs  # type: ignore[union-attr]

    async def keep_taking(span: float) -> object:
        clock = asyncio.get_running_loop().time
        async with client(net, "A", "sae-a2") as c:
            streak_start, last_start, reg = clock(), clock(), regs[app_id]
            while clock() - streak_start < span:
                start = clock()
                r = await c.get("/api/v1/keys/sae-b/enc_keys")
                assert r.status_code == 200, r.text
                if start - last_start >= 1.8:  # a stall on a loaded machine: may rightly have idled out
                    streak_start, reg = start, regs[app_id]
                assert regs[app_id] is reg, "the pair was disconnected at the slave's node while in use"
                last_start = start
                await asyncio.sleep(0.25)
            return reg

    with short_idle(net, 2.0):
        r = net.run(_get(net, "B", "sae-b", "/api/v1/keys/sae-a2/dec_keys", key_ID=str(uuid.uuid4())))
        assert r.status_code == 400, r.text  # the slave first: registered at B, by request
        assert regs[app_id].origin == "request"
        reg = net.run(keep_taking(6.0), timeout=60)  # three idle time-outs

        async def gone() -> None:  # no more requests: it idles out at B as before
            while regs.get(app_id) is reg:
                await asyncio.sleep(0.1)

        net.run(gone(), timeout=15)


def test_wait_is_bounded_then_503_being_set_up(net: Loop) -> None:
    settings = net.net.nodes["A"].registrar.settings  # type: ignore[union-attr]
    saved = settings.first_request_wait_s
    settings.first_request_wait_s = 1e-6  # no time for the controller: the answer must not wait
    try:
        r = net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-c2/enc_keys"))
    finally:
        settings.first_request_wait_s = saved
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert "being set up" in r.json()["message"]

    async def served() -> None:
        while (await _get(net, "A", "sae-a", "/api/v1/keys/sae-c2/enc_keys")).status_code != 200:
            await asyncio.sleep(0.2)

    net.run(served(), timeout=30)


def test_controller_gone_new_pair_503_provisioned_pair_served(net: Loop) -> None:
    # sae-c -> sae-b: provisioned now; then the controller stops; sae-c2 -> sae-b stays new
    assert net.run(_get(net, "C", "sae-c", "/api/v1/keys/sae-b/enc_keys")).status_code == 200
    ctl = net.net.controller
    assert ctl is not None
    topo_app = app_id_for("sae-c4", ["sae-a2"])

    async def provisioned() -> None:  # by the first controller (run alone, this test may come first)
        while topo_app not in ctl.apps:
            await asyncio.sleep(0.05)

    net.run(provisioned(), timeout=30)
    net.run(ctl.stop())

    async def unsubscribed() -> None:
        while net.net.nodes["C"].agent.hub.listening((("sdqkdn_application_new", ()),)):
            await asyncio.sleep(0.05)

    net.run(unsubscribed(), timeout=10)
    r = net.run(_get(net, "C", "sae-c", "/api/v1/keys/sae-b/enc_keys"))
    assert r.status_code == 200, r.text  # (once 503 in a fresh-clone CI run, not reproduced since)
    r = net.run(_get(net, "C", "sae-c2", "/api/v1/keys/sae-b/enc_keys"))
    assert r.status_code == 503 and "controller" in r.json()["message"] and r.headers["Retry-After"] == "5"
    assert net.run(_get(net, "A", "sae-a", "/api/v1/keys/sae-a2/enc_keys")).status_code == 200  # local
    r = net.run(_get(net, "C", "sae-c", "/api/v1/keys/sae-c3/enc_keys"))  # a new pair, both SAEs on C
    assert r.status_code == 200, r.text

    # a new controller: adopts what the old one provisioned, and serves the waiting pair
    from sdqkd.controller.controller import Controller

    ctl2 = Controller(ctl.topo, ctl.endpoints, tls=ctl.tls)
    net.net.controller = ctl2  # stopped with the network
    net.run(ctl2.start())

    async def adopted() -> None:
        while topo_app not in ctl2.apps:
            await asyncio.sleep(0.05)

    net.run(adopted(), timeout=30)
    route = ctl2.apps[topo_app]
    assert route.path == ["C", "B", "A"] and route.virtual and route.priority == 3
    assert route.qkdl_id == ctl.apps[topo_app].qkdl_id

    async def served() -> int:
        while (r := await _get(net, "C", "sae-c2", "/api/v1/keys/sae-b/enc_keys")).status_code != 200:
            assert r.status_code == 503 and "Retry-After" in r.headers
            await asyncio.sleep(0.5)
        return r.status_code

    assert net.run(served(), timeout=30) == 200


def _gnmi(lp: Loop, node: str) -> Any:
    """A secure gNMI channel to `node` with the controller's identity (mutual TLS)."""
    import grpc

    e = lp.net.endpoints[node]
    ident = lp.net.state / "pki" / "controller"
    creds = grpc.ssl_channel_credentials(Path(e["ca"]).read_bytes(), (ident / "sdqkd-controller.key").read_bytes(),
                                         (ident / "sdqkd-controller.pem").read_bytes())
    return grpc.aio.secure_channel(e["gnmi"], creds)


def test_etsi004_same_node_pair_streams_then_close_disconnects(net: Loop) -> None:
    """Two SAEs of node C: the first OPEN_CONNECT registers the pair (no link, no path), both
    applications get the same chunks; open streams keep it past the idle timeout; CLOSE of the
    last stream disconnects it (`sdqkdn_application_disconnected`)."""
    from sdqkd.apps.keyclient import Etsi004Client, KeyDeliveryError, SaeIdentity
    from sdqkd.generated.proto.sdqkd import etsi004_pb2 as pb

    eps, node, ctl = net.net.endpoints, net.net.nodes["C"], net.net.controller
    assert ctl is not None
    app_id = app_id_for("sae-c2", ["sae-c3"])
    routes = []

    def streams() -> tuple[list[bytes], list[bytes], list[int]]:
        with Etsi004Client(SaeIdentity.from_endpoints(eps, "sae-c2")) as m, \
                Etsi004Client(SaeIdentity.from_endpoints(eps, "sae-c3")) as s:
            ksid = m.open("sae-c3", chunk_size=48)  # first request of the pair: registers it
            assert app_id in node.lkms.registry.apps  # type: ignore[union-attr]
            assert s.open("sae-c2", ksid, chunk_size=48) == ksid
            km = [m.get_key(ksid)[1] for _ in range(3)]
            ks = [s.get_key(ksid, i)[1] for i in range(3)]
            ahead = s.get_key(ksid, 7)  # either side may run ahead
            assert m.get_key(ksid, 7) == ahead
            time.sleep(2.0)  # twice the idle timeout: an open stream keeps the pair registered
            assert app_id in node.lkms.registry.apps  # type: ignore[union-attr]
            routes.append(ctl.apps[app_id])  # the controller recorded it (sdqkdn_application_new)
            assert (m.get_key(ksid)[0], s.get_key(ksid)[0]) == (8, 8)  # each side's cursor: after its last
            with pytest.raises(KeyDeliveryError) as gone:
                m.get_key(ksid, 1)  # each chunk once per application
            assert gone.value.status == pb.GET_KEY_INSUFFICIENT_KEY_AVAILABLE
            codes = [m.close_stream(ksid)]
            with pytest.raises(KeyDeliveryError) as peer:
                s.get_key(ksid)
            assert peer.value.status == pb.GET_KEY_PEER_APPLICATION_NOT_CONNECTED
            codes.append(s.close_stream(ksid))
            codes.append(s.close_stream(ksid))
            return km, ks, codes

    async def scenario() -> tuple[list[bytes], list[bytes], list[int], dict[str, Any]]:
        async with _gnmi(net, "C") as ch:
            notes = ModelClient(ch).subscribe_sdqkdn_application_disconnected()
            first = asyncio.ensure_future(anext(notes))
            await asyncio.sleep(0.3)
            km, ks, codes = await asyncio.to_thread(streams)
            note = await first
            while app_id not in str(note):  # (other pairs of node C may idle out meanwhile)
                note = await anext(notes)
            return km, ks, codes, dict(note)

    with short_idle(net):
        km, ks, codes, note = net.run(scenario(), timeout=90)
    assert km == ks and len(set(km)) == 3 and all(len(k) == 48 for k in km)
    assert codes == [pb.SUCCESSFUL, pb.SUCCESSFUL, pb.NO_QKD_CONNECTION_AVAILABLE]
    assert note == {"qkd_application": {"app_id": app_id}}
    assert app_id not in node.lkms.registry.apps  # type: ignore[union-attr]
    assert (app_id,) not in node.agent.root["qkd_node"]["qkd_applications"]["qkd_app"]
    assert routes[0].path == ["C"] and routes[0].qkdl_id == ""

    async def released() -> None:  # the controller let go of it too (and set nothing back)
        while app_id in ctl.apps:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

    net.run(released(), timeout=10)
    assert app_id not in node.lkms.registry.apps  # type: ignore[union-attr]


def test_etsi004_same_node_pair_idles_out_after_its_stream_expired(net: Loop) -> None:
    """An OPEN_CONNECT whose peer application never joins: the stream expires unused, then
    the pair (registered by that OPEN_CONNECT) idles out like any other."""
    from sdqkd.apps.keyclient import Etsi004Client, SaeIdentity

    node = net.net.nodes["C"]
    limits = node.lkms.limits  # type: ignore[union-attr]
    app_id = app_id_for("sae-c3", ["sae-c4"])
    saved, limits.stream_unused_s = limits.stream_unused_s, 0.5
    try:
        def open_alone() -> str:
            with Etsi004Client(SaeIdentity.from_endpoints(net.net.endpoints, "sae-c3")) as m:
                return m.open("sae-c4", timeout_ms=100)

        net.run(asyncio.to_thread(open_alone))
        assert app_id in node.lkms.registry.apps  # type: ignore[union-attr]

        async def gone() -> None:
            while app_id in node.lkms.registry.apps or app_id in node.registrar.regs:  # type: ignore[union-attr]
                await asyncio.sleep(0.1)

        with short_idle(net):
            net.run(gone(), timeout=30)  # stream gone after ~1 s, the pair after its 1 s idle timeout
    finally:
        limits.stream_unused_s = saved
    assert not any(s.local_sae == "sae-c3" for s in node.lkms.streams.sides())  # type: ignore[union-attr]


def test_etsi004_first_open_connect_of_a_relayed_pair(net: Loop) -> None:
    """sae-a (node A) and sae-c3 (node C, two hops): the first OPEN_CONNECT registers the pair,
    the controller relays it over B, and both applications get the same 120 chunks (more than a
    relay source keeps ready, so the stream draws relayed key as it goes)."""
    from sdqkd.apps.keyclient import Etsi004Client, SaeIdentity

    eps = net.net.endpoints
    app_id = app_id_for("sae-a", ["sae-c3"])

    ctl = net.net.controller
    assert ctl is not None and app_id not in ctl.apps
    routes = []
    app = f"/qkd_node/qkd_applications/qkd_app[app_id={app_id}]"

    def session() -> tuple[list[bytes], list[bytes]]:
        with Etsi004Client(SaeIdentity.from_endpoints(eps, "sae-a")) as a, \
                Etsi004Client(SaeIdentity.from_endpoints(eps, "sae-c3")) as c:
            ksid = a.open("sae-c3", max_bps=64000, ttl_s=30)  # first request of the pair: registers
            routes.append(ctl.apps[app_id])  # it, waits for the path (set before the answer)
            for node in ("A", "C"):  # the request's QoS at both ends, not only min_bandwidth; ON
                entry = asyncio.run_coroutine_threadsafe(tree_get(net, node, app), net.loop).result(30)
                assert entry["app_qos"].get("max_bandwidth") == 64000 and entry["app_qos"].get("ttl") == 30, entry
                assert entry["app_status"] == "etsi-qkd-node-types:ON", entry
            assert c.open("sae-a", ksid) == ksid
            ka = [a.get_key(ksid)[1] for _ in range(120)]
            kc = [c.get_key(ksid)[1] for _ in range(120)]
            a.close_stream(ksid)
            c.close_stream(ksid)
            return ka, kc

    ka, kc = net.run(asyncio.to_thread(session), timeout=120)
    assert ka == kc and len(set(ka)) == 120 and all(len(k) == 32 for k in ka)
    assert routes[0].path == ["A", "B", "C"] and routes[0].virtual


def test_a_pair_asked_for_again_does_not_idle_out_while_it_waits(net: Loop) -> None:
    """Regression: a pair the controller has not served yet idled out idle_timeout_s after its
    first request however often its SAE asked again (under load the controller's Set came after
    the pair was gone, again and again). sae-d's node has no link: the answer stays 503."""
    app_id = app_id_for("sae-d", ["sae-b"])
    regs = net.net.nodes["D"].registrar.regs  # type: ignore[union-attr]

    async def keep_asking(span: float) -> object:
        """Ask until requests no further apart than the idle timeout have run for `span` seconds
        (a slow request on a loaded machine starts the streak again); through a streak the
        registration must stay the same object, never dropped and made again."""
        clock = asyncio.get_running_loop().time
        async with client(net, "D", "sae-d") as c:  # one connection: requests close together
            streak_start, last_start, reg = clock(), clock(), None
            while True:
                start = clock()
                r = await c.get("/api/v1/keys/sae-b/enc_keys")
                assert r.status_code == 503, r.text
                if clock() - last_start >= 0.9:  # the idle timeout is 1 s (short_idle)
                    streak_start, reg = start, None  # the pair may rightly have idled out
                if reg is None:
                    reg = regs[app_id]
                assert regs[app_id] is reg
                if clock() - streak_start >= span:
                    return reg
                last_start = start
                await asyncio.sleep(0.1)

    async def gone() -> None:  # no more requests: it idles out as before
        while regs.get(app_id) is first:
            await asyncio.sleep(0.1)

    with short_idle(net):
        first = net.run(keep_asking(3.0), timeout=60)  # three idle timeouts
        net.run(gone(), timeout=10)


def test_keys_taken_before_the_pair_idled_out_are_still_delivered_to_the_slave(net: Loop) -> None:
    """The master takes keys, then only the slave is active: the pair idles out at the master's
    node (and so everywhere) before the slave asks; its dec_keys still gets every key, once."""
    app_id = app_id_for("sae-c2", ["sae-b"])
    ctl = net.net.controller
    assert ctl is not None

    async def released() -> None:
        while app_id in ctl.apps or any(app_id in n.lkms.registry.apps for n in net.net.nodes.values()):  # type: ignore[union-attr]
            await asyncio.sleep(0.05)

    with short_idle(net):
        r = net.run(_get(net, "C", "sae-c2", "/api/v1/keys/sae-b/enc_keys", number=3))
        assert r.status_code == 200, r.text
        keys = r.json()["keys"]
        net.run(released(), timeout=20)
    ids = [k["key_ID"] for k in keys]

    async def fetch() -> httpx.Response:
        async with client(net, "B", "sae-b") as c:
            return await c.post("/api/v1/keys/sae-c2/dec_keys", json={"key_IDs": [{"key_ID": i} for i in ids]})

    back = net.run(fetch())
    assert back.status_code == 200, back.text
    assert back.json()["keys"] == keys
    again = net.run(fetch())
    assert again.status_code == 400, again.text  # delivered once
