"""Controller side of ordered proof of transit (see `sdqkd.apps.opot` for the scheme).

Given a service chain of OPoT nodes (SAEs), the provisioner

1. generates the classical, public-key-free setup of draft-ietf-sfc-proof-of-transit: a random
   SECRET and polynomial POLY-1 of degree n-1 over GF(p), one share (x_i, POLY-1(x_i)) and
   Lagrange constant per node, the public part of POLY-2 at each x_i, and installs one profile
   per node (the egress' also carries the SECRET);
2. for every consecutive pair asks the SDN controller for a key relationship (`request_keys`,
   the northbound call that registers the pair and installs a relay path if needed), then has
   the hop's master SAE draw a key with ETSI 014 `enc_keys` and the slave take it with
   `dec_keys` by key_ID. The provisioner only ever holds key_IDs: mask keys go from each KMS
   straight to the node that uses them.

The master of a hop is its upstream node unless `masters` says which SAEs may act as masters
(an SAE can only be master where its node's applications are registered that way)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from sdqkd.apps.opot import PRIME, NodeProfile, Side

log = logging.getLogger("sdqkd.controller.opot")


class OpotNodeHandle(Protocol):
    """What the provisioner needs of a chain node (`sdqkd.apps.opot.OpotNode` is one)."""

    sae_id: str
    name: str

    def install(self, profile: NodeProfile) -> None: ...

    def hop_key_master(self, profile_id: int, side: Side, peer_sae: str) -> str: ...

    def hop_key_slave(self, profile_id: int, side: Side, peer_sae: str, key_id: str) -> None: ...


@dataclass(frozen=True)
class Hop:
    """One consecutive pair of the chain and the QKD key relationship behind its masks."""

    index: int  # hop i joins chain[i] and chain[i+1]
    upstream: str
    downstream: str
    master: str
    slave: str
    key_id: str


@dataclass(frozen=True)
class ChainProvision:
    """What the controller keeps of a provisioned chain: public facts and key_IDs only."""

    profile_id: int
    saes: tuple[str, ...]
    ordered: bool
    hops: tuple[Hop, ...]


def _poly(coeffs: Sequence[int], x: int, p: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % p
    return acc


def shamir_profiles(saes: Sequence[str], profile_id: int, *, ordered: bool = True,
                    prime: int = PRIME) -> list[NodeProfile]:
    """One profile per node: Shamir shares of a fresh SECRET (all n needed), Lagrange constants,
    POLY-2's public part; the last node (egress) also gets the SECRET."""
    n = len(saes)
    if n < 2:
        raise ValueError(f"a chain needs at least 2 nodes (ingress and egress), got {n}")
    if not 0 <= profile_id < 2**32:
        raise ValueError(f"profile_id must fit 32 bits, got {profile_id}")
    xs: list[int] = []
    while len(xs) < n:
        x = 1 + secrets.randbelow(prime - 1)
        if x not in xs:
            xs.append(x)
    poly1 = [secrets.randbelow(prime) for _ in range(n)]  # poly1[0] is the SECRET
    poly2 = [0] + [secrets.randbelow(prime) for _ in range(n - 1)]  # constant term = per-packet RND
    out = []
    for i, x in enumerate(xs):
        lpc = 1
        for j, xj in enumerate(xs):
            if j != i:
                lpc = lpc * xj % prime * pow((xj - x) % prime, -1, prime) % prime
        out.append(NodeProfile(
            profile_id=profile_id, index=i, length=n, x=x, lpc=lpc, public=_poly(poly2, x, prime),
            y=_poly(poly1, x, prime), secret=poly1[0] if i == n - 1 else None, prime=prime, ordered=ordered,
            upstream=saes[i - 1] if i > 0 else None, downstream=saes[i + 1] if i < n - 1 else None))
    return out


class OpotProvisioner:
    """Provisions OPoT profiles along service chains.

    `request_keys(master, slave)` is the SDN controller's northbound call that makes the pair's
    KMSs deliver keys (e.g. `lambda m, s: net.request_keys(m, s, rate=1000)`); None when the
    relationships already exist."""

    def __init__(self, request_keys: Callable[[str, str], object] | None = None):
        self.request_keys = request_keys
        self.chains: dict[int, ChainProvision] = {}

    def provision(self, chain: Sequence[OpotNodeHandle], *, profile_id: int | None = None,
                  ordered: bool = True, masters: Collection[str] | None = None) -> ChainProvision:
        """Install a new profile on every node of `chain` (ingress first, egress last) and, for
        OPoT, a QKD key relationship on every hop. Returns the chain's public record."""
        saes = [n.sae_id for n in chain]
        for i in range(len(saes) - 1):
            if saes[i] == saes[i + 1]:
                raise ValueError(f"chain positions {i} and {i + 1} are the same SAE {saes[i]!r}: "
                                 "consecutive nodes need a QKD key relationship between two SAEs")
        if profile_id is None:
            profile_id = secrets.randbits(32)
            while profile_id in self.chains:
                profile_id = secrets.randbits(32)
        for node, prof in zip(chain, shamir_profiles(saes, profile_id, ordered=ordered)):
            node.install(prof)
        hops = self._key_hops(chain, profile_id, masters) if ordered else ()
        prov = ChainProvision(profile_id, tuple(saes), ordered, hops)
        self.chains[profile_id] = prov
        log.info("OPoT profile %d provisioned on %s (%s)", profile_id, " -> ".join(saes),
                 ", ".join(f"hop {h.index}: key_ID {h.key_id}" for h in hops) or "unordered PoT")
        return prov

    def refresh_keys(self, chain: Sequence[OpotNodeHandle], prov: ChainProvision, *,
                     masters: Collection[str] | None = None) -> ChainProvision:
        """New QKD keys on every hop of a provisioned chain (shares unchanged): the rekeying step.
        Packets stamped under the old keys and still in flight fail verification."""
        if [n.sae_id for n in chain] != list(prov.saes):
            raise ValueError(f"chain {[n.sae_id for n in chain]} is not the chain of profile {prov.profile_id} "
                             f"({list(prov.saes)})")
        if not prov.ordered:
            return prov
        new = ChainProvision(prov.profile_id, prov.saes, True, self._key_hops(chain, prov.profile_id, masters))
        self.chains[prov.profile_id] = new
        return new

    def _key_hops(self, chain: Sequence[OpotNodeHandle], profile_id: int,
                  masters: Collection[str] | None) -> tuple[Hop, ...]:
        hops = []
        m_side: Side
        s_side: Side
        for i, (up, down) in enumerate(zip(chain, chain[1:])):
            if masters is None or up.sae_id in masters:
                master, slave, m_side, s_side = up, down, "down", "up"
            elif down.sae_id in masters:
                master, slave, m_side, s_side = down, up, "up", "down"
            else:
                raise ValueError(f"hop {i} ({up.sae_id} -> {down.sae_id}): neither SAE is among the "
                                 f"allowed masters {sorted(masters)}")
            if self.request_keys is not None:
                self.request_keys(master.sae_id, slave.sae_id)
            key_id = master.hop_key_master(profile_id, m_side, slave.sae_id)
            slave.hop_key_slave(profile_id, s_side, master.sae_id, key_id)
            hops.append(Hop(i, up.sae_id, down.sae_id, master.sae_id, slave.sae_id, key_id))
        return tuple(hops)
