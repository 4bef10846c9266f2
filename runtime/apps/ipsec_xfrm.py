"""Kernel data plane for the IPsec NSF: SAs and policies through iproute2's `ip xfrm`.

Key material goes to `ip -n NS -batch -` on standard input, never on the command line, so it does
not show in /proc/*/cmdline; error text is scrubbed of long hex strings. `ip -s xfrm state`
prints keys, so its output is parsed for counters only and never logged.

Why iproute2 and not netlink from Python (pyroute2): iproute2 is on every Linux machine, speaks
every xfrm attribute, and its text interface is stable; pyroute2's xfrm support is partial."""

from __future__ import annotations

import re
import secrets
import subprocess

from sdqkd.apps.ipsec import ICV_BITS, Counters, IpsecError, SadEntry, SpdEntry
from sdqkd.apps.ipsec_netns import IpCommandError, ip

AEAD = "rfc4106(gcm(aes))"
_LIFE = re.compile(r"lifetime current:\s*(\d+)\(bytes\),\s*(\d+)\(packets\)")
_STATS = re.compile(r"stats:\s*replay-window\s+\d+\s+replay\s+(\d+)\s+failed\s+(\d+)")


def kernel_esp_unavailable(netns: str) -> str | None:
    """None if the kernel takes an rfc4106(gcm(aes)) ESP state in `netns`, else the reason why not.

    Adds and deletes a throw-away state between two TEST-NET addresses under a reserved SPI
    (with a zero key, which protects nothing)."""
    spi = f"0x{secrets.randbelow(255) + 1:08x}"
    sel = f"src 192.0.2.1 dst 192.0.2.2 proto esp spi {spi}"
    try:
        ip(netns, "-batch", "-", stdin=f"xfrm state add {sel} mode tunnel aead {AEAD} 0x{'00' * 36} {ICV_BITS}\n")
    except IpCommandError as e:
        return f"ip xfrm refuses an ESP {AEAD} state: {e.detail}"
    except FileNotFoundError:
        return "iproute2 `ip` not installed"
    ip(netns, "xfrm", "state", "delete", *sel.split())
    return None


def _limits(sa: SadEntry) -> str:
    parts = []
    for kind, life in (("soft", sa.soft), ("hard", sa.hard)):
        for measure, v in (("time", life.seconds), ("byte", life.bytes), ("packet", life.packets)):
            if v > 0:  # 0 must not reach the kernel: a byte/packet limit of 0 would expire at once
                parts.append(f"{measure}-{kind} {v}")
    return f" limit {' '.join(parts)}" if parts else ""


def state_add_command(sa: SadEntry, keymat: bytes) -> str:
    """The `ip -batch` line that installs `sa` (contains the key: stdin only, never log it)."""
    return (f"xfrm state add src {sa.src} dst {sa.dst} proto esp spi 0x{sa.spi:08x} reqid {sa.reqid} "
            f"mode {sa.mode} replay-window {sa.replay_window} "
            f"aead {AEAD} 0x{keymat.hex()} {ICV_BITS}{_limits(sa)}\n")


def parse_state_counters(text: str) -> Counters:
    """Counters of one state from `ip -s xfrm state list ...` output (which also holds the key:
    only the numbers are kept)."""
    if not text.strip():
        return Counters(present=False)
    life, stats = _LIFE.search(text), _STATS.search(text)
    if life is None:
        raise IpsecError("cannot read 'lifetime current' counters from ip -s xfrm state output")
    replay, failed = (int(stats.group(1)), int(stats.group(2))) if stats else (0, 0)
    return Counters(bytes=int(life.group(1)), packets=int(life.group(2)), integrity_failed=failed,
                    replay_dropped=replay)


class KernelXfrm:
    """SAs and policies in the kernel of namespace `netns` (tunnel and transport mode)."""

    kind = "kernel"
    modes: tuple[str, ...] = ("tunnel", "transport")

    def __init__(self, netns: str, outer: str, inner: str | None) -> None:
        self.netns, self.outer, self.inner = netns, outer, inner
        self._routes: list[str] = []

    def setup(self) -> None:
        if self.inner:  # the protected host-side address lives on lo; policies route its traffic
            ip(self.netns, "addr", "replace", f"{self.inner}/32", "dev", "lo")

    def add_sa(self, sa: SadEntry, keymat: bytes) -> None:
        try:
            ip(self.netns, "-batch", "-", stdin=state_add_command(sa, keymat))
        except IpCommandError as e:
            raise IpsecError(f"kernel refused SA {sa.name} (spi 0x{sa.spi:08x}) in {self.netns}: "
                             f"{e.detail}") from None

    def del_sa(self, sa: SadEntry) -> None:
        try:
            ip(self.netns, "xfrm", "state", "delete", "src", sa.src, "dst", sa.dst, "proto", "esp",
               "spi", f"0x{sa.spi:08x}")
        except IpCommandError as e:
            if "No such process" not in e.detail:  # already gone (hard-expired): fine
                raise IpsecError(f"cannot delete SA {sa.name}: {e}") from None

    def _policy_args(self, sp: SpdEntry) -> list[str]:
        src, dst = (sp.local_prefix, sp.remote_prefix) if sp.direction == "outbound" else \
            (sp.remote_prefix, sp.local_prefix)
        return ["src", src, "dst", dst, "dir", "out" if sp.direction == "outbound" else "in"]

    def add_policy(self, sp: SpdEntry) -> None:
        t_src, t_dst = (sp.local, sp.remote) if sp.direction == "outbound" else (sp.remote, sp.local)
        ip(self.netns, "xfrm", "policy", "add", *self._policy_args(sp), "tmpl", "src", t_src, "dst", t_dst,
           "proto", "esp", "reqid", str(sp.reqid), "mode", sp.mode)
        if sp.mode == "tunnel" and sp.direction == "outbound" and self.inner:
            # the inner destination needs a route (xfrm looks policies up after routing)
            ip(self.netns, "route", "replace", sp.remote_prefix, "via", sp.remote, "src", self.inner)
            self._routes.append(sp.remote_prefix)

    def del_policy(self, sp: SpdEntry) -> None:
        ip(self.netns, "xfrm", "policy", "delete", *self._policy_args(sp))
        if sp.remote_prefix in self._routes and sp.direction == "outbound":
            self._routes.remove(sp.remote_prefix)
            ip(self.netns, "route", "del", sp.remote_prefix)

    def counters(self, sa: SadEntry) -> Counters:
        out = ip(self.netns, "-s", "xfrm", "state", "list", "src", sa.src, "dst", sa.dst, "proto", "esp",
                 "spi", f"0x{sa.spi:08x}")
        return parse_state_counters(out)

    def stats(self) -> dict[str, int]:
        r = subprocess.run(["ip", "netns", "exec", self.netns, "cat", "/proc/net/xfrm_stat"],
                           capture_output=True, text=True)
        return {k: int(v) for k, v in (line.split() for line in r.stdout.splitlines() if line.strip())}

    def close(self) -> None:
        """Flush what this agent installed (the namespace may outlive the agent)."""
        for args in (["xfrm", "state", "flush"], ["xfrm", "policy", "flush"],
                     *(["route", "del", r] for r in self._routes),
                     *([["addr", "del", f"{self.inner}/32", "dev", "lo"]] if self.inner else [])):
            subprocess.run(["ip", "-n", self.netns, *args], capture_output=True)
        self._routes.clear()
