"""Trusted-node key relay along a virtual link (docs/controller-api.md), carried hop by hop as
ETSI GS QKD 020 `ext_keys` transfers.

The source node of a VIRT link (prev_hop None) draws fresh random keys K (OS CSPRNG) and sends
them, a batch per request, to the next node of the path with `POST /kmapi/v1/ext_keys`. ETSI 020
protects a transfer with mutual TLS only (it is meant for KMSs inside one trusted node); a hop
between two sdqkd nodes crosses a fibre, so each hop adds our own information-theoretic layer,
carried in `extension_mandatory.sdqkd_hop` (a peer that does not understand it must refuse the
request, as the standard says of mandatory extensions, rather than keep ciphertext as keys):

- every key's `value` is K xor P, P a fresh key of the hop's *physical* link pool (one-time pad);
- one more fresh key M of that pool keys HMAC-SHA256 over the whole request (tag excluded; the
  keys as raw bytes, the rest as canonical JSON, see `tag_input`): a one-time MAC key
  (computationally secure, not Wegman-Carter);
- `relay_id`, the VIRT link, the path and the hop index say where the keys go; the receiver checks
  them against the VIRT link installed on it and the caller's certificate against the path.

Pads are consumed only when both ends of the hop agree. The sender *reserves* P and M
(RESERVED_OUT) and erases them once the receiver answered: a 200/202, or an error whose
`details` say `{"sdqkd_hop_pads": "consumed"}`; an error saying `untouched` puts them back (minus
IDs the receiver names as unknown, which are erased). With no answer (connection lost, timeout)
the same body is sent again: the receiver answers a repeated `relay_id` from its record, and
after its own restart finds the pads gone (answer: unknown -> erased here too) or still there
(it processes the request now). So a failed send never leaves the two ends with different pools.

Each node along the path takes P and M out of its pool (erased) when it checks the tag, recovers
K, and either protects it again for its next hop or, at the far end, stores it under the key ID
in the VIRT pool. The source stores its copy only once the far end has it: synchronous mode (no
`ack_callback_url`) answers 200 when the whole path is done; asynchronous mode answers 202 and the
far end's `relayed` ack travels back hop by hop to each sender's `ack_callback_url`. An ack that
never arrives is resolved by `void`ing the keys along the path: `voided` or `key not present` ->
the source drops them too; `failed` (already used at the far end) -> the source keeps them. A
void that no hop answers for certain (a hop down or restarting) is sent again, backing off, until
one does (for as long as reservations live, `unconfirmed_ttl_s`); the key store records it, so a
source that restarts meanwhile sends it again once its path is provisioned again. Pads
only ever come from PHYS pools, so a relayed key is never used as a pad.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import orjson

from sdqkd.errors import SdqkdError
from sdqkd.generated.proto.sdqkd import kms_pb2
from sdqkd.lkms import retry
from sdqkd.lkms.core import Core
from sdqkd.lkms.etsi020 import Kms020, Reply, Spawn, sync_reply
from sdqkd.lkms.etsi020_client import Etsi020Error, PeerKms
from sdqkd.lkms.etsi020_schema import (
    AckContainer,
    Bad,
    ExtKeyContainer,
    JsonObj,
    VoidContainer,
    acked_ids,
    decode_value,
    ext_key_container,
    is_key_id,
    message_data,
    void_container,
)
from sdqkd.lkms.keys import AppKey, derive_key_ids
from sdqkd.lkms.registry import PHYS, VIRT, Link
from sdqkd.lkms.store_api import PendingVoid, StoreError

if TYPE_CHECKING:
    from sdqkd.lkms.external import ExternalPeers

log = logging.getLogger(__name__)

HOP = "sdqkd_hop"
VIA = "relay"  # the voids this module records in the store (PendingVoid.via)
_RECORD = 4096  # replies remembered per relay_id (answers a repeated request the same way)
_RECEIVED = 200_000  # relayed key IDs remembered at a far end (void: delivered vs never seen)


class RelayError(SdqkdError):
    pass


Late = Callable[[int, Any], Awaitable[set[str]]]  # the answer to a hop whose outcome was unknown


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


def _canonical_json(v: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (orjson: both ends of a hop run the same code)."""
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


def _void_body(owed: PendingVoid) -> JsonObj:
    return void_container(list(owed.ids), owed.master, list(owed.slaves), None, {HOP: json.loads(owed.hop)})


def tag_input(body: JsonObj, values: Sequence[bytes] | None = None) -> bytes:
    """The bytes the hop tag covers: every member of the request but `keys` and the tag, as
    canonical JSON, then per key (in order) its ID, its value as raw bytes and its extension,
    each length-prefixed. `values`: the keys' values already decoded (else decoded from the
    body). Raw values, not a second JSON encoding of the whole request: for a 512-key request
    that re-encoding cost as much as the request itself."""
    b = dict(body)
    keys = b.pop("keys")
    em = dict(b["extension_mandatory"])
    hop = dict(em[HOP])
    hop.pop("tag", None)
    em[HOP] = hop
    b["extension_mandatory"] = em
    if values is None:
        values = [decode_value(k["value"], "value") for k in keys]
    out = [_canonical_json(b)]
    for k, v in zip(keys, values, strict=True):
        kid = k["key_id"].encode()
        ext = _canonical_json(k["extension"]) if k.get("extension") else b""
        out.append(b"%d:%s%d:%s%d:%s" % (len(kid), kid, len(v), v, len(ext), ext))
    return b"".join(out)


def hop_tag(mac_key: bytes, body: JsonObj, values: Sequence[bytes] | None = None) -> str:
    """HMAC-SHA256 under the one-time MAC key over `tag_input`."""
    return base64.b64encode(hmac.new(mac_key, tag_input(body, values), hashlib.sha256).digest()).decode()


