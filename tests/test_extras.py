"""What a node needs is the core install; the generator's inputs, plotting and the userspace
ESP are extras. The node, controller and harness import none of them, and a command that needs
an extra that is missing says which one to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA_ONLY = {"pyang", "pyangbind", "grpc_tools", "jinja2", "lxml", "matplotlib", "scapy"}

# hide the extras' modules from an interpreter, as on a node installed without them
_BLOCK = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(EXTRA_ONLY)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_core_dependencies_hold_no_extra() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"]).lower()
    for name in ("pyang", "pyangbind", "grpcio-tools", "matplotlib", "scapy"):
        assert name not in core
    extras = meta["optional-dependencies"]
    assert {"gen", "plot", "ipsec"} <= set(extras)
    assert any(d.startswith("sdqkd[") and all(x in d for x in ("gen", "plot", "ipsec")) for d in extras["test"])


def test_node_controller_and_harness_run_without_the_extras() -> None:
    r = _python(f"""
import sdqkd.node.runtime, sdqkd.controller.service, sdqkd.harness.inprocess, sdqkd.demo, sdqkd.cli
sdqkd.cli.build_parser()
from sdqkd.apps import ipsec, tls_psk, encryptor, hybrid, opot
loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {EXTRA_ONLY!r})
print('loaded', loaded)
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "loaded []"


def test_commands_name_the_missing_extra(tmp_path: Path) -> None:
    r = _python(f"import sdqkd.cli; sys.exit(sdqkd.cli.main(['gen', '--check', '--root', {str(ROOT)!r}]))")
    assert r.returncode == 2 and "pip install 'sdqkd[gen]'" in r.stderr, r.stderr
    assert "in a clone of the project: pip install '.[gen]'" in r.stderr
    r = _python(f"import runpy; sys.argv = ['x', '--check', '--root', {str(ROOT)!r}]; "
                "runpy.run_module('sdqkd.codegen', run_name='__main__')")  # as `python -m sdqkd.codegen`
    assert r.returncode == 2 and "pip install 'sdqkd[gen]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _python(f"import sdqkd.cli; sys.exit(sdqkd.cli.main(['plot', 'keyrate', '--out', {str(tmp_path / 'k.png')!r}]))")
    assert r.returncode == 2 and "pip install 'sdqkd[plot]'" in r.stderr, r.stderr
    assert not (tmp_path / "k.png").exists()
