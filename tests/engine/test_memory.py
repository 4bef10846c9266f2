"""The engine's allocator policy (sdqkd.engine.memory): a thread that allocates and frees a key
block's worth of big pieces again and again takes its pages from the kernel only once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt"),
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="AddressSanitizer's allocator stands in for glibc's malloc (its mallopt sets nothing)"),
]

# Each round, on a thread of its own as the engine's steps run: ten 10 MiB pieces alive together
# (more than one 64 MiB heap of a thread's arena), written, then freed; the thread's page faults
# per round. bytearray(n) writes its zeros; bytes(n) is calloc'd and would not touch the pages.
SCRIPT = """
import json, resource, threading
from sdqkd.engine import memory
applied = memory.keep_freed_memory()
faults = []
def rounds():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        pieces = [bytearray(10 << 20) for _ in range(10)]
        del pieces
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=rounds)
t.start()
t.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _rounds(malloc: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SDQKD_MALLOC"}
    if malloc is not None:
        env["SDQKD_MALLOC"] = malloc
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    return json.loads(done.stdout)


def test_freed_pieces_are_used_again_without_new_page_faults() -> None:
    out = _rounds(None)
    assert out["applied"] is True
    first, *later = out["faults"]
    assert first > 20_000, out  # 100 MiB of fresh pages
    assert max(later) < first // 20, out


def test_with_glibcs_defaults_every_round_faults_again() -> None:
    """The control: SDQKD_MALLOC=system leaves glibc as it is, and the same rounds take fresh
    pages each time (so the test above can fail)."""
    out = _rounds("system")
    assert out["applied"] is False
    first, *later = out["faults"]
    assert min(later) > first // 3, out
