"""`sdqkd controller --state-dir DIR`: the controller as a process of a harness network, with a
small northbound HTTP API on loopback (aiohttp):

    GET  /status                      links (km, dB, QBER, rates, stored keys) and applications
    POST /apps {master, slave, rate}  give SAE `master` keys shared with SAE `slave` at `rate` bit/s

and DIR/controller-status.json refreshed every second for tools that only read files.

Every API call carries `Authorization: Bearer TOKEN`, the token of the 0600 file the harness
wrote (network.json: controller.token_file; runtime/harness/northbound.py is a client): loopback
is not a boundary between the users of one machine. Anything else is 401. A bad request is 400
naming the field: `rate` must be a finite number of bit/s within the ETSI 015 virt_bandwidth
range (uint32), `master` and `slave` non-empty strings naming SAEs the controller knows.
Every error is JSON `{"message": ...}`, an unknown path (404) or method (405, with `Allow`)
included.

The network description is DIR/network.json, or `--config FILE` (a read-only mount in a
container; the state dir then only takes the status file). File paths in it are relative to
the file's own directory, or absolute."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from sdqkd.agent.serve import is_loopback
from sdqkd.pki import TlsFiles

from .controller import Controller, NodeEndpoint
from .topology import parse

log = logging.getLogger("sdqkd.controller")


def build(config: Path) -> Controller:
    """The controller of the network described by `config` (network.json)."""
    desc = json.loads(config.read_text())
    base = config.parent
    # its file paths (an external peer's CA) are relative to network.json, like every other
    topo = parse(desc["topology_data"], desc["topology"], files=base)
    eps = {name: NodeEndpoint(name, nd["id"], nd["gnmi"], nd["peer"], nd.get("channel", "")) for name, nd in desc["nodes"].items()}
    c = desc["controller"]
    tls = TlsFiles(base / desc["ca"], base / c["cert"], base / c["key"])
    return Controller(topo, eps, tls=tls, credentials=(c["username"], (base / c["password_file"]).read_text()))


MAX_RATE_BPS = 2**32 - 1  # virt_bandwidth is a uint32 in ETSI 015


def _app_request(raw: bytes) -> tuple[str, str, float]:
    """(master, slave, rate) of a POST /apps body; ValueError naming the field otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("body: not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("body: expected a JSON object")
    names = {}
    for k in ("master", "slave"):
        v = body.get(k)
        if not isinstance(v, str) or not v:
            raise ValueError(f"{k}: expected a non-empty SAE ID string")
        names[k] = v
    rate = body.get("rate", 0)
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ValueError("rate: expected a number of bit/s")
    if not math.isfinite(rate) or not 0 <= rate <= MAX_RATE_BPS:
        raise ValueError(f"rate: must be between 0 and {MAX_RATE_BPS} bit/s")
    return names["master"], names["slave"], float(rate)


def _bearer(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: every request must carry the token (compared in constant time)."""
    want = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        got = request.headers.get("Authorization", "").encode()
        if not token or not hmac.compare_digest(got, want):
            return web.json_response({"message": "unauthorized: missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method, body too large) as the API's error
    form, `{"message": ...}`, not its plain-text bodies."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        what = f"{request.method} {request.path}"
        if isinstance(e, web.HTTPMethodNotAllowed):
            message = f"method not allowed: {what} (allowed: {', '.join(sorted(e.allowed_methods))})"
        elif isinstance(e, web.HTTPNotFound):
            message = f"not found: {what} (the API serves GET /status and POST /apps)"
        else:
            message = f"{e.reason.lower()}: {what}"
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return web.json_response({"message": message}, status=e.status, headers=headers)


def status(ctl: Controller, provisioned: bool) -> dict[str, Any]:
    return {"provisioned": provisioned, "links": ctl.link_table(),
            "nodes": {n: v.up for n, v in ctl.nodes.items()},
            "apps": [{**asdict(a), "links_down": ctl.links_down(a)} for a in ctl.apps.values()]}


def api_app(ctl: Controller, token: str, provisioned: Callable[[], bool]) -> web.Application:
    """The northbound API of `ctl`: the token checked first (an unknown path without it is 401
    too), then its two routes, errors in JSON."""

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status(ctl, provisioned()))

    async def post_app(request: web.Request) -> web.Response:
        try:
            master, slave, rate = _app_request(await request.read())
            route = await ctl.request_keys(master, slave, rate)
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"message": f"bad request: {e}"}, status=400)
        except RuntimeError as e:
            return web.json_response({"message": str(e)}, status=503)
        return web.json_response(asdict(route))

    app = web.Application(middlewares=[_bearer(token), _json_errors])
    app.add_routes([web.get("/status", get_status), web.post("/apps", post_app)])
    return app


async def run(state_dir: Path, stop: asyncio.Event, config: Path | None = None,
              api: str = "127.0.0.1:0") -> None:
    config = config or state_dir / "network.json"
    ctl = build(config)
    provisioned = False
    token = (config.parent / json.loads(config.read_text())["controller"]["token_file"]).read_text().strip()
    app = api_app(ctl, token, lambda: provisioned)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    api_host, _, api_port = api.rpartition(":")
    site = web.TCPSite(runner, api_host, int(api_port))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    status_file = state_dir / "controller-status.json"

    async def publish() -> None:
        while True:
            st = status(ctl, provisioned)
            st["api"] = f"{api_host}:{port}"
            tmp = status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(st, indent=1))
            tmp.replace(status_file)
            await asyncio.sleep(1.0)

    pub = asyncio.create_task(publish())
    try:
        await ctl.start()
        provisioned = True
        log.info("controller: links provisioned; API on %s:%d", api_host, port)
        await stop.wait()
    finally:
        pub.cancel()
        await ctl.stop()
        await runner.cleanup()


def config_problem(state_dir: str, config: str | None) -> str | None:
    """Why the controller cannot start from its network description (one line naming the file),
    or None. Checked before the controller creates DIR, so a mistyped DIR leaves nothing behind."""
    path = Path(config) if config else Path(state_dir) / "network.json"
    where = f"--config {config}" if config else f"--state-dir {state_dir}"
    if not path.is_file():
        hint = "" if config else " (not a network prepared by `sdqkd net up`?)"
        return f"sdqkd controller: {where}: no such file {path}{hint}"
    try:
        desc = json.loads(path.read_text())
    except OSError as e:
        return f"sdqkd controller: {path}: cannot read ({e.strerror or e})"
    except ValueError as e:
        return f"sdqkd controller: {path}: not JSON ({e})"
    ctl = desc.get("controller") if isinstance(desc, dict) else None
    if not isinstance(ctl, dict):
        return f"sdqkd controller: {path}: not a network description (no `controller` object)"
    # the files it names, relative to its own directory (as the controller reads them)
    named = {"ca": desc.get("ca"), **{f"controller.{k}": ctl.get(k)
                                      for k in ("cert", "key", "password_file", "token_file")}}
    peers = (desc.get("topology_data") or {}).get("external_peers")
    for i, peer in enumerate(peers if isinstance(peers, list) else []):
        if isinstance(peer, dict) and "ca" in peer:
            named[f"topology_data.external_peers[{i}].ca"] = peer["ca"]
    for key, rel in named.items():
        if not isinstance(rel, str) or not (path.parent / rel).is_file():
            return f"sdqkd controller: {path}: {key}: no such file {path.parent / str(rel or '')}"
    return None


def main(state_dir: str, config: str | None = None, api: str = "127.0.0.1:0", log_format: str = "text") -> int:
    from sdqkd.logsetup import configure

    configure(log_format)
    if not is_loopback(api):
        # the northbound API stays on loopback behind its bearer token (kubectl port-forward,
        # docker exec or ssh reach it from outside)
        print(f"--api {api}: the controller API serves loopback addresses only", file=sys.stderr)
        return 2
    problem = config_problem(state_dir, config)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(state, stop, Path(config).resolve() if config else None, api)

    asyncio.run(go())
    return 0
