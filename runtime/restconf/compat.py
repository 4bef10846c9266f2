"""The compatibility dialect: what ETSI TeraFlowSDN's QKD driver (QKDDriver2 + Tools2) and the
FreeCONF-style nodes it was written against exchange, served on requests that do not ask for
application/yang-data+json (TFS sends `Accept: */*` and `Content-Type: application/json`).

Reads: a container or list entry comes back unwrapped, its content only; a leaf or a list as
`{name: value}`; no module names anywhere (gNMI JSON encoding). So a GET of `…/qkd_node/`
answers `{"qkdn_id": …, "qkd_interfaces": …}`: TFS reads `qkdn_id` at the top level.

Writes: `null` members mean "not given" and are dropped; a body wrapped in the target's own
name (`POST …/qkd_links/ {"qkd_links": {"qkd_link": [...]}}`) is unwrapped; POST merges
(FreeCONF's create), PUT replaces. Link entries are completed before the transaction runs:
TFS names only the two nodes (and maybe interfaces), with one qkdl_id per end of one fibre.
A PHYS link is matched to the interface of this node whose fibre (`sdqkd-interface`, from the
node config) leads to the remote node; both ends derive the same key association ID from
the fibre's two ends and the same roles (the lower node ID transmits), so the two halves,
posted separately with different qkdl_ids, pair up and produce key. What the node derived is
written to the link's `derived-from` state leaf; what cannot be honoured is refused whole
with a message naming the link and the reason."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .compat_virt import RelayPart, known_part, relay_part
from .compat_virt import local_member as _local
from .errors import RestconfError

T = "etsi-qkd-node-types:"
EXT = "sdqkd-node-ext:"
Locate = Callable[[str, Sequence[str]], Awaitable[str]]  # node ID, path to it -> its KeySync host:port
FIBRE_NAMESPACE = uuid.UUID("3e0f5c8a-63a4-4d2b-9a59-3d1b1a3e7c15")


def wants_compat(accept: str, content_type: str) -> bool:
    """A request that names no YANG media type speaks the compatibility dialect."""
    return "yang-data" not in accept and "yang-data" not in content_type and "yang-patch" not in content_type


def drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value if v is not None]
    return value


def unwrap(body: Any, name: str) -> Any:
    """`{name: x}` (module prefix allowed) -> x; anything else is already the content."""
    if isinstance(body, dict) and len(body) == 1:
        (member, inner), = body.items()
        if member.rpartition(":")[2] == name:
            return inner
    return body


def fibre_association(a: tuple[str, int], b: tuple[str, int]) -> str:
    """The key association ID of the fibre between interface a and interface b (order-free)."""
    ends = sorted(f"{n}/{i}" for n, i in (a, b))
    return str(uuid.uuid5(FIBRE_NAMESPACE, "fibre|" + "|".join(ends)))


class LinkCompleter:
    """Completes TFS link entries from this node's interfaces (the committed tree)."""

    def __init__(self, node_id: str, node: dict[str, Any], locate: Locate | None = None):
        self.node_id = node_id
        self.locate = locate  # where another node's KeySync listens (VIRT links' far ends)
        ifaces = node.get("qkd_interfaces", {}).get("qkd_interface", {})
        # qkdi_id -> its fibre (sdqkd-interface), for interfaces whose far end is known
        self.fibres: dict[int, dict[str, Any]] = {
            int(e["qkdi_id"]): e["sdqkd-interface"] for e in ifaces.values()
            if e.get("sdqkd-interface", {}).get("peer-node-id")}
        self.links: dict[str, dict[str, Any]] = {k[0]: v for k, v in
                                                 node.get("qkd_links", {}).get("qkd_link", {}).items()}

    async def complete(self, entry: Any, where: str) -> tuple[dict[str, Any], str | None]:
        """(entry to commit, derived-from text or None when nothing was derived)."""
        if not isinstance(entry, dict):
            raise RestconfError("invalid-value", f"{where}: a link entry is a JSON object", path=where)
        lid = _local(entry, "qkdl_id")
        where = f"{where}[qkdl_id={lid}]"
        kind = str(_local(entry, "qkdl_type") or f"{T}PHYS").rpartition(":")[2]
        local = _local(entry, "qkdl_local") or {}
        remote = _local(entry, "qkdl_remote") or {}
        if not isinstance(local, dict) or not isinstance(remote, dict):
            raise RestconfError("invalid-value", f"{where}: qkdl_local and qkdl_remote are JSON objects", path=where)
        if kind == "VIRT" and _local(entry, "sdqkd-link") is None:
            return await self._virt(entry, local, remote, where)
        if local.get("qkdn_id") not in (None, self.node_id):
            raise RestconfError("invalid-value", f"{where}: qkdl_local/qkdn_id {local.get('qkdn_id')} is not this "
                                f"node ({self.node_id})", path=where)
        if kind != "PHYS" or _local(entry, "sdqkd-link") is not None:
            return entry, None  # complete links go to the model as they are
        peer = remote.get("qkdn_id")
        if not peer:
            raise RestconfError("invalid-value", f"{where}: a PHYS link needs qkdl_remote/qkdn_id", path=where)
        iface = self._interface(local.get("qkdi_id"), peer, where)
        fibre = self.fibres[iface]
        peer_if = int(fibre.get("peer-qkdi-id", 0))
        want_peer_if = _int(remote.get("qkdi_id"))
        if want_peer_if and peer_if and want_peer_if != peer_if:
            raise RestconfError("invalid-value", f"{where}: qkdl_remote/qkdi_id {want_peer_if}: the fibre of interface "
                                f"{iface} ends at interface {peer_if} of {peer}", path=where)
        endpoint = fibre.get("classical-endpoint")
        if not endpoint:
            raise RestconfError("invalid-value", f"{where}: interface {iface} has no classical-endpoint for its peer "
                                f"{peer}; set sdqkd-interface/classical-endpoint", path=where)
        assoc = fibre_association((self.node_id, iface), (peer, peer_if))
        for other, link in self.links.items():
            if other != lid and self._on_fibre(link, assoc, iface, peer):
                raise RestconfError("invalid-value", f"{where}: the fibre of interface {iface} already carries "
                                    f"link {other}", path=where)
        role = "TRANSMITTER" if (self.node_id, iface) < (peer, peer_if) else "RECEIVER"
        channel = fibre.get("channel-endpoint")
        if role == "TRANSMITTER" and not channel:
            raise RestconfError("invalid-value", f"{where}: this end transmits, but interface {iface} has no "
                                f"channel-endpoint for its peer {peer}; set sdqkd-interface/channel-endpoint",
                                path=where)
        ext: dict[str, Any] = {"classical-endpoint": endpoint, "key-association-id": assoc,
                               "device-profile": fibre.get("device-profile", "commercial")}
        if channel:
            ext["channel-endpoint"] = channel
        for k in ("fibre-length-km", "fibre-loss-db"):
            if fibre.get(k) is not None:
                ext[k] = fibre[k]
        derived_members = ("qkdl_type", "qkdl_local", "qkdl_remote", "phys_qkd_role", "sdqkd-link")
        out = {k: v for k, v in entry.items() if k.rpartition(":")[2] not in derived_members}
        out.update({
            "qkdl_type": f"{T}PHYS", "qkdl_local": {"qkdn_id": self.node_id, "qkdi_id": iface},
            "qkdl_remote": {"qkdn_id": peer, "qkdi_id": peer_if}, "phys_qkd_role": f"{T}{role}",
            f"{EXT}sdqkd-link": ext,
        })
        if fibre.get("fibre-loss-db") is not None and _local(entry, "phys_channel_att") is None:
            out["phys_channel_att"] = fibre["fibre-loss-db"]
        derived = (f"compat request: interface {iface} faces node {peer} interface {peer_if}; "
                   f"key association {assoc}; role {role} (the lower node ID transmits)")
        return out, derived

    async def _virt(self, entry: dict[str, Any], local: dict[str, Any], remote: dict[str, Any], where: str
                    ) -> tuple[dict[str, Any], str]:
        """TFS's one-way VIRT link -> this node's part of the one relay path between its two
        ends (compat_virt.py), its far end's KeySync address found (interface, else asked
        along the path)."""
        lid = str(_local(entry, "qkdl_id"))
        part = relay_part(self.node_id, local.get("qkdn_id"), _local(entry, "virt_prev_hop"),
                          _local(entry, "virt_next_hop"), remote.get("qkdn_id"), where)
        prev = part.prev_hop
        self._check_hops(prev, part.next_hops, where)
        nxt, far, endpoint, found = self._with_known(lid, part, where)
        if nxt is None:
            raise RestconfError("invalid-value", f"{where}: this node cannot tell the path from node "
                                f"{_local(entry, 'virt_prev_hop')} on to "
                                f"the link's source {local.get('qkdn_id')} (it relays towards it); post the "
                                "other direction's link first (TFS sends it to this node too)", path=where)
        if not endpoint:
            endpoint, found = await self._far_endpoint(far, part, where)
        out = {k: v for k, v in entry.items() if k.rpartition(":")[2] not in
               ("qkdl_local", "qkdl_remote", "virt_prev_hop", "virt_next_hop", "sdqkd-link")}
        out.update({"qkdl_type": f"{T}VIRT", "qkdl_local": {"qkdn_id": self.node_id},
                    "qkdl_remote": {"qkdn_id": far},
                    f"{EXT}sdqkd-link": {"classical-endpoint": endpoint, "key-association-id": part.association}})
        if prev is not None:
            out["virt_prev_hop"] = prev
        if nxt:
            out["virt_next_hop"] = list(nxt)
        self.links[lid] = out  # a later entry of the same request sees this one
        role = "relay source" if prev is None else ("far end" if not nxt else "trusted node")
        return out, (f"compat VIRT request: key association {part.association} of the virtual link between "
                     f"{' and '.join(part.ends)}, relayed from {part.ends[0]} (the lower node ID); this node is "
                     f"its {role} (previous hop {prev or '-'}, next {list(nxt) or '-'}); far end {far} at "
                     f"{endpoint} ({found})")

    def _check_hops(self, prev: str | None, nxt: tuple[str, ...] | None, where: str) -> None:
        """Each relay hop at this node crosses one of its fibres."""
        facing = {f.get("peer-node-id") for f in self.fibres.values()}
        for hop in (prev, nxt[0] if nxt else None):
            if hop is not None and hop not in facing:
                raise RestconfError("invalid-value", f"{where}: the path runs from this node to node {hop}, which no "
                                    "interface of this node faces (sdqkd-interface/peer-node-id)", path=where)

    def _with_known(self, lid: str, part: RelayPart, where: str
                    ) -> tuple[tuple[str, ...] | None, str, str, str]:
        """(next hops, far end, its endpoint, where they came from) of `part`, checked against
        (and, where this entry cannot tell them, taken from) the node's other links of the same
        virtual link."""
        nxt, far, endpoint, found = part.next_hops, part.far, "", ""
        for other, link in self.links.items():
            known = known_part(link) if other != lid else None
            if known is None or known[0] != part.association:
                continue
            k_prev, k_next, k_far, k_endpoint = known[1:]
            if nxt is None and k_prev == part.prev_hop:  # the other direction's link told the rest
                nxt, far, endpoint, found = k_next, k_far, k_endpoint, f"the rest of the path from link {other}"
            if (k_prev, k_next, k_far) != (part.prev_hop, nxt, far):
                raise RestconfError("invalid-value", f"{where}: link {other} joins the same two ends "
                                    f"({' and '.join(part.ends)}) by another path (previous hop {k_prev}, next "
                                    f"{list(k_next)}): one virtual link per pair of ends", path=where)
        return nxt, far, endpoint, found

    async def _far_endpoint(self, far: str, part: RelayPart, where: str) -> tuple[str, str]:
        endpoint = next((f.get("classical-endpoint") for f in self.fibres.values()
                         if f.get("peer-node-id") == far and f.get("classical-endpoint")), None)
        if endpoint:
            return str(endpoint), "the interface facing it"
        if self.locate is None:
            raise RestconfError("invalid-value", f"{where}: the key-relay endpoint of node {far} is unknown and this "
                                "node cannot ask for it", path=where)
        try:
            return await self.locate(far, part.ask_via), f"asked along {list(part.ask_via)}"
        except RestconfError as e:
            raise RestconfError("invalid-value", f"{where}: the key-relay endpoint of node {far} is unknown: "
                                f"{e.message}", path=where) from None

    def _on_fibre(self, link: dict[str, Any], assoc: str, iface: int, peer: str) -> bool:
        """Does this existing link run on the fibre of `iface` (by its key association, or as
        a PHYS link to the same peer over that interface, or over the only one facing it)?"""
        ext = link.get("sdqkd-link", {})
        if ext.get("key-association-id") == assoc or link.get("qkdl_id") == assoc:
            return True
        if ext.get("key-association-id") or not str(link.get("qkdl_type", "PHYS")).endswith("PHYS"):
            return False
        if link.get("qkdl_remote", {}).get("qkdn_id") != peer:
            return False
        local_if = link.get("qkdl_local", {}).get("qkdi_id")
        facing = [i for i, f in self.fibres.items() if f.get("peer-node-id") == peer]
        return local_if == iface or (local_if is None and facing == [iface])

    def _interface(self, given: Any, peer: str, where: str) -> int:
        qkdi = _int(given)
        if qkdi and qkdi in self.fibres:
            if self.fibres[qkdi].get("peer-node-id") != peer:
                raise RestconfError("invalid-value", f"{where}: interface {qkdi} faces node "
                                    f"{self.fibres[qkdi].get('peer-node-id')}, not {peer}", path=where)
            return qkdi
        facing = sorted(i for i, f in self.fibres.items() if f.get("peer-node-id") == peer)
        if len(facing) == 1:
            return facing[0]
        if not facing:
            raise RestconfError("invalid-value", f"{where}: no interface of this node has a fibre to node {peer} "
                                "(sdqkd-interface/peer-node-id)", path=where)
        raise RestconfError("invalid-value", f"{where}: interfaces {facing} all face node {peer}; name one in "
                            "qkdl_local/qkdi_id", path=where)


