"""The examples run as a user runs them after `pip install .`: against the installed package
(never by putting the source tree first on sys.path, whose extension modules may not be built),
from any directory, leaving no state (private keys, key stores) behind."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from procwatch import signal_when

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_does_not_touch_sys_path(example: Path):
    tree = ast.parse(example.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
            pytest.fail(f"{example.name}:{node.lineno}: uses sys.path; import the installed package instead")


@pytest.mark.parametrize("name", ["tls_psk.py", "ipsec_ikeless.py"])
def test_an_example_runs_from_elsewhere_and_leaves_nothing(tmp_path: Path, name: str):
    if name == "ipsec_ikeless.py":
        from sdqkd.apps.ipsec_netns import available

        if why := available():
            pytest.skip(f"the IPsec example needs network namespaces: {why}")
    example = next(p for p in EXAMPLES if p.name == name)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert list(tmp.iterdir()) == []  # its network's state dir (PKI, key stores) was removed


@pytest.mark.parametrize(("name", "running"), [("tls_psk.py", ""), ("encryptor.py", ""), ("opot_chain.py", ""),
                                             ("hybrid_gnmi.py", ""), ("encryptor.py", "secret key rate")])
def test_an_example_killed_with_sigterm_removes_its_network_state(tmp_path: Path, name: str, running: str):
    """`kill` (or a time-out's SIGTERM) while the example's network starts, or once its output
    says `running` (the example under way): it stops as after Ctrl-C and its state directory
    (CA key, SAE keys, key stores) goes (run_script)."""
    example = next(p for p in EXAMPLES if p.name == name)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "stdout"
    with out.open("w") as sink:
        p = subprocess.Popen([sys.executable, str(example)], cwd=tmp_path, stdout=sink, stderr=subprocess.PIPE,
                             text=True, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), "HOME": str(tmp_path),
                                             "PYTHONUNBUFFERED": "1"})
    # while its network starts (its key stores exist), or once its output says `running`
    err = signal_when(p, lambda: bool(list(tmp.glob("*/nodes/*/data/keys.sqlite"))) and running in out.read_text())
    assert p.returncode == 130, err[-2000:]
    assert f"{example.stem}: interrupted" in err
    assert list(tmp.iterdir()) == [], err[-2000:]


def test_network_processes_import_the_installed_package_not_the_current_directory(tmp_path: Path, monkeypatch):
    """`sdqkd net up` / `sdqkd demo` run from a source checkout after `pip install .`: the node
    processes must not import the checkout (its C extensions are not built there)."""
    from sdqkd.harness import network

    fake = tmp_path / "runtime"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the source tree in the current directory was imported')\n")
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "child.log"
    proc = network._spawn(["--version"], log)
    assert proc.wait(60) == 0, log.read_text()
    assert log.read_text().startswith("sdqkd ")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_help_says_what_an_example_does_and_starts_nothing(example: Path, tmp_path: Path):
    r = subprocess.run([sys.executable, str(example), "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: "), r.stdout[-1000:] + r.stderr[-1000:]
    assert "starting" not in r.stdout and list(tmp_path.iterdir()) == []
