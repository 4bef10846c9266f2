"""Pieces of the RESTCONF server on their own: RFC 8040 path parsing (percent-encoding, keys,
qualification, the compatibility dialect's leniency), the `fields` grammar, `depth`, and the
credential checks."""

from __future__ import annotations

import base64
import uuid

import pytest

from sdqkd.restconf import query, uri
from sdqkd.restconf.auth import Credentials
from sdqkd.restconf.errors import RestconfError

LID = str(uuid.uuid4())
LINK = "/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link"


def test_paths_resolve_to_agent_elements():
    t = uri.parse(f"{LINK}={LID}/sdqkd-node-ext:sdqkd-link/fibre-length-km", True)
    assert t.spath == "/qkd_node/qkd_links/qkd_link/sdqkd-link/fibre-length-km"
    assert t.elems[2] == ("qkd_link", (("qkdl_id", LID),))
    assert t.instance_id() == ("/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='" + LID +
                               "']/sdqkd-node-ext:sdqkd-link/fibre-length-km")
    assert uri.parse(f"{LINK}={LID}", True).uri() == f"{LINK}={LID}"
    # a key percent-encoded whole decodes to the same instance
    enc = "".join(f"%{b:02X}" for b in LID.encode())
    assert uri.parse(f"{LINK}={enc}", True).elems == uri.parse(f"{LINK}={LID}", True).elems
    assert uri.parse("/etsi-qkd-sdn-node:qkd_node/qkd_interfaces/qkd_interface=7", True).elems[-1] == \
        ("qkd_interface", (("qkdi_id", "7"),))
    assert uri.parse(LINK, True).keyless and uri.parse("", True) is uri.DATASTORE


@pytest.mark.parametrize("path, words", [
    (f"{LINK}={LID}/", "empty path segment"),
    ("/qkd_node", "must be qualified"),
    ("/etsi-qkd-sdn-node:qkd_node/sdqkd-key-store", "must be qualified"),
    (f"{LINK}={LID},{LID}", "1 key(s)"),
    (f"{LINK}/qkdl_id", "needs its keys"),
    ("/etsi-qkd-sdn-node:qkd_node/qkdn_id=1", "only list instances"),
    ("/etsi-qkd-sdn-node:", "no node"),
])
def test_strict_paths_refused(path: str, words: str):
    with pytest.raises(RestconfError) as e:
        uri.parse(path, True)
    assert words in e.value.message and e.value.status == 400


def test_compat_paths_are_lenient():
    assert uri.parse("/etsi-qkd-sdn-node:qkd_node/qkd_interfaces/", False).spath == "/qkd_node/qkd_interfaces"
    assert uri.parse("/qkd_node/sdqkd-key-store", False).spath == "/qkd_node/sdqkd-key-store"
    root = uri.parse("/etsi-qkd-sdn-node:", False)
    assert root.module_root == "etsi-qkd-sdn-node" and root.spath == "/"


def test_fields_grammar():
    assert query.parse_fields("a/b;c(d;e/f)") == {"a": {"b": None}, "c": {"d": None, "e": {"f": None}}}
    assert query.parse_fields("mod:a(b);a(c)") == {"a": {"b": None, "c": None}}
    assert query.parse_fields("a;a/b") == {"a": None}  # the whole of a already
    for bad in ("", "a(b", "a)b", "a//b", "(a)"):
        with pytest.raises(RestconfError):
            query.parse_fields(bad)


def test_depth_keeps_list_keys():
    node = {"qkdn_id": "x", "qkd_links": {"qkd_link": [{"qkdl_id": "k", "qkdl_enable": True,
                                                        "qkdl_remote": {"qkdn_id": "y"}}]}}
    assert query.limit_depth("/qkd_node", node, 1) == {}
    assert query.limit_depth("/qkd_node", node, 2) == {"qkdn_id": "x", "qkd_links": {}}
    assert query.limit_depth("/qkd_node", node, 3) == {"qkdn_id": "x", "qkd_links": {"qkd_link": [{"qkdl_id": "k"}]}}
    assert query.limit_depth("/qkd_node", node, 4)["qkd_links"]["qkd_link"][0] == {
        "qkdl_id": "k", "qkdl_enable": True, "qkdl_remote": {}}


def _basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_credentials():
    c = Credentials({"admin": "pw"}, ["t" * 20])
    assert c.required and c.check(_basic("admin", "pw")) and c.check("Bearer " + "t" * 20)
    assert not c.check(_basic("admin", "nope")) and not c.check(_basic("nobody", "pw"))
    assert not c.check("Bearer " + "u" * 20) and not c.check("") and not c.check("Basic !!!notbase64")
    assert not Credentials().required


def test_the_adapter_is_the_only_door_into_the_agent():
    """runtime/restconf reaches the agent's model and transaction through adapter.py alone (so
    the protocol-neutral transaction replaces one module); serve.is_loopback is a socket helper."""
    from pathlib import Path

    import sdqkd.restconf as pkg

    for f in Path(pkg.__file__).parent.glob("*.py"):
        lines = [ln.strip() for ln in f.read_text().splitlines() if "sdqkd.agent" in ln and "import" in ln]
        if f.name == "adapter.py":
            assert lines, "the adapter is where the agent is imported"
            continue
        assert lines in ([], ["from sdqkd.agent.serve import is_loopback"]), (f.name, lines)