def _int(v: Any) -> int:
    try:
        return int(v) if v not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


async def complete_links(completer: LinkCompleter, spath: str, value: Any, where: str
                         ) -> tuple[Any, dict[str, str]]:
    """Complete every link entry of a compat write at `spath`; returns the value and
    {qkdl_id: derived-from} for the links that were completed."""
    derived: dict[str, str] = {}

    async def entries(lst: Any, at: str) -> Any:
        if not isinstance(lst, list):
            return lst
        out = []
        for e in lst:
            done, why = await completer.complete(e, at)
            if why is not None:
                derived[str(_local(done, "qkdl_id"))] = why
            out.append(done)
        return out

    link_path = "/qkd_node/qkd_links/qkd_link"
    if spath == link_path:
        done, why = await completer.complete(value, where)
        if why is not None:
            derived[str(_local(done, "qkdl_id"))] = why
        return done, derived
    if spath == "/qkd_node/qkd_links" and isinstance(value, dict):
        return {k: (await entries(v, f"{where}/qkd_link") if k.rpartition(":")[2] == "qkd_link" else v)
                for k, v in value.items()}, derived
    if spath == "/qkd_node" and isinstance(value, dict):
        links = _local(value, "qkd_links")
        if isinstance(links, dict):
            done, derived = await complete_links(completer, "/qkd_node/qkd_links", links, f"{where}/qkd_links")
            value = {k: (done if k.rpartition(":")[2] == "qkd_links" else v) for k, v in value.items()}
        return value, derived
    return value, derived
