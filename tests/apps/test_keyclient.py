"""The application-side key clients against a real in-process network: ETSI 014 over mutual TLS
(enc_keys at the master's node, dec_keys at the slave's over a relay path) and ETSI 004."""

from __future__ import annotations

import pytest

from sdqkd.apps.keyclient import Etsi004Client, Etsi014Client, KeyDeliveryError, SaeIdentity


def test_etsi014_relayed_keys_match_and_are_delivered_once(apps_net):
    apps_net.request_keys("sae-a1", "sae-c1", rate=1000)
    a = SaeIdentity.from_endpoints(apps_net.endpoints, "sae-a1")
    c = SaeIdentity.from_endpoints(apps_net.endpoints, "sae-c1")
    with Etsi014Client(a) as ma, Etsi014Client(c) as sc:
        keys = ma.enc_keys("sae-c1", number=2, size=256, retry_s=60)
        assert len(keys) == 2 and all(len(k.key) == 32 for k in keys)
        assert "bits" in repr(keys[0]) and keys[0].key.hex() not in repr(keys[0])
        assert sc.dec_keys("sae-a1", [k.key_id for k in keys]) == keys
        with pytest.raises(KeyDeliveryError) as err:
            sc.dec_key("sae-a1", keys[0].key_id)
        assert err.value.status == 400


def test_etsi004_stream_gives_both_peers_the_same_key(apps_net):
    apps_net.request_keys("sae-a2", "sae-b1", rate=1000)
    with Etsi004Client(SaeIdentity.from_endpoints(apps_net.endpoints, "sae-a2")) as a, \
            Etsi004Client(SaeIdentity.from_endpoints(apps_net.endpoints, "sae-b1")) as b:
        ksid = a.open("sae-b1", chunk_size=32, timeout_ms=20000)
        assert b.open("sae-a2", ksid, chunk_size=32, timeout_ms=20000) == ksid
        ia, ka = a.get_key(ksid)
        ib, kb = b.get_key(ksid, index=ia)
        assert ia == ib and ka == kb and len(ka) == 32
        assert a.close_stream(ksid) == 0


def test_unknown_sae_is_a_clear_error(apps_net):
    with pytest.raises(KeyError, match="sae-nope"):
        SaeIdentity.from_endpoints(apps_net.endpoints, "sae-nope")
