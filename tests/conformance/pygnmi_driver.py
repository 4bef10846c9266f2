"""Runs pygnmi (from PyPI, unmodified) against a gNMI target in its own interpreter.

pygnmi ships its own compiled gnmi.proto, which cannot share a protobuf descriptor pool with
another copy of gnmi.proto; so the conformance tests drive it through this script:
    python pygnmi_driver.py '<json: {"target": {...}, "ops": [[name, kwargs], ...]}>'
and read one JSON document of results (or {"error": ...}) from stdout."""

from __future__ import annotations

import json
import sys

from pygnmi.client import gNMIclient


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (str, int, float, bool)) or o is None:
        return o
    return str(o)


def main() -> None:
    spec = json.loads(sys.argv[1])
    t = spec["target"]
    host, port = t["address"].rsplit(":", 1)
    kw = dict(target=(host, int(port)), username=t.get("user") or "", password=t.get("password") or "",
              insecure=bool(t.get("insecure")), gnmi_timeout=10)
    if not t.get("insecure"):
        kw.update(path_root=t["ca"], path_cert=t["cert"], path_key=t["key"])
    results = []
    with gNMIclient(**kw) as gc:
        for name, args in spec["ops"]:
            try:
                if name == "capabilities":
                    results.append(gc.capabilities())
                elif name == "get":
                    results.append(gc.get(**args))
                elif name == "set":
                    args["update"] = [tuple(u) for u in args.get("update", [])]
                    args["replace"] = [tuple(u) for u in args.get("replace", [])]
                    results.append(gc.set(**args))
                elif name == "subscribe_once":
                    results.append([m for m in gc.subscribe2(subscribe=args)])
                elif name == "subscribe_stream":
                    n = args.pop("take")
                    trigger = args.pop("trigger", None)
                    sub = gc.subscribe2(subscribe=args)
                    got = []
                    for i, m in enumerate(sub):
                        got.append(m)
                        if i == 0 and trigger:
                            gc.set(update=[tuple(u) for u in trigger], encoding="json_ietf")
                        if len(got) >= n:
                            break
                    sub.close()
                    results.append(got)
                else:
                    raise ValueError(f"unknown op {name}")
            except Exception as e:  # noqa: BLE001 - reported to the test as data
                orig = getattr(e, "orig_exc", None)
                code = orig.code().name if orig is not None and hasattr(orig, "code") else ""
                results.append({"error": f"{type(e).__name__}: {e}", "code": code})
    # pygnmi prints its own messages to stdout; ours is the last line
    print("\n" + json.dumps(_jsonable(results)))


if __name__ == "__main__":
    main()
