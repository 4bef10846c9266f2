"""A whole network inside one asyncio loop: every node's runtime (agent, LKMS, engine links)
and the controller as objects, still talking over real gRPC, HTTPS and mutual TLS on loopback.
Fast to start, for tests and for scale runs; `network.py` is the same network as processes."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.controller.controller import Controller, NodeEndpoint
from runtime.controller.topology import Topology, parse
from runtime.node.config import NodeConfig
from runtime.node.runtime import NodeRuntime
from runtime.pki import write_ca, write_identity


@dataclass
class InProcessNetwork:
    topo: Topology
    state: Path
    nodes: dict[str, NodeRuntime] = field(default_factory=dict)
    controller: Controller | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)

    async def start(self, *, engine: dict[str, Any] | None = None, wait_keys: bool = True,
                    timeout: float = 120.0) -> dict[str, Any]:
        ca, ca_path = write_ca(self.state / "pki")
        boot: dict[str, dict[str, Path]] = {n: {} for n in self.topo.nodes}
        for link in self.topo.links:
            secret = secrets.token_bytes(32)
            for me, peer in ((link.a, link.b), (link.b, link.a)):
                f = self.state / "nodes" / me / "bootstrap" / f"{self.topo.nodes[peer].id}.key"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(secret)
                boot[me][self.topo.nodes[peer].id] = f
        for name, node in self.topo.nodes.items():
            ident = write_identity(ca, ca_path, self.state / "nodes" / name / "tls", node.id, server=True)
            cfg = NodeConfig(id=node.id, name=name, gnmi_listen="127.0.0.1:0", etsi014_listen="127.0.0.1:0",
                             etsi004_listen="127.0.0.1:0", data_dir=self.state / "nodes" / name / "data", tls=ident,
                             saes=[{"id": s} for s, sae in self.topo.saes.items() if sae.node == name],
                             bootstrap=boot[name], engine=dict(engine or {}), location=node.location)
            self.nodes[name] = NodeRuntime(cfg)
        await asyncio.gather(*(n.start() for n in self.nodes.values()))
        ctl_id = write_identity(ca, ca_path, self.state / "pki" / "controller", "sdqkd-controller", server=False)
        eps = {n: NodeEndpoint(n, rt.cfg.id, rt.addresses["gnmi"], rt.addresses["peer"]) for n, rt in self.nodes.items()}
        self.controller = Controller(self.topo, eps, tls=ctl_id)
        await self.controller.start()
        saes = {s: write_identity(ca, ca_path, self.state / "pki" / "saes", s, server=False) for s in self.topo.saes}
        for name, rt in self.nodes.items():
            self.endpoints[name] = {
                "id": rt.cfg.id, **{k: rt.addresses[k] for k in ("gnmi", "etsi014", "etsi004")}, "ca": str(ca_path),
                "saes": {s: {"cert": str(f.cert), "key": str(f.key)} for s, f in saes.items()
                         if self.topo.saes[s].node == name},
            }
        if wait_keys:
            await self.wait_all_links(timeout)
        return self.endpoints

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
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), return_exceptions=True)


async def start_network(topology: dict[str, Any] | Topology, state_dir: Path | None = None,
                        **kw: Any) -> InProcessNetwork:
    topo = topology if isinstance(topology, Topology) else parse(topology)
    net = InProcessNetwork(topo, Path(state_dir or tempfile.mkdtemp(prefix="sdqkd-net-")))
    try:
        await net.start(**kw)
    except BaseException:
        await net.stop()
        raise
    return net
