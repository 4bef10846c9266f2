"""Multi-host: every node in its own network namespace joined by veth pairs on a bridge."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sdqkd import netns
from sdqkd.harness import network

WHY = netns.available()
TOPO = {"nodes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
        "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}],
        "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}]}


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_nodes_in_namespaces_produce_and_relay_keys(tmp_path: Path):
    from test_node_failure import keys_match  # the same ETSI 014 check as the failure test

    state = tmp_path / "net"
    eps = network.up(TOPO, state, timeout=120, netns=True)
    try:
        assert {e["etsi014"].rsplit(":", 1)[0] for e in eps.values()} == {"10.77.0.10", "10.77.0.11", "10.77.0.12"}
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "sdqkd0" in names and "sdqkd2" in names
        from sdqkd.harness.northbound import post_app

        assert post_app(state, "sae-a", "sae-c")["virtual"]
        keys_match(eps)
    finally:
        network.down(state)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "sdqkd0" not in names
