"""A minimal `sdqkd node` config for tests that start one node: loopback ports the OS picks, a
bootstrap secret for any peer, a fast clock; `extra` lines follow (from line 9 on)."""

from __future__ import annotations

import uuid
from pathlib import Path

CONFIG = """\
id: {id}
name: A
gnmi: {{listen: "127.0.0.1:0"}}
etsi014: {{listen: "127.0.0.1:0"}}
etsi004: {{listen: "127.0.0.1:0"}}
data_dir: data
bootstrap: {{"*": bootstrap}}
engine: {{clock_scale: 0.01}}
"""


def write_node_config(tmp: Path, extra: str = "") -> Path:
    """tmp/node.yaml (and its bootstrap secret); its path."""
    (tmp / "bootstrap").write_bytes(b"s" * 32)
    f = tmp / "node.yaml"
    f.write_text(CONFIG.format(id=uuid.uuid4()) + extra)
    return f
