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
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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
    r = parser.getgroup("restconf conformance")
    r.addoption("--restconf-target", default=None,
                help="base URL of a RESTCONF server, e.g. https://host:port (default: the sdqkd node started)")
    r.addoption("--restconf-ca", default=None)
    r.addoption("--restconf-cert", default=None)
    r.addoption("--restconf-key", default=None)
    r.addoption("--restconf-user", default=None)
    r.addoption("--restconf-password", default=None)
    r.addoption("--restconf-token", default=None, help="bearer token instead of user/password")


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
    restconf: str | None = None  # host:port of the same node's RESTCONF server
    etsi014: str | None = None  # host:port of its ETSI 014 server (an SAE's first request raises a notification)
    sae: tuple[str, str] | None = None  # (cert, key) of the SAE `sae-m` attached to it

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("username", self.user), ("password", self.password or "")) if self.user else ()

    def channel(self, with_cert: bool = True) -> grpc.Channel:
        if self.insecure:
            return grpc.insecure_channel(self.address)
        ca = Path(self.ca).read_bytes() if self.ca else None
        cert = Path(self.cert).read_bytes() if with_cert and self.cert else None
        key = Path(self.key).read_bytes() if with_cert and self.key else None
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(ca, key, cert))


def _discard(stream: IO[str] | None) -> None:
    for _ in stream or ():
        pass


def _start_our_node(tmp: Path) -> tuple[subprocess.Popen[str], Target]:
    from sdqkd.pki import write_ca, write_identity

    ca, ca_path = write_ca(tmp / "pki")
    server = write_identity(ca, ca_path, tmp / "pki", "node-a", server=True)
    client = write_identity(ca, ca_path, tmp / "pki", "controller", server=False)
    sae = write_identity(ca, ca_path, tmp / "pki", "sae-m", server=False)
    cfg = tmp / "node.yaml"
    cfg.write_text(
        f"id: {uuid.uuid4()}\nname: node-a\n"
        "gnmi: {listen: '127.0.0.1:0'}\netsi014: {listen: '127.0.0.1:0'}\netsi004: {listen: '127.0.0.1:0'}\n"
        f"data_dir: data\ntls: {{ca: {server.ca}, cert: {server.cert}, key: {server.key}}}\n"
        "users: {admin: 's3cret-pw'}\nsaes: [{id: sae-m}]\n"
    )
    cfg.chmod(0o600)  # a config holding a password must not be readable by others (the node checks)
    # stderr to a file and stdout read to its end by a thread: a pipe nobody reads would stop the
    # node at its 64th kB of log lines, in the middle of the suite
    log = tmp / "node.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sdqkd.cli", "node", "--config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    m = None
    line = "x"
    while proc.stdout and line and m is None:  # log lines (stdout too) may come before the start line
        line = proc.stdout.readline()
        m = re.search(r"gNMI on ([^\s,]+)", line)
    rc = re.search(r"RESTCONF on ([^\s,]+)", line)
    e14 = re.search(r"ETSI 014 on ([^\s,]+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"sdqkd node did not start: {line!r} {log.read_text()[-4000:]}")
    threading.Thread(target=_discard, args=(proc.stdout,), daemon=True).start()
    return proc, Target(m.group(1), str(client.ca), str(client.cert), str(client.key), "admin", "s3cret-pw",
                        insecure=False, ours=True, name="node-a", restconf=rc.group(1) if rc else None,
                        etsi014=e14.group(1) if e14 else None, sae=(str(sae.cert), str(sae.key)))


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
def restconf_target(request: pytest.FixtureRequest):
    """The RESTCONF server under test: --restconf-target, else the node the gNMI suite started."""
    from restconfutil import RestconfTarget

    opt = request.config.getoption
    if opt("--restconf-target"):
        return RestconfTarget(opt("--restconf-target").rstrip("/"), opt("--restconf-ca"), opt("--restconf-cert"),
                              opt("--restconf-key"), opt("--restconf-user"), opt("--restconf-password"),
                              opt("--restconf-token"), ours=False)
    target: Target = request.getfixturevalue("target")
    if not target.ours or not target.restconf:
        pytest.skip("no RESTCONF target: give --restconf-target")
    return RestconfTarget(f"https://{target.restconf}", target.ca, target.cert, target.key, target.user,
                          target.password, None, ours=True, etsi014=target.etsi014, sae=target.sae)


@pytest.fixture(scope="session")
def channel(target: Target):
    ch = target.channel()
    grpc.channel_ready_future(ch).result(timeout=15)
    yield ch
    ch.close()
