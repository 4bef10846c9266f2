"""Watch the QKD links of one node of a running network with pygnmi, the most used Python gNMI
client: a gNMI STREAM subscription (ON_CHANGE) to each link's secret key rate, its status and
whether it is paused (its key pool full: it makes no key until keys are used), over
the mutual TLS and password that `sdqkd net up` wrote into DIR/endpoints.json. Links are named
A-B from the controller's status file. Ctrl-C stops it; `--count N` stops after N updates,
`--seconds S` after S seconds (ON_CHANGE is quiet while nothing changes: a paused link says
nothing more after the first values).

    pip install pygnmi
    python examples/watch_links.py --state-dir lab B
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import grpc
from pygnmi.client import gNMIclient

PATHS = ["/qkd_node/qkd_links/qkd_link/qkdl_performance/skr", "/qkd_node/qkd_links/qkd_link/qkdl_status",
         "/qkd_node/qkd_links/qkd_link/sdqkd-node-ext:sdqkd-link/engine-state/paused"]


def quiet_cancel(args: threading.ExceptHookArgs) -> None:
    """pygnmi 0.8's reader thread raises CANCELLED when we close the stream on purpose: not an error."""
    if isinstance(args.exc_value, grpc.RpcError) and args.exc_value.code() == grpc.StatusCode.CANCELLED:
        return
    threading.__excepthook__(args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", required=True, type=Path, help="the network's state dir (sdqkd net up)")
    ap.add_argument("node", help="node name, as in the topology")
    ap.add_argument("--count", type=int, default=0, help="stop after this many updates (default: never)")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: never)")
    args = ap.parse_args()
    ep = json.loads((args.state_dir / "endpoints.json").read_text())[args.node]
    status = json.loads((args.state_dir / "controller-status.json").read_text())
    names = {row["qkdl_id"]: row["link"] for row in status["links"]}
    mgmt = ep["management"]
    host, port = ep["gnmi"].rsplit(":", 1)
    request = {"mode": "stream", "encoding": "json",
               "subscription": [{"path": p, "mode": "on_change"} for p in PATHS]}
    threading.excepthook = quiet_cancel
    seen = 0
    with gNMIclient(target=(host, port), username=mgmt["username"],
                    password=Path(mgmt["password_file"]).read_text(), path_root=ep["ca"],
                    path_cert=mgmt["cert"], path_key=mgmt["key"]) as gc:
        stream = gc.subscribe2(subscribe=request)
        deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
        try:
            while not (args.count and seen >= args.count):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    msg = stream.get_update(timeout=left)
                except TimeoutError:  # --seconds passed without another update
                    break
                for u in msg.get("update", {}).get("update", []):
                    qkdl_id, leaf = u["path"].split("[qkdl_id=", 1)[1].split("]/", 1)
                    print(f"{args.node}: link {names.get(qkdl_id, qkdl_id)}  {leaf} = {u['val']}", flush=True)
                    seen += 1
        except KeyboardInterrupt:
            pass
        finally:
            stream.close()
    if args.count and seen < args.count:
        print(f"{args.node}: {seen} of {args.count} updates in {args.seconds:g} s: nothing else changed", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
