"""The files of a network and `net down` (issue 18): every secret the harness writes is private
whatever the umask (node configs name a 0600 password file instead of holding the password);
a node config with a password others can read is refused; `net down` signals only processes
that are still this network's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdqkd.controller.topology import parse
from sdqkd.harness import network
from sdqkd.harness.audit import exposed
from sdqkd.node.config import ConfigError, load_config

TOPO = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 10}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-b", "node": "B"}]}


def test_prepared_state_dir_keeps_every_secret_private_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        desc = network.prepare(parse(TOPO), state)
    finally:
        os.umask(old)
    password = Path(desc["controller"]["password_file"]).read_text()
    assert exposed(state, (password,)) == []
    for name, nd in desc["nodes"].items():
        text = Path(nd["config"]).read_text()
        assert password not in text  # the config names the password file
        assert load_config(nd["config"]).users == {"sdqkd": password}, name
    # usable as a bare command-line argument (never an option's "-" in front, no shell metacharacter)
    token = Path(desc["controller"]["token_file"]).read_text()
    assert password.isalnum() and token.isalnum() and len(password) >= 24 and len(token) >= 43


def test_exposed_finds_what_is_readable(tmp_path: Path) -> None:
    (tmp_path / "x.key").write_text("-----BEGIN PRIVATE KEY-----")
    (tmp_path / "x.key").chmod(0o644)
    (tmp_path / "ca.pem").write_text("cert")
    (tmp_path / "ca.pem").chmod(0o644)
    tmp_path.chmod(0o700)
    assert exposed(tmp_path) == [f"{tmp_path / 'x.key'}: mode 0644, holds a secret (expected 0600)"]


def _node_yaml(tmp_path: Path, users: object, mode: int) -> Path:
    f = tmp_path / "node.yaml"
    f.write_text(json.dumps({"id": "0b5f4e4e-4a55-4d4b-9a4e-6f0d9b3a1a11", "name": "n", "data_dir": "d",
                             "users": users, **{k: {"listen": "127.0.0.1:0"} for k in ("gnmi", "etsi014", "etsi004")}}))
    f.chmod(mode)
    return f


def test_node_config_password_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="users.admin: an inline password in a file other users can read"):
        load_config(_node_yaml(tmp_path, {"admin": "pw"}, 0o644))
    assert load_config(_node_yaml(tmp_path, {"admin": "pw"}, 0o600)).users == {"admin": "pw"}
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    with pytest.raises(ConfigError, match="users.admin.password_file: .* is readable by other users"):
        load_config(_node_yaml(tmp_path, {"admin": {"password_file": "pw"}}, 0o644))
    pw.chmod(0o600)
    assert load_config(_node_yaml(tmp_path, {"admin": {"password_file": "pw"}}, 0o644)).users == {"admin": "s3cret"}


def _sleeper(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv], start_new_session=True)


def test_net_down_signals_only_processes_that_are_still_ours(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    stranger = _sleeper("sdqkd.cli", "--state-dir", str(tmp_path / "another-network"))
    plain = _sleeper()
    ours = _sleeper("sdqkd.cli", "controller", "--state-dir", str(state))
    try:
        time.sleep(0.3)  # let the interpreters replace their command lines' argv
        (state / "pids.json").write_text(json.dumps({"node-A": stranger.pid, "node-B": plain.pid, "controller": ours.pid}))
        assert network.down(state, grace=5) == ["controller"]
        ours.wait(10)  # stopped (net down reaped it already: the return code is not kept)
        assert stranger.poll() is None and plain.poll() is None  # reused PIDs: left alone
    finally:
        for p in (stranger, plain, ours):
            if p.poll() is None:
                p.kill()
                p.wait(5)
