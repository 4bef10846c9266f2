"""Client of the controller's northbound API of a process network (runtime/controller/service.py):
its address from DIR/controller-status.json, its bearer token from the 0600 token file named in
DIR/network.json."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any


def api_and_headers(state: Path) -> tuple[str, dict[str, str]]:
    """("127.0.0.1:PORT", headers with the bearer token) of the network under `state`."""
    api = json.loads((state / "controller-status.json").read_text())["api"]
    token_file = json.loads((state / "network.json").read_text())["controller"]["token_file"]
    return str(api), {"Authorization": f"Bearer {Path(token_file).read_text().strip()}"}


def post_app(state: Path, master: str, slave: str, rate: float = 0.0, timeout: float = 60.0) -> dict[str, Any]:
    """POST /apps: keys for SAE `master` shared with SAE `slave` at `rate` bit/s; the route."""
    api, headers = api_and_headers(state)
    req = urllib.request.Request(f"http://{api}/apps", data=json.dumps(
        {"master": master, "slave": slave, "rate": rate}).encode(),
        headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.loads(resp.read()))
