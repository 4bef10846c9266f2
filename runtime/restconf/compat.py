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
from typing import Any

from .errors import RestconfError

T = "etsi-qkd-node-types:"
EXT = "sdqkd-node-ext:"
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


def _local(d: dict[str, Any], name: str) -> Any:
    for k, v in d.items():
        if k.rpartition(":")[2] == name:
            return v
    return None


def fibre_association(a: tuple[str, int], b: tuple[str, int]) -> str:
    """The key association ID of the fibre between interface a and interface b (order-free)."""
    ends = sorted(f"{n}/{i}" for n, i in (a, b))
    return str(uuid.uuid5(FIBRE_NAMESPACE, "fibre|" + "|".join(ends)))


class LinkCompleter:
    """Completes TFS link entries from this node's interfaces (the committed tree)."""

    def __init__(self, node_id: str, node: dict[str, Any]):
        self.node_id = node_id
        ifaces = node.get("qkd_interfaces", {}).get("qkd_interface", {})
        # qkdi_id -> its fibre (sdqkd-interface), for interfaces whose far end is known
        self.fibres: dict[int, dict[str, Any]] = {
            int(e["qkdi_id"]): e["sdqkd-interface"] for e in ifaces.values()
            if e.get("sdqkd-interface", {}).get("peer-node-id")}
        self.links: dict[str, dict[str, Any]] = {k[0]: v for k, v in
                                                 node.get("qkd_links", {}).get("qkd_link", {}).items()}

    def complete(self, entry: Any, where: str) -> tuple[dict[str, Any], str | None]:
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
            return self._virt(entry, local, where)
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

    def _virt(self, entry: dict[str, Any], local: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
        """TFS gives every node of a path the service's source as qkdl_local and the rest of
        the path, far end last, as virt_next_hop: this node becomes local, the far end remote."""
        hops = _local(entry, "virt_next_hop") or []
        if not isinstance(hops, list) or not hops:
            raise RestconfError("invalid-value", f"{where}: a VIRT link needs virt_next_hop (the rest of the path, "
                                "far end last)", path=where)
        far = str(hops[-1])
        if far == self.node_id:
            raise RestconfError("invalid-value", f"{where}: virt_next_hop ends at this node", path=where)
        out = {k: v for k, v in entry.items() if k.rpartition(":")[2] not in ("qkdl_local", "qkdl_remote")}
        out["qkdl_local"] = {"qkdn_id": self.node_id}
        out["qkdl_remote"] = {"qkdn_id": far}
        endpoint = next((f.get("classical-endpoint") for f in self.fibres.values()
                         if f.get("peer-node-id") == far and f.get("classical-endpoint")), None)
        note = ""
        if local.get("qkdn_id") not in (None, self.node_id):
            note = f"qkdl_local {local.get('qkdn_id')} (the service's source) read as this node; "
        if endpoint:
            out[f"{EXT}sdqkd-link"] = {"classical-endpoint": endpoint}
            state = f"far end {far} is a fibre peer: relaying through {endpoint}"
        else:
            state = (f"far end {far} is not a fibre peer of this node: its key-relay endpoint is unknown, so the "
                     "link waits for sdqkd-link/classical-endpoint")
        return out, f"compat VIRT request: {note}remote = far end {far}; {state}"

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


def complete_links(completer: LinkCompleter, spath: str, value: Any, where: str
                   ) -> tuple[Any, dict[str, str]]:
    """Complete every link entry of a compat write at `spath`; returns the value and
    {qkdl_id: derived-from} for the links that were completed."""
    derived: dict[str, str] = {}

    def entries(lst: Any, at: str) -> Any:
        if not isinstance(lst, list):
            return lst
        out = []
        for e in lst:
            done, why = completer.complete(e, at)
            if why is not None:
                derived[str(_local(done, "qkdl_id"))] = why
            out.append(done)
        return out

    link_path = "/qkd_node/qkd_links/qkd_link"
    if spath == link_path:
        done, why = completer.complete(value, where)
        if why is not None:
            derived[str(_local(done, "qkdl_id"))] = why
        return done, derived
    if spath == "/qkd_node/qkd_links" and isinstance(value, dict):
        return {k: (entries(v, f"{where}/qkd_link") if k.rpartition(":")[2] == "qkd_link" else v)
                for k, v in value.items()}, derived
    if spath == "/qkd_node" and isinstance(value, dict):
        links = _local(value, "qkd_links")
        if isinstance(links, dict):
            done, derived = complete_links(completer, "/qkd_node/qkd_links", links, f"{where}/qkd_links")
            value = {k: (done if k.rpartition(":")[2] == "qkd_links" else v) for k, v in value.items()}
        return value, derived
    return value, derived
