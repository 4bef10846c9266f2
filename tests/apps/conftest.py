"""One in-process QKD network shared by the application adapter tests (starting one costs a few
seconds): a line A - B - C of 10 km links, so pairs across A and C go over a relay path.
SAEs: sae-a1..a5 on A, sae-b1..b4 on B, sae-c1..c5 on C (each test module uses its own pairs). Tests call `apps_net.request_keys(m, s)`
to have the controller set up key delivery for the pair they use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdqkd.harness.sync import start_inprocess

TOPOLOGY = {
    "nodes": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
    "links": [{"a": "A", "b": "B", "km": 10}, {"a": "B", "b": "C", "km": 10}],
    "saes": [{"name": f"sae-{n.lower()}{i}", "node": n} for n, k in (("A", 5), ("B", 4), ("C", 5))
             for i in range(1, k + 1)],
}


# Package scope (tests/apps has an __init__.py for it): the network stops after this directory's
# last test. Session-scoped, it ran on beside every later test of the suite, on CI's 2 cores.
@pytest.fixture(scope="package")
def apps_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    net = start_inprocess(TOPOLOGY, tmp_path_factory.mktemp("apps-net"), timeout=120.0)
    try:
        yield net
    finally:
        net.stop()
