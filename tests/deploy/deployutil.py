"""Helpers of the deploy tests: an exported network's SAEs fetching keys through ETSI 014 with
the project's own client (runtime/apps/keyclient.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdqkd.apps.keyclient import Etsi014Client, SaeIdentity


def sae(out: Path, eps: dict[str, Any], node: str, name: str) -> SaeIdentity:
    """SAE `name` of `node` from an export's endpoints.json (paths relative to the export `out`)."""
    s, n = eps[node]["saes"][name], eps[node]
    return SaeIdentity(name, str(out / s["ca"]), str(out / s["cert"]), str(out / s["key"]), n["etsi014"], n["etsi004"])


def keys_agree(out: Path, eps: dict[str, Any], master: tuple[str, str], slave: tuple[str, str],
               number: int = 2) -> None:
    """Keys from enc_keys at the master's node equal those dec_keys returns at the slave's."""
    with Etsi014Client(sae(out, eps, *master)) as m, Etsi014Client(sae(out, eps, *slave)) as s:
        keys = m.enc_keys(slave[1], number=number, retry_s=60)
        back = s.dec_keys(master[1], [k.key_id for k in keys])
    assert len(keys) == number and [(k.key_id, k.key) for k in back] == [(k.key_id, k.key) for k in keys]
