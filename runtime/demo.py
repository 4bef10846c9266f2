"""`sdqkd demo`: the main job on the embedded default. It grows with the runtime; every
figure it prints comes from the running code (the compiled model, the engine), never a
canned value."""

from __future__ import annotations

import time


def _model_summary() -> None:
    from generated import agent_skeleton, paths, schema

    data = [n for n in schema.NODES.values() if "notification" not in n and n["kind"] != "notification"]
    state = sum(1 for n in data if not n["config"])
    print("sdqkd — software-defined QKD, driven by ETSI GS QKD 015")
    print(f"  compiled models: {', '.join(f'{m} {v}' for m, _o, v in agent_skeleton.MODELS)}")
    print(f"  data nodes: {len(data)} ({state} state), notifications: {len(agent_skeleton.NOTIFICATIONS)}")
    print(f"  agent hooks: {len(agent_skeleton.HOOKS)}; e.g. link status path: "
          f"{paths.qkd_node().qkd_links().qkd_link(qkdl_id='*')}/qkdl_status")


def main(seconds: float = 20.0) -> int:
    t0 = time.monotonic()
    _model_summary()
    try:
        from runtime.demo_link import run_link  # the engine's part of the demo
    except ImportError:
        print("  (key engine not built into this version)")
        return 0
    return run_link(deadline=t0 + seconds)
