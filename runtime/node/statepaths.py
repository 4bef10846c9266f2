"""The state leaves a node publishes (link performance and engine state, key-store figures,
interface and application status), as the agent's path strings made by the generated path
builders (`sdqkd.generated.paths`), never by hand. A link's or pool's set is computed once and
cached: the engine publishes once per key block, the key store once a second."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from sdqkd.generated import paths
from sdqkd.generated.gnmi_support import gnmi_pb2, path_str

T = "etsi-qkd-node-types:"


class LinkLeaves(NamedTuple):
    status: str
    skr: str
    eskr: str
    qber_value: str  # qkdl_performance/phys_perf[perf_type=QBER]/value
    blocks_ok: str
    blocks_aborted: str
    secret_bits: str
    cut_bits: str  # key dropped at both ends: the pool had room for part of a block (augmentation)
    last_abort_reason: str
    qber: str  # the engine's own, finer figure (augmentation)
    paused: str  # waiting for room in its key pool (augmentation)


class StoreLeaves(NamedTuple):
    stored_keys: str
    stored_bits: str
    delivered_keys: str


def _s(p: gnmi_pb2.Path) -> str:
    return path_str(p)


@lru_cache(maxsize=4096)
def link(qkdl_id: str) -> LinkLeaves:
    entry = paths.qkd_node().qkd_links().qkd_link(qkdl_id=qkdl_id)
    perf, engine = entry.qkdl_performance(), entry.sdqkd_link().engine_state()
    return LinkLeaves(
        _s(entry.qkdl_status), _s(perf.skr), _s(perf.eskr), _s(perf.phys_perf(perf_type=f"{T}QBER").value),
        _s(engine.blocks_ok), _s(engine.blocks_aborted), _s(engine.secret_bits), _s(engine.cut_bits),
        _s(engine.last_abort_reason),
        _s(engine.qber), _s(engine.paused))


@lru_cache(maxsize=4096)
def pool(qkdl_id: str) -> StoreLeaves:
    p = paths.qkd_node().sdqkd_key_store().pool(qkdl_id=qkdl_id)
    return StoreLeaves(_s(p.stored_keys), _s(p.stored_bits), _s(p.delivered_keys))


@lru_cache(maxsize=1)
def store() -> dict[str, str]:
    """The node-wide key-store figures by their YANG names (as the LKMS reports them)."""
    s = paths.qkd_node().sdqkd_key_store()
    return {"max-key-count": _s(s.max_key_count), "stored-keys": _s(s.stored_keys),
            "stored-bits": _s(s.stored_bits), "delivered-keys": _s(s.delivered_keys)}


def interface_status(qkdi_id: int) -> str:
    return _s(paths.qkd_node().qkd_interfaces().qkd_interface(qkdi_id=qkdi_id).qkdi_status)


def app(app_id: str) -> str:
    return str(paths.qkd_node().qkd_applications().qkd_app(app_id=app_id))


def app_leaves(app_id: str) -> tuple[str, str]:
    """(creation_time, app_status) of one application."""
    a = paths.qkd_node().qkd_applications().qkd_app(app_id=app_id)
    return _s(a.creation_time), _s(a.app_status)
