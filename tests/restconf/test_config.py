"""The node config's `restconf` and `interfaces` sections: defaults, every problem named by its
key, and plain HTTP refused outside loopback unless the config says so."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sdqkd.node.config import ConfigError, load_config

BASE = ("id: {id}\nname: n\ngnmi: {{listen: '127.0.0.1:0'}}\netsi014: {{listen: '127.0.0.1:0'}}\n"
        "etsi004: {{listen: '127.0.0.1:0'}}\ndata_dir: data\n")


def cfg(tmp_path: Path, extra: str) -> Path:
    f = tmp_path / "node.yaml"
    f.write_text(BASE.format(id=uuid.uuid4()) + extra)
    return f


def test_defaults_without_tls(tmp_path: Path):
    c = load_config(cfg(tmp_path, ""))
    assert c.restconf_listen == "127.0.0.1:0" and c.restconf_tls == "none" and c.interfaces == []


def test_sections_read(tmp_path: Path):
    peer = uuid.uuid4()
    c = load_config(cfg(tmp_path, "restconf: {listen: '127.0.0.1:8080', bearer_tokens: [abcdefghijklmnopq]}\n"
                                  f"interfaces: [{{id: 3, att_point: {{device: B, port: 4}}, peer: {{node: '{peer}', "
                                  "interface: 4, endpoint: '127.0.0.1:9'}, fibre: {km: 5}}]\n"))
    assert c.restconf_listen == "127.0.0.1:8080" and c.restconf_tokens == ["abcdefghijklmnopq"]
    assert c.interfaces[0]["peer"]["node"] == str(peer)


@pytest.mark.parametrize("extra, words", [
    ("restconf: {tls: mutual}\n", "restconf.tls: mutual needs the node's `tls` files"),
    ("restconf: {tls: maybe}\n", "restconf.tls: must be one of 'mutual', 'server' or 'none'"),
    ("restconf: {listen: '10.1.2.3:8080'}\n", "restconf.listen: 10.1.2.3:8080 is not a loopback address"),
    ("restconf: {bearer_tokens: [short]}\n", "restconf.bearer_tokens"),
    ("restconf: {colour: red}\n", "restconf.colour: unknown key"),
    ("interfaces: [{id: 0}]\n", "interfaces[0].id"),
    ("interfaces: [{id: 1}, {id: 1}]\n", "interfaces[1].id: 1 given twice"),
    ("interfaces: [{id: 1, peer: {node: x}}]\n", "interfaces[0].peer.node: 'x' is not a UUID"),
])
def test_problems_are_named(tmp_path: Path, extra: str, words: str):
    with pytest.raises(ConfigError) as e:
        load_config(cfg(tmp_path, extra))
    assert words in str(e.value)


def test_plain_http_outside_loopback_only_when_asked(tmp_path: Path):
    c = load_config(cfg(tmp_path, "restconf: {listen: '10.1.2.3:8080', plain_http_outside_loopback: true}\n"))
    assert c.restconf_plain_outside_loopback and c.restconf_tls == "none"


def test_anonymous_asks_no_credentials_whatever_else_is_given(tmp_path: Path):
    c = load_config(cfg(tmp_path, "restconf: {anonymous: true, bearer_tokens: [a-token-of-16-chars]}\n"))
    assert c.restconf_anonymous and c.restconf_tokens == ["a-token-of-16-chars"]
    assert not load_config(cfg(tmp_path, "")).restconf_anonymous
