"""I2NSF IKE-less security controller (RFC 9061, case 2): IPsec SAs between two NSFs, no IKE.

The controller decides everything IKE would have negotiated — SPIs (random 32-bit >= 256, unique
per destination), ESP with AES-GCM-16/256 (RFC 4106), tunnel or transport mode, soft and hard
lifetimes — and pushes SAD/SPD entries to the NSF agents (`sdqkd.apps.ipsec.IpsecNsf`).

Key bytes never pass through it. For each SA pair it asks the master NSF to fetch fresh keys
from its KMS with ETSI 014 enc_keys (the master answers with key_IDs only), then gives those
key_IDs to the slave NSF, which fetches the same keys with dec_keys — the key flow of docs/key-delivery.md.

Rekeying is make-before-break: new SPIs and new QKD keys; the new inbound SAs go in on both ends
first, then the new outbound SAs (which senders prefer as the newest), then the old outbound SAs
go, and after a short grace for packets in flight the old inbound ones. Without IKE nobody else
watches lifetimes, so `check` (or the `watch` thread) polls the NSFs' SA state and rekeys any
tunnel with an SA past its soft lifetime, well before the hard one.

Transport between controller and NSF is a Python call here (the NSF objects live in the same
process); the entries are RFC 9061-shaped (`ikeless_config`) so a NETCONF/RESTCONF front could
carry them unchanged."""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sdqkd.apps.ipsec import (
    QKD_KEY_BITS,
    IpsecError,
    Lifetime,
    Mode,
    QkdKeyRef,
    SadEntry,
    SaState,
    SpdEntry,
)
from sdqkd.apps.keyclient import SaeIdentity
from sdqkd.logfmt import brief

log = logging.getLogger("sdqkd.controller.ipsec")


class Nsf(Protocol):
    """What the controller needs of an NSF agent (`sdqkd.apps.ipsec.IpsecNsf` is one)."""

    name: str
    sae: SaeIdentity
    outer: str
    inner: str | None

    @property
    def modes(self) -> tuple[str, ...]: ...
    def prepare(self, entries: list[SadEntry]) -> dict[str, str]: ...
    def activate(self, names: list[str]) -> None: ...
    def remove(self, names: list[str]) -> None: ...
    def set_policies(self, entries: list[SpdEntry]) -> None: ...
    def remove_policies(self, names: list[str]) -> None: ...
    def sa_state(self, names: list[str] | None = None) -> dict[str, SaState]: ...


class SpiAllocator:
    """Random SPIs in [256, 2^32-1] (0..255 are reserved by RFC 4303), unique per destination.

    Random rather than sequential so an observer learns nothing from SPIs about how many SAs a
    node has; `rng(n)` returns an int in [0, n) (secrets.randbelow unless a test passes one)."""

    def __init__(self, rng: Callable[[int], int] = secrets.randbelow) -> None:
        self._rng = rng
        self._used: dict[str, set[int]] = {}

    def allocate(self, dst: str) -> int:
        used = self._used.setdefault(dst, set())
        if len(used) >= 2**32 - 256:
            raise IpsecError(f"no free SPI left for destination {dst}")
        for _ in range(1000):
            spi = 256 + self._rng(2**32 - 256)
            if spi not in used:
                used.add(spi)
                return spi
        raise IpsecError(f"could not draw a free SPI for destination {dst} in 1000 tries")

    def release(self, dst: str, spi: int) -> None:
        self._used.get(dst, set()).discard(spi)

    def in_use(self, dst: str) -> set[int]:
        return set(self._used.get(dst, set()))


@dataclass(frozen=True)
class SaParams:
    """What the controller decides for a tunnel's SAs (ESP AES-GCM-16/256 always)."""

    mode: Mode = "tunnel"
    soft: Lifetime = Lifetime(seconds=3000, bytes=2**34, packets=3 * 2**30)
    hard: Lifetime = Lifetime(seconds=3600, bytes=2**35, packets=2**32 - 1)
    replay_window: int = 64
    grace_s: float = 0.5  # old inbound SAs live this long after the switch, for packets in flight

    def __post_init__(self) -> None:
        if self.mode not in ("tunnel", "transport"):
            raise ValueError(f"mode must be tunnel or transport, got {self.mode!r}")
        for m in ("seconds", "bytes", "packets"):
            s, h = getattr(self.soft, m), getattr(self.hard, m)
            if h and not 0 < s < h:
                raise ValueError(f"soft {m} lifetime must be set and below the hard one ({s} vs {h}): "
                                 "the soft limit is what triggers the rekey")
        if not 0 <= self.replay_window <= 4096:
            raise ValueError(f"replay window must be 0..4096, got {self.replay_window}")


