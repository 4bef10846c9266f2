"""Trusted-node key relay along a virtual link (docs/controller-api.md, POST /apps).

The source node of a VIRT link (prev_hop None) draws a fresh random key K (OS CSPRNG) and sends
it hop by hop. On each hop the sender takes two fresh keys of that hop's *physical* link pool
and erases them durably before sending: a pad P (ciphertext = K xor P, one-time pad) and a
one-time MAC key M; the tag is HMAC-SHA256 keyed with M over every field of the message
(computationally secure; an information-theoretic Wegman–Carter tag would need a polynomial
hash over the message plus a pad - not done here). The receiver takes (erases) the same two
keys, checks the tag in constant time, recovers K, and either re-encrypts it for its next hop
or, at the far end, stores K under the relay's key ID in the VIRT pool. Only after the far
end has stored it does the source store K too, under the same ID. Pads only ever come from
PHYS pools, so a relayed key is never used as a pad.

Each node checks the path against the VIRT link installed on it (prev/next hops) and the
caller's certificate against the hop link's peer. Latency per hop: one gRPC call plus one
durable commit (the erase of the two in-keys, then of the two out-keys).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import uuid

import grpc

from generated.proto.sdqkd import kms_pb2
from runtime.lkms.core import Core
from runtime.lkms.registry import PHYS, VIRT, Link

log = logging.getLogger(__name__)


class RelayError(Exception):
    pass


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


def _mac_input(r: kms_pb2.RelayRequest) -> bytes:
    fields: list[bytes] = [r.relay_id.encode(), r.virt_qkdl_id.encode(), r.key_id.encode(),
                           str(r.size).encode(), r.hop_qkdl_id.encode(), r.hop_key_id.encode(),
                           r.mac_key_id.encode(), str(r.hop_index).encode(), str(len(r.path)).encode(),
                           *(p.encode() for p in r.path), r.ciphertext]
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def relay_tag(mac_key: bytes, r: kms_pb2.RelayRequest) -> bytes:
    return hmac.new(mac_key, _mac_input(r), hashlib.sha256).digest()


class Relay:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._fillers: dict[str, asyncio.Task[None]] = {}

    # --- sending ---------------------------------------------------------------------
    async def _send_hop(self, phys: Link, virt_qkdl_id: str, key_id: str, key: bytes, path: list[str],
                        hop_index: int, relay_id: str) -> kms_pb2.RelayResponse:
        core = self.core
        bits = len(key) * 8
        pads = await core.store.take_next(phys.qkdl_id, 2, core.from_back(phys))
        if not pads:
            raise RelayError("no key on the hop link")
        pad, mk = pads
        if pad.bits < bits:
            raise RelayError("hop keys shorter than the relayed key")
        req = kms_pb2.RelayRequest(relay_id=relay_id, virt_qkdl_id=virt_qkdl_id, key_id=key_id, size=bits,
                                   hop_qkdl_id=phys.qkdl_id, hop_key_id=pad.key_id,
                                   ciphertext=_xor(key, pad.material), mac_key_id=mk.key_id,
                                   path=path, hop_index=hop_index)
        req.mac = relay_tag(mk.material, req)
        try:
            return await core.peers.stub(phys.peer_kms_address).Relay(req, timeout=core.limits.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise RelayError(f"hop to {phys.peer_node_id} failed: {e.code().name}") from None

    async def relay_one(self, link: Link) -> str:
        """Source side: relay one fresh key into the VIRT pool of `link`; returns its key ID."""
        core = self.core
        if not link.is_relay_source:
            raise RelayError("this node is not the source of the virtual link")
        path = [core.node_id, *link.next_hops]
        first = core.registry.phys_link_to(path[1])
        if first is None or not first.up:
            raise RelayError("no physical link to the first hop")
        bits = core.limits.relay_key_bits
        key = secrets.token_bytes(bits // 8)
        key_id = str(uuid.uuid4())
        resp = await self._send_hop(first, link.qkdl_id, key_id, key, path, 0, str(uuid.uuid4()))
        if not resp.ok:
            raise RelayError(resp.reason)
        await core.store.put_key(link.qkdl_id, key_id, key, bits)
        core.rate(link.qkdl_id).add(bits)
        log.debug("relayed key %s over %d hops into %s", key_id, len(path) - 1, link.qkdl_id)
        return key_id

    async def topup(self, link: Link, bits: int, timeout: float) -> None:
        """Relay until the VIRT pool holds `bits` available bits (or `timeout` passes)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        par = self.core.limits.relay_parallel
        while loop.time() < end:
            st = self.core.store.pool_stats(link.qkdl_id)
            have = st.available_bits if st else 0
            if have >= bits:
                return
            n = min(par, -(-(bits - have) // self.core.limits.relay_key_bits))
            res = await asyncio.gather(*(self.relay_one(link) for _ in range(n)), return_exceptions=True)
            if all(isinstance(r, BaseException) for r in res):
                return

    # --- filling -----------------------------------------------------------------------
    def start(self, link: Link) -> None:
        if link.is_relay_source and link.qkdl_id not in self._fillers:
            self._fillers[link.qkdl_id] = asyncio.get_running_loop().create_task(self._fill(link))

    def stop(self, qkdl_id: str) -> None:
        t = self._fillers.pop(qkdl_id, None)
        if t is not None:
            t.cancel()

    async def _fill(self, link: Link) -> None:
        core = self.core
        backoff = 0.05
        while True:
            st = core.store.pool_stats(link.qkdl_id)
            target = core.limits.relay_target_keys
            if link.up and st is not None and st.available_keys < target:
                n = min(core.limits.relay_parallel, target - st.available_keys)
                res = await asyncio.gather(*(self.relay_one(link) for _ in range(n)), return_exceptions=True)
                if all(isinstance(r, BaseException) for r in res):
                    # Wait for the first hop's pool to change (or retry after a while).
                    first = core.registry.phys_link_to(link.next_hops[0]) if link.next_hops else None
                    await core.wait_changed(first.qkdl_id if first else link.qkdl_id, backoff)
                    backoff = min(backoff * 2, 2.0)
                else:
                    backoff = 0.05
                continue
            await core.wait_changed(link.qkdl_id, 5.0)

    async def close(self) -> None:
        tasks = list(self._fillers.values())
        self._fillers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- receiving ---------------------------------------------------------------------
    def _check_path(self, r: kms_pb2.RelayRequest, caller: str | None) -> tuple[Link, Link, bool] | str:
        core = self.core
        path, h = list(r.path), r.hop_index
        if len(path) < 2 or h + 1 >= len(path) or path[h + 1] != core.node_id:
            return "bad path"
        if core.tls and caller != path[h]:
            return "caller is not the previous hop"
        hop = core.registry.links.get(r.hop_qkdl_id)
        if hop is None or hop.kind != PHYS or hop.peer_node_id != path[h]:
            return "hop link is not a physical link to the previous hop"
        virt = core.registry.links.get(r.virt_qkdl_id)
        if virt is None or virt.kind != VIRT or virt.prev_hop != path[h]:
            return "virtual link not installed here"
        end = h + 2 == len(path)
        if end:
            if virt.next_hops or virt.peer_node_id != path[0]:
                return "virtual link does not end here"
        elif tuple(virt.next_hops) != tuple(path[h + 2:]):
            return "path does not match the virtual link"
        if r.size <= 0 or r.size % 8 or len(r.ciphertext) * 8 != r.size:
            return "bad size"
        return hop, virt, end

    async def handle(self, r: kms_pb2.RelayRequest, caller: str | None) -> kms_pb2.RelayResponse:
        core = self.core
        chk = self._check_path(r, caller)
        if isinstance(chk, str):
            return kms_pb2.RelayResponse(ok=False, reason=chk)
        hop, virt, end = chk
        keys = await core.store.take_keys(hop.qkdl_id, [r.hop_key_id, r.mac_key_id])
        if keys is None:
            return kms_pb2.RelayResponse(ok=False, reason="hop keys not available")
        pad, mk = keys
        if pad.bits < r.size or not hmac.compare_digest(relay_tag(mk.material, r), r.mac):
            log.warning("relay %s: authentication failed on hop from %s", r.relay_id, hop.peer_node_id)
            return kms_pb2.RelayResponse(ok=False, reason="authentication failed")
        key = _xor(r.ciphertext, pad.material)
        if end:
            try:
                await core.store.put_key(virt.qkdl_id, r.key_id, key, r.size)
            except Exception as e:
                return kms_pb2.RelayResponse(ok=False, reason=f"cannot store: {type(e).__name__}")
            core.rate(virt.qkdl_id).add(r.size)
            log.debug("relay %s: stored key %s in %s", r.relay_id, r.key_id, virt.qkdl_id)
            return kms_pb2.RelayResponse(ok=True)
        nxt = core.registry.phys_link_to(r.path[r.hop_index + 2])
        if nxt is None or not nxt.up:
            return kms_pb2.RelayResponse(ok=False, reason="no physical link to the next hop")
        try:
            return await self._send_hop(nxt, r.virt_qkdl_id, r.key_id, key, list(r.path), r.hop_index + 1,
                                        r.relay_id)
        except RelayError as e:
            return kms_pb2.RelayResponse(ok=False, reason=str(e))
