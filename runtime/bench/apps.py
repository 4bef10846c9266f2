"""`sdqkd bench apps`: the ETSI 015 application-registration workflow on the demo network (its
five nodes and five links as processes, `sdqkd net up`; `--pairs` SAEs added per node).

- time to first key: for each of `--pairs` new SAE pairs, the wall time from a new SAE's first
  ETSI 014 enc_keys (new HTTPS connection included) to its 200: registration at the node,
  `sdqkdn_application_new`, the controller's path computation and provisioning, the key's
  reservation at the peer (and, relayed, the relay filling the new virtual link). Direct pairs
  Quijote -> Concepcion (one link), relayed pairs Quijote -> Distrito (three hops). p50, p99.
- enc_keys/s of registered pairs, in the same run: one pair registered the way it was before
  this workflow existed (the controller's northbound POST /apps) and one registered by its
  first request, alternately loaded by the load generator of `sdqkd bench kms` (another
  process, `--clients` keep-alive connections, `--seconds` per run) on the Almagro - Norte
  link; the ratio shows whether registering on first request costs served pairs anything.
  Beside it, what no load spike can blur: the CPU time per request of finding a registered
  pair's application and link, the handlers' lookup before this workflow against the new one.
Targets: time to first key p99 <= 0.5 s direct, <= 1.5 s over three hops; ratio >= 0.9."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sdqkd.argtypes import integer, number
from sdqkd.bench._timing import percentile

TARGETS = {"ttfk_direct_p99_s": 0.5, "ttfk_3hop_p99_s": 1.5}


def _topology(pairs: int) -> dict[str, Any]:
    from sdqkd.demo import DEFAULT_TOPOLOGY

    topo = {k: v for k, v in DEFAULT_TOPOLOGY.items() if k != "saes"}
    topo["saes"] = [{"name": f"sae-{n['name'].lower()}-{i}", "node": n["name"]}
                    for n in DEFAULT_TOPOLOGY["nodes"] for i in range(pairs)]
    return topo


def _ctx(eps: dict[str, Any], node: str, sae: str) -> ssl.SSLContext:
    from sdqkd.tls import https_client_context, tls_files

    return https_client_context(tls_files(eps[node]["ca"], eps[node]["saes"][sae]["cert"],
                                          eps[node]["saes"][sae]["key"]))


def _first_key(eps: dict[str, Any], node: str, master: str, slave: str) -> tuple[float, int]:
    """Seconds from a new SAE's first enc_keys to its answer, and the HTTP status."""
    ctx = _ctx(eps, node, master)  # loaded before the clock starts: a client has its certificate
    url = f"https://{eps[node]['etsi014']}/api/v1/keys/{slave}/enc_keys"
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    return time.perf_counter() - t, code


def time_to_first_key(eps: dict[str, Any], pairs: int, slave_node: str) -> dict[str, Any]:
    times, fails = [], 0
    for i in range(pairs):
        dt, code = _first_key(eps, "Quijote", f"sae-quijote-{i}", f"sae-{slave_node.lower()}-{i}")
        if code == 200:
            times.append(dt)
        else:
            fails += 1
    return {"p50_s": percentile(times, 0.5) if times else None, "p99_s": percentile(times, 0.99) if times else None,
            "max_s": max(times) if times else None, "served": len(times), "not_served": fails}


def _stored_keys(state: Path, link: str) -> int:
    st = json.loads((state / "controller-status.json").read_text())
    return int(next(r["stored_keys"] for r in st["links"] if r["link"] == link) or 0)


def throughput(state: Path, eps: dict[str, Any], runs: int, seconds: float, clients: int) -> dict[str, Any]:
    from sdqkd.bench.kms import _loadgen
    from sdqkd.harness.northbound import post_app

    post_app(state, "sae-almagro-0", "sae-norte-0", 0.0, timeout=30)  # registered the way it was before
    dt, code = _first_key(eps, "Almagro", "sae-almagro-1", "sae-norte-1")  # registered by its first request
    if code != 200:
        raise RuntimeError(f"first request of sae-almagro-1 -> sae-norte-1 answered {code}")
    need = int(2 * runs * (seconds + 0.5) * 3000)  # keys the runs may take (3,000/s is above what we serve)
    end = time.monotonic() + 600
    while _stored_keys(state, "Almagro-Norte") < need:
        if time.monotonic() > end:
            raise RuntimeError(f"the Almagro-Norte pool did not reach {need} keys in 600 s")
        time.sleep(1.0)
    res: dict[str, list[float]] = {"northbound": [], "first_request": []}
    for _ in range(runs):
        for kind, i in (("northbound", 0), ("first_request", 1)):
            f = eps["Almagro"]["saes"][f"sae-almagro-{i}"]
            args = {"url": f"https://{eps['Almagro']['etsi014']}/api/v1/keys/sae-norte-{i}/enc_keys",
                    "ca": eps["Almagro"]["ca"], "cert": f["cert"], "key": f["key"], "clients": clients,
                    "seconds": seconds}
            res[kind].append(_loadgen("load014", args, [])[0]["rps"])
    nb, fr = statistics.median(res["northbound"]), statistics.median(res["first_request"])
    return {"enc_keys_per_s_northbound_pair": nb, "enc_keys_per_s_first_request_pair": fr,
            "enc_keys_ratio": fr / nb, "enc_keys_runs": {k: [round(x) for x in v] for k, v in res.items()}}


