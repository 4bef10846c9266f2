"""IPsec without IKE, keys from QKD: an I2NSF IKE-less controller and two NSF agents.

Starts an in-process QKD network (nodes A - B, SAE sae-left on A, sae-right on B), two network
namespaces joined by a veth pair, one NSF agent per namespace (kernel xfrm if the kernel has ESP,
else userspace ESP), and a tunnel whose SAs the controller provisions from QKD keys (ETSI 014:
the master NSF calls enc_keys, the slave dec_keys with the key_IDs). Pings both ways, sends UDP
until the soft byte lifetime triggers a make-before-break rekey, pings again, tears down.

    sudo python examples/ipsec_ikeless.py        # needs root (network namespaces)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sdqkd.apps.ipsec import IpsecNsf, Lifetime
from sdqkd.apps.ipsec_netns import NsPair, available, ping, udp_exchange
from sdqkd.apps.keyclient import SaeIdentity
from sdqkd.controller.ipsec import IkelessController, SaParams
from sdqkd.harness.inprocess import start_network
from sdqkd.harness.sync import run_script

TOPOLOGY = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 20}],
            "saes": [{"name": "sae-left", "node": "A"}, {"name": "sae-right", "node": "B"}]}
INNER_L, INNER_R = "10.199.1.1", "10.199.1.2"


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("sdqkd.controller.ipsec").setLevel(logging.INFO)
    why = available()
    if why:
        print(f"cannot run: {why} (this example needs root for network namespaces)", file=sys.stderr)
        return 2
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coro):  # run a coroutine on the network's loop from this thread
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    print("starting the QKD network (A - B, 20 km) ...")
    state = Path(tempfile.mkdtemp(prefix="sdqkd-ipsec-"))  # its PKI and key stores: removed at the end
    try:
        return run(on_loop, loop, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def run(on_loop: Any, loop: asyncio.AbstractEventLoop, state: Path) -> int:
    net = on_loop(start_network(TOPOLOGY, state))
    assert net.controller is not None
    sdn = net.controller
    pair = NsPair.create()
    left = right = None
    ctl = IkelessController(request_keys=lambda m, s, rate: on_loop(sdn.request_keys(m, s, rate)))
    try:
        left = IpsecNsf("nsf-left", pair.left, SaeIdentity.from_endpoints(net.endpoints, "sae-left"),
                        outer=pair.left_addr, inner=INNER_L).start()
        right = IpsecNsf("nsf-right", pair.right, SaeIdentity.from_endpoints(net.endpoints, "sae-right"),
                         outer=pair.right_addr, inner=INNER_R).start()
        print(f"data plane: {left.kind}" + (f" (kernel path not taken: {left.fallback_reason})"
                                            if left.fallback_reason else ""))
        params = SaParams(soft=Lifetime(seconds=300, bytes=30_000), hard=Lifetime(seconds=360, bytes=3_000_000))
        t = ctl.create_tunnel("demo", left, right, params)
        assert t.current is not None
        cfg = ctl.ikeless_config(left)["ietf-i2nsf-ikeless:ipsec-ikeless"]
        print("one SAD entry pushed to nsf-left (RFC 9061 ietf-i2nsf-ikeless shape; a key_ID, never a key):")
        print(json.dumps(cfg["sad"]["sad-entry"][0], indent=1))
        for src, dst in ((pair.left, INNER_R), (pair.right, INNER_L)):
            rtt = ping(src, dst)
            print(f"ping {src} -> {dst}: " + (f"{rtt * 1e3:.1f} ms" if rtt is not None else "no reply"))
        ctl.watch(interval_s=0.1)
        first = t.current.number
        n = 0
        while t.current.number == first and n < 500:
            udp_exchange(pair.left, pair.right, INNER_R, b"x" * 1000, b"ack")
            n += 1
        time.sleep(0.5)
        print(f"after {n} datagrams of 1000 bytes: generation {t.current.number}, "
              f"spis {[hex(s) for s in t.current.spis.values()]}, key_IDs {list(t.current.key_ids.values())}")
        rtt = ping(pair.left, INNER_R)
        print("ping after rekey:", f"{rtt * 1e3:.1f} ms" if rtt is not None else "no reply")
        for nsf_name, sas in ctl.state("demo").items():
            for sa in sas.values():
                print(f"  {nsf_name} {sa.name} {sa.direction} spi 0x{sa.spi:08x}: {sa.counters.packets} packets, "
                      f"{sa.counters.bytes} bytes, {sa.counters.integrity_failed} integrity failures")
        return 0 if rtt is not None else 1
    finally:
        ctl.close()
        for nsf in (left, right):
            if nsf is not None:
                nsf.close()
        pair.destroy()
        on_loop(net.stop())
        loop.call_soon_threadsafe(loop.stop)


if __name__ == "__main__":
    run_script(main)  # SIGTERM, as Ctrl-C, stops its network and removes its state
