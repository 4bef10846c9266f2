"""The node config's `etsi020` section: checked whole, every problem named by its key."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from sdqkd.lkms.external import external_peer
from sdqkd.lkms.registry import external_link_id
from sdqkd.node.config import ConfigError, load_config


def _write(tmp: Path, etsi020: object) -> Path:
    (tmp / "ca.pem").write_text("x")
    cfg = {"id": str(uuid.uuid4()), "name": "A", "gnmi": {"listen": "127.0.0.1:0"},
           "etsi014": {"listen": "127.0.0.1:0"}, "etsi004": {"listen": "127.0.0.1:0"}, "data_dir": "d",
           "etsi020": etsi020}
    p = tmp / "node.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_good_section(tmp_path: Path) -> None:
    p = _write(tmp_path, {"listen": "127.0.0.1:7020", "external_peers": [
        {"name": "vx", "url": "https://kms.vx:8443", "ca": "ca.pem", "identity": "kms.vx", "saes": ["b1"],
         "mode": "async", "rate_bps": 1000}]})
    cfg = load_config(p)
    assert cfg.etsi020_listen == "127.0.0.1:7020"
    peer = external_peer(cfg.id, cfg.external_peers[0])
    assert peer.kms.ca == str(tmp_path / "ca.pem") and peer.mode == "async" and peer.saes == ("b1",)
    assert peer.qkdl_id == external_link_id(cfg.id, "vx")


def test_bad_section_names_every_problem(tmp_path: Path) -> None:
    p = _write(tmp_path, {"listen": "nowhere", "external_peers": [
        {"name": "vx", "url": "ftp://x", "ca": "missing.pem", "saes": [], "mode": "later", "colour": 1}]})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    # docs/node-config.md: FILE:LINE: place: what; list entries named by their `name`
    for part in ("etsi020.listen: expected host:port", "external_peers[0] (vx).url: expected https://host:port",
                 "external_peers[0] (vx).identity: required", "external_peers[0] (vx).saes: must not be empty",
                 "external_peers[0] (vx).mode: must be one of 'sync' or 'async'",
                 "external_peers[0] (vx).colour: unknown key", "external_peers[0].ca: no such file"):
        assert part in msg, (part, msg)
