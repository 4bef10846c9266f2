"""What the agent told the LKMS: key association links (physical and virtual), registered
applications (SAE pairs and the links that back them) and which SAEs are local."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PHYS, VIRT = "PHYS", "VIRT"
EXT = "EXT"  # another vendor's KMS reached with ETSI 020 (external.py)
_EXT_NS = uuid.UUID("5f3c4d1e-2b7a-4c60-9d0e-7a1b2c3d4e5f")


def external_link_id(node_id: str, name: str) -> str:
    """The qkdl_id of the EXT link of gateway `node_id` to external KMS `name` (unless its config
    gives one): the gateway's LKMS and the controller derive the same."""
    return str(uuid.uuid5(_EXT_NS, f"sdqkd-ext/{node_id}/{name}"))
# IDs derived from names (the topology's namespace), so the node that registers an application
# on a first request and the controller that provisions it name it alike.
NAMESPACE = uuid.UUID("5d0a2b38-7f0e-4c59-9d0e-2f3b8c1e9a11")


def app_id_for(master: str, slaves: Sequence[str]) -> str:
    """The qkd_app ID of the application of SAE `master` with `slaves` (order of slaves kept)."""
    return str(uuid.uuid5(NAMESPACE, f"app:{master}|{','.join(slaves)}"))


def sae_uri(sae: str) -> str:
    """An SAE ID as a qkd_app's server_app_id / client_app_id (ETSI 015 wants an inet:uri)."""
    return f"urn:sdqkd:sae:{sae}"


def sae_of(uri: object) -> str:
    """The SAE ID of `urn:sdqkd:sae:<id>` (or of a bare ID)."""
    return str(uri).rsplit(":", 1)[-1]


def local_pool_id(node_id: str) -> str:
    """The key pool of SAE pairs whose both SAEs sit on this node (no link involved)."""
    return str(uuid.uuid5(NAMESPACE, f"local-pool:{node_id}"))


@dataclass
class Link:
    """A key association link as this node sees it.

    PHYS: `peer_node_id` is the node at the other end, `peer_kms_address` its KeySync address.
    VIRT: `peer_node_id`/`peer_kms_address` name the *far end* of the virtual link (the node that
    shares its key pool); `prev_hop` is the adjacent node towards the source (None at the
    source) and `next_hops` every node after this one, adjacent first, far end last (empty at
    the far end). Intermediate nodes hold a VIRT entry too (it authorises the relay).
    `exit_peer`: the path leaves the sdqkd network at the far end (the gateway) for another
    vendor's KMS, configured there under this name (relay.py: keys made on demand, no pool).
    """

    qkdl_id: str
    peer_node_id: str
    peer_kms_address: str
    kind: str = PHYS
    prev_hop: str | None = None
    next_hops: tuple[str, ...] = ()
    up: bool = True
    exit_peer: str | None = None

    @property
    def is_relay_source(self) -> bool:
        return self.kind == VIRT and self.prev_hop is None and bool(self.next_hops)

    @property
    def is_relay_end(self) -> bool:
        return self.kind == VIRT and self.prev_hop is not None and not self.next_hops

    @property
    def is_endpoint(self) -> bool:
        """This node holds the link's key pool (physical link, or an end of a virtual one)."""
        return self.kind == PHYS or self.prev_hop is None or not self.next_hops


@dataclass
class App:
    """A registered application (ETSI 015 qkd_app): its SAE pair(s) and backing links."""

    app_id: str
    master_sae_id: str
    slave_sae_ids: tuple[str, ...]
    local_node_id: str
    remote_node_id: str
    backing_qkdl_ids: tuple[str, ...]
    created: float = field(default_factory=time.time)
    consumed_bits: int = 0
    consumed_keys: int = 0
    last_used: float = field(default_factory=time.monotonic)
    serving: int = 0  # key requests being served now (the pair is not idle meanwhile)

    @property
    def is_local(self) -> bool:
        """Both SAEs on this node: keys come from the node itself, no link backs the app."""
        return bool(self.local_node_id) and self.local_node_id == self.remote_node_id


class Registry:
    def __init__(self, node_id: str, local_saes: Iterable[str] = ()) -> None:
        self.node_id = node_id
        self.local_saes: set[str] = set(local_saes)
        self.links: dict[str, Link] = {}
        self.apps: dict[str, App] = {}
        self._pairs: dict[tuple[str, str], App] = {}

    # --- links ---------------------------------------------------------------------------
    def phys_link_to(self, node_id: str) -> Link | None:
        for link in self.links.values():
            if link.kind == PHYS and link.peer_node_id == node_id:
                return link
        return None

    # --- apps ----------------------------------------------------------------------------
    def add_app(self, app: App) -> None:
        self.remove_app(app.app_id)
        self.apps[app.app_id] = app
        self._reindex()

    def remove_app(self, app_id: str) -> App | None:
        app = self.apps.pop(app_id, None)
        if app is not None:
            self._reindex()
        return app

    def _reindex(self) -> None:
        self._pairs.clear()
        for app in self.apps.values():
            for s in app.slave_sae_ids:
                # Either SAE may be the ETSI 014 master of a request (keys flow both ways).
                self._pairs.setdefault((app.master_sae_id, s), app)
                self._pairs.setdefault((s, app.master_sae_id), app)

    def app_for(self, master: str, slave: str) -> App | None:
        return self._pairs.get((master, slave))

    def app_for_group(self, master: str, slaves: Sequence[str]) -> App | None:
        """The app serving master -> every slave (multicast needs one app and one pool)."""
        first = self.app_for(master, slaves[0]) if slaves else None
        if first is None:
            return None
        for s in slaves[1:]:
            if self.app_for(master, s) is not first:
                return None
        if len(slaves) > 1 and master != first.master_sae_id:
            return None  # multicast only from the app's master
        return first

    def backing_links(self, app: App) -> list[Link]:
        return [self.links[q] for q in app.backing_qkdl_ids if q in self.links and self.links[q].is_endpoint]

    def is_local(self, sae_id: str) -> bool:
        return sae_id in self.local_saes
