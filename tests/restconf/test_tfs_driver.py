"""Opt-in: ETSI TeraFlowSDN's own QKD device driver (QKDDriver2 + Tools2, unmodified, imported
from a TFS source tree) onboarding the 3-node network and creating a link on it.

    SDQKD_TFS_SRC=/path/to/tfs-controller/src pytest tests/restconf/test_tfs_driver.py

The driver imports a few TFS modules (metrics decorators, argument checkers, the _Driver base
and resource-key constants); this file provides small shims for exactly those, so the driver's
own code runs against our nodes without the rest of TFS."""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tfs_netup import bearer, netup, nodes_only  # noqa: F401 - the fixture of a `net up` network
from test_tfs_replay import ROOT, STRICT, link_of, net  # noqa: F401 - the network fixture
from tfsreplay import TfsDevice, unkeyed

TFS_SRC = os.environ.get("SDQKD_TFS_SRC")
pytestmark = pytest.mark.skipif(not TFS_SRC, reason="SDQKD_TFS_SRC is unset: no TeraFlowSDN source tree to "
                                                    "import its QKD driver from")


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _install_shims(src: Path) -> None:
    """The TFS modules QKDDriver2, Tools2 and the qkd package import, and nothing more."""

    class MetricsPool:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    def metered_subclass_method(pool: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return lambda fn: fn

    def chk_type(name: str, value: Any, kind: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"{name}({value!r}) is not {kind}")
        return value

    def chk_string(name: str, value: Any, allow_empty: bool = False, **_kw: Any) -> str:
        chk_type(name, value, str)
        if not allow_empty and not value:
            raise ValueError(f"{name} is empty")
        return value

    class _Driver:
        def __init__(self, name: str, address: str, port: int, **settings: Any) -> None:
            self.name, self.address, self.port, self.settings = name, address, port, settings

    for pkg in ("common", "common.method_wrappers", "common.type_checkers", "device", "device.service",
                "device.service.driver_api"):
        _module(pkg, __path__=[])
    _module("common.method_wrappers.Decorator", MetricsPool=MetricsPool,
            metered_subclass_method=metered_subclass_method)
    _module("common.type_checkers.Checkers", chk_type=chk_type, chk_string=chk_string)
    _module("device.service.driver_api._Driver", _Driver=_Driver, RESOURCE_ENDPOINTS="__endpoints__",
            RESOURCE_INTERFACES="__interfaces__", RESOURCE_NETWORK_INSTANCES="__network_instances__")
    # the drivers package without its __init__ (which imports every other TFS driver)
    _module("device.service.drivers", __path__=[str(src / "device" / "service" / "drivers")])


@pytest.fixture(scope="module")
def driver_class() -> Iterator[type]:
    assert TFS_SRC is not None
    src = Path(TFS_SRC)
    if not (src / "device" / "service" / "drivers" / "qkd" / "QKDDriver2.py").is_file():
        pytest.fail(f"SDQKD_TFS_SRC={TFS_SRC}: no device/service/drivers/qkd/QKDDriver2.py under it")
    saved = dict(sys.modules)
    _install_shims(src)
    try:
        yield importlib.import_module("device.service.drivers.qkd.QKDDriver2").QKDDriver
    finally:
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]


def test_tfs_driver_onboards_and_creates_a_keyed_link(net, driver_class: type):  # noqa: F811
    drivers = {}
    for name in ("QKD1", "QKD2"):
        host, port = net.addresses[name]["restconf"].rsplit(":", 1)
        d = driver_class(host, int(port), timeout=30)
        assert d.Connect() is True
        drivers[name] = d
    config = {name: d.GetConfig() for name, d in drivers.items()}
    for name, rows in config.items():
        errors = [(k, v) for k, v in rows if isinstance(v, Exception)]
        assert not errors, errors
        node = dict(rows)["__node__"]
        assert node["qkdn_id"] == net.endpoints[name]["id"]
    endpoints = [k for k, _v in config["QKD1"] if k.startswith("/endpoints/endpoint[")]
    assert endpoints == ["/endpoints/endpoint[QKD2:1]"]
    ids = {name: dict(rows)["__node__"]["qkdn_id"] for name, rows in config.items()}
    _link_makes_key(drivers, ids, "QKD1", "QKD2", net.addresses["QKD1"]["restconf"])
    assert isinstance(drivers["QKD1"].GetState(), dict)


def test_tfs_driver_onboards_a_net_up_network_with_the_token_in_its_headers_setting(
        netup: tuple[Path, dict[str, Any]], driver_class: type) -> None:  # noqa: F811
    """What an operator does: `_connect/settings` {"headers": {"Authorization": "Bearer ..."}}."""
    _state, eps = netup
    for name in ("A", "B"):
        host, port = eps[name]["restconf"].rsplit(":", 1)
        assert driver_class(host, int(port), timeout=30).Connect() is False  # no token: 401
        d = driver_class(host, int(port), timeout=30, headers=bearer(eps))
        assert d.Connect() is True
        rows = d.GetConfig()
        assert not [(k, v) for k, v in rows if isinstance(v, Exception)]
        assert dict(rows)["__node__"]["qkdn_id"] == eps[name]["id"]
        assert [k for k, _v in rows if k.startswith("/endpoints/endpoint[")] == \
               [f"/endpoints/endpoint[{'B' if name == 'A' else 'A'}:1]"]


def test_tfs_driver_makes_the_link_of_a_net_up_network_without_sdqkd_controller(
        tmp_path: Path, driver_class: type) -> None:
    """`net up --no-controller`: TFS's driver onboards both nodes and creates the link, which makes key."""
    with nodes_only(tmp_path) as (state, _r):
        eps = json.loads((state / "endpoints.json").read_text())
        drivers = {}
        for name in ("A", "B"):
            host, port = eps[name]["restconf"].rsplit(":", 1)
            drivers[name] = driver_class(host, int(port), timeout=30)  # settings.restconf.anonymous
            assert drivers[name].Connect() is True
        ids = {name: dict(d.GetConfig())["__node__"]["qkdn_id"] for name, d in drivers.items()}
        _link_makes_key(drivers, ids, "A", "B", eps["A"]["restconf"])


def _link_makes_key(drivers: dict[str, Any], ids: dict[str, str], a: str, b: str, a_restconf: str) -> None:
    """TFS's service handler on a fibre a-b: one DIRECT link per end through each driver's
    SetConfig (TFS sends interface 0: its lookup misses); the link then makes key at a."""
    one_way, other_way = str(uuid.uuid4()), str(uuid.uuid4())
    for end, far, lid in ((a, b, one_way), (b, a, other_way)):
        assert drivers[end].SetConfig([(f"/link/link[{lid}]", json.dumps({
            "uuid": lid, "type": "DIRECT", "src_qkdn_id": ids[end], "src_interface_id": 0,
            "dst_qkdn_id": ids[far], "dst_interface_id": 0}))]) == [True]
    dev = TfsDevice(a, a_restconf)
    try:
        assoc = link_of(dev, one_way)["sdqkd-node-ext:sdqkd-link"]["key-association-id"]
        assert not unkeyed([dev], assoc), "the link TFS's driver created produced no key in 90 s"
    finally:
        dev.close()
