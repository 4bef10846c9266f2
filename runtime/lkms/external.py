"""Another vendor's KMS as the next hop for given SAEs (ETSI GS QKD 020 between KMSs of a
trusted node). A node config names it (`etsi020.external_peers`): its 020 URL, the CA that
signs its certificate, the identity (CN or DNS name) that certificate must carry, the SAEs it
serves and optionally the key rate it can take. The LKMS treats it as a key association link of
kind EXT (qkdl_id from the config, or uuid5 of node ID and peer name) that applications can be
backed by, like a PHYS or VIRT link.

Outbound (our SAE is the ETSI 014 master, the slave sits behind the peer): keys are made on
demand. enc_keys draws fresh keys, sends them with `ext_keys` (initiator = our SAE, targets =
theirs; synchronous, or asynchronous with our ack URL when the peer is configured `mode: async`),
and hands them to our SAE only once the peer acknowledged them `relayed`. Keys the peer did not
acknowledge in time are `void`ed there (a void it does not answer for certain is sent again,
backing off: `_void_again`, for as long as the peer may hold the keys: `unconfirmed_ttl_s`; the
store records it, so a restart of this node sends it again too); keys it refused are never handed
out. So our SAE never holds a key the other side will not deliver.

Inbound (their SAE is the initiator, ours the target): each key of an `ext_keys` is stored in the
EXT pool and reserved for (initiator, targets) under its own transaction, so our SAE fetches it
once with ETSI 014 dec_keys (master = the initiator), and a `void` can withdraw it key by key:
`voided` while still held, `failed` once delivered, `key not present` for IDs never received.
A key voided once is answered `voided` again by every later void (by ID or all_confirmation):
the answer a lost void's retry needs, and the truth (it will never be delivered). A repeated
`ext_keys` body is answered `relayed` again without storing anything twice, unless its key was
voided meanwhile (then `failed`: the key is gone).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sdqkd.errors import SdqkdError
from sdqkd.lkms import retry
from sdqkd.lkms.core import Core
from sdqkd.lkms.etsi020 import Kms020, Reply, Spawn, sync_reply
from sdqkd.lkms.etsi020_client import Etsi020Error, PeerKms
from sdqkd.lkms.etsi020_schema import (
    AckContainer,
    Bad,
    ExtKeyContainer,
    VoidContainer,
    acked_ids,
    ext_key_container,
    void_container,
)
from sdqkd.lkms.keys import AppKey
from sdqkd.lkms.registry import EXT, Link, external_link_id
from sdqkd.lkms.store_api import PendingVoid, StoreError

log = logging.getLogger(__name__)

_RECEIVED = 200_000
VIA = "external"  # the voids this module records in the store (PendingVoid.via)


@dataclass
class _Received:
    """A key an external peer sent us: where it went, and whether the peer voided it since."""
    qkdl_id: str
    initiator: str
    targets: tuple[str, ...]
    voided: bool = False


def _by_saes(items: list[PendingVoid]) -> dict[tuple[str, tuple[str, ...]], list[PendingVoid]]:
    out: dict[tuple[str, tuple[str, ...]], list[PendingVoid]] = {}
    for u in items:
        out.setdefault((u.master, u.slaves), []).append(u)
    return out


class PeerRefused(SdqkdError):
    """The external KMS did not take the keys (the message is safe to show an SAE)."""


@dataclass(frozen=True)
class ExternalPeer:
    name: str
    kms: PeerKms
    saes: tuple[str, ...]
    qkdl_id: str
    mode: str = "sync"  # "sync" or "async"
    rate_bps: float | None = None



def external_peer(node_id: str, cfg: dict[str, Any]) -> ExternalPeer:
    """An ExternalPeer from a checked config entry (sdqkd.node.config: etsi020.external_peers)."""
    return ExternalPeer(str(cfg["name"]), PeerKms(str(cfg["url"]).rstrip("/"), str(cfg["identity"]), cfg.get("ca")),
                        tuple(cfg["saes"]), str(cfg.get("qkdl_id") or external_link_id(node_id, str(cfg["name"]))),
                        str(cfg.get("mode", "sync")), cfg.get("rate_bps"))


class ExternalPeers:
    def __init__(self, core: Core, kms: Kms020) -> None:
        self.core, self.kms = core, kms
        self.peers: dict[str, ExternalPeer] = {}
        self._received: OrderedDict[str, _Received] = OrderedDict()
        self._unvoided: dict[str, list[PendingVoid]] = {}  # by peer name: voids to send again
        self._voiders: dict[str, asyncio.Task[None]] = {}  # by peer name: the task sending them
        self._expirers: dict[str, asyncio.Task[None]] = {}  # by peer name not configured since the restart

    # --- registry ------------------------------------------------------------------------
    async def add(self, peer: ExternalPeer) -> None:
        self.peers[peer.name] = peer
        self.core.registry.links[peer.qkdl_id] = Link(peer.qkdl_id, peer.name, peer.kms.url, EXT)
        await self.core.store.ensure_pool(peer.qkdl_id, EXT)
        expirer = self._expirers.pop(peer.name, None)
        if expirer is not None:
            expirer.cancel()
        if self._unvoided.get(peer.name):  # voids recorded before a restart: this peer is back
            self._void_later(peer.name)

    async def resume(self) -> None:
        """At start: the voids the store recorded and no peer answered before this process
        stopped. Each is sent again once its peer is configured (`add`), until it expires; one
        whose peer is not configured again by then leaves the store as it expires."""
        for v in await self.core.store.pending_voids(VIA):
            self._unvoided.setdefault(v.to, []).append(v)
        for name, live in list(self._unvoided.items()):
            await self._drop_expired(name, live, "never delivered")  # expired while this node was down
            if not live:
                del self._unvoided[name]
        if self._unvoided:
            log.info("%d voids from before the restart to send again", sum(map(len, self._unvoided.values())))
        loop = asyncio.get_running_loop()
        for name in self._unvoided:
            self._expirers[name] = loop.create_task(self._expire_unconfigured(name))

    async def _expire_unconfigured(self, name: str) -> None:
        """Voids recorded before the restart for a peer not configured again (yet): each leaves
        the store as it expires (`add` cancels this and sends them instead)."""
        live = self._unvoided.get(name, [])
        while live:
            await asyncio.sleep(max(0.0, min(u.expires for u in live) - time.time()))
            await self._drop_expired(name, live, "never sent: the peer was not configured again after the restart")
        self._unvoided.pop(name, None)
        self._expirers.pop(name, None)

    def peer_by_identity(self, identity: str) -> PeerKms | None:
        for p in self.peers.values():
            if p.kms.identity == identity:
                return p.kms
        return None

    def _by_link(self, qkdl_id: str) -> ExternalPeer | None:
        for p in self.peers.values():
            if p.qkdl_id == qkdl_id:
                return p
        return None

    def _by_kms(self, kms: PeerKms) -> ExternalPeer | None:
        for p in self.peers.values():
            if p.kms == kms:
                return p
        return None

    # --- outbound: our SAE's keys for an SAE behind the peer ----------------------------------
    async def dispense(self, link: Link, master: str, slaves: tuple[str, ...], bits: int, count: int) -> list[AppKey]:
        peer = self._by_link(link.qkdl_id)
        if peer is None:
            raise PeerRefused("external KMS not configured")
        if not set(slaves) <= set(peer.saes):
            raise PeerRefused("slave SAE not served by the external KMS of this link")
        keys = [(str(uuid.uuid4()), secrets.token_bytes(bits // 8)) for _ in range(count)]
        ids = [k for k, _ in keys]
        relayed = await self._push(peer, keys, master, list(slaves))
        if set(ids) - relayed:
            # All or nothing for the SAE: withdraw what the peer did take, hand out nothing.
            if relayed:
                await self._void(peer, [k for k in ids if k in relayed], master, list(slaves))
            raise PeerRefused("external KMS did not take the keys")
        self.core.rate(link.qkdl_id).add(bits * count)
        return [AppKey(k, bits, ((k, bits),), v) for k, v in keys]

    # --- a relay path that leaves here for the peer (relay.py, VIRT link with exit_peer) -----------
    def _exit_peer(self, name: str, targets: tuple[str, ...]) -> ExternalPeer:
        peer = self.peers.get(name)
        if peer is None:
            raise PeerRefused(f"external KMS {name!r} is not configured on this node")
        if not set(targets) <= set(peer.saes):
            raise PeerRefused(f"target SAE not served by the external KMS {name!r}")
        return peer

    async def forward(self, name: str, keys: list[tuple[str, bytes]], initiator: str,
                      targets: tuple[str, ...]) -> set[str]:
        """Hand keys relayed to this gateway on to the peer `name` (plain ext_keys: inside one
        trusted node TLS is the protection 020 intends); the IDs it acknowledged `relayed`.
        Keys it did not acknowledge are voided there (by `_push`)."""
        peer = self._exit_peer(name, targets)
        relayed = await self._push(peer, keys, initiator, list(targets))
        self.core.rate(peer.qkdl_id).add(sum(len(v) * 8 for k, v in keys if k in relayed))
        return relayed

    async def void_at(self, name: str, ids: list[str], initiator: str, targets: tuple[str, ...]
                      ) -> tuple[set[str], set[str]]:
        """Void keys at the peer `name` (synchronously): (voided or never there, already delivered).
        A peer that cannot be asked counts every key as delivered: the source must not assume
        the peer dropped them."""
        peer = self._exit_peer(name, targets)
        try:
            status, resp = await self.kms.client.post(peer.kms, "ext_keys/void",
                                                      void_container(ids, initiator, list(targets), None),
                                                      self.core.limits.rpc_timeout_s)
        except Etsi020Error as e:
            log.error("void of %d keys at %s not delivered: %s", len(ids), peer.name, e)
            return set(), set(ids)
        if status != 200 or not isinstance(resp, dict):
            log.error("void of %d keys at %s refused (%d)", len(ids), peer.name, status)
            return set(), set(ids)
        if resp.get("status") == "success":
            return set(ids), set()
        failed = acked_ids(resp.get("ack_containers"), "failed") & set(ids)
        return set(ids) - failed, failed

    async def _push(self, peer: ExternalPeer, keys: list[tuple[str, bytes]], master: str,
                    slaves: list[str]) -> set[str]:
        ids = [k for k, _ in keys]
        lim = self.core.limits
        if peer.mode != "async":
            body = ext_key_container(keys, master, slaves)
            try:
                status, resp = await self.kms.client.post(peer.kms, "ext_keys", body, lim.rpc_timeout_s)
            except Etsi020Error as e:
                log.warning("ext_keys to %s: %s; voiding", peer.name, e)
                await self._void(peer, ids, master, slaves)
                return set()
            if status != 200 or not isinstance(resp, dict):
                return set()
            if resp.get("status") == "success":
                return set(ids)
            return acked_ids(resp.get("ack_containers"), "relayed") & set(ids)
        futs = self.kms.expect(peer.kms, ids)
        try:
            status, _ = await self.kms.client.post(peer.kms, "ext_keys",
                                                   ext_key_container(keys, master, slaves, self.kms.ack_url),
                                                   lim.rpc_timeout_s)
        except Etsi020Error as e:
            self.kms.forget(ids)
            log.warning("ext_keys to %s: %s; voiding", peer.name, e)
            await self._void(peer, ids, master, slaves)
            return set()
        if status != 202:
            self.kms.forget(ids)
            return set()
        done, _ = await asyncio.wait(futs, timeout=lim.ack_timeout_s)
        relayed = {f.result().key_ids[0] for f in done if f.result().ack_status == "relayed"}
        late = [k for k, f in zip(ids, futs, strict=True) if f not in done]
        if late:
            self.kms.forget(late)
            log.warning("ext_keys to %s: no ack for %d keys in %.1f s; voiding them", peer.name, len(late),
                        lim.ack_timeout_s)
            await self._void(peer, late, master, slaves)
        return relayed

    async def _void(self, peer: ExternalPeer, ids: list[str], master: str, slaves: list[str]) -> None:
        """Withdraw keys at the peer; our SAE never got them. A void the peer did not answer for
        certain (no answer, a time-out, a server error) is sent again in the background until it
        does: else the peer's SAE could fetch keys ours never got (`_void_again`)."""
        if not await self._post_void(peer, ids, master, slaves, logging.WARNING):
            owed = PendingVoid(VIA, peer.name, tuple(ids), master, tuple(slaves),
                               time.time() + self.core.limits.unconfirmed_ttl_s)
            owed = await retry.record_void(self.core.store, owed)  # first, so that a restart does not forget it
            self._unvoided.setdefault(peer.name, []).append(owed)
            self._void_later(peer.name)

    def _void_later(self, name: str) -> None:
        if name not in self._voiders:
            self._voiders[name] = asyncio.get_running_loop().create_task(self._void_again(name))

    async def _post_void(self, peer: ExternalPeer, ids: list[str], master: str, slaves: list[str],
                         level: int) -> bool:
        """One void at the peer: whether it answered for certain (the outcome is logged). `level`:
        of the log line saying it was not delivered or refused."""
        lim = self.core.limits
        futs = self.kms.expect(peer.kms, ids)
        try:
            status, resp = await self.kms.client.post(peer.kms, "ext_keys/void",
                                                      void_container(ids, master, slaves, self.kms.ack_url),
                                                      lim.rpc_timeout_s)
        except Etsi020Error as e:
            self.kms.forget(ids)
            log.log(level, "void of %d keys at %s not delivered: %s", len(ids), peer.name, e)
            return False
        if status not in (200, 202):
            self.kms.forget(ids)
            again = retry.void_again_after(status, resp)  # else refused for good: the keys stay there
            log.log(level if again else logging.ERROR, "void of %d keys at %s refused (%d)", len(ids), peer.name, status)
            return not again
        if status == 200:
            self.kms.forget(ids)
            return True
        done, _ = await asyncio.wait(futs, timeout=lim.ack_timeout_s)
        self.kms.forget([k for k, f in zip(ids, futs, strict=True) if f not in done])
        failed = [f.result().key_ids[0] for f in done if f.result().ack_status == "failed"]
        if failed:
            log.error("external KMS %s delivered %d keys that were then voided: withdrawn too late",
                      peer.name, len(failed))
        return True

    async def _void_again(self, name: str) -> None:
        """One task per peer sends its undelivered voids again, at retry.py's pace, those of the
        same SAEs together in one void, each for as long as reservations live: a peer that is down
        costs one request per pair of SAEs and try, however many keys await their void."""
        try:
            async for _ in retry.backoff(math.inf):
                live = self._unvoided.setdefault(name, [])  # `_void` adds to it meanwhile
                peer = self.peers.get(name)  # as configured now (a later add replaces it)
                if peer is None:
                    log.info("voids of %d keys at %s dropped: the peer is no longer configured",
                             sum(len(u.ids) for u in live), name)
                    await self._done(live, list(live))
                    return
                await self._drop_expired(name, live, "never delivered")
                for (master, slaves), group in _by_saes(list(live)).items():
                    ids = [k for u in group for k in u.ids]
                    if await self._post_void(peer, ids, master, list(slaves), logging.INFO):  # the first try warned
                        log.info("void of %d keys at %s delivered on a later attempt", len(ids), name)
                        await self._done(live, group)
                if not live:
                    return
        finally:
            if not self._unvoided.get(name):
                self._unvoided.pop(name, None)
            self._voiders.pop(name, None)

    async def _drop_expired(self, name: str, live: list[PendingVoid], why: str) -> None:
        """The voids of `live` past their expiry are given up: logged (`why`), then settled."""
        expired = [u for u in live if u.expires <= time.time()]
        if expired:
            log.error("voids of %d keys at %s %s: they may still be usable there", sum(len(u.ids) for u in expired),
                      name, why)
            await self._done(live, expired)

    async def _done(self, live: list[PendingVoid], done: list[PendingVoid]) -> None:
        """These voids are settled: out of `live`, then out of the store."""
        for u in done:
            live.remove(u)
        await retry.settle_voids(self.core.store, done)

    async def close(self) -> None:
        """Stop the voids still being sent again (the store keeps them for the next start)."""
        tasks = [*self._voiders.values(), *self._expirers.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- inbound: keys from the peer's SAE for ours -------------------------------------------
    def _caller_peer(self, caller: PeerKms) -> ExternalPeer:
        p = self._by_kms(caller)
        if p is None:
            # An sdqkd node must protect keys on its hop (sdqkd_hop); plain keys are refused.
            raise Bad("key routing error", "invalid_routing",
                      "plain ext_keys are accepted from configured external KMSs only")
        return p

    async def on_ext_keys(self, caller: PeerKms, req: ExtKeyContainer, spawn: Spawn) -> Reply:
        peer = self._caller_peer(caller)
        reg = self.core.registry
        if req.initiator_sae_id not in peer.saes:
            raise Bad("key routing error", "initiator_sae_id_not_recognized",
                      "initiator_sae_id is not an SAE of the calling KME")
        for t in req.target_sae_ids:
            if not reg.is_local(t):
                raise Bad("key routing error", "target_sae_id_not_recognized",
                          "KME associated with a target SAE ID is not known.")
        relayed: list[str] = []
        used: list[str] = []
        voided: list[str] = []
        for k in req.keys:
            outcome = await self._store_one(peer, k.key_id, k.value, req)
            (relayed if outcome == "relayed" else voided if outcome == "voided" else used).append(k.key_id)
        acks = [AckContainer(tuple(relayed), "relayed", req.initiator_sae_id, t) for t in req.target_sae_ids
                if relayed]
        acks += [AckContainer(tuple(used), "failed", req.initiator_sae_id, t, "key ID already used")
                 for t in req.target_sae_ids if used]
        acks += [AckContainer(tuple(voided), "failed", req.initiator_sae_id, t, "key voided")
                 for t in req.target_sae_ids if voided]
        if relayed:
            self.core.rate(peer.qkdl_id).add(sum(len(k.value) * 8 for k in req.keys if k.key_id in set(relayed)))
        if req.ack_callback_url is None:
            return sync_reply(acks, len(req.keys))
        spawn(self.kms.send_acks(caller, req.ack_callback_url, acks))
        return 202, {}

    async def _store_one(self, peer: ExternalPeer, kid: str, value: bytes, req: ExtKeyContainer) -> str:
        """The outcome: "relayed" (stored now, or by this same transfer before), "voided" (sent
        before and voided since) or "used" (an ID this store holds from elsewhere)."""
        store = self.core.store
        rec = self._received.get(kid)
        if rec is not None:  # a repeated body: the same answer, nothing stored twice
            if (rec.qkdl_id, rec.initiator, rec.targets) != (peer.qkdl_id, req.initiator_sae_id,
                                                              req.target_sae_ids):
                return "used"
            return "voided" if rec.voided else "relayed"
        bits = len(value) * 8
        try:
            await store.put_key(peer.qkdl_id, kid, value, bits)
        except StoreError:
            return "used"  # an ID this store holds already (not from this peer's transfer)
        txn = f"ext020/{kid}"
        res = await store.reserve_in(peer.qkdl_id, txn, [(kid, bits)], bits, req.initiator_sae_id,
                                     list(req.target_sae_ids))
        if not res.ok:
            await store.take_keys(peer.qkdl_id, [kid])
            return "used"
        await store.confirm(txn)  # delivered by the peer: never expires as unconfirmed
        self._received[kid] = _Received(peer.qkdl_id, req.initiator_sae_id, req.target_sae_ids)
        if len(self._received) > _RECEIVED:
            self._received.popitem(last=False)
        return "relayed"

    async def on_void(self, caller: PeerKms, req: VoidContainer, spawn: Spawn) -> Reply:
        peer = self._caller_peer(caller)
        if req.key_ids is None:  # every key shared between the SAEs (all_confirmation was given)
            ids = [k for k, r in self._received.items()
                   if (r.qkdl_id, r.initiator, r.targets) == (peer.qkdl_id, req.initiator_sae_id, req.target_sae_ids)]
        else:
            ids = list(req.key_ids)
        voided: list[str] = []
        failed: list[str] = []
        absent: list[str] = []
        for k in ids:
            rec = self._received.get(k)
            if rec is None or rec.qkdl_id != peer.qkdl_id:
                absent.append(k)
            elif rec.voided:
                voided.append(k)  # voided before (a retried void): the same answer
            elif not await self.core.store.release(f"ext020/{k}"):
                failed.append(k)  # already delivered to an SAE (its transaction ended with that)
            else:
                rec.voided = True
                voided.append(k)
        acks: list[AckContainer] = []
        for status, keys in (("voided", voided), ("failed", failed), ("key not present", absent)):
            if keys:
                acks += [AckContainer(tuple(keys), status, req.initiator_sae_id, t) for t in req.target_sae_ids]
        if req.ack_callback_url is None:
            return sync_reply(acks, len(ids))
        spawn(self.kms.send_acks(caller, req.ack_callback_url, acks))
        return 202, {}
