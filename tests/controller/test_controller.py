"""The controller against real gNMI agents (in-process grpc.aio servers): PHYS links on both
ends, VIRT links along a computed relay path, applications on both end nodes, link and node
failure with reroute and recovery, paths that leave at a gateway for another vendor's KMS
(rerouted too, and read back by a restarted controller). Engines are stood in for by feeding
performance state."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sdqkd.agent.serve import start_gnmi
from sdqkd.agent.server import NodeAgent
from sdqkd.controller.controller import Controller, NodeEndpoint
from sdqkd.controller.topology import parse

TOPO = {
    "nodes": [{"name": n} for n in "ABCD"],
    "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10},
              {"a": "A", "b": "D", "km": 30}, {"a": "D", "b": "C", "km": 30}],
    "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}, {"name": "sae-b", "node": "B"}],
}
T = "etsi-qkd-node-types:"


class Net:
    def __init__(self, topo: dict = TOPO) -> None:
        self.topo = parse(topo)
        self.agents: dict[str, NodeAgent] = {}
        self.servers: dict[str, object] = {}
        self.ports: dict[str, int] = {}

    async def start_node(self, name: str, port: int = 0) -> None:
        agent = NodeAgent(self.topo.nodes[name].id, target=name)
        server, p = await start_gnmi(agent, f"127.0.0.1:{port}")
        self.agents[name], self.servers[name], self.ports[name] = agent, server, p

    async def stop_node(self, name: str) -> None:
        await self.servers[name].stop(None)

    def feed(self, eskr: dict[str, int]) -> None:
        """What engines would report: performance on both ends of each named link."""
        for link in self.topo.links:
            key = f"{link.a}{link.b}"
            if key not in eskr:
                continue
            for end in link.ends:
                if end in self.agents:
                    self.agents[end].state.update({
                        f"/qkd_node/qkd_links/qkd_link[qkdl_id={link.id}]/qkdl_performance/skr": eskr[key],
                        f"/qkd_node/qkd_links/qkd_link[qkdl_id={link.id}]/qkdl_performance/eskr": eskr[key],
                    })


async def until(cond, timeout: float = 10.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def test_controller_provisions_relays_and_reroutes():
    async def main():
        net = Net()
        for n in "ABCD":
            await net.start_node(n)
        eps = {n: NodeEndpoint(n, net.topo.nodes[n].id, f"127.0.0.1:{net.ports[n]}", f"127.0.0.1:{9000 + i}")
               for i, n in enumerate("ABCD")}
        ctl = Controller(net.topo, eps)
        await ctl.start()
        try:
            # PHYS links on both ends, local/remote swapped, a is the transmitter
            ab = net.topo.link_between("A", "B")
            ea = net.agents["A"].root["qkd_node"]["qkd_links"]["qkd_link"][(ab.id,)]
            eb = net.agents["B"].root["qkd_node"]["qkd_links"]["qkd_link"][(ab.id,)]
            assert ea["qkdl_local"]["qkdn_id"] == eb["qkdl_remote"]["qkdn_id"] == net.topo.nodes["A"].id
            assert ea["phys_qkd_role"] == f"{T}TRANSMITTER" and eb["phys_qkd_role"] == f"{T}RECEIVER"
            assert ea["sdqkd-link"]["classical-endpoint"] == eps["B"].peer
            assert ea["sdqkd-link"]["fibre-length-km"] == "10.000"

            net.feed({"AB": 500_000, "BC": 400_000, "AD": 50_000, "DC": 50_000})
            await until(lambda: all(ls.up for ls in ctl.router.links.values()))
            with pytest.raises(ValueError, match="unknown SAE"):
                await ctl.request_keys("sae-a", "nobody")
            route = await ctl.request_keys("sae-a", "sae-c", 1000)
            assert route.virtual and route.path == ["A", "B", "C"]
            ids = {n: net.topo.nodes[n].id for n in "ABCD"}
            virt = {n: net.agents[n].root["qkd_node"]["qkd_links"]["qkd_link"][(route.qkdl_id,)] for n in "ABC"}
            assert virt["A"]["virt_next_hop"] == [ids["B"], ids["C"]] and "virt_prev_hop" not in virt["A"]
            assert virt["B"]["virt_prev_hop"] == ids["A"] and virt["B"]["virt_next_hop"] == [ids["C"]]
            assert virt["C"]["virt_prev_hop"] == ids["A"] or virt["C"]["virt_prev_hop"] == ids["B"]
            assert virt["C"]["qkdl_type"] == f"{T}VIRT"
            for end in "AC":
                app = net.agents[end].root["qkd_node"]["qkd_applications"]["qkd_app"][(route.app_id,)]
                assert app["backing_qkdl_id"] == [route.qkdl_id] and app["server_app_id"].endswith("sae-a")
            direct = await ctl.request_keys("sae-a", "sae-b")
            assert not direct.virtual and direct.qkdl_id == ab.id

            # a link goes down: its status on one end turns OFF -> reroute through D
            bc = net.topo.link_between("B", "C")
            net.agents["C"].state.update({f"/qkd_node/qkd_links/qkd_link[qkdl_id={bc.id}]/qkdl_status": f"{T}OFF"})
            await until(lambda: ctl.apps[route.app_id].path == ["A", "D", "C"])
            assert (route.qkdl_id,) in net.agents["D"].root["qkd_node"]["qkd_links"]["qkd_link"]
            assert (route.qkdl_id,) not in net.agents["B"].root["qkd_node"]["qkd_links"].get("qkd_link", {})
            net.agents["C"].state.update({f"/qkd_node/qkd_links/qkd_link[qkdl_id={bc.id}]/qkdl_status": f"{T}ACTIVE"})

            # node D dies: its links are marked OFF on the surviving ends, the app moves back to B
            await until(lambda: ctl.router.links[bc.id].up)
            port_d = net.ports["D"]
            await net.stop_node("D")
            await until(lambda: not ctl.nodes["D"].up)
            ad = net.topo.link_between("A", "D")
            await until(lambda: net.agents["A"].root["qkd_node"]["qkd_links"]["qkd_link"][(ad.id,)].get(
                "qkdl_status") == f"{T}OFF")
            await until(lambda: ctl.apps[route.app_id].path == ["A", "B", "C"])

            # D returns (empty tree, same ID and port): the controller provisions its links again
            await net.start_node("D", port_d)
            await until(lambda: ctl.nodes["D"].up)
            await until(lambda: (ad.id,) in net.agents["D"].root["qkd_node"].get("qkd_links", {}).get("qkd_link", {}))
        finally:
            await ctl.stop()
            for s in net.servers.values():
                with contextlib.suppress(Exception):
                    await s.stop(None)

    asyncio.run(main())


def _links(agent: NodeAgent) -> dict:
    return agent.root["qkd_node"].get("qkd_links", {}).get("qkd_link", {})


def test_a_path_to_another_vendors_kms_is_rerouted_and_read_back_after_a_restart():
    """sae-a (A) pairs with bx1 behind vendorx, whose gateway is C: a VIRT link with exit-peer
    on A, B, C; B-C goes down -> the path moves to A-D-C (D gets the exit link, B loses it, the
    app keeps its backing link); a new controller reads the path back from A and moves it again
    when A-D goes down."""
    topo = dict(TOPO, external_peers=[{"name": "vendorx", "node": "C", "saes": ["bx1"], "rate_bps": 5000}])

    async def main():
        net = Net(topo)
        for n in "ABCD":
            await net.start_node(n)
        eps = {n: NodeEndpoint(n, net.topo.nodes[n].id, f"127.0.0.1:{net.ports[n]}", f"127.0.0.1:{9000 + i}")
               for i, n in enumerate("ABCD")}
        ctls = [Controller(net.topo, eps)]
        await ctls[0].start()
        try:
            net.feed({"AB": 500_000, "BC": 400_000, "AD": 50_000, "DC": 50_000})
            await until(lambda: all(ls.up for ls in ctls[0].router.links.values()))
            route = await ctls[0].request_keys("sae-a", "bx1", 1000)
            assert route.virtual and route.path == ["A", "B", "C", "ext:vendorx"]
            local = await ctls[0].request_keys("bx1", "sae-c", 1000)  # at the gateway: never moves
            assert local.path == ["C", "ext:vendorx"]

            def exit_on(nodes: str) -> None:
                for n in "ABCD":
                    link = _links(net.agents[n]).get((route.qkdl_id,))
                    assert (link is not None) == (n in nodes), n
                    if link is not None:
                        assert link["sdqkd-link"]["exit-peer"] == "vendorx" and link["qkdl_type"] == f"{T}VIRT"

            exit_on("ABC")
            bc, ad = net.topo.link_between("B", "C"), net.topo.link_between("A", "D")
            net.agents["C"].state.update({f"/qkd_node/qkd_links/qkd_link[qkdl_id={bc.id}]/qkdl_status": f"{T}OFF"})
            await until(lambda: ctls[0].apps[route.app_id].path == ["A", "D", "C", "ext:vendorx"])
            assert ("rerouted", route.app_id) in ctls[0].events and ("rerouted", local.app_id) not in ctls[0].events
            exit_on("ADC")
            ids = {n: net.topo.nodes[n].id for n in "ABCD"}
            assert _links(net.agents["A"])[(route.qkdl_id,)]["virt_next_hop"] == [ids["D"], ids["C"]]
            app = net.agents["A"].root["qkd_node"]["qkd_applications"]["qkd_app"][(route.app_id,)]
            assert app["backing_qkdl_id"] == [route.qkdl_id]
            net.agents["C"].state.update({f"/qkd_node/qkd_links/qkd_link[qkdl_id={bc.id}]/qkdl_status": f"{T}ACTIVE"})
            await until(lambda: ctls[0].router.links[bc.id].up)

            # a new controller: both pairs read back from their nodes, the path then moved again
            await ctls[0].stop()
            ctls.append(Controller(net.topo, eps))
            await ctls[1].start(provision=False)
            await until(lambda: route.app_id in ctls[1].apps and local.app_id in ctls[1].apps)
            adopted = ctls[1].apps[route.app_id]
            assert (adopted.path, adopted.qkdl_id, adopted.virtual) == (["A", "D", "C", "ext:vendorx"],
                                                                        route.qkdl_id, True)
            assert (adopted.master, adopted.slave, adopted.rate_bps) == ("sae-a", "bx1", 1000)
            assert ctls[1].apps[local.app_id].path == ["C", "ext:vendorx"]
            net.feed({"AB": 500_000, "BC": 400_000, "AD": 50_000, "DC": 50_000})
            await until(lambda: all(ls.up for ls in ctls[1].router.links.values()))
            net.agents["A"].state.update({f"/qkd_node/qkd_links/qkd_link[qkdl_id={ad.id}]/qkdl_status": f"{T}OFF"})
            await until(lambda: ctls[1].apps[route.app_id].path == ["A", "B", "C", "ext:vendorx"])
            exit_on("ABC")

            # no path left (A's only other link down too): the pair is reported, nothing removed
            ab = net.topo.link_between("A", "B")
            net.agents["A"].state.update({f"/qkd_node/qkd_links/qkd_link[qkdl_id={ab.id}]/qkdl_status": f"{T}OFF"})
            await until(lambda: ("unroutable", route.app_id) in ctls[1].events)
            assert ctls[1].apps[route.app_id].path == ["A", "B", "C", "ext:vendorx"]
            exit_on("ABC")
        finally:
            for c in ctls:
                await c.stop()
            for s in net.servers.values():
                with contextlib.suppress(Exception):
                    await s.stop(None)

    asyncio.run(main())


def test_the_link_table_takes_the_other_ends_rate_where_one_end_has_none():
    """A node restarted while its pools are full runs no block to measure: its end says 0."""
    topo = parse(TOPO)
    ctl = Controller(topo, {n: NodeEndpoint(n, topo.nodes[n].id, "127.0.0.1:1", "127.0.0.1:2") for n in "ABCD"})
    ab = topo.link_between("A", "B")
    ctl.nodes["A"].links[ab.id] = {"skr": 0, "eskr": 0, "qber": "0.010"}
    ctl.nodes["B"].links[ab.id] = {"skr": 900_000, "eskr": 880_000, "qber": "0.011", "paused": True}
    row = next(r for r in ctl.link_table() if r["qkdl_id"] == ab.id)
    assert (row["skr"], row["eskr"], row["qber"], row["paused"]) == (900_000, 880_000, "0.011", True)
    ctl.nodes["A"].links[ab.id] = {"skr": 950_000, "eskr": 930_000, "qber": "0.010"}
    row = next(r for r in ctl.link_table() if r["qkdl_id"] == ab.id)
    assert (row["skr"], row["eskr"], row["qber"]) == (950_000, 930_000, "0.010")
