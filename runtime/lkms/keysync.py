"""KeySync server: what a peer LKMS may ask of this one (kms.proto), over mutual TLS: key-ID
reservation (Reserve/Confirm/Release) and ETSI 004 key-stream agreement, which ETSI GS QKD 020
does not cover. The key relay moved to ETSI 020 (relay.py); the `Relay` RPC of kms.proto is no
longer served (UNIMPLEMENTED); `Describe` tells a peer where our 020 server listens and, asked
for another node, where that node's KeySync listens (locate.py: known or asked one hop further).

Every call names a link; with TLS the caller's certificate CN must be the node at the other end
of that link (a node can only touch the pools it shares with us). Refusals carry a reason,
never key material.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import grpc

from sdqkd.generated.proto.sdqkd import kms_pb2, kms_pb2_grpc
from sdqkd.lkms.core import Core
from sdqkd.lkms.locate import LocateError
from sdqkd.lkms.registry import Link
from sdqkd.lkms.syncmsg import metadata_bits, refusal
from sdqkd.lkms.tlsctx import grpc_caller_cn

if TYPE_CHECKING:
    from sdqkd.lkms.reconcile import Reconciler
    from sdqkd.lkms.streams import StreamManager

log = logging.getLogger(__name__)


class KeySyncService(kms_pb2_grpc.KeySyncServicer):
    def __init__(self, core: Core, streams: StreamManager, reconciler: Reconciler) -> None:
        self.core, self.streams, self.reconciler = core, streams, reconciler

    def _caller(self, context: grpc.aio.ServicerContext) -> str | None:
        return grpc_caller_cn(context) if self.core.tls else None

    def _peer_ok(self, context: grpc.aio.ServicerContext, link: Link | None) -> bool:
        return link is not None and (not self.core.tls or self._caller(context) == link.peer_node_id)

    async def Reserve(self, request: kms_pb2.ReserveRequest, context: grpc.aio.ServicerContext
                      ) -> kms_pb2.ReserveResponse:
        core = self.core
        link = core.registry.links.get(request.qkdl_id)
        if link is None or not link.is_endpoint:
            return kms_pb2.ReserveResponse(ok=False, reason="unknown link")
        if not self._peer_ok(context, link):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller is not the peer of this link")
        slaves = list(request.slave_sae_ids)
        app = core.registry.app_for_group(request.master_sae_id, slaves) if slaves else None
        if app is None or link.qkdl_id not in app.backing_qkdl_ids:
            return kms_pb2.ReserveResponse(ok=False, reason="the SAE pair is not registered for this link at the "
                                                  "slave SAE's node (disconnected there, or not provisioned yet)")
        if not all(core.registry.is_local(s) for s in slaves):
            return kms_pb2.ReserveResponse(ok=False, reason="the slave SAE is not attached to the link's far node")
        parts = [(k.key_id, k.size) for k in request.keys]
        bits = metadata_bits(context.invocation_metadata())
        if bits is None:
            sizes = {b for _, b in parts}
            if len(sizes) != 1:
                return kms_pb2.ReserveResponse(ok=False, reason="key size missing")
            bits = sizes.pop()
        res = await core.store.reserve_in(link.qkdl_id, request.txn_id, parts, bits,
                                          request.master_sae_id, slaves)
        if not res.ok and res.unknown:
            # asked afresh after the wait (a refusal changed nothing): keys that arrived meanwhile
            # must not be named unknown, or the master would erase them
            await core.keys_arrive(link.qkdl_id, res.unknown)
            res = await core.store.reserve_in(link.qkdl_id, request.txn_id, parts, bits,
                                              request.master_sae_id, slaves)
        if not res.ok:
            reason = refusal(res.unknown, res.busy, res.reason) if (res.unknown or res.busy) else res.reason
            return kms_pb2.ReserveResponse(ok=False, reason=reason)
        app.last_used = time.monotonic()  # in use at the other end: not idle here (node/apps.py)
        log.debug("reserved txn %s: %d link keys for %s", request.txn_id, len(parts), request.master_sae_id)
        return kms_pb2.ReserveResponse(ok=True)

    async def _txn_ok(self, request: kms_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> bool:
        if not self.core.tls:
            return True
        q = await self.core.store.txn_link(request.txn_id)
        if q is None:  # nothing stored for it: only a tombstone will be written
            caller = self._caller(context)
            return any(link.peer_node_id == caller for link in self.core.registry.links.values())
        return self._peer_ok(context, self.core.registry.links.get(q))

    async def Confirm(self, request: kms_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> kms_pb2.TxnResponse:
        if not await self._txn_ok(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller is not the peer of this link")
        await self.core.store.confirm(request.txn_id)
        return kms_pb2.TxnResponse(ok=True)

    async def Release(self, request: kms_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> kms_pb2.TxnResponse:
        if not await self._txn_ok(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller is not the peer of this link")
        n = await self.core.store.release(request.txn_id)
        log.info("released txn %s (%d keys erased)", request.txn_id, n)
        return kms_pb2.TxnResponse(ok=True)

    async def OpenStream(self, request: kms_pb2.StreamRequest, context: grpc.aio.ServicerContext
                         ) -> kms_pb2.TxnResponse:
        link = self.core.registry.links.get(request.qkdl_id)
        if not self._peer_ok(context, link):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller is not the peer of this link")
        assert link is not None
        return self.streams.peer_open(request, link)

    async def AssignStream(self, request: kms_pb2.StreamAssign, context: grpc.aio.ServicerContext
                           ) -> kms_pb2.TxnResponse:
        s = self.streams.streams.get(request.key_stream_id)
        link = self.core.registry.links.get(s.qkdl_id) if s else None
        if s is None or not self._peer_ok(context, link):
            return kms_pb2.TxnResponse(ok=False, reason="unknown key stream")
        return await self.streams.peer_assign(s, request)

    async def CloseStream(self, request: kms_pb2.StreamRequest, context: grpc.aio.ServicerContext
                          ) -> kms_pb2.TxnResponse:
        s = self.streams.streams.get(request.key_stream_id)
        link = self.core.registry.links.get(s.qkdl_id) if s else None
        if s is None or not self._peer_ok(context, link):
            return kms_pb2.TxnResponse(ok=True)
        self.streams.peer_close(s)
        return kms_pb2.TxnResponse(ok=True)

    async def Describe(self, request: kms_pb2.DescribeRequest, context: grpc.aio.ServicerContext
                       ) -> kms_pb2.DescribeResponse:
        resp = kms_pb2.DescribeResponse(etsi020_address=self.core.etsi020_address)
        if request.node_id:  # where another node listens (locate.py): ours, or asked further on
            try:
                resp.kms_address = await self.core.locate(request.node_id, list(request.via))
            except LocateError as e:
                resp.reason = str(e)
        return resp

    async def Reconcile(self, request: kms_pb2.ReconcileRequest, context: grpc.aio.ServicerContext
                        ) -> kms_pb2.ReconcileResponse:
        link = self.core.registry.links.get(request.qkdl_id)
        if link is None or not link.is_endpoint or request.qkdl_id not in self.core.store.pools():
            return kms_pb2.ReconcileResponse(ok=False, reason="unknown link")
        if not self._peer_ok(context, link):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller is not the peer of this link")
        unknown = await self.reconciler.answer(link.qkdl_id, list(request.key_ids), request.reverse)
        return kms_pb2.ReconcileResponse(ok=True, unknown=unknown)
