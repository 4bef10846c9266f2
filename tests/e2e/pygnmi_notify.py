"""pygnmi (PyPI, unmodified) STREAM-subscribed to ETSI 015 notifications, in its own interpreter
(pygnmi ships its own gnmi.proto, which cannot share a descriptor pool with ours):
    python pygnmi_notify.py '<json: {address, ca, cert, key, user, password, paths}>'
prints `SYNC` once the subscription is in place, then one JSON line per update."""

from __future__ import annotations

import json
import sys

from pygnmi.client import gNMIclient


def main() -> None:
    spec = json.loads(sys.argv[1])
    host, port = spec["address"].rsplit(":", 1)
    with gNMIclient(target=(host, int(port)), username=spec["user"], password=spec["password"],
                    path_root=spec["ca"], path_cert=spec["cert"], path_key=spec["key"], gnmi_timeout=10) as gc:
        sub = gc.subscribe2(subscribe={"subscription": [{"path": p, "mode": "on_change"} for p in spec["paths"]],
                                       "mode": "stream", "encoding": "json_ietf"})
        for msg in sub:
            if msg.get("sync_response"):
                print("SYNC", flush=True)
            elif "update" in msg:
                print(json.dumps(msg, default=str), flush=True)


if __name__ == "__main__":
    main()
