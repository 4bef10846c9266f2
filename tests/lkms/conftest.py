from __future__ import annotations

from collections.abc import Iterator

import pytest
from lkmsnet import LoopThread, Net, Pki, net_ab


@pytest.fixture(scope="session")
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


@pytest.fixture(scope="session")
def tpki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def net2(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """A -- B, SAE a1 (and a2) at A, b1, b2, b3 at B; app1: a1 -> b1, app2 multicast a1 -> b2, b3;
    app3: a2 -> b1 (another pair, same link). 2000 keys of 256 bits fed."""
    net = net_ab(lt, tpki, tmp_path_factory.mktemp("net2"))
    yield net
    net.close()


@pytest.fixture(scope="module")
def net3(lt: LoopThread, tpki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """A -- B -- C, virtual link A..C; SAE a at A, c at C, app over the virtual link."""
    net = Net(lt, tpki, tmp_path_factory.mktemp("net3"), {"A": ["a"], "B": [], "C": ["c"]})
    net.phys("A", "B")
    net.phys("B", "C")
    net.feed("A", "B", 400)
    net.feed("B", "C", 400)
    v = net.virt(["A", "B", "C"])
    net.links[frozenset(("A", "C"))] = v
    net.app("appv", ("a", "A"), [("c", "C")], v)
    yield net
    net.close()
