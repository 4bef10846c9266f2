"""gNMI conformance suite: runs against any gNMI 0.10 target serving the ETSI GS QKD 015 model.

    pytest tests/conformance --gnmi-target HOST:PORT [--gnmi-ca CA.pem --gnmi-cert C.pem --gnmi-key K.pem]
                             [--gnmi-user U --gnmi-password P] [--gnmi-insecure]

Without --gnmi-target it starts an sdqkd node (`sdqkd node --config`) with mutual TLS and a
username/password and tests that. Tests write only qkd_link entries with fresh UUIDs and remove them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("gnmi conformance")
    g.addoption("--gnmi-target", default=None, help="HOST:PORT of the target (default: start an sdqkd node)")
    g.addoption("--gnmi-ca", default=None)
    g.addoption("--gnmi-cert", default=None)
    g.addoption("--gnmi-key", default=None)
    g.addoption("--gnmi-user", default=None)
    g.addoption("--gnmi-password", default=None)
    g.addoption("--gnmi-insecure", action="store_true", help="plain-text gRPC (loopback targets)")
    g.addoption("--gnmi-name", default=None, help="target name to put in prefix.target")


@dataclass(frozen=True)
class Target:
    address: str
    ca: str | None
    cert: str | None
    key: str | None
    user: str | None
    password: str | None
    insecure: bool
    ours: bool  # the sdqkd node the suite started (its own-only checks may run)
    name: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("username", self.user), ("password", self.password or "")) if self.user else ()

    def channel(self, with_cert: bool = True) -> grpc.Channel:
        if self.insecure:
            return grpc.insecure_channel(self.address)
        ca = Path(self.ca).read_bytes() if self.ca else None
        cert = Path(self.cert).read_bytes() if with_cert and self.cert else None
        key = Path(self.key).read_bytes() if with_cert and self.key else None
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(ca, key, cert))


def _start_our_node(tmp: Path) -> tuple[subprocess.Popen[str], Target]:
    from runtime.pki import write_ca, write_identity

    ca, ca_path = write_ca(tmp / "pki")
    server = write_identity(ca, ca_path, tmp / "pki", "node-a", server=True)
    client = write_identity(ca, ca_path, tmp / "pki", "controller", server=False)
    cfg = tmp / "node.yaml"
    cfg.write_text(
        f"id: {uuid.uuid4()}\nname: node-a\n"
        "gnmi: {listen: '127.0.0.1:0'}\netsi014: {listen: '127.0.0.1:0'}\netsi004: {listen: '127.0.0.1:0'}\n"
        f"data_dir: data\ntls: {{ca: {server.ca}, cert: {server.cert}, key: {server.key}}}\n"
        "users: {admin: 's3cret-pw'}\nsaes: []\n"
    )
    cfg.chmod(0o600)  # a config holding a password must not be readable by others (the node checks)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "node", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    m = None
    line = "x"
    while proc.stdout and line and m is None:  # log lines (stdout too) may come before the start line
        line = proc.stdout.readline()
        m = re.search(r"gNMI on ([^\s,]+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"sdqkd node did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, Target(m.group(1), str(client.ca), str(client.cert), str(client.key), "admin", "s3cret-pw",
                        insecure=False, ours=True, name="node-a")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    opt = request.config.getoption
    if opt("--gnmi-target"):
        yield Target(opt("--gnmi-target"), opt("--gnmi-ca"), opt("--gnmi-cert"), opt("--gnmi-key"),
                     opt("--gnmi-user"), opt("--gnmi-password"), bool(opt("--gnmi-insecure")), ours=False,
                     name=opt("--gnmi-name"))
        return
    proc, t = _start_our_node(tmp_path_factory.mktemp("gnmi-target"))
    try:
        yield t
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def channel(target: Target):
    ch = target.channel()
    grpc.channel_ready_future(ch).result(timeout=15)
    yield ch
    ch.close()