@dataclass(frozen=True)
class Generation:
    """One set of SAs of a tunnel: m2s (master -> slave) and s2m, each seen from both ends."""

    number: int
    master: tuple[SadEntry, SadEntry]  # (m2s outbound, s2m inbound) as the master NSF holds them
    slave: tuple[SadEntry, SadEntry]  # (m2s inbound, s2m outbound) as the slave NSF holds them
    key_ids: dict[str, str]  # SA name -> key_ID
    created: float = field(default_factory=time.monotonic)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.master]

    @property
    def spis(self) -> dict[str, int]:
        return {e.name: e.spi for e in self.master}


@dataclass
class Tunnel:
    name: str
    master: Nsf
    slave: Nsf
    params: SaParams
    reqid: int
    current: Generation | None = None
    retired: list[Generation] = field(default_factory=list)


class IkelessController:
    """Creates, rekeys and deletes IPsec tunnels between NSF agents. Thread-safe.

    `request_keys(master_sae, slave_sae, rate_bps)`, when given, is the SDN controller's
    northbound call that sets up QKD key delivery for the SAE pair (e.g. `Controller.request_keys`
    wrapped for this thread); it is made once per tunnel before the first keys are fetched."""

    def __init__(self, *, request_keys: Callable[[str, str, float], Any] | None = None,
                 spis: SpiAllocator | None = None) -> None:
        self.request_keys = request_keys
        self.spis = spis or SpiAllocator()
        self.tunnels: dict[str, Tunnel] = {}
        self._lock = threading.RLock()
        self._next_reqid = 1
        self._watch: tuple[threading.Thread, threading.Event] | None = None
        self.events: list[tuple[float, str, str]] = []  # (time, tunnel, what happened)

    # ------------------------------------------------------------------ tunnels
    def create_tunnel(self, name: str, master: Nsf, slave: Nsf, params: SaParams | None = None) -> Tunnel:
        """Set up key delivery, install the first SA pair on both NSFs, then the policies."""
        params = params or SaParams()
        with self._lock:
            if name in self.tunnels:
                raise IpsecError(f"tunnel {name!r} exists")
            for nsf in (master, slave):
                if params.mode not in nsf.modes:
                    raise IpsecError(f"NSF {nsf.name} cannot do {params.mode} mode (it does {', '.join(nsf.modes)})")
                if params.mode == "tunnel" and not nsf.inner:
                    raise IpsecError(f"NSF {nsf.name} has no inner address for tunnel mode")
            if self.request_keys is not None:
                rate = 2 * QKD_KEY_BITS / params.soft.seconds if params.soft.seconds else 0.0
                self.request_keys(master.sae.sae_id, slave.sae.sae_id, rate)
            t = Tunnel(name, master, slave, params, self._next_reqid)
            self._next_reqid += 1
            t.current = self._install_generation(t, 1)
            try:
                master.set_policies(self._policies(t, master, slave))
                slave.set_policies(self._policies(t, slave, master))
            except Exception:
                self._remove_generation(t, t.current, grace_s=0)
                raise
            self.tunnels[name] = t
            self._event(t, f"created: g1 spis {self._spi_text(t.current)}")
            return t

    def rekey(self, name: str, reason: str = "asked for") -> Generation:
        """Replace a tunnel's SAs with new SPIs and new QKD keys, make-before-break."""
        with self._lock:
            t = self._tunnel(name)
            old = t.current
            assert old is not None
            new = self._install_generation(t, old.number + 1)
            t.current = new
            self._remove_generation(t, old, grace_s=t.params.grace_s)
            t.retired.append(old)
            self._event(t, f"rekeyed ({reason}): g{new.number} spis {self._spi_text(new)} replace g{old.number}")
            return new

    def delete_tunnel(self, name: str) -> None:
        with self._lock:
            t = self._tunnel(name)
            for nsf in (t.master, t.slave):
                nsf.remove_policies([f"{name}/out", f"{name}/in"])
            if t.current is not None:
                self._remove_generation(t, t.current, grace_s=0)
            del self.tunnels[name]
            self._event(t, "deleted")

    def state(self, name: str) -> dict[str, dict[str, SaState]]:
        """SA state of the tunnel's current generation at both ends ({nsf name: {SA name: state}})."""
        with self._lock:
            t = self._tunnel(name)
            names = t.current.names if t.current else []
            return {t.master.name: t.master.sa_state(names), t.slave.name: t.slave.sa_state(names)}

    # ------------------------------------------------------------------ lifetimes
    def check(self) -> list[tuple[str, str]]:
        """Rekey every tunnel whose current SAs passed a soft lifetime (or vanished) at either
        end; returns [(tunnel, reason)] for those rekeyed. A failed rekey is logged and retried
        on the next check — the old SAs keep working until their hard lifetime."""
        done: list[tuple[str, str]] = []
        with self._lock:
            for name in list(self.tunnels):
                reason = self._due(name)
                if reason is None:
                    continue
                try:
                    self.rekey(name, reason)
                    done.append((name, reason))
                except Exception as e:
                    log.error("rekey of tunnel %s (%s) failed, will retry: %s", name, reason, brief(e))
                    self._event(self.tunnels[name], f"rekey failed ({reason}): {e}")
        return done

    def _due(self, name: str) -> str | None:
        for nsf_name, states in self.state(name).items():
            t = self.tunnels[name]
            for sa_name in t.current.names if t.current else []:
                st = states.get(sa_name)
                if st is None or not st.counters.present:
                    return f"SA {sa_name} missing at {nsf_name}"
                if st.soft_expired:
                    c = st.counters
                    return (f"SA {sa_name} at {nsf_name} past soft lifetime "
                            f"({c.bytes} bytes, {c.packets} packets, {st.age_s:.0f} s)")
        return None

    def watch(self, interval_s: float = 1.0) -> None:
        """Poll lifetimes every `interval_s` on a background thread until `stop_watch`."""
        if self._watch is not None:
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.check()
                except Exception as e:  # keep watching; the next round may succeed
                    log.error("lifetime check failed: %s", brief(e))

        th = threading.Thread(target=loop, name="ikeless-watch", daemon=True)
        th.start()
        self._watch = (th, stop)

    def stop_watch(self) -> None:
        if self._watch is not None:
            th, stop = self._watch
            stop.set()
            th.join(10)
            self._watch = None

    def close(self) -> None:
        """Stop watching and delete every tunnel (best effort)."""
        self.stop_watch()
        for name in list(self.tunnels):
            try:
                self.delete_tunnel(name)
            except Exception as e:
                log.warning("deleting tunnel %s: %s", name, brief(e))

    # ------------------------------------------------------------------ RFC 9061 view
    def ikeless_config(self, nsf: Nsf) -> dict[str, Any]:
        """What this controller has configured on `nsf`, as ietf-i2nsf-ikeless JSON (no keys)."""
        sad: list[dict[str, Any]] = []
        spd: list[dict[str, Any]] = []
        with self._lock:
            for t in self.tunnels.values():
                if nsf is not t.master and nsf is not t.slave:
                    continue
                peer = t.slave if nsf is t.master else t.master
                spd += [p.to_ikeless() for p in self._policies(t, nsf, peer)]
                if t.current is not None:
                    sad += [e.to_ikeless() for e in (t.current.master if nsf is t.master else t.current.slave)]
        return {"ietf-i2nsf-ikeless:ipsec-ikeless": {"spd": {"spd-entry": spd}, "sad": {"sad-entry": sad}}}

    # ------------------------------------------------------------------ internals
    def _tunnel(self, name: str) -> Tunnel:
        try:
            return self.tunnels[name]
        except KeyError:
            raise IpsecError(f"no tunnel {name!r} (known: {', '.join(sorted(self.tunnels)) or 'none'})") from None

    def _event(self, t: Tunnel, what: str) -> None:
        self.events.append((time.time(), t.name, what))
        log.info("tunnel %s: %s", t.name, what)

    @staticmethod
    def _spi_text(g: Generation) -> str:
        return ", ".join(f"{n.rsplit('/', 1)[-1]}=0x{s:08x}" for n, s in g.spis.items())

    @staticmethod
    def _prefix(nsf: Nsf, mode: Mode) -> str:
        return f"{nsf.inner if mode == 'tunnel' else nsf.outer}/32"

    def _policies(self, t: Tunnel, me: Nsf, peer: Nsf) -> list[SpdEntry]:
        mode = t.params.mode
        lp, rp = self._prefix(me, mode), self._prefix(peer, mode)
        return [SpdEntry(f"{t.name}/{d}", t.reqid, "outbound" if d == "out" else "inbound", mode, me.outer,
                         peer.outer, lp, rp) for d in ("out", "in")]

    def _entries(self, t: Tunnel, g: int, spi_m2s: int, spi_s2m: int) -> tuple[list[SadEntry], list[SadEntry]]:
        p, m, s = t.params, t.master, t.slave
        mp, sp = self._prefix(m, p.mode), self._prefix(s, p.mode)
        m2s, s2m = f"{t.name}/g{g}/m2s", f"{t.name}/g{g}/s2m"
        sad = functools.partial(SadEntry, reqid=t.reqid, mode=p.mode, soft=p.soft, hard=p.hard,
                                replay_window=p.replay_window)
        mref, sref = QkdKeyRef("master", s.sae.sae_id), QkdKeyRef("slave", m.sae.sae_id)
        at_master = [sad(m2s, spi=spi_m2s, direction="outbound", local=m.outer, remote=s.outer,
                         local_prefix=mp, remote_prefix=sp, qkd=mref),
                     sad(s2m, spi=spi_s2m, direction="inbound", local=m.outer, remote=s.outer,
                         local_prefix=mp, remote_prefix=sp, qkd=mref)]
        at_slave = [sad(m2s, spi=spi_m2s, direction="inbound", local=s.outer, remote=m.outer,
                        local_prefix=sp, remote_prefix=mp, qkd=sref),
                    sad(s2m, spi=spi_s2m, direction="outbound", local=s.outer, remote=m.outer,
                        local_prefix=sp, remote_prefix=mp, qkd=sref)]
        return at_master, at_slave

    def _install_generation(self, t: Tunnel, g: int) -> Generation:
        m, s = t.master, t.slave
        spi_m2s, spi_s2m = self.spis.allocate(s.outer), self.spis.allocate(m.outer)
        at_master, at_slave = self._entries(t, g, spi_m2s, spi_s2m)
        m2s, s2m = at_master[0].name, at_master[1].name
        step = "master fetches keys (ETSI 014 enc_keys)"
        try:
            key_ids = m.prepare(at_master)
            at_master = [replace(e, qkd=replace(e.qkd, key_id=key_ids[e.name])) for e in at_master]
            at_slave = [replace(e, qkd=replace(e.qkd, key_id=key_ids[e.name])) for e in at_slave]
            step = "slave fetches keys (ETSI 014 dec_keys)"
            s.prepare(at_slave)
            step = "install inbound SAs"
            s.activate([m2s])
            m.activate([s2m])
            step = "install outbound SAs"
            s.activate([s2m])
            m.activate([m2s])
        except Exception as e:
            for nsf in (m, s):
                try:
                    nsf.remove([m2s, s2m])
                except Exception as e2:
                    log.warning("rollback on NSF %s: %s", nsf.name, brief(e2))
            self.spis.release(s.outer, spi_m2s)
            self.spis.release(m.outer, spi_s2m)
            raise IpsecError(f"tunnel {t.name} generation {g}: {step} failed: {e}") from e
        return Generation(g, (at_master[0], at_master[1]), (at_slave[0], at_slave[1]), key_ids)

    def _remove_generation(self, t: Tunnel, g: Generation, grace_s: float) -> None:
        """Outbound SAs first (senders are on the new ones already), inbound after the grace.

        Best effort: an NSF that fails to remove an SA is logged, not fatal — the new SAs are in,
        and the stale one dies at its hard lifetime."""
        m2s, s2m = g.names
        steps = ((t.master, m2s), (t.slave, s2m), None, (t.slave, m2s), (t.master, s2m))
        for step in steps:
            if step is None:
                if grace_s > 0:
                    time.sleep(grace_s)
                continue
            nsf, sa = step
            try:
                nsf.remove([sa])
            except Exception as e:
                log.warning("tunnel %s: removing old SA %s at %s failed: %s", t.name, sa, nsf.name, brief(e))
        self.spis.release(t.slave.outer, g.master[0].spi)
        self.spis.release(t.master.outer, g.master[1].spi)