def _pads(state: str, unknown: list[str] | None = None) -> list[JsonObj]:
    out: list[JsonObj] = [{"sdqkd_hop_pads": state}]
    if unknown:
        out.append({"sdqkd_unknown_pad_ids": unknown})
    return out


def _refuse(message: str, key: str, detail: str, pads: str, status: int = 400,
            unknown: list[str] | None = None) -> Reply:
    return status, message_data(message, {key: detail}, *_pads(pads, unknown))


def _pads_state(body: Any) -> tuple[str | None, list[str]]:
    """What a hop's error answer says about our pads: consumed/untouched (+ unknown IDs)."""
    state: str | None = None
    unknown: list[str] = []
    if isinstance(body, dict) and isinstance(body.get("details"), list):
        for d in body["details"]:
            if isinstance(d, dict):
                if isinstance(d.get("sdqkd_hop_pads"), str):
                    state = d["sdqkd_hop_pads"]
                if isinstance(d.get("sdqkd_unknown_pad_ids"), list):
                    unknown = [x for x in d["sdqkd_unknown_pad_ids"] if is_key_id(x)]
    return state, unknown


@dataclass
class _Hop:
    relay_id: str
    virt_qkdl_id: str
    path: list[str]
    hop_index: int
    hop_qkdl_id: str
    pad_key_ids: list[list[str]]
    mac_key_ids: list[str]
    tag: str
    exit_peer: str | None = None  # the path leaves the far end for this external KMS

    @classmethod
    def parse(cls, v: Any) -> _Hop:
        def bad(what: str) -> Bad:
            return Bad("bad request format", "bad_request_format", f"extension_mandatory.{HOP}: {what}")

        if not isinstance(v, dict):
            raise bad("expected an object")
        try:
            h = cls(str(v["relay_id"]), str(v["virt_qkdl_id"]), list(v["path"]), v["hop_index"],
                    str(v["hop_qkdl_id"]), [list(p) for p in v["pad_key_ids"]], list(v["mac_key_ids"]),
                    str(v["tag"]), v.get("exit_peer"))
        except (KeyError, TypeError, ValueError):
            raise bad("relay_id, virt_qkdl_id, path, hop_index, hop_qkdl_id, pad_key_ids, mac_key_ids, "
                      "tag required") from None
        if not isinstance(h.hop_index, int) or isinstance(h.hop_index, bool) or not all(
                isinstance(p, str) for p in h.path):
            raise bad("hop_index must be an integer, path an array of node IDs")
        if h.exit_peer is not None and (not isinstance(h.exit_peer, str) or not h.exit_peer):
            raise bad("exit_peer must be the name of an external KMS")
        ids = [k for p in h.pad_key_ids for k in p] + h.mac_key_ids
        if not ids or not all(is_key_id(k) for k in ids) or len(set(ids)) != len(ids):
            raise bad("pad and MAC key IDs must be distinct UUIDs")
        return h


