"""`sdqkd demo`: the main job. A metro QKD network modelled on the Madrid testbed of the seed
papers starts as real processes (one per node plus the controller, mutual TLS everywhere),
its links come up, and two applications with no direct link get an end-to-end key through a
trusted-node relay over ETSI GS QKD 014 at both ends. Everything shown is read from the running
network; keys are shown only as a hash. It stops after a bounded time or on Ctrl-C and leaves
no process behind."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from runtime.tls import https_client_context, tls_files

# Madrid-like metro network: distances in the range of the Madrid Quantum Network's links.
DEFAULT_TOPOLOGY: dict[str, Any] = {
    "name": "madrid-metro",
    "nodes": [{"name": "Quijote", "location": "Montegancedo"}, {"name": "Concepcion", "location": "Concepcion"},
              {"name": "Norte", "location": "Norte"}, {"name": "Distrito", "location": "Las Tablas"},
              {"name": "Almagro", "location": "Almagro"}],
    "links": [{"a": "Quijote", "b": "Concepcion", "km": 32}, {"a": "Concepcion", "b": "Norte", "km": 19},
              {"a": "Norte", "b": "Distrito", "km": 14}, {"a": "Concepcion", "b": "Almagro", "km": 12},
              {"a": "Almagro", "b": "Norte", "km": 9}],
    "saes": [{"name": "sae-quijote", "node": "Quijote"}, {"name": "sae-distrito", "node": "Distrito"},
             {"name": "sae-almagro", "node": "Almagro"}, {"name": "sae-concepcion", "node": "Concepcion"},
             {"name": "sae-norte", "node": "Norte"}],
}
MASTER, SLAVE = "sae-quijote", "sae-distrito"


def _fmt_rate(bps: Any) -> str:
    if bps in (None, ""):
        return "-"
    v = float(bps)
    return f"{v / 1e6:.2f} Mb/s" if v >= 1e6 else f"{v / 1e3:.1f} kb/s"


def table(status: dict[str, Any]) -> str:
    rows = [f"  {'link':22s} {'km':>5s} {'dB':>5s} {'QBER':>6s} {'secret key rate':>16s} {'stored keys':>12s}  state"]
    for r in status.get("links", []):
        q = f"{float(r['qber']) * 100:.1f}%" if r.get("qber") not in (None, "") else "-"
        rows.append(f"  {r['link']:22s} {r['km']:5.0f} {r['db']:5.1f} {q:>6s} {_fmt_rate(r.get('skr')):>16s} "
                    f"{r.get('stored_keys', 0):>12d}  {'up' if r['up'] else 'coming up'}")
    for a in status.get("apps", []):
        rows.append(f"  app {a['master']} -> {a['slave']}: path {' - '.join(a['path'])} "
                    f"({'relayed' if a['virtual'] else 'direct'})")
    return "\n".join(rows)


def _https(url: str, ca: str, cert: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    ctx = https_client_context(tls_files(ca, cert, key))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.loads(resp.read())


def _route_of(status_file: Path, master: str, wait_s: float = 3.0) -> dict[str, Any] | None:
    """The controller's route of `master`'s application (its status file is refreshed each second)."""
    end = time.monotonic() + wait_s
    while True:
        apps = json.loads(status_file.read_text()).get("apps", [])
        route = next((a for a in apps if a["master"] == master), None)
        if route is not None or time.monotonic() > end:
            return route
        time.sleep(0.2)


def main(seconds: float = 60.0) -> int:
    from runtime.harness import network

    t0 = time.monotonic()
    deadline = t0 + seconds
    state = Path(tempfile.mkdtemp(prefix="sdqkd-demo-"))
    status_file = state / "controller-status.json"
    print("sdqkd demo — a metro QKD network driven by ETSI GS QKD 015 over gNMI")
    print(f"  {len(DEFAULT_TOPOLOGY['nodes'])} nodes, {len(DEFAULT_TOPOLOGY['links'])} fibre links "
          f"(commercial decoy-state BB84 profile), state in {state}")
    last = [0.0]

    def progress() -> None:
        if time.monotonic() - last[0] < 3 or not status_file.exists():
            return
        last[0] = time.monotonic()
        try:
            st = json.loads(status_file.read_text())
        except ValueError:
            return
        up = sum(1 for r in st["links"] if r["up"])
        print(f"\n[{time.monotonic() - t0:5.1f} s] links up: {up}/{len(st['links'])}")
        print(table(st), flush=True)

    code = 0
    try:
        eps = network.up(DEFAULT_TOPOLOGY, state, timeout=max(10.0, deadline - time.monotonic()), progress=progress)
        st = json.loads(status_file.read_text())
        print(f"\n[{time.monotonic() - t0:5.1f} s] every link produces key")
        print(table(st))
        m_node = DEFAULT_TOPOLOGY["saes"][0]["node"]
        s_node = DEFAULT_TOPOLOGY["saes"][1]["node"]
        me, se = eps[m_node], eps[s_node]
        got = None
        while time.monotonic() < deadline:
            try:
                got = _https(f"https://{me['etsi014']}/api/v1/keys/{SLAVE}/enc_keys", me["ca"],
                             me["saes"][MASTER]["cert"], me["saes"][MASTER]["key"])
                break
            except urllib.error.HTTPError as e:
                if e.code != 503:
                    raise
                time.sleep(0.5)  # the relay is still filling the virtual link's pool
        if got is None:
            print("no relayed key within the time given")
            return 1
        # the first enc_keys registered the pair (ETSI 015 clause 5.2); the controller routed it
        route = _route_of(status_file, MASTER)
        print(f"\nfirst request registered {MASTER} <-> {SLAVE}; the controller routed it over "
              f"{' - '.join(route['path'] if route else ['?'])} (a virtual link: keys relayed hop by hop "
              "as one-time-pad ciphertext)")
        k = got["keys"][0]
        back = _https(f"https://{se['etsi014']}/api/v1/keys/{MASTER}/dec_keys", se["ca"],
                      se["saes"][SLAVE]["cert"], se["saes"][SLAVE]["key"], {"key_IDs": [{"key_ID": k["key_ID"]}]})
        h_master = hashlib.sha256(base64.b64decode(k["key"])).hexdigest()
        h_slave = hashlib.sha256(base64.b64decode(back["keys"][0]["key"])).hexdigest()
        print(f"ETSI 014 enc_keys at {m_node} ({MASTER}): key_ID {k['key_ID']}  sha256 {h_master[:32]}...")
        print(f"ETSI 014 dec_keys at {s_node} ({SLAVE}): key_ID {back['keys'][0]['key_ID']}  "
              f"sha256 {h_slave[:32]}...")
        match = h_master == h_slave and k["key_ID"] == back["keys"][0]["key_ID"]
        print("the two ends hold the same key" if match else "MISMATCH: the two ends differ")
        code = 0 if match else 1
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            st = json.loads(status_file.read_text())
            print(f"\n[{time.monotonic() - t0:5.1f} s]")
            print(table(st), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted")
        code = 130
    except network.HarnessError as e:
        print(f"\n{e}")
        code = 1
    finally:
        try:
            stopped = network.down(state)
            print(f"\nstopped {len(stopped)} processes; the demo leaves nothing running")
        except network.HarnessError:
            pass
        shutil.rmtree(state, ignore_errors=True)  # its PKI (private keys) and key stores: nothing left in /tmp
    return code
