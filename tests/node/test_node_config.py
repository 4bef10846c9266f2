"""Node configs (docs/node-config.md): checked whole against the schema, every problem named with
file, line and key, before a node starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sdqkd.node.config import ConfigError, load_config
from sdqkd.node.runtime import NodeRuntime

GOOD = """\
id: 0f5e8a4e-1111-4222-8333-444455556666
name: A
gnmi: {listen: "127.0.0.1:0"}
etsi014: {listen: "127.0.0.1:0"}
etsi004: {listen: "127.0.0.1:0"}
data_dir: data
saes: [{id: sae-a}]
engine: {clock_scale: 0.5, cascade_variant: original}
lkms: {etsi004_server: grpcio, max_key_count: 5000, erase_deleted_links: true}
peers: {0f5e8a4e-1111-4222-8333-444455556667: B}
"""


def test_good_config(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text(GOOD)
    cfg = load_config(f)
    assert cfg.name == "A" and cfg.data_dir == tmp_path / "data" and cfg.saes == [{"id": "sae-a"}]
    assert cfg.engine == {"clock_scale": 0.5, "cascade_variant": "original"}
    assert cfg.etsi004_server == "grpcio" and cfg.max_key_count == 5000 and cfg.peers == {"0f5e8a4e-1111-4222-8333-444455556667": "B"}
    assert cfg.gnmi_mutual_tls is True and cfg.tls is None
    assert cfg.erase_deleted_links is True and NodeRuntime._limits(cfg).erase_deleted_links is True


@pytest.mark.parametrize("change, line, words", [
    (lambda s: s + "colour: blue\n", 11, "colour: unknown key (known: id, name, location, gnmi,"),
    (lambda s: s.replace("saes: [{id: sae-a}]", "saes: [{id: sae-a, nmae: x}]"), 7, "saes[0].nmae: unknown key (known: id)"),
    (lambda s: s.replace("clock_scale: 0.5", "clock_scale: fast"), 8, "engine.clock_scale: must be a number, got 'fast'"),
    (lambda s: s.replace("cascade_variant: original", "cascade_schedule: eager"), 8,
     "engine.cascade_schedule: must be one of 'serial', 'balanced' or 'parallel', got 'eager'"),
    (lambda s: s.replace('etsi014: {listen: "127.0.0.1:0"}', "etsi014: {listen: 8080}"), 4,
     "etsi014.listen: must be a string, got 8080"),
    (lambda s: s.replace('etsi004: {listen: "127.0.0.1:0"}', 'etsi004: {listen: "127.0.0.1:99999"}'), 5,
     "etsi004.listen: port 99999 out of range 0..65535"),
    (lambda s: s.replace('gnmi: {listen: "127.0.0.1:0"}', 'gnmi: {listen: "10.1.2.3:0"}'), 3,
     "gnmi.listen: 10.1.2.3:0 is not a loopback address; without `tls` a node serves loopback only"),
    (lambda s: s.replace("grpcio", "grpc"), 9, "lkms.etsi004_server: must be one of 'h2' or 'grpcio', got 'grpc'"),
    (lambda s: s.replace("5000", "0"), 9, "lkms.max_key_count: must be >= 1, got 0"),
    (lambda s: s.replace("links: true", "links: soon"), 9, "lkms.erase_deleted_links: must be true or false, got 'soon'"),
    (lambda s: s.replace("0f5e8a4e-1111-4222-8333-444455556666", "node-a"), 1, "id: 'node-a' is not a UUID"),
    (lambda s: s.replace("data_dir: data\n", ""), None, "data_dir: required"),
    (lambda s: s + "tls: {ca: ca.pem, cert: a.pem, key: a.key}\n", 11, "tls.ca: no such file"),
])
def test_bad_config_names_file_line_and_key(tmp_path, change, line, words):
    f = tmp_path / "node.yaml"
    f.write_text(change(GOOD))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    where = f"{f}:{line}: " if line else f"{f}: "
    assert any(m.startswith(where) and words in m for m in str(e.value).splitlines()), str(e.value)


def test_node_process_refuses_a_bad_config_before_starting(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text(GOOD.replace("name: A", "name: A\nnmae: B"))
    r = subprocess.run([sys.executable, "-m", "sdqkd.cli", "node", "--config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"{f}:3: nmae: unknown key" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing written
