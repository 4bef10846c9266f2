"""docs/quickstart.md, executed: every ```sh block of the page, in order, as one bash script
(so the page cannot rot). It runs in a temporary directory that looks like the root of a clone:
`.venv` is this interpreter's environment, `examples/` the repository's. Needs curl and jq
(.ci/run installs them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "quickstart.md"


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def test_the_page_has_the_steps_an_engineer_needs():
    script = "\n".join(sh_blocks(PAGE.read_text()))
    for step in ("cat > lab.yaml", "sdqkd net up lab.yaml --state-dir lab", "/enc_keys", "/dec_keys",
                 "--cacert", "examples/tls_psk.py --endpoints",
                 "examples/opot_chain.py --endpoints", "examples/encryptor.py --endpoints",
                 "examples/hybrid_gnmi.py --endpoints", "pygnmicli", "-o get", "examples/watch_links.py", "sdqkd net down --state-dir lab"):
        assert step in script, step


@pytest.mark.slow
def test_every_quickstart_command_runs(tmp_path: Path):
    missing = [tool for tool in ("curl", "jq", "bash") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed on this machine (.ci/run installs them)")
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").exists():
        pytest.skip(f"{venv} is not a virtual environment (the page activates one)")
    (tmp_path / ".venv").symlink_to(venv)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    script = "set -euo pipefail\nset -x\n" + "\n".join(sh_blocks(PAGE.read_text()))
    try:
        r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        if (tmp_path / "lab" / "pids.json").exists():  # the page failed before its last step
            subprocess.run([sys.executable, "-m", "sdqkd.cli", "net", "down", "--state-dir",
                            str(tmp_path / "lab")], capture_output=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "same key at both ends" in r.stdout
    hashes = re.findall(r"^([0-9a-f]{64})  -$", r.stdout, flags=re.M)
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert "app sae-a -> sae-c: path A - B - C (relayed)" in r.stdout  # registered by its first request
    assert re.search(r"^20 TLS 1\.3 sessions in .*, 20 distinct keys$", r.stdout, flags=re.M)  # tls_psk.py
    # opot_chain.py along sae-a -> sae-b -> sae-c, each hop registered by its first request
    assert "correct order: 10000/10000 packets verified" in r.stdout
    assert re.search(r"^  skip sae-b +-> rejected", r.stdout, flags=re.M)
    assert re.search(r"^  tampered CML +-> rejected$", r.stdout, flags=re.M)
    assert "  chain verifies: True" in r.stdout
    # encryptor.py on an ETSI 004 stream of sae-a / sae-b: the A-B link's SKR by gNMI, starved, refused
    assert re.search(r"^link A-B \(\S+\): secret key rate [1-9]\d* bit/s \(gNMI, node A\)$", r.stdout, flags=re.M)
    assert re.search(r"^  demand above supply: \d+ seal attempts refused with KeyStarved", r.stdout, flags=re.M)
    assert "refused: ETSI 004 OPEN_CONNECT to sae-b: OPEN_CONNECT_QOS_NOT_SATISFIED" in r.stdout
    # hybrid_gnmi.py: gNMI to B through a tunnel keyed by sae-c / sae-b, then without the KMS
    assert "  Set + Get qkdn_location_id: 'site B (managed over a hybrid tunnel)'" in r.stdout
    assert "  Controller watch of node B via the tunnel: up=True" in r.stdout
    assert re.search(r"^  session with sae-c: mode HYBRID, QKD key_ID \S+", r.stdout, flags=re.M)
    assert "  allow_fallback=True: session mode CLASSICAL-ONLY" in r.stdout
    assert "  allow_fallback=False: refused: no QKD key for sae-b" in r.stdout
    assert "etsi-qkd-sdn-node" in r.stdout  # capabilities from pygnmicli
    assert "qkdl_performance" in r.stdout and '"skr"' in r.stdout  # the Get
    assert re.search(r"^B: link A-B  qkdl_performance/skr = \d+", r.stdout, flags=re.M)  # the Subscribe
    assert re.search(r"^B: link B-C  \S*engine-state/paused = (True|False)$", r.stdout, flags=re.M)
    assert "stopped 4 process(es)" in r.stdout
    assert not (tmp_path / "lab").exists() and not list(tmp_path.glob("key-*.json"))
