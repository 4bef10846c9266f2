"""The existence checks of RESTCONF edits (POST: must not exist; PATCH, DELETE: must exist) are
part of the node's one transaction: a change from another door (a gNMI Set is a
`Datastore.change` like this one) cannot land between a check and its commit, and concurrent
requests for one resource get exactly one success."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from sdqkd.agent.server import NodeAgent
from sdqkd.agent.transaction import Edit as TxEdit
from sdqkd.generated import model_types as t
from sdqkd.generated.agent_skeleton import HookTransaction, ModelHooks
from sdqkd.restconf import ModelAdapter, start_restconf

ROOT = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
YANG = "application/yang-data+json"
STRICT = {"Accept": YANG, "Content-Type": YANG}
NODE_ID = str(uuid.uuid4())


class HoldingHooks(ModelHooks):
    """Holds the validation of one application until released: its change keeps the
    datastore's lock meanwhile, as a slow gNMI Set would."""

    def __init__(self, held_app: str) -> None:
        self.held_app = held_app
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def validate_qkd_app(self, txn: HookTransaction, old: t.QkdApp | None, new: t.QkdApp | None, *,
                               app_id: str) -> None:
        if new is not None and app_id == self.held_app and not self.release.is_set():
            self.entered.set()
            await self.release.wait()


def _app(app_id: str) -> dict[str, Any]:
    return {"app_id": app_id, "server_app_id": "urn:sdqkd:sae:a", "client_app_id": ["urn:sdqkd:sae:b"]}


async def _serve(hooks: ModelHooks) -> tuple[NodeAgent, Any, Any, str]:
    agent = NodeAgent(NODE_ID, hooks=hooks)
    runner, port, server = await start_restconf(ModelAdapter(agent), "127.0.0.1:0")
    return agent, runner, server, f"http://127.0.0.1:{port}"


def test_post_waits_for_a_change_in_progress_and_sees_its_result() -> None:
    """A datastore change (the gNMI door) holds the lock while it creates app X; a RESTCONF POST
    of X arriving meanwhile must be judged on the tree that change commits: 409, not 201."""
    app_id = str(uuid.uuid4())

    async def main() -> None:
        hooks = HoldingHooks(app_id)
        agent, runner, server, base = await _serve(hooks)
        try:
            path = [("qkd_node", {}), ("qkd_applications", {}), ("qkd_app", {"app_id": app_id})]
            other_door = asyncio.create_task(agent.datastore.change([TxEdit("update", path, _app(app_id))]))
            await asyncio.wait_for(hooks.entered.wait(), 10)
            async with httpx.AsyncClient(base_url=base, headers=STRICT, timeout=10) as c:
                seen = server.figures.requests
                post = asyncio.create_task(c.post(f"{ROOT}/qkd_applications",
                                                  json={"etsi-qkd-sdn-node:qkd_app": [_app(app_id)]}))
                while server.figures.requests == seen:  # the POST is inside the server
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
                assert not post.done()  # it waits for the change in progress
                hooks.release.set()
                await asyncio.wait_for(other_door, 10)
                r = await asyncio.wait_for(post, 10)
            assert r.status_code == 409, r.text
            assert r.json()["ietf-restconf:errors"]["error"][0]["error-tag"] == "data-exists"
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_concurrent_posts_and_deletes_of_one_resource_succeed_once() -> None:
    async def main() -> None:
        _agent, runner, _server, base = await _serve(ModelHooks())
        try:
            async with httpx.AsyncClient(base_url=base, headers=STRICT, timeout=30) as c:
                for _round in range(3):
                    app_id = str(uuid.uuid4())
                    posts = await asyncio.gather(*(c.post(f"{ROOT}/qkd_applications",
                                                          json={"etsi-qkd-sdn-node:qkd_app": [_app(app_id)]})
                                                   for _ in range(8)))
                    codes = sorted(r.status_code for r in posts)
                    assert codes == [201] + [409] * 7, [r.text for r in posts]
                    assert all(r.json()["ietf-restconf:errors"]["error"][0]["error-tag"] == "data-exists"
                               for r in posts if r.status_code == 409)
                    url = f"{ROOT}/qkd_applications/qkd_app={app_id}"
                    deletes = await asyncio.gather(*(c.delete(url) for _ in range(6)))
                    assert sorted(r.status_code for r in deletes) == [204] + [404] * 5
                    assert all(r.json()["ietf-restconf:errors"]["error"][0]["error-tag"] == "data-missing"
                               for r in deletes if r.status_code == 404)
                    assert (await c.get(url)).status_code == 404
        finally:
            await runner.cleanup()

    asyncio.run(main())
