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
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tfs_netup import bearer, netup  # noqa: F401 - the fixture of a `net up` network
from test_tfs_replay import ROOT, STRICT, link_of, net  # noqa: F401 - the network fixture
from tfsreplay import TfsDevice

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
    one_way, other_way = str(uuid.uuid4()), str(uuid.uuid4())
    r1 = drivers["QKD1"].SetConfig([("/link/link[x]", json.dumps({
        "uuid": one_way, "type": "DIRECT", "src_qkdn_id": ids["QKD1"], "src_interface_id": 0,
        "dst_qkdn_id": ids["QKD2"], "dst_interface_id": 0}))])
    r2 = drivers["QKD2"].SetConfig([("/link/link[y]", json.dumps({
        "uuid": other_way, "type": "DIRECT", "src_qkdn_id": ids["QKD2"], "src_interface_id": 0,
        "dst_qkdn_id": ids["QKD1"], "dst_interface_id": 0}))])
    assert r1 == [True] and r2 == [True]
    dev1 = TfsDevice("QKD1", net.addresses["QKD1"]["restconf"])
    try:
        link = link_of(dev1, one_way)
        assoc = link["sdqkd-node-ext:sdqkd-link"]["key-association-id"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = dev1.http.get(f"{ROOT}/sdqkd-node-ext:sdqkd-key-store/pool={assoc}/stored-keys", headers=STRICT)
            if r.status_code == 200 and int(r.json()["sdqkd-node-ext:stored-keys"]) > 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the link TFS's driver created produced no key in 90 s")
    finally:
        dev1.close()
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