async def _lookup_us(tmp: Path, n: int) -> dict[str, float]:
    """CPU cost of finding a registered pair's app and link per request: the handlers' old
    lookup (registry + pick_link) against the new one (Core.served, app_for_request if not)."""
    from sdqkd.lkms.core import Core, Limits
    from sdqkd.lkms.peers import PeerClients
    from sdqkd.lkms.registry import App, Link, Registry
    from sdqkd.lkms.store import SqliteKeyStore

    store = SqliteKeyStore(tmp / "keys.sqlite", 1000)
    await store.open()
    try:
        reg = Registry("node-a", ["sae-a"])
        reg.links["q"] = Link("q", "node-b", "127.0.0.1:1")
        await store.ensure_pool("q", "PHYS")
        reg.add_app(App("app", "sae-a", ("sae-b",), "node-a", "node-b", ("q",)))
        core = Core("node-a", reg, store, PeerClients(None), Limits(), tls=False)
        out = {}
        for kind in ("old", "new", "old", "new"):  # twice each, interleaved: the second pair counts
            t = time.perf_counter()
            for _ in range(n):
                if kind == "old":
                    app = reg.app_for_group("sae-a", ["sae-b"])
                    assert app is not None and core.pick_link(app) is not None
                else:
                    assert (core.served("sae-a", ("sae-b",)) or await core.app_for_request("sae-a", ("sae-b",)))[1]
            out[kind] = (time.perf_counter() - t) / n * 1e6
        return out
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    from sdqkd.harness import network

    ap = argparse.ArgumentParser(prog="sdqkd bench apps")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--pairs", type=integer(1), default=20, help="new pairs timed per kind (direct, 3-hop)")
    ap.add_argument("--runs", type=integer(1), default=5)
    ap.add_argument("--seconds", type=number(0, strict=True), default=1.0, help="duration of one enc_keys load run")
    ap.add_argument("--clients", type=integer(1), default=32)
    args = ap.parse_args(argv)
    fig: dict[str, Any] = {"pairs": args.pairs}
    with tempfile.TemporaryDirectory(prefix="sdqkd-bench-apps-") as d:
        lk = asyncio.run(_lookup_us(Path(d), 200_000))
        fig["lookup_us_old"], fig["lookup_us_new"] = lk["old"], lk["new"]
        state = Path(d) / "net"
        eps = network.up(_topology(max(args.pairs, 2)), state, timeout=300)
        try:
            fig["ttfk_direct"] = time_to_first_key(eps, args.pairs, "Concepcion")
            fig["ttfk_3hop"] = time_to_first_key(eps, args.pairs, "Distrito")
            fig.update(throughput(state, eps, args.runs, args.seconds, args.clients))
        finally:
            network.down(state)
    fig["ttfk_direct_p99_s"] = fig["ttfk_direct"]["p99_s"]
    fig["ttfk_3hop_p99_s"] = fig["ttfk_3hop"]["p99_s"]
    fig["targets_met"] = {k: fig[k] is not None and fig[k] <= t for k, t in TARGETS.items()}
    fig["targets_met"]["enc_keys_ratio"] = fig["enc_keys_ratio"] >= 0.9
    if args.json:
        print(json.dumps(fig, indent=2))
        return 0
    for kind in ("ttfk_direct", "ttfk_3hop"):
        f = fig[kind]
        print(f"time to first key, {kind[5:]:6s}: p50 {f['p50_s'] * 1e3:.0f} ms, p99 {f['p99_s'] * 1e3:.0f} ms "
              f"(max {f['max_s'] * 1e3:.0f} ms; {f['served']} served, {f['not_served']} not)")
    print(f"enc_keys/s, registered pairs: northbound {fig['enc_keys_per_s_northbound_pair']:.0f}, "
          f"first request {fig['enc_keys_per_s_first_request_pair']:.0f} (ratio {fig['enc_keys_ratio']:.2f}; "
          f"runs {fig['enc_keys_runs']})")
    print(f"pair lookup per request: {fig['lookup_us_new']:.2f} us (before this workflow: "
          f"{fig['lookup_us_old']:.2f} us)")
    print("targets met:", fig["targets_met"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
