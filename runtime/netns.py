"""Multi-host networks on one machine: each node in a network namespace of its own, joined to
the host by a veth pair on one bridge (`ip netns`, `ip link`, from iproute2; needs root).
The nodes then talk over real, separate network stacks; the controller stays on the host.
Shared by the harness (`sdqkd net up --netns`) and the IPsec adapter's namespace hosts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from sdqkd.errors import SdqkdError

BRIDGE = "sdqkdbr0"
PREFIX = "10.77.0"  # a private /24 that only these test hosts use
HOST_IP = f"{PREFIX}.1"


class NetnsError(SdqkdError, RuntimeError):
    pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    probe = f"sdqkdprobe{os.getpid()}"  # its own name: tests in other processes probe too
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (NetnsError, FileNotFoundError) as e:
        return f"network namespaces unavailable: {e}"
    return None


def create(names: list[str], record: Path, *, tag: str = "", prefix: str = PREFIX) -> dict[str, dict[str, str]]:
    """One namespace per node name; returns {name: {netns, ip}} and records it for teardown.
    `tag` and `prefix` (a /24 of its own) keep several sets apart on one machine: bridge
    sdqkdbr<tag>, namespaces sdqkd<tag><i>, host address <prefix>.1, nodes <prefix>.10 on."""
    hosts: dict[str, dict[str, str]] = {}
    bridge = f"sdqkdbr{tag}" if tag else BRIDGE
    made_ns: list[str] = []
    made_veth: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{prefix}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names):
            ns, veth, addr = f"sdqkd{tag}{i}", f"vsdqkd{tag}{i}", f"{prefix}.{10 + i}"
            _ip("netns", "add", ns)
            made_ns.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            made_veth.append(veth)
            _ip("link", "set", veth, "master", bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            hosts[name] = {"netns": ns, "ip": addr}
    finally:
        record.write_text(json.dumps({"bridge": bridge, "netns": made_ns, "veth": made_veth}))
    return hosts


def destroy(record: Path) -> None:
    """Remove what `create` made (namespaces first: their veth ends go with them)."""
    if not record.exists():
        return
    made = json.loads(record.read_text())
    for ns in made.get("netns", []):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for veth in made.get("veth", []):
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
    subprocess.run(["ip", "link", "del", made.get("bridge", BRIDGE)], capture_output=True)
    record.unlink()
