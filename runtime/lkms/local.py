"""Keys for an SAE pair whose two SAEs are attached to the same node (no link involved).

Why this is sound: QKD exists to give two *distant* key management entities the same secret.
When master and slave SAE talk to the same KME there is no distance to bridge: the KME is the
one trusted party of both, exactly as it is for every key it hands out, and a key drawn from
the operating system's CSPRNG (`os.urandom`) inside it is as secret as anything it stores. So
enc_keys draws fresh random keys, stores them in the node's local pool already RESERVED_IN for
the pair (the same durable state a relayed or peer-reserved key is in), and dec_keys hands each
to its slave(s) once, through the ordinary `take_in` path. Nothing is ever sent off the node.

Steps per request (each one durable store transaction): add_block (fresh keys, AVAILABLE),
reserve_in (RESERVED_IN for the pair; nothing else ever reserves from this pool), confirm (the
keys do not expire as an unconfirmed reservation would).

ETSI 004 streams of such a pair (streams.py) draw their chunks the same way (`local_chunk`) but
keep them in memory only, as every stream does: both applications' copies are held by this one
node until each side delivers its own, so there is no later fetch that a stored copy would serve."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

from sdqkd.lkms.keys import AppKey
from sdqkd.lkms.registry import PHYS, local_pool_id
from sdqkd.lkms.store_api import KeyStore


async def local_keys(store: KeyStore, node_id: str, master: str, slaves: Sequence[str], bits: int,
                     count: int) -> list[AppKey]:
    """`count` fresh keys of `bits` for master -> slaves, both on this node."""
    pool = local_pool_id(node_id)
    await store.ensure_pool(pool, PHYS)
    size = bits // 8
    material = os.urandom(size * count)
    ids = await store.add_block(pool, material, bits, str(uuid.uuid4()))
    txn = str(uuid.uuid4())
    res = await store.reserve_in(pool, txn, [(k, bits) for k in ids], bits, master, list(slaves))
    if not res.ok:  # cannot happen unless the store is broken: fail loudly, hand out nothing
        raise RuntimeError(f"local key reservation refused: {res.reason}")
    await store.confirm(txn)
    return [AppKey(k, bits, ((k, bits),), material[i * size:(i + 1) * size]) for i, k in enumerate(ids)]


def local_chunk(size: int) -> bytes:
    """`size` fresh random bytes: one chunk of a same-node ETSI 004 stream."""
    return os.urandom(size)
