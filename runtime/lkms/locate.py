"""Where another node's KeySync server listens, found hop by hop along a path (kms.proto
`Describe` with `node_id` and `via`).

A node knows the KeySync addresses of its neighbours only: the far end of each of its fibres
(its interfaces' `classical-endpoint`, given by the node's `directory`) and the peer of each
physical link. A manager that creates a VIRT link without naming the far end's address
(ETSI TeraFlowSDN names only node IDs and the path) leaves the node to find it:

    locate(X, via=[n1, n2, ..., X])
      X is a neighbour            -> its address
      else n1 is a neighbour      -> Describe(node_id=X, via=[n2, ..., X]) at n1, which does the same
      else                        -> LocateError naming the node that is stuck and why

Each step goes one hop further along the path the caller gave, so the question travels at most
`MAX_VIA` hops and never loops. Addresses are not secret; a caller must still be a node of the
network (mutual TLS on KeySync)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import grpc

from sdqkd.errors import SdqkdError
from sdqkd.generated.proto.sdqkd import kms_pb2
from sdqkd.lkms.peers import PeerClients
from sdqkd.lkms.registry import PHYS, Registry

MAX_VIA = 16  # longest path a question may travel (ETSI 015 paths of trusted nodes are short)
Directory = Callable[[], Mapping[str, str]]  # neighbour node ID -> its KeySync address (host:port)


class LocateError(SdqkdError):
    """The address could not be found; the message names the node that did not know it."""


def neighbours(node_id: str, registry: Registry, directory: Directory | None) -> dict[str, str]:
    """Neighbour node ID -> KeySync address: the node's interfaces, then its physical links."""
    out = {k: v for k, v in (directory() if directory is not None else {}).items() if k != node_id and v}
    for link in registry.links.values():
        if link.kind == PHYS and link.peer_kms_address:
            out.setdefault(link.peer_node_id, link.peer_kms_address)
    return out


async def locate(node_id: str, registry: Registry, directory: Directory | None, peers: PeerClients,
                 target: str, via: Sequence[str], timeout: float) -> str:
    """host:port of `target`'s KeySync server, asked along `via` (the path to it, target last)."""
    if target == node_id:
        raise LocateError(f"node {node_id} was asked where it listens itself")
    near = neighbours(node_id, registry, directory)
    if target in near:
        return near[target]
    rest = list(via)
    if rest and rest[0] == node_id:
        rest = rest[1:]
    if not rest:
        raise LocateError(f"node {node_id} has no fibre to node {target} and no path to ask along")
    if len(rest) > MAX_VIA:
        raise LocateError(f"the path to node {target} is longer than {MAX_VIA} hops")
    ask = near.get(rest[0])
    if ask is None:
        raise LocateError(f"node {node_id} has no fibre to node {rest[0]}, the next node towards {target}")
    try:
        r = await peers.stub(ask).Describe(kms_pb2.DescribeRequest(node_id=target, via=rest[1:]),
                                           timeout=timeout * len(rest))
    except grpc.aio.AioRpcError as e:
        raise LocateError(f"node {rest[0]} (at {ask}) did not answer where node {target} listens: "
                          f"{e.code().name}") from None
    if not r.kms_address:
        raise LocateError(r.reason or f"node {rest[0]} does not know where node {target} listens")
    return str(r.kms_address)
