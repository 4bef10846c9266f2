"""`sdqkd demo`: the main job. A metro QKD network modelled on the Madrid testbed of the seed
papers starts as real processes (one per node plus the controller, mutual TLS everywhere),
its links come up, and two applications with no direct link get an end-to-end key through a
trusted-node relay over ETSI GS QKD 014 at both ends. Everything shown is read from the running
network; keys are shown only as a hash. It ends when that story is told (or after a bounded time,
or on Ctrl-C), leaves no process behind and removes its state directory unless `--keep DIR`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sdqkd.harness.netcli import fmt_rate, table
from sdqkd.tls import https_client_context, tls_files

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


def _rates_note(status: dict[str, Any]) -> str:
    """Why the rates measured here are far below the model's (the figure in the README)."""
    from sdqkd.engine import keyrate, profiles

    p = profiles.get("commercial")
    model = [keyrate.asymptotic("commercial", r["db"]) * p.clock_hz for r in status["links"]]
    seen = [float(r["skr"]) for r in status["links"] if r.get("skr") not in (None, "")]
    return (f"about the rates: the links here give {fmt_rate(min(seen, default=0))} to "
            f"{fmt_rate(max(seen, default=0))}; the model of a 1 GHz device gives "
            f"{fmt_rate(min(model))} to {fmt_rate(max(model))} for the same fibres (`sdqkd plot topology`).\n"
            f"  Here the rate is key bits per second of wall-clock time: every link's post-processing at "
            f"both ends (sifting, Cascade's\n  round trips, privacy amplification) shares this machine's "
            f"{os.cpu_count()} CPU core(s), so a block takes longer to process than the 1 GHz link time\n"
            "  it simulates: the demo is CPU-bound, the model is not.")


def _plot_extra_missing() -> bool:
    """Whether `sdqkd plot` lacks matplotlib (the `plot` extra; a plain `pip install .` has none).
    find_spec looks without importing it (a second or more on a loaded machine)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is None


def _next_steps(keep: str | None) -> str:
    lines = ["what to try next:",
             "  sdqkd net up lab.yaml --state-dir lab     # your own topology: docs/quickstart.md",
             "  sdqkd plot topology                      # this network with the model's rates",
             "  sdqkd plot keyrate                       # key rate vs distance"]
    if _plot_extra_missing():
        # the README's install is the core only; say how to add the extra (as MissingExtra would)
        lines.append("  (both plots need the 'plot' extra, not installed here: pip install '.[plot]' in the clone, "
                     "or pip install 'sdqkd[plot]')")
    if keep:
        lines.insert(1, f"  sdqkd net status --state-dir {keep}     # (the network was stopped; its state is kept)")
    return "\n".join(lines)


def main(seconds: float = 60.0, keep: str | None = None) -> int:
    """Run the demo; the state dir (PKI with the CA key, SAE keys, key stores) is removed at the end,
    Ctrl-C included, unless `keep` names where to keep it."""
    from sdqkd.harness import network

    t0 = time.monotonic()
    deadline = t0 + seconds
    state = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="sdqkd-demo-"))
    if keep:
        state.mkdir(parents=True, exist_ok=True)
    status_file = state / "controller-status.json"
    print("sdqkd demo — a metro QKD network driven by ETSI GS QKD 015 over gNMI")
    print(f"  {len(DEFAULT_TOPOLOGY['nodes'])} nodes, {len(DEFAULT_TOPOLOGY['links'])} fibre links "
          f"(commercial decoy-state BB84 profile), one process per node plus the controller; "
          f"gives up after {seconds:.0f} s, Ctrl-C stops it")
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

    code = 1
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C does
    # Ctrl-C stops it even when started from a shell that ignores SIGINT for background jobs
    # (Python then leaves SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = _story(network, state, deadline, t0, progress)
    except KeyboardInterrupt:
        print("\ninterrupted")
        code = 130
    except network.HarnessError as e:
        print(f"\n{e}")
        if not keep:  # the log is about to go with the state dir: show its end
            _show_logs(str(e))
    finally:
        _finish(network, state, keep)
    if code == 0:
        print("\n" + _next_steps(keep))
    return code


def _show_logs(message: str, lines: int = 15) -> None:
    for log in re.findall(r"see (\S+\.log)", message):
        with contextlib.suppress(OSError):
            tail = Path(log).read_text(errors="replace").splitlines()[-lines:]
            print(f"--- last lines of {Path(log).name} (run with --keep DIR to keep the logs) ---")
            print("\n".join(tail))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _story(network: Any, state: Path, deadline: float, t0: float, progress: Any) -> int:
    """Links up, a relayed key fetched at both ends and compared; 0 when both ends hold the same key."""
    status_file = state / "controller-status.json"
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
    st = json.loads(status_file.read_text())
    print(f"\n[{time.monotonic() - t0:5.1f} s] the network now")
    print(table(st))
    print("\n" + _rates_note(st))
    return 0 if match else 1


def _finish(network: Any, state: Path, keep: str | None) -> None:
    """Stop every process; remove the state dir (it holds the CA key, SAE keys, key stores) unless kept."""
    try:
        stopped = network.down(state)
        print(f"\nstopped {len(stopped)} processes; the demo leaves nothing running")
    except network.HarnessError:
        pass
    if keep:
        print(f"state kept in {state} (PKI, key stores, logs/; private keys inside: remove it when done)")
    else:
        shutil.rmtree(state, ignore_errors=True)
        print(f"removed its state directory {state}")
