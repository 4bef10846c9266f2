"""ETSI TeraFlowSDN's VIRT links, read as one key-relay path (the compatibility dialect).

What TFS's QKD service handler sends for a service over the path s = n0, n1, ..., nk = d
(k >= 2): two one-way links with their own qkdl_ids, `s -> d` to n0 .. n(k-1) and `d -> s` to
n1 .. nk. Each node gets `qkdl_local` = the link's source, `qkdl_remote` = its destination,
`virt_prev_hop` = the node before it (none at the source) and `virt_next_hop` = the rest of
the path, destination last. So a link's destination never hears of it, and no node is told
where the far end listens.

sdqkd relays along a virtual link in one direction, from a source that draws the keys to a far
end, every trusted node in between holding the link too (runtime/lkms/relay.py); both ends then
share one key pool, used in both directions. The two TFS links of a service are therefore read
as one virtual link between the two ends:

- its key association ID (`sdqkd-link/key-association-id`, the LKMS link and pool) is derived
  from the two end node IDs alone, order-free, so every node of the path, told either
  direction, names it alike (one virtual link per pair of end nodes);
- keys are relayed from the end with the lower node ID (as the lower node ID transmits on a
  fibre); each node rewrites what it was told into its part of that direction:

      told (at node x)                 relay from s (s < d)        relay from d (d < s)
      source: prev none, next N        source: next N              far end: prev N[0]
      between: prev p, next N          prev p, next N              prev N[0], next p .. s

  `p .. s`, the path from p back to the source, is known when p is the source (every path of
  three nodes); otherwise the node takes it from the other direction's link, which TFS sends it
  too, and refuses the link until it has that one;
- the far end's KeySync address comes from the interface facing it, else it is asked along the
  path (kms.proto Describe, runtime/lkms/locate.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .errors import RestconfError

VIRT_NAMESPACE = uuid.UUID("b3c1f0a4-2f57-4e0b-8d1c-6a9e4f2d7b18")


def virtual_association(a: str, b: str) -> str:
    """The key association ID of the virtual link between end nodes a and b (order-free)."""
    return str(uuid.uuid5(VIRT_NAMESPACE, "virt|" + "|".join(sorted((a, b)))))


@dataclass(frozen=True)
class RelayPart:
    """This node's part of a virtual link, in the relay direction."""

    association: str
    ends: tuple[str, str]  # relay source (the lower node ID) and far end
    far: str  # the other end of the link as this node sees it (qkdl_remote)
    prev_hop: str | None
    next_hops: tuple[str, ...] | None  # None: not known from this entry (taken from the other)
    ask_via: tuple[str, ...]  # the path from this node to `far`, far last: where to ask its address


def local_member(d: dict[str, Any], name: str) -> Any:
    """The member `name` of a JSON object, with or without its module prefix."""
    for k, v in d.items():
        if k.rpartition(":")[2] == name:
            return v
    return None


def _refuse(where: str, message: str) -> RestconfError:
    return RestconfError("invalid-value", f"{where}: {message}", path=where)


def _node_ids(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(h, str) and h for h in value):
        raise _refuse(where, "a VIRT link needs virt_next_hop: the rest of the path as node IDs, far end last")
    if len(set(value)) != len(value):
        raise _refuse(where, f"virt_next_hop {value} visits a node twice")
    return list(value)


def relay_part(node_id: str, source: Any, prev: Any, next_hops: Any, remote: Any, where: str) -> RelayPart:
    """This node's part of the virtual link TFS described to it (see the module docstring)."""
    hops = _node_ids(next_hops, where)
    if prev is not None and not isinstance(prev, str):
        raise _refuse(where, "virt_prev_hop is a node ID")
    src = source if isinstance(source, str) and source else (node_id if prev is None else None)
    if src is None:
        raise _refuse(where, "qkdl_local/qkdn_id (the source of the VIRT link) is needed on a trusted node")
    dst = hops[-1]
    if remote not in (None, dst):
        raise _refuse(where, f"qkdl_remote/qkdn_id {remote} is not the far end of virt_next_hop ({dst})")
    if node_id in hops or src in hops or prev in hops:
        raise _refuse(where, f"virt_next_hop {hops} runs through this node, the source or the previous hop")
    if prev is None and src != node_id:
        raise _refuse(where, f"qkdl_local/qkdn_id {src}: without virt_prev_hop this node is the source")
    if prev is not None and node_id in (prev, src):
        raise _refuse(where, "virt_prev_hop or qkdl_local names this node itself on a trusted node")
    assoc = virtual_association(src, dst)
    ends = (min(src, dst), max(src, dst))
    if src == ends[0]:  # told in the relay direction: as it is
        return RelayPart(assoc, ends, dst, prev, tuple(hops), tuple(hops))
    if prev is None:  # this node is the source TFS named, the far end of the relay
        return RelayPart(assoc, ends, dst, hops[0], (), tuple(hops))
    if prev == src:
        return RelayPart(assoc, ends, src, hops[0], (src,), (src,))
    return RelayPart(assoc, ends, src, hops[0], None, ())


def known_part(link: dict[str, Any]) -> tuple[str, str | None, tuple[str, ...], str, str] | None:
    """(association, prev hop, next hops, far end, far end's endpoint) of a link entry the node
    holds (the tree's or a completed one), None when it is no derived virtual link."""
    _local = local_member
    ext = _local(link, "sdqkd-link") or {}
    assoc = _local(ext, "key-association-id")
    if not assoc or not str(_local(link, "qkdl_type") or "").endswith("VIRT"):
        return None
    remote = _local(link, "qkdl_remote") or {}
    return (str(assoc), _local(link, "virt_prev_hop"), tuple(_local(link, "virt_next_hop") or ()),
            str(_local(remote, "qkdn_id")), str(_local(ext, "classical-endpoint") or ""))
