"""The `sdqkd` command line as users meet it: version, help with examples, clean errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata

import pytest

from sdqkd.cli import build_parser


def sdqkd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sdqkd.cli", *args], capture_output=True, text=True, timeout=120)


def _subparsers(p: argparse.ArgumentParser, prefix: str = "sdqkd"):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def test_version():
    r = sdqkd("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"sdqkd {metadata.version('sdqkd')}"


def test_every_subcommand_has_a_description_and_an_example():
    subs = dict(_subparsers(build_parser()))
    assert {"sdqkd demo", "sdqkd net up", "sdqkd net down", "sdqkd net status", "sdqkd node", "sdqkd plot",
            "sdqkd gen", "sdqkd bench", "sdqkd controller"} <= set(subs)
    for name, p in subs.items():
        assert p.description, name
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        assert p.epilog and "examples:" in p.epilog, name
        if leaf:  # every example of a leaf command starts with that command (or a wrapper of it)
            for line in p.epilog.splitlines()[1:]:
                assert name in line, (name, line)
        assert "as they land" not in p.format_help(), name


@pytest.mark.parametrize("args, words", [
    (("plot", "keyrate", "--profile", "bogus"), "invalid choice: 'bogus' (choose from 'commercial', 'snspd')"),
    (("net", "up", "t.yaml", "--state-dir", "s", "--timeout", "soon"), "invalid float value: 'soon'"),
    (("net", "sideways", "--state-dir", "s"), "invalid choice: 'sideways'"),
    (("demo", "--seconds", "x"), "invalid float value: 'x'"),
])
def test_bad_option_values_are_one_clear_line(args, words):
    r = sdqkd(*args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_user_file_errors_are_not_tracebacks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [{name: A}]\nlinks: [{a: A, b: Q, km: 1}]\n")
    r = sdqkd("plot", "topology", "--topology", str(bad), "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and f"{bad}:2: links[0] (A-Q): unknown node 'Q'" in r.stderr and "Traceback" not in r.stderr
    r = sdqkd("plot", "topology", "--state-dir", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "not a network's state directory" in r.stderr and "Traceback" not in r.stderr
    r = sdqkd("net", "status", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "no network status here" in r.stderr
    r = sdqkd("net", "down", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "no network runs here" in r.stderr and "Traceback" not in r.stderr
