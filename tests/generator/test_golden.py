"""Golden files pin every emitter on a small test model (tests/generator/fixtures/tiny).
After an intended change of an emitter: SDQKD_UPDATE_GOLDEN=1 pytest tests/generator/test_golden.py"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from genutil import FIXTURES, run_py

from sdqkd.codegen import generate

GOLDEN = Path(__file__).parent / "golden"
EMITTERS = ["schema.py", "paths.py", "model_types.py", "agent_skeleton.py", "client.py", "gnmi_support.py",
            "__init__.py", "bindings.py", "restconf.py", "proto/tiny/tiny_pb2.py", "proto/tiny/tiny_pb2_grpc.py"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    shutil.copytree(FIXTURES / "tiny" / "models", root / "models")
    # the tiny model needs gNMI for the skeleton and client
    shutil.copytree(Path(__file__).parents[2] / "models" / "proto" / "gnmi", root / "models" / "proto" / "gnmi")
    generate(root)
    return root


@pytest.mark.parametrize("name", EMITTERS)
def test_emitter_output_matches_golden(tiny: Path, name: str):
    got = (tiny / "generated" / name).read_text()
    golden = GOLDEN / (name.replace("/", "__") + ".golden")
    if os.environ.get("SDQKD_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text(), f"{name} differs from {golden}; see the module docstring to update"


def test_tiny_model_renames_and_types(tiny: Path):
    code = """
from sdqkd.generated import schema, paths, agent_skeleton, model_types
item = schema.NODES['/box/item']
assert item['keys'] == ['item-id'] and item['unique'] == 'item'
assert schema.NODES['/box/item/in']['pyname'] == 'in_'
assert schema.NODES['/box/fill']['type'] == {'typedef': 'tiny:percent', 'base': 'uint8', 'range': [[0, 100]]}
assert schema.NODES['/box/fill']['default'] == '50'
assert schema.NODES['/box/name']['mandatory'] and schema.NODES['/box/name']['type']['patterns'] == ['[a-z]+']
assert schema.NODES['/box/status']['config'] is False
assert schema.NODES['/box/item/colour']['type']['identities'] == ['tiny:blue', 'tiny:red']
assert schema.NODES['/box/item/red-shade']['when']['equals'] == 'tiny:red'
assert [u['base'] for u in schema.NODES['/box/item/size']['type']['union']] == ['uint8', 'string']
assert schema.NODES['/box-opened']['kind'] == 'notification'
p = paths.box().item(item_id=3).in_
assert [e.name for e in p.elem] == ['box', 'item', 'in'] and dict(p.elem[1].key) == {'item-id': '3'}
assert str(paths.box().item()) == '/box/item[item-id=*]'
assert agent_skeleton.HOOKS == {'/box': 'box', '/box/item': 'item'}
assert agent_skeleton.NOTIFICATIONS == {'box-opened': ('tiny', '/box-opened')}
assert model_types.Item.__annotations__['weight'] is str  # decimal64: exact text, as in JSON_IETF
assert model_types.BoxOpenedDetailStep.__annotations__['n'] is int and 'BoxOpenedDetail' in model_types.__all__
print('ok')
"""
    r = run_py(tiny, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_emitted_code_passes_the_type_gate(tiny: Path):
    """The tiny model's output (nested notification, decimal64, identityref, union, keyword
    name) passes mypy under the project's own configuration, as generated/ does."""
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    code = """
from sdqkd.generated import model_types as t, client, paths
opened: t.BoxOpened = {"by": "x", "detail": {"reason": "r", "angle": "12.5", "step": [{"n": 1, "note": "a"}]}}
item: t.Item = {"item-id": 3, "weight": "1.25"}
"""
    # the tiny tree's generated/ as the package sdqkd.generated (as .ci/typecheck.py lays out ours)
    (tiny / "typecheck" / "sdqkd").mkdir(parents=True)
    (tiny / "typecheck" / "sdqkd" / "__init__.py").write_text("")
    (tiny / "typecheck" / "sdqkd" / "generated").symlink_to(tiny / "generated")
    (tiny / "typecheck" / "sdqkd" / "errors.py").symlink_to(root / "runtime" / "errors.py")  # HookVeto's root
    env = dict(os.environ, MYPYPATH=str(tiny / "typecheck"))

    def mypy(*targets: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(root / "pyproject.toml"),
                               "--cache-dir", str(tiny / ".mypy_cache"), *targets],
                              capture_output=True, text=True, cwd=tiny, env=env, timeout=600)

    (tiny / "use_types.py").write_text(code)
    r = mypy("typecheck/sdqkd", "use_types.py")
    assert r.returncode == 0, r.stdout + r.stderr
    (tiny / "use_types.py").write_text(code.replace('"angle": "12.5"', '"angle": 12.5'))
    r = mypy("use_types.py")
    assert r.returncode == 1 and "angle" in r.stdout  # decimal64 is its exact text, not a float