class Relay:
    def __init__(self, core: Core, kms: Kms020) -> None:
        self.core, self.kms = core, kms
        self._fillers: dict[str, asyncio.Task[None]] = {}
        self._replies: OrderedDict[str, Reply | asyncio.Future[Reply]] = OrderedDict()
        self._received: OrderedDict[str, None] = OrderedDict()  # far end: key IDs stored by relay
        self._voided: OrderedDict[str, None] = OrderedDict()  # far end: voided before they arrived
        self._tasks: set[asyncio.Task[None]] = set()  # reconciliation, pad erasure
        self._erasing: dict[str, asyncio.Task[None]] = {}  # txn -> erase of its pads under way
        self.external: ExternalPeers | None = None  # for paths that leave for another vendor's KMS

    # --- configuration -------------------------------------------------------------------
    @property
    def async_mode(self) -> bool:
        return self.core.limits.relay_020_mode == "async"

    def _sae_ids(self, link: Link) -> tuple[str, list[str]]:
        """initiator/target SAE IDs of the ext_keys of a VIRT link: those of an application it
        backs; before any is registered, the node IDs of the two ends stand in."""
        for app in self.core.registry.apps.values():
            if link.qkdl_id in app.backing_qkdl_ids:
                if self.core.registry.is_local(app.master_sae_id):
                    return app.master_sae_id, list(app.slave_sae_ids)
                return app.slave_sae_ids[0], [app.master_sae_id]
        return self.core.node_id, [link.peer_node_id]

    async def _peer(self, phys: Link) -> PeerKms:
        """The next hop's ETSI 020 server: configured, or asked once over KeySync (Describe)."""
        p = self.kms.node(phys.peer_node_id)
        if p is None:
            try:
                r = await self.core.peers.stub(phys.peer_kms_address).Describe(
                    kms_pb2.DescribeRequest(), timeout=self.core.limits.rpc_timeout_s)
            except grpc.aio.AioRpcError as e:
                raise RelayError(f"no ETSI 020 address for node {phys.peer_node_id}: {e.code().name}") from None
            host, _, port = r.etsi020_address.rpartition(":")
            if not port.isdigit():
                raise RelayError(f"node {phys.peer_node_id} serves no ETSI 020")
            if host in ("", "0.0.0.0", "::", "[::]"):
                host = phys.peer_kms_address.rpartition(":")[0]
            self.kms.set_node(phys.peer_node_id, f"{host}:{port}")
            p = self.kms.node(phys.peer_node_id)
            assert p is not None
        return p

    # --- sending one hop -------------------------------------------------------------------
    async def _send_hop(self, phys: Link, virt_qkdl_id: str, keys: list[tuple[str, bytes]], path: list[str],
                        hop_index: int, relay_id: str, saes: tuple[str, list[str]], ack_url: str | None,
                        late: Late | None = None, reserved: list[AppKey] | None = None,
                        exit_peer: str | None = None) -> tuple[int, Any]:
        """One hop; `reserved`: the pads, already reserved under this hop's txn (see _receive)."""
        core = self.core
        txn = _txn(relay_id, hop_index)
        try:
            peer = await self._peer(phys)
        except RelayError:
            if reserved is not None:
                await core.store.abort_out(txn)
            raise
        bits = len(keys[0][1]) * 8
        got = reserved if reserved is not None else (
            await core.store.reserve_out(phys.qkdl_id, txn, [len(keys) + 1], bits, core.from_back(phys)))[0]
        if got is None:
            raise RelayError("no key on the hop link")
        pads, mk = got[:-1], got[-1]
        hop: JsonObj = {"relay_id": relay_id, "virt_qkdl_id": virt_qkdl_id, "path": path, "hop_index": hop_index,
                        "hop_qkdl_id": phys.qkdl_id, "pad_key_ids": [[p for p, _ in k.parts] for k in pads],
                        "mac_key_ids": [p for p, _ in mk.parts]}
        if exit_peer is not None:
            hop["exit_peer"] = exit_peer
        sent = [(kid, _xor(k, p.material)) for (kid, k), p in zip(keys, pads, strict=True)]
        body = ext_key_container(sent, saes[0], saes[1], ack_url, {HOP: hop})
        hop["tag"] = hop_tag(mk.material, body, [v for _, v in sent])
        return await self._deliver(peer, body, txn, late)

    async def _deliver(self, peer: PeerKms, body: JsonObj, txn: str, late: Late | None) -> tuple[int, Any]:
        """Send until the hop's answer says what became of the pads; settle them accordingly.
        Still no answer: reconcile in the background (`late` then gets the answer)."""
        delay = 0.05
        for _attempt in range(4):
            try:
                status, resp = await self.kms.client.post(peer, "ext_keys", body, self.core.limits.rpc_timeout_s)
            except Etsi020Error as e:
                log.info("relay hop to %s: no answer (%s), sending again", peer.identity, e)
                self.kms.unlearn(peer)  # it may have come back elsewhere: ask its peer port again
                await asyncio.sleep(delay)
                delay *= 4
                continue
            if await self._settle(status, resp, txn):
                return status, resp
            await asyncio.sleep(delay)
            delay *= 4
        self._background(self._reconcile(peer, body, txn, late))
        raise RelayError(f"hop to {peer.identity}: outcome unknown, reconciling")

    async def _settle(self, status: int, resp: Any, txn: str) -> bool:
        """True once the pads of `txn` are settled (erased or put back) by the hop's answer."""
        state, unknown = _pads_state(resp)
        if status in (200, 202) or state == "consumed":
            # Erased as used internally (not "delivered" to an application), no Confirm owed.
            # Not awaited: the erase joins the source's next commit (the relayed keys) instead of
            # costing a commit of its own; a crash before it lands erases RESERVED_OUT keys anyway.
            self._erasing[txn] = self._background(self.core.store.abort_out(txn, erase_all=True))
            return True
        if state == "untouched":
            await self.core.store.abort_out(txn, erase=unknown)
            return True
        return False

    def _background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _erased(self, txn: str) -> None:
        """Wait until the pads of `txn`, settled in the background, are erased (durably)."""
        task = self._erasing.pop(txn, None)
        if task is not None:
            await task

    def _backoff(self) -> AsyncIterator[None]:
        """The pace of every background retry towards a hop (retry.py)."""
        return retry.backoff(self.core.limits.unconfirmed_ttl_s)

    async def _reconcile(self, peer: PeerKms, body: JsonObj, txn: str, late: Late | None) -> None:
        """Keep the pads reserved and ask again until the hop answers (or the reservation would
        expire anyway): both ends then agree on what was consumed."""
        async for _ in self._backoff():
            peer = self.kms.node(peer.identity) or peer  # re-learnt by a later relay, if it moved
            try:
                status, resp = await self.kms.client.post(peer, "ext_keys", body, self.core.limits.rpc_timeout_s)
            except Etsi020Error:
                continue
            if await self._settle(status, resp, txn):
                await self._erased(txn)
                log.info("relay hop to %s reconciled (%d)", peer.identity, status)
                if late is not None:
                    await late(status, resp)
                return

    # --- source --------------------------------------------------------------------------
    async def relay_batch(self, link: Link, n: int) -> list[str]:
        """Source side: relay `n` fresh keys into the VIRT pool of `link`; the IDs stored."""
        core = self.core
        if not link.is_relay_source:
            raise RelayError("this node is not the source of the virtual link")
        path = [core.node_id, *link.next_hops]
        first = core.registry.phys_link_to(path[1])
        if first is None or not first.up:
            raise RelayError("no physical link to the first hop")
        nbytes = core.limits.relay_key_bits // 8
        relay_id = str(uuid.uuid4())
        # Consecutive IDs per batch (derived from the random relay ID): both stores insert them at
        # one place of their key-ID index instead of one random page per key.
        ids = derive_key_ids(link.qkdl_id, relay_id, n)
        material = secrets.token_bytes(nbytes * n)
        keys = [(k, material[i * nbytes:(i + 1) * nbytes]) for i, k in enumerate(ids)]
        saes = self._sae_ids(link)
        src = _Source(self, link, first, path, saes, keys)
        try:
            if not self.async_mode:
                status, resp = await self._send_hop(first, link.qkdl_id, keys, path, 0, relay_id, saes, None,
                                                    src.resolve)
                relayed = await src.resolve(status, resp)
            else:
                peer = await self._peer(first)
                futs = self.kms.expect(peer, ids)
                try:
                    status, resp = await self._send_hop(first, link.qkdl_id, keys, path, 0, relay_id, saes,
                                                        self.kms.ack_url, src.resolve)
                except BaseException:
                    self.kms.forget(ids)
                    raise
                if status != 202:
                    self.kms.forget(ids)
                    relayed = await src.resolve(status, resp)
                else:
                    relayed = await self._await_acks(src, futs)
        finally:
            await self._erased(_txn(relay_id, 0))  # (submitted beside the keys' commit)
        if len(relayed) < len(ids) and not relayed:
            raise RelayError(f"relay refused ({status}): {_message(resp)}")
        return [k for k in ids if k in relayed]

    async def relay_one(self, link: Link) -> str:
        ids = await self.relay_batch(link, 1)
        if not ids:
            raise RelayError("key not relayed")
        return ids[0]

    async def _await_acks(self, src: _Source, futs: list[asyncio.Future[AckContainer]]) -> set[str]:
        done, _ = await asyncio.wait(futs, timeout=self.core.limits.ack_timeout_s)
        relayed = {f.result().key_ids[0] for f in done if f.result().ack_status == "relayed"}
        missing = [k for (k, _), f in zip(src.keys, futs, strict=True) if f not in done]
        if missing:
            self.kms.forget(missing)
            log.warning("relay into %s: no ack for %d keys; voiding them along the path", src.link.qkdl_id,
                        len(missing))
            relayed |= await self._void_path(src, missing)
        await src.store(relayed)
        return relayed

    async def _void_path(self, src: _Source, ids: list[str]) -> set[str]:
        """Void keys whose fate is unknown; returns those the far end has already used (the
        source keeps them). The far end remembers voided IDs, so a late copy is refused. A void
        no hop answered for certain (no answer; a hop restarting, without the route yet; a time-out
        further on) is recorded and sent again in the background until one does: the keys must not
        stay usable at the far end, where another vendor's SAE could fetch keys ours never got."""
        owed = PendingVoid(VIA, src.link.qkdl_id, tuple(ids), src.saes[0], tuple(src.saes[1]),
                           time.time() + self.core.limits.unconfirmed_ttl_s,
                           json.dumps({"virt_qkdl_id": src.link.qkdl_id, "path": src.path, "hop_index": 0}))
        used = await self._post_void(owed.to, src.first, _void_body(owed))
        if used is None:
            owed = await retry.record_void(self.core.store, owed)  # first, so that a restart does not forget it
            self._background(self._void_again(owed, src.first))
            return set()
        return used & set(ids)

    async def resume(self) -> None:
        """At start: send again the voids along virtual links that the store recorded and no hop
        answered before this process stopped."""
        for owed in await self.core.store.pending_voids(VIA):
            self._background(self._void_again(owed, None))

    async def _post_void(self, qkdl_id: str, first: Link, body: JsonObj, level: int = logging.WARNING
                         ) -> set[str] | None:
        """One void along the path of `qkdl_id`: the IDs the far end had already used, None if it is
        to be sent again. `level`: of the log line saying it was not delivered or refused."""
        try:
            status, resp = await self.kms.client.post(await self._peer(first), "ext_keys/void", body,
                                                      self.core.limits.rpc_timeout_s * 2)
        except (Etsi020Error, RelayError) as e:
            log.log(level, "void along %s not delivered: %s", qkdl_id, e)
            return None
        if status != 200 or not isinstance(resp, dict):
            log.log(level, "void along %s refused (%d)", qkdl_id, status)
            return None if retry.void_again_after(status, resp) else set()
        if resp.get("status") == "success":
            return set()
        return acked_ids(resp.get("ack_containers"), "failed")

    async def _void_again(self, owed: PendingVoid, first: Link | None) -> None:
        """Send an undelivered void again, backing off, until it expires, to `first` (the path's
        first hop when it first went out), and is dropped once its virtual link is deleted (its
        pools go with it). One recorded before a restart (`first` None) waits for its path to be
        provisioned again, then goes to the first hop its recorded path names."""
        path = json.loads(owed.hop)["path"]
        sent = first is not None
        async for _ in retry.backoff(owed.expires - time.time()):
            if owed.to not in self.core.registry.links and first is not None:
                log.info("void along %s dropped: the virtual link is gone", owed.to)
                await retry.settle_voids(self.core.store, [owed])
                return
            hop = first or self.core.registry.phys_link_to(path[1])
            if owed.to not in self.core.registry.links or hop is None:
                continue  # not provisioned (yet) since the restart
            sent = True
            used = await self._post_void(owed.to, hop, _void_body(owed), logging.INFO)  # the first try warned
            if used is not None:
                log.info("void along %s delivered on a later attempt", owed.to)
                if used:
                    log.error("%d keys of %s were used at the far end before the void reached it", len(used), owed.to)
                await retry.settle_voids(self.core.store, [owed])
                return
        if sent:
            log.error("void along %s never delivered: its keys may still be usable at the far end", owed.to)
        else:
            log.error("void along %s never sent: the virtual link or its first hop was not provisioned again "
                      "after the restart; its keys may still be usable at the far end", owed.to)
        await retry.settle_voids(self.core.store, [owed])

    async def topup(self, link: Link, bits: int, timeout: float) -> None:
        """Relay until the VIRT pool holds `bits` available bits (or `timeout` passes)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            st = self.core.store.pool_stats(link.qkdl_id)
            have = st.available_bits if st else 0
            if have >= bits:
                return
            n = min(self.core.limits.relay_batch, -(-(bits - have) // self.core.limits.relay_key_bits))
            try:
                await self.relay_batch(link, n)
            except (RelayError, StoreError, Etsi020Error) as e:
                log.info("top-up of %s failed: %s", link.qkdl_id, e)
                return

    # --- filling -----------------------------------------------------------------------
    def start(self, link: Link) -> None:
        if link.is_relay_source and link.exit_peer is None and link.qkdl_id not in self._fillers:
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
                n = min(core.limits.relay_batch, target - st.available_keys)
                try:
                    await self.relay_batch(link, n)
                    backoff = 0.05
                except (RelayError, StoreError, Etsi020Error) as e:
                    log.debug("filling %s: %s", link.qkdl_id, e)
                    # Wait for the first hop's pool to change (or retry after a while).
                    first = core.registry.phys_link_to(link.next_hops[0]) if link.next_hops else None
                    await core.wait_changed(first.qkdl_id if first else link.qkdl_id, backoff)
                    backoff = min(backoff * 2, 2.0)
                continue
            await core.wait_changed(link.qkdl_id, 5.0)

    async def close(self) -> None:
        tasks = [*self._fillers.values(), *self._tasks]
        self._fillers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- receiving ---------------------------------------------------------------------
    def _check(self, h: _Hop, caller: PeerKms) -> tuple[Link, Link, bool] | str:
        """The hop's links and whether this node is the far end, or why the route is refused."""
        core = self.core
        path, i = h.path, h.hop_index
        if len(path) < 2 or not 0 <= i < len(path) - 1 or path[i + 1] != core.node_id:
            return "bad path"
        if caller.identity != path[i]:
            return "caller is not the previous hop"
        hop = core.registry.links.get(h.hop_qkdl_id)
        if hop is None or hop.kind != PHYS or hop.peer_node_id != path[i]:
            return "hop link is not a physical link to the previous hop"
        virt = core.registry.links.get(h.virt_qkdl_id)
        if virt is None or virt.kind != VIRT or virt.prev_hop != path[i]:
            return "virtual link not installed here"
        if virt.exit_peer != h.exit_peer:
            return "exit to an external KMS does not match the virtual link"
        end = i + 2 == len(path)
        if end:
            if virt.next_hops or virt.peer_node_id != path[0]:
                return "virtual link does not end here"
        elif tuple(virt.next_hops) != tuple(path[i + 2:]):
            return "path does not match the virtual link"
        return hop, virt, end

    async def _untouched(self, h: _Hop, ids: list[str], message: str, key: str, detail: str) -> Reply:
        """A refusal that took none of the pads `ids`. It names those this store no longer holds
        (the sender erases them too): an earlier copy of the request may have consumed them, as
        before a restart that lost the routes until the controller installs them again; without
        them the sender would put back pads that are gone here."""
        unknown, _busy = await self.core.store.missing(h.hop_qkdl_id, ids)
        return _refuse(message, key, detail, "untouched", unknown=unknown)

    def _remember(self, relay_id: str, reply: Reply | asyncio.Future[Reply]) -> None:
        self._replies[relay_id] = reply
        self._replies.move_to_end(relay_id)
        while len(self._replies) > _RECORD:
            self._replies.popitem(last=False)

    async def on_ext_keys(self, caller: PeerKms, raw: JsonObj, req: ExtKeyContainer, spawn: Spawn) -> Reply:
        h = _Hop.parse(req.extension_mandatory[HOP])
        prev = self._replies.get(h.relay_id)
        if prev is not None:  # a repeated request: the same answer, nothing done twice
            return await prev if isinstance(prev, asyncio.Future) else prev
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._remember(h.relay_id, fut)
        try:
            reply = await self._receive(caller, raw, req, h, spawn)
        except BaseException:
            self._replies.pop(h.relay_id, None)
            fut.cancel()
            raise
        if _pads_state(reply[1])[0] == "untouched":
            self._replies.pop(h.relay_id, None)  # nothing happened: a retry may be processed anew
        else:
            self._remember(h.relay_id, reply)
        fut.set_result(reply)
        return reply

    async def _receive(self, caller: PeerKms, raw: JsonObj, req: ExtKeyContainer, h: _Hop, spawn: Spawn) -> Reply:
        ids = [k for p in h.pad_key_ids for k in p] + h.mac_key_ids
        chk = self._check(h, caller)
        if isinstance(chk, str):
            return await self._untouched(h, ids, "key routing error", "invalid_routing", chk)
        hop, virt, end = chk
        if len(h.pad_key_ids) != len(req.keys):
            return await self._untouched(h, ids, "bad request format", "bad_request_format", "one pad per key")
        pre = None if end else self._prereserve(h, req)
        handed = [False]  # set once the reserved pads belong to the next hop's send (and its reconciliation)
        try:
            reply = await self._open(caller, raw, req, h, hop, virt, end, ids, pre, spawn, handed)
        except BaseException:
            if not handed[0]:
                await self._unreserve(h, pre)
            raise
        if not handed[0]:
            await self._unreserve(h, pre)
        return reply

    def _prereserve(self, h: _Hop, req: ExtKeyContainer) -> asyncio.Task[list[AppKey] | None] | None:
        """At a trusted node: reserve the next hop's pads while the incoming ones are taken, so
        the two store operations share one commit (one fsync less per hop)."""
        core = self.core
        nxt = core.registry.phys_link_to(h.path[h.hop_index + 2]) if h.hop_index + 2 < len(h.path) else None
        sizes = {len(k.value) for k in req.keys}
        if nxt is None or not nxt.up or len(sizes) != 1:
            return None
        bits = sizes.pop() * 8

        async def reserve() -> list[AppKey] | None:
            assert nxt is not None
            return (await core.store.reserve_out(nxt.qkdl_id, _txn(h.relay_id, h.hop_index + 1), [len(req.keys) + 1],
                                                 bits, core.from_back(nxt)))[0]

        return asyncio.get_running_loop().create_task(reserve())

    async def _unreserve(self, h: _Hop, pre: asyncio.Task[list[AppKey] | None] | None) -> None:
        """Put back next-hop pads reserved for a request that did not go on (if still reserved)."""
        if pre is None:
            return
        try:
            await pre
        except Exception:
            return
        await self.core.store.abort_out(_txn(h.relay_id, h.hop_index + 1))

    async def _open(self, caller: PeerKms, raw: JsonObj, req: ExtKeyContainer, h: _Hop, hop: Link, virt: Link,
                    end: bool, ids: list[str], pre: asyncio.Task[list[AppKey] | None] | None,
                    spawn: Spawn, handed: list[bool]) -> Reply:
        """Take the pads, check the tag, recover the keys; store them (far end) or pass them on."""
        core = self.core
        taken = await core.take_arrived(hop.qkdl_id, ids)
        if taken is None:
            return await self._untouched(h, ids, "insufficient key material", "insufficient_key_material",
                                         "hop keys not available")
        mats = {k: lk.material for k, lk in zip(ids, taken, strict=True)}
        mac_key = b"".join(mats[k] for k in h.mac_key_ids)
        if not hmac.compare_digest(hop_tag(mac_key, raw, [k.value for k in req.keys]).encode(), h.tag.encode()):
            log.warning("relay %s: authentication failed on hop from %s", h.relay_id, hop.peer_node_id)
            return _refuse("bad request format", "sdqkd_authentication_failed", "hop tag does not verify",
                           "consumed")
        keys: list[tuple[str, bytes]] = []
        for k, pad_ids in zip(req.keys, h.pad_key_ids, strict=True):
            pad = b"".join(mats[p] for p in pad_ids)
            if len(pad) < len(k.value):
                return _refuse("bad request format", "bad_request_format", "pad shorter than key", "consumed")
            keys.append((k.key_id, _xor(k.value, pad)))
        if end and virt.exit_peer is not None:
            if req.ack_callback_url is None:
                return sync_reply(await self._exit(virt.exit_peer, keys, req), len(keys))
            spawn(self._exit_acks(caller, virt.exit_peer, keys, req))
            return 202, {}
        if end:
            acks = await self._store_far_end(virt, keys, req)
            if req.ack_callback_url is None:
                return sync_reply(acks, len(keys))
            spawn(self.kms.send_acks(caller, req.ack_callback_url, acks))
            return 202, {}
        reserved = await pre if pre is not None else None
        if pre is not None and reserved is None:
            return _refuse("insufficient key material", "insufficient_key_material",
                           "no key on the next hop's link", "consumed")
        handed[0] = reserved is not None
        return await self._forward(caller, req, h, keys, spawn, reserved)

    async def _store_far_end(self, virt: Link, keys: list[tuple[str, bytes]], req: ExtKeyContainer
                             ) -> list[AckContainer]:
        fresh = [(kid, key) for kid, key in keys if kid not in self._voided]  # voided first: never stored
        res = await put_all(self.core, virt.qkdl_id, fresh)
        relayed: list[str] = []
        for (kid, _), stored in zip(fresh, res, strict=True):
            if not stored and kid not in self._received:
                continue  # an ID we never received by relay: refused (failed)
            relayed.append(kid)  # stored now, or stored by an earlier copy of this request
            self._received[kid] = None
        while len(self._received) > _RECEIVED:
            self._received.popitem(last=False)
        done = set(relayed)
        self.core.rate(virt.qkdl_id).add(sum(len(k) * 8 for kid, k in keys if kid in done))
        failed = [k for k, _ in keys if k not in done]
        acks = [AckContainer(tuple(relayed), "relayed", req.initiator_sae_id, t) for t in req.target_sae_ids
                if relayed]
        acks += [AckContainer(tuple(failed), "failed", req.initiator_sae_id, t, "cannot store")
                 for t in req.target_sae_ids if failed]
        return acks

    async def _forward(self, caller: PeerKms, req: ExtKeyContainer, h: _Hop, keys: list[tuple[str, bytes]],
                       spawn: Spawn, reserved: list[AppKey] | None) -> Reply:
        core = self.core
        nxt = core.registry.phys_link_to(h.path[h.hop_index + 2])
        if nxt is None or not nxt.up:
            if reserved is not None:
                await core.store.abort_out(_txn(h.relay_id, h.hop_index + 1))
            return _refuse("key routing error", "no_known_route", "no physical link to the next hop", "consumed")
        saes = (req.initiator_sae_id, list(req.target_sae_ids))
        if req.ack_callback_url is None:
            try:
                status, resp = await self._send_hop(nxt, h.virt_qkdl_id, keys, h.path, h.hop_index + 1, h.relay_id,
                                                    saes, None, reserved=reserved, exit_peer=h.exit_peer)
            except RelayError as e:
                return _refuse("timeout", "timeout", f"next hop: {e}", "consumed", status=408)
            await self._erased(_txn(h.relay_id, h.hop_index + 1))
            if core.fault == "pause_before_020_reply":  # crash tests: die between forwarding and answering
                log.warning("fault injection: paused before answering relay %s", h.relay_id)
                await asyncio.Event().wait()
            if status == 200 and isinstance(resp, dict):
                return 200, resp
            return _refuse(_message(resp), "next_hop_refused", f"next hop answered {status}", "consumed",
                           status=400 if 400 <= status < 500 else 503)
        peer = await self._peer(nxt)
        ids = [k for k, _ in keys]
        futs = self.kms.expect(peer, ids)
        try:
            status, resp = await self._send_hop(nxt, h.virt_qkdl_id, keys, h.path, h.hop_index + 1, h.relay_id,
                                                saes, self.kms.ack_url, reserved=reserved, exit_peer=h.exit_peer)
        except RelayError as e:
            self.kms.forget(ids)
            return _refuse("timeout", "timeout", f"next hop: {e}", "consumed", status=408)
        await self._erased(_txn(h.relay_id, h.hop_index + 1))
        if status != 202:
            self.kms.forget(ids)
            return _refuse(_message(resp), "next_hop_refused", f"next hop answered {status}", "consumed",
                           status=400 if 400 <= status < 500 else 503)
        spawn(self._pass_acks(caller, req.ack_callback_url, ids, futs))
        return 202, {}

    async def _pass_acks(self, caller: PeerKms, url: str, ids: list[str],
                         futs: list[asyncio.Future[AckContainer]]) -> None:
        """Asynchronous mode at a trusted node: hand the far end's acks back to the previous
        hop as they come (an ack that never comes is the source's to resolve with void)."""
        done, _ = await asyncio.wait(futs, timeout=self.core.limits.ack_timeout_s)
        self.kms.forget([k for k, f in zip(ids, futs, strict=True) if f not in done])
        groups: dict[tuple[str, str, str], list[str]] = {}
        for f in done:
            a = f.result()
            groups.setdefault((a.ack_status, a.initiator_sae_id, a.target_sae_id), []).extend(a.key_ids)
        acks = [AckContainer(tuple(v), s, i, t) for (s, i, t), v in groups.items()]
        if acks:
            await self.kms.send_acks(caller, url, acks)

    # --- a path that leaves for another vendor's KMS ------------------------------------------
    async def dispense_exit(self, link: Link, master: str, slaves: tuple[str, ...], bits: int,
                            count: int) -> list[AppKey]:
        """Source side of a VIRT link with `exit_peer`: fresh keys for `master`, relayed hop by
        hop to the gateway, which hands them to the external KMS (initiator = master, targets =
        slaves); returned only if the external KMS took every one of them (else those it took
        are voided along the path and RelayError is raised: the SAE gets no key)."""
        core = self.core
        if not link.is_relay_source or link.exit_peer is None:
            raise RelayError("this node is not the source of a path to an external KMS")
        path = [core.node_id, *link.next_hops]
        first = core.registry.phys_link_to(path[1])
        if first is None or not first.up:
            raise RelayError("no physical link to the first hop")
        relay_id = str(uuid.uuid4())
        keys = [(str(uuid.uuid4()), secrets.token_bytes(bits // 8)) for _ in range(count)]
        src = _Source(self, link, first, path, (master, list(slaves)), keys, keep=False)
        try:
            status, resp = await self._send_hop(first, link.qkdl_id, keys, path, 0, relay_id, src.saes, None,
                                                src.withdraw, exit_peer=link.exit_peer)
            relayed = await src.resolve(status, resp)
        finally:
            await self._erased(_txn(relay_id, 0))
        ids = [k for k, _ in keys]
        if len(relayed) < len(ids):
            if relayed:  # all or nothing for our SAE: withdraw what the external KMS took
                used = await self._void_path(src, [k for k in ids if k in relayed])
                if used:
                    log.error("external KMS %s delivered %d keys our SAE will not get (withdrawn too late)",
                              link.exit_peer, len(used))
            raise RelayError(f"external KMS {link.exit_peer} did not take the keys ({status}: {_message(resp)})")
        return [AppKey(k, bits, ((k, bits),), v) for k, v in keys]

    async def _exit(self, name: str, keys: list[tuple[str, bytes]], req: ExtKeyContainer) -> list[AckContainer]:
        """At the gateway: hand the relayed keys on to the external KMS; acks for the previous hop."""
        from sdqkd.lkms.external import PeerRefused

        why = "not taken by the external KMS"
        relayed: set[str] = set()
        if self.external is None:
            why = "no external KMS here"
        else:
            try:
                relayed = await self.external.forward(name, keys, req.initiator_sae_id, req.target_sae_ids)
            except PeerRefused as e:
                why = str(e)
        ok = [k for k, _ in keys if k in relayed]
        failed = [k for k, _ in keys if k not in relayed]
        acks = [AckContainer(tuple(ok), "relayed", req.initiator_sae_id, t) for t in req.target_sae_ids if ok]
        return acks + [AckContainer(tuple(failed), "failed", req.initiator_sae_id, t, why)
                       for t in req.target_sae_ids if failed]

    async def _exit_acks(self, caller: PeerKms, name: str, keys: list[tuple[str, bytes]],
                         req: ExtKeyContainer) -> None:
        assert req.ack_callback_url is not None
        await self.kms.send_acks(caller, req.ack_callback_url, await self._exit(name, keys, req))

    async def _void_exit(self, name: str, ids: list[str], req: VoidContainer) -> list[AckContainer]:
        from sdqkd.lkms.external import PeerRefused

        if self.external is None:
            gone, used = set(ids), set[str]()
        else:
            try:
                gone, used = await self.external.void_at(name, ids, req.initiator_sae_id, req.target_sae_ids)
            except PeerRefused:
                gone, used = set(ids), set()  # never sent there
        out: list[AckContainer] = []
        for status, keys in (("voided", [k for k in ids if k in gone]), ("failed", [k for k in ids if k in used])):
            if keys:
                out += [AckContainer(tuple(keys), status, req.initiator_sae_id, t) for t in req.target_sae_ids]
        return out

    # --- void --------------------------------------------------------------------------
    async def on_void(self, caller: PeerKms, req: VoidContainer, spawn: Spawn) -> Reply:
        ext = req.extension.get(HOP)
        try:
            assert isinstance(ext, dict)
            path, i, virt_id = list(ext["path"]), ext["hop_index"], str(ext["virt_qkdl_id"])
            assert isinstance(i, int) and all(isinstance(p, str) for p in path)
        except (AssertionError, KeyError, TypeError):
            raise Bad("void request not understood", "key_voiding_error",
                      f"extension.{HOP}: virt_qkdl_id, path, hop_index required") from None
        core = self.core
        virt = core.registry.links.get(virt_id)
        if (len(path) < 2 or not 0 <= i < len(path) - 1 or path[i + 1] != core.node_id or caller.identity != path[i]
                or virt is None or virt.kind != VIRT or virt.prev_hop != path[i]):
            raise Bad("key routing error", "invalid_routing", "void does not follow the virtual link")
        if req.key_ids is None:
            raise Bad("void request not understood", "key_voiding_error", "key_ids: required on a relay path")
        if virt.next_hops:
            nxt = core.registry.phys_link_to(path[i + 2])
            if nxt is None:
                raise Bad("key routing error", "no_known_route", "no physical link to the next hop")
            body = void_container(list(req.key_ids), req.initiator_sae_id, list(req.target_sae_ids), None,
                                  {HOP: {"virt_qkdl_id": virt_id, "path": path, "hop_index": i + 1}})
            try:
                status, resp = await self.kms.client.post(await self._peer(nxt), "ext_keys/void", body,
                                                          core.limits.rpc_timeout_s)
            except Etsi020Error:
                raise Bad("timeout", "timeout", "No response received from the next KME in sufficient time.",
                          status=408) from None
            return status, resp if isinstance(resp, dict) else {}
        if virt.exit_peer is not None:
            acks = await self._void_exit(virt.exit_peer, list(req.key_ids), req)
        else:
            acks = await self._void_here(virt, list(req.key_ids), req)
        if req.ack_callback_url is None:
            return sync_reply(acks, len(req.key_ids))
        spawn(self.kms.send_acks(caller, req.ack_callback_url, acks))
        return 202, {}

    async def _void_here(self, virt: Link, ids: list[str], req: VoidContainer) -> list[AckContainer]:
        unknown, busy = await self.core.store.missing(virt.qkdl_id, ids)
        gone = set(unknown) | set(busy)
        voided = [k for k in ids if k not in gone]
        if voided and await self.core.store.take_keys(virt.qkdl_id, voided) is None:
            busy += voided  # taken meanwhile by a delivery
            voided = []
        # delivered (or being delivered) keys cannot be voided; IDs never relayed here are not
        # present; keys a void took before are answered voided again (a retried void: the source
        # must not keep a key this end erased)
        again = [k for k in unknown if k in self._received and k in self._voided]
        failed = [k for k in ids if k in set(busy) or (k in set(unknown) and k in self._received
                                                       and k not in self._voided)]
        absent = [k for k in unknown if k not in self._received]
        for k in absent + voided:  # a copy still on its way must not be stored after this void
            self._voided[k] = None
        voided += again
        while len(self._voided) > _RECEIVED:
            self._voided.popitem(last=False)
        out: list[AckContainer] = []
        for status, keys in (("voided", voided), ("failed", failed), ("key not present", absent)):
            if keys:
                out += [AckContainer(tuple(keys), status, req.initiator_sae_id, t) for t in req.target_sae_ids]
        return out


@dataclass
class _Source:
    """One batch at the source: decides, from the first hop's answer, which keys the source
    stores (only those the far end has), voiding along the path whatever is uncertain."""

    relay: Relay
    link: Link
    first: Link
    path: list[str]
    saes: tuple[str, list[str]]
    keys: list[tuple[str, bytes]]
    keep: bool = True  # store the relayed keys in the link's pool (not for keys made on demand)

    async def resolve(self, status: int, resp: Any) -> set[str]:
        ids = [k for k, _ in self.keys]
        if status == 200 and isinstance(resp, dict):
            relayed = set(ids) if resp.get("status") == "success" else acked_ids(resp.get("ack_containers"), "relayed")
            rest = [k for k in ids if k not in relayed]
            if rest and not _pads_state(resp)[0] == "untouched":
                relayed |= await self.relay._void_path(self, rest)
        elif _pads_state(resp) == ("untouched", []):
            relayed = set()  # refused before anything moved
        # (untouched but our pads unknown there: an earlier copy consumed them, its answer was lost)
        else:  # consumed on the first hop, fate further on unknown (or a late 202): void it all
            relayed = await self.relay._void_path(self, ids)
        await self.store(relayed & set(ids))
        return relayed & set(ids)

    async def withdraw(self, status: int, resp: Any) -> set[str]:
        """The late answer to keys made on demand that our SAE was refused meanwhile (the hop's
        outcome was unknown): whatever reached the far end is voided along the path."""
        relayed = await self.resolve(status, resp)
        if relayed:
            used = await self.relay._void_path(self, sorted(relayed))
            if used:
                log.error("%d keys of %s were delivered at the far end but never to our SAE", len(used),
                          self.link.qkdl_id)
        return set()

    async def store(self, relayed: set[str]) -> None:
        core = self.relay.core
        if not self.keep:
            return
        await put_all(core, self.link.qkdl_id, [(k, v) for k, v in self.keys if k in relayed])
        core.rate(self.link.qkdl_id).add(len(relayed) * core.limits.relay_key_bits)
        if relayed:
            log.debug("relayed %d keys over %d hops into %s", len(relayed), len(self.path) - 1, self.link.qkdl_id)


async def put_all(core: Core, qkdl_id: str, keys: list[tuple[str, bytes]]) -> list[bool]:
    """Store keys under their IDs in one commit; per key True if stored, False if already there."""
    return await core.store.put_keys(qkdl_id, keys) if keys else []


def _txn(relay_id: str, hop_index: int) -> str:
    return f"relay/{relay_id}/{hop_index}"


def _message(resp: Any) -> str:
    return str(resp.get("message", "")) if isinstance(resp, dict) else ""
