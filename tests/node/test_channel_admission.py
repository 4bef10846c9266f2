"""Who may open the classical channel (runtime/node/links.py LinkDirectory.admit): the peer of
one of this node's links; a node of the network without a link here yet is refused as "not
yet" (logged at INFO: a starting network dials before both ends are provisioned); any other
certificate is refused as a stranger (logged as a warning)."""

from __future__ import annotations

import pytest

from sdqkd.node.channel import Refused
from sdqkd.node.links import LinkDirectory

PEER, LATER, STRANGER = "0f6f5a0e-0000-5000-8000-000000000001", "0f6f5a0e-0000-5000-8000-000000000002", "sae-x"


class _Params:
    peer_id = PEER


class _Link:
    p = _Params()


def test_admission_tells_a_starting_network_from_a_stranger() -> None:
    d = LinkDirectory({"l1": _Link()}, None, frozenset({PEER, LATER}))  # type: ignore[dict-item]
    d.admit(PEER)
    with pytest.raises(Refused, match="has no link with this node \\(yet\\)") as e:
        d.admit(LATER)
    assert e.value.not_yet
    for cn in (STRANGER, None):
        with pytest.raises(Refused, match="is no peer node of this node") as e:
            d.admit(cn)
        assert not e.value.not_yet
