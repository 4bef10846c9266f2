"""A whole network inside one asyncio loop: every node's runtime (agent, LKMS, engine links)
and the controller as objects, still talking over real gRPC, HTTPS and mutual TLS on loopback.
Fast to start, for tests and for scale runs; `network.py` is the same network as processes.

With `workers=N` the nodes are shared out over N worker processes (runtime/harness/worker.py),
each running its nodes in its own event loop, with the controller in this one: a large network
then uses every core rather than one interpreter's GIL. Still not one OS process per node, and
`nodes` then holds no runtime objects (`addresses` has every node's endpoints either way)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdqkd.controller.controller import Controller, NodeEndpoint
from sdqkd.controller.topology import Topology, parse
from sdqkd.engine import memory
from sdqkd.harness.build import HARNESS_LAYOUT, SERVICES, NodePlan, absolute_description, build, write_tree
from sdqkd.node.config import NodeConfig, load_config
from sdqkd.node.runtime import NodeRuntime
from sdqkd.pki import TlsFiles


@dataclass
class InProcessNetwork:
    topo: Topology
    state: Path
    nodes: dict[str, NodeRuntime] = field(default_factory=dict)
    controller: Controller | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)
    addresses: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> gnmi, etsi014, etsi004, peer
    workers: list[asyncio.subprocess.Process] = field(default_factory=list)
    owns_state_dir: bool = False  # made by start_network: removed at stop

    async def start(self, *, engine: dict[str, Any] | None = None, wait_keys: bool = True,
                    timeout: float = 120.0, workers: int = 0, controller: bool = True) -> dict[str, Any]:
        """Start every node, then (with `controller`) the controller, which provisions every
        link. Without it the nodes carry no links: another manager (TeraFlowSDN over RESTCONF)
        creates them from the interfaces each node has, one per fibre end of the topology."""
        # the same build as `sdqkd net up` and `sdqkd net export` (runtime/harness/build.py)
        loopback = {svc: "127.0.0.1:0" for svc in SERVICES}
        plans = {n: NodePlan(listen=loopback, advertise=loopback, sans=("127.0.0.1", "localhost")) for n in self.topo.nodes}
        net = build(self.topo, plans, HARNESS_LAYOUT, engine=engine or {}, gnmi_password=False)
        write_tree(self.state, net.files)
        desc = absolute_description(net.desc, self.state)
        # RESTCONF as the topology's settings.restconf says (default: mutual TLS), as for net up
        configs = {name: load_config(nd["config"]) for name, nd in desc["nodes"].items()}
        if workers > 0:
            await self._start_workers(configs, workers, timeout)
        else:
            self.nodes = {name: NodeRuntime(cfg) for name, cfg in configs.items()}
            await asyncio.gather(*(n.start() for n in self.nodes.values()))
            self.addresses = {name: rt.addresses for name, rt in self.nodes.items()}
            await self._wire_interfaces()
        ctl = desc["controller"]
        if controller:
            ctl_id = TlsFiles(Path(desc["ca"]), Path(ctl["cert"]), Path(ctl["key"]))
            eps = {n: NodeEndpoint(n, configs[n].id, a["gnmi"], a["peer"], a.get("channel", ""))
                   for n, a in self.addresses.items()}
            self.controller = Controller(self.topo, eps, tls=ctl_id)
            await self.controller.start()
        # the controller's identity, as net up's endpoints.json has it: these nodes ask no gNMI
        # password and there is no northbound API, so no login and no API token
        management = {k: ctl[k] for k in ("cert", "key", "restconf_token_file") if k in ctl}
        for name, addr in self.addresses.items():
            self.endpoints[name] = {
                "id": configs[name].id,
                **{k: addr[k] for k in ("gnmi", "etsi014", "etsi004", "etsi020", "restconf")},
                "restconf_tls": configs[name].restconf_tls, "ca": desc["ca"],
                "saes": {s: {"cert": f["cert"], "key": f["key"]} for s, f in desc["saes"].items()
                         if self.topo.saes[s].node == name},
                "management": management,
            }
        if wait_keys and controller:
            await self.wait_all_links(timeout)
        return self.endpoints

    async def _wire_interfaces(self) -> None:
        """Now that every node listens: each interface learns its peer's classical endpoint."""
        from sdqkd.restconf.adapter import MERGE, Edit

        for rt in self.nodes.values():
            edits = []
            for itf in rt.cfg.interfaces:
                peer = itf["att_point"]["device"]
                elems = (("qkd_node", ()), ("qkd_interfaces", ()), ("qkd_interface", (("qkdi_id", str(itf["id"])),)),
                         ("sdqkd-interface", ()))
                wired = {"classical-endpoint": self.addresses[peer]["peer"]}
                if self.addresses[peer].get("channel"):
                    wired["channel-endpoint"] = self.addresses[peer]["channel"]
                edits.append(Edit(MERGE, elems, wired))
            if edits:
                await rt.adapter.commit(edits)

    async def _start_workers(self, configs: dict[str, NodeConfig], workers: int, timeout: float) -> None:
        """Shares the nodes out over worker processes (balanced by link ends) and waits for them."""
        degree = {n: 0 for n in configs}
        for link in self.topo.links:
            degree[link.a] += 1
            degree[link.b] += 1
        shares: list[list[str]] = [[] for _ in range(min(workers, len(configs)))]
        load = [0] * len(shares)
        for name in sorted(configs, key=lambda n: -degree[n]):
            i = load.index(min(load))
            shares[i].append(name)
            load[i] += degree[name] + 1
        wdir = self.state / "workers"
        wdir.mkdir(parents=True, exist_ok=True)
        for i, share in enumerate(shares):
            f = wdir / f"worker-{i}.pickle"
            f.write_bytes(pickle.dumps([configs[n] for n in share]))
            self.workers.append(await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", "sdqkd.harness.worker", str(f),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))

        async def ready(proc: asyncio.subprocess.Process) -> dict[str, dict[str, str]]:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            msg: dict[str, Any] = json.loads(line) if line.strip() else {"error": f"exited with {await proc.wait()}"}
            if "ready" not in msg:
                raise RuntimeError(f"in-process harness worker {proc.pid} failed: {msg.get('error')}")
            ready_addrs: dict[str, dict[str, str]] = msg["ready"]
            return ready_addrs

        for got in await asyncio.wait_for(asyncio.gather(*(ready(p) for p in self.workers)), timeout):
            self.addresses.update(got)
        self.addresses = {n: self.addresses[n] for n in configs}  # topology order

    async def wait_all_links(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        assert self.controller is not None
        while not all(r["up"] and r["stored_keys"] > 0 for r in self.controller.link_table()):
            if loop.time() > end:
                down = [r["link"] for r in self.controller.link_table() if not (r["up"] and r["stored_keys"])]
                raise TimeoutError(f"links without key after {timeout:.0f} s: {', '.join(down)}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.controller is not None:
            await self.controller.stop()
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), *(self._stop_worker(p) for p in self.workers),
                             return_exceptions=True)
        if self.owns_state_dir:  # a temporary directory start_network made: nothing in it outlives the network
            shutil.rmtree(self.state, ignore_errors=True)

    @staticmethod
    async def _stop_worker(proc: asyncio.subprocess.Process, grace: float = 15.0) -> None:
        """End of its stdin tells a worker to stop its nodes and exit; it is killed if it does not."""
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def start_network(topology: dict[str, Any] | Topology, state_dir: Path | None = None,
                        **kw: Any) -> InProcessNetwork:
    topo = topology if isinstance(topology, Topology) else parse(topology)
    memory.keep_freed_memory()  # sdqkd.engine.memory: in full only if this process's threads have not allocated yet
    net = InProcessNetwork(topo, Path(state_dir or tempfile.mkdtemp(prefix="sdqkd-net-")), owns_state_dir=state_dir is None)
    try:
        await net.start(**kw)
    except BaseException:
        await net.stop()
        raise
    return net
