"""The node image: built from the Containerfile with the container engine of this machine, and
a 2-node network of containers (from a containerlab export: the same binds, commands and
management addresses containerlab would use) producing key that both ends serve alike through
ETSI 014. Skipped, with the reason, where no container engine runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from deployutil import keys_agree

from sdqkd.deploy import export
from sdqkd.deploy.plan import ExportOptions

ROOT = Path(__file__).resolve().parents[2]


def _engine() -> tuple[str | None, str]:
    """(engine command, why not) — an engine whose daemon or runtime answers `info`."""
    reasons = []
    for exe in ("podman", "docker"):
        if shutil.which(exe) is None:
            reasons.append(f"no {exe}")
            continue
        r = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return exe, ""
        last = (r.stderr.strip().splitlines() or ["failed"])[-1]
        reasons.append(f"{exe} client present but `{exe} info` fails: {last}")
    return None, "no container engine runs here (" + "; ".join(reasons) + ")"


ENGINE, WHY = _engine()


def test_containerfile_is_multi_stage_and_non_root():
    text = (ROOT / "Containerfile").read_text()
    lines = text.splitlines()
    stages = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    assert len(stages) == 2 and lines[stages[0]].endswith(" AS build")
    runtime_stage = "\n".join(lines[stages[1]:])
    assert "gcc" not in runtime_stage and "COPY --from=build /opt/sdqkd /opt/sdqkd" in runtime_stage
    user = [ln.split()[1] for ln in runtime_stage.splitlines() if ln.startswith("USER ")]
    assert user and not user[-1].startswith(("0", "root"))
    for ln in text.splitlines():  # every path the build copies exists in the source tree
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src


@pytest.mark.skipif(ENGINE is None, reason=WHY)
def test_image_builds_and_two_containers_produce_key(tmp_path: Path):
    assert ENGINE is not None
    tag = f"sdqkd-test:{uuid.uuid4().hex[:8]}"
    net = f"sdqkd-test-{uuid.uuid4().hex[:6]}"
    names: list[str] = []

    def run(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
        assert not check or r.returncode == 0, f"{ENGINE} {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        return r

    run("build", "-t", tag, "-f", str(ROOT / "Containerfile"), str(ROOT))
    topo = tmp_path / "topo.yaml"
    topo.write_text(yaml.safe_dump({"name": "ctest", "nodes": [{"name": "a"}, {"name": "b"}],
                                    "links": [{"a": "a", "b": "b", "km": 5}],
                                    "saes": [{"name": "sae-a", "node": "a"}, {"name": "sae-b", "node": "b"}]}))
    out = tmp_path / "lab"
    export(topo, "containerlab", out, ExportOptions(hosts={}, mgmt_subnet="10.79.0.0/24", image=tag))
    lab = yaml.safe_load((out / "ctest.clab.yml").read_text())
    try:
        run("network", "create", "--subnet", "10.79.0.0/24", net)
        for name, node in lab["topology"]["nodes"].items():
            cname = f"{net}-{name}"
            names.append(cname)
            binds = [x for b in node["binds"] for x in ("-v", str(out / b.split(":", 1)[0]) + ":" + b.split(":", 1)[1])]
            run("run", "-d", "--name", cname, "--network", net, "--ip", node["mgmt-ipv4"], "--read-only",
                "--tmpfs", "/tmp", "--tmpfs", "/var/lib/sdqkd:uid=10001,gid=10001,mode=0700", *binds, tag,
                *node["cmd"].split())
        status: dict[str, object] = {}
        for _ in range(300):
            r = run("exec", f"{net}-controller", "cat", "/var/lib/sdqkd/controller-status.json", check=False)
            if r.returncode == 0:
                status = json.loads(r.stdout)
                if status.get("provisioned") and all(x["stored_keys"] for x in status["links"]):  # type: ignore[union-attr]
                    break
            time.sleep(1)
        else:
            logs = {n: run("logs", n, check=False).stdout[-2000:] for n in names}
            raise AssertionError(f"no key: {status} {logs}")
        keys_agree(out, json.loads((out / "endpoints.json").read_text()), ("a", "sae-a"), ("b", "sae-b"))
        for n in names:  # SIGTERM (the image's STOPSIGNAL): a clean exit
            run("stop", "-t", "30", n)
            assert run("inspect", "-f", "{{.State.ExitCode}}", n).stdout.strip() == "0"
    finally:
        for n in names:
            run("rm", "-f", n, check=False)
        run("network", "rm", net, check=False)
        run("rmi", "-f", tag, check=False)
