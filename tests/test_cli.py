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
    (("net", "up", "t.yaml", "--state-dir", "s", "--timeout", "soon"), "must be a number > 0, not 'soon'"),
    (("net", "sideways", "--state-dir", "s"), "invalid choice: 'sideways'"),
    (("demo", "--seconds", "x"), "must be a number > 0, not 'x'"),
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


# ------------------------------------------------------------------ sdqkd bench: benchmarks, not helpers


def _real_benchmarks() -> set[str]:
    """The modules of sdqkd.bench with a `main`, found by importing them (bench.available() reads
    their source instead, so this is an independent count)."""
    import importlib
    import pkgutil

    from sdqkd import bench

    mods = [m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")]
    return {n for n in mods if callable(getattr(importlib.import_module(f"sdqkd.bench.{n}"), "main", None))}


def test_bench_lists_every_benchmark_and_no_helper():
    import re

    real = _real_benchmarks()
    assert {"kms", "link", "reliability", "restconf"} <= real and not {"_h2stream", "_timing", "_proc"} & real
    r = sdqkd("bench", "--help")
    listed = re.search(r"Run one benchmark \(([^)]*)\)", r.stdout)
    assert r.returncode == 0 and listed, r.stdout
    assert set(listed.group(1).split(", ")) == real
    r = sdqkd("bench")
    assert r.returncode == 0 and set(r.stdout.strip().removeprefix("benchmarks: ").split(", ")) == real


@pytest.mark.parametrize("name", ["nosuch", "_timing"])
def test_unknown_benchmark_is_a_usage_error_naming_the_benchmarks(name):
    r = sdqkd("bench", name, "--help")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"unknown benchmark {name!r}" in r.stderr
    assert all(b in r.stderr for b in _real_benchmarks()), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_helper_modules_stay_importable():
    from sdqkd.bench._h2stream import client_context, get_keys  # noqa: F401
    from sdqkd.bench._timing import percentile

    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_every_listed_benchmark_answers_help(capsys):
    from sdqkd import bench

    for name in bench.available():  # --help parses and exits 0 before any work is done
        with pytest.raises(SystemExit) as e:
            bench.run(name, ["--help"])
        assert e.value.code == 0, name
        assert f"sdqkd bench {name}" in capsys.readouterr().out, name


# ------------------------------------------------------------------ --state-dir that holds no network


def test_controller_refuses_a_missing_state_dir_and_creates_nothing(tmp_path):
    nope = tmp_path / "nope"
    r = sdqkd("controller", "--state-dir", str(nope))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"no such file {nope / 'network.json'}" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not nope.exists()
    r = sdqkd("controller", "--state-dir", str(nope), "--config", str(tmp_path / "elsewhere" / "controller.json"))
    assert r.returncode == 2 and f"no such file {tmp_path / 'elsewhere' / 'controller.json'}" in r.stderr
    assert "Traceback" not in r.stderr and not nope.exists()


def test_net_up_refuses_a_bad_topology_alone_and_creates_nothing(tmp_path):
    topo = tmp_path / "bad.yaml"
    topo.write_text("nodes: [{name: A}]\nlinks: [{a: A, b: Z, km: 1}]\n")
    r = sdqkd("net", "up", str(topo), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2 and r.stderr.strip() == f"{topo}:2: links[0] (A-Z): unknown node 'Z' (nodes: A)", r.stderr
    assert not (tmp_path / "s").exists()


def test_controller_refuses_a_broken_network_description(tmp_path):
    (tmp_path / "network.json").write_text("{\n")
    r = sdqkd("controller", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and f"{tmp_path / 'network.json'}: not JSON" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "network.json").write_text('{"ca": "ca.pem", "controller": {}}')
    r = sdqkd("controller", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and f"ca: no such file {tmp_path / 'ca.pem'}" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["network.json"]  # no status file either


@pytest.mark.parametrize("args", [("net", "status"), ("net", "down"), ("plot", "topology", "--out", "x.png")])
def test_state_dir_commands_refuse_a_missing_dir_and_create_nothing(tmp_path, args):
    nope = tmp_path / "nope"
    r = sdqkd(*args, "--state-dir", str(nope))
    assert r.returncode == 2 and str(nope) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not nope.exists()


# ------------------------------------------------------------------ what net up and the demo print


def test_net_up_summary_names_the_token_file_the_harness_wrote(tmp_path, monkeypatch):
    from pathlib import Path

    from sdqkd.controller.topology import parse
    from sdqkd.harness import netcli, network

    monkeypatch.chdir(tmp_path)
    topo = parse({"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": 5}]})
    network.prepare(topo, tmp_path / "lab")  # PKI and configs only: nothing starts
    text = netcli.summary(Path("lab"), {}, {"links": [], "api": "127.0.0.1:1"}, 1.0)
    shown = text.split("bearer token in ", 1)[1].split(":", 1)[0]
    assert shown == "lab/pki/controller/northbound-token", text
    assert len(Path(shown).read_text().strip()) == 64  # the token itself (hex)


def test_nodes_not_yet_reached_are_starting_not_down():
    from sdqkd.harness.netcli import table

    assert "nodes starting: B" in table({"provisioned": False, "links": [], "nodes": {"A": True, "B": False}})
    assert "nodes down: B" in table({"provisioned": True, "links": [], "nodes": {"A": True, "B": False}})
    assert "nodes" not in table({"provisioned": False, "links": [], "nodes": {"A": True}})


def test_a_paused_link_is_shown_up_and_paused():
    from sdqkd.harness.netcli import table

    row = {"link": "A-B", "km": 10, "db": 2.0, "qber": 0.01, "skr": 2e6, "stored_keys": 100_000, "up": True}
    assert table({"links": [{**row, "paused": True}]}).splitlines()[1].endswith("up, paused: key pool full")
    assert table({"links": [{**row, "paused": False}]}).splitlines()[1].endswith("  up")
    assert table({"links": [{**row, "up": False, "paused": True}]}).splitlines()[1].endswith("coming up")


def test_a_disabled_link_and_the_app_it_leaves_unserved_are_said_so():
    """qkdl_enable false (the node reports qkdl_status OFF) was shown as "coming up", and the app
    whose only path crosses it as served on that path."""
    from sdqkd.harness.netcli import table

    row = {"km": 10, "db": 2.0, "qber": None, "skr": None, "stored_keys": 0, "up": False}
    st = {"provisioned": True, "nodes": {"A": True, "B": True, "C-1": False},
          "links": [{**row, "link": "A-B", "disabled_at": ["B"]}, {**row, "link": "B-C-1", "disabled_at": []}],
          "apps": [{"master": "sae-a", "slave": "sae-b", "path": ["A", "B"], "virtual": False, "links_down": ["A-B"]},
                   {"master": "sae-a", "slave": "sae-c", "path": ["A", "B", "C-1"], "virtual": True,
                    "links_down": ["A-B", "B-C-1"]},
                   {"master": "sae-b", "slave": "bx1", "path": ["B", "ext:vendorx"], "virtual": False,
                    "links_down": []}]}
    lines = table(st).splitlines()
    assert lines[1].endswith("  disabled at B") and lines[2].endswith("  down (node C-1 down)")
    assert lines[4] == "  app sae-a -> sae-b: path A - B (direct)  NOT SERVED: link A-B disabled at B"
    assert lines[5].endswith("(relayed)  NOT SERVED: link A-B disabled at B; link B-C-1 down (node C-1 down)")
    assert lines[6] == "  app sae-b -> bx1: path B - ext:vendorx (direct)"
    st["provisioned"] = False  # not reached yet: starting, not down
    assert table(st).splitlines()[2].endswith("  coming up")


def test_demo_says_how_to_get_the_plot_extra(monkeypatch):
    from sdqkd import demo

    monkeypatch.setattr(demo, "_plot_extra_missing", lambda: True)
    assert "pip install '.[plot]'" in demo._next_steps(None)
    monkeypatch.setattr(demo, "_plot_extra_missing", lambda: False)
    assert "pip install" not in demo._next_steps(None)


def test_net_export_bundle_example_works_with_the_quickstart_topology(tmp_path, monkeypatch):
    import shlex

    from sdqkd.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lab.yaml").write_text(
        "name: lab\nnodes:\n  - {name: A}\n  - {name: B}\n  - {name: C}\n"
        "links:\n  - {a: A, b: B, km: 20}\n  - {a: B, b: C, km: 35}\n"
        "saes:\n  - {name: sae-a, node: A}\n  - {name: sae-c, node: C}\n")
    export = dict(_subparsers(build_parser()))["sdqkd net export"]
    line = next(line for line in export.epilog.splitlines() if "--format bundle" in line)
    assert main(shlex.split(line.split("#")[0])[1:]) == 0
    assert (tmp_path / "lab-bundle" / "nodes" / "C" / "node.yaml").is_file()


def test_net_status_of_a_controller_started_on_its_own(tmp_path, capsys):
    """A deployed controller (docs/deploy.md) has no pids.json: it runs while it refreshes its
    status file (every second), and is shown stopped once the file is old."""
    import json
    import os
    import time

    from sdqkd.harness.netcli import status

    f = tmp_path / "controller-status.json"
    f.write_text(json.dumps({"api": "127.0.0.1:8080", "links": [], "nodes": {"alice": True}}))
    assert status(str(tmp_path)) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path}: controller API http://127.0.0.1:8080\n")
    old = time.time() - 60
    os.utime(f, (old, old))
    assert status(str(tmp_path)) == 0
    assert f"{tmp_path}: stopped: last status from" in capsys.readouterr().out
    # a `net up` state dir just stopped (`net down` removed pids.json; the file is still fresh)
    (tmp_path / "network.json").write_text("{}")
    os.utime(f)
    assert status(str(tmp_path)) == 0
    assert f"{tmp_path}: stopped: last status from" in capsys.readouterr().out
