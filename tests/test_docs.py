"""The docs users read are complete and in the repo: every schema field documented, every
subcommand in docs/cli.md, every relative link resolving, no pointer to files users lack."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from sdqkd import schemas
from sdqkd.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _fields(model: type[BaseModel]) -> set[str]:
    out = set(model.model_fields)
    for f in model.model_fields.values():
        inner = schemas._model_in(f.annotation)
        if inner is not None:
            out |= _fields(inner)
    return out


def test_every_schema_field_is_documented():
    topo = (ROOT / "docs" / "topology.md").read_text()
    missing = [f for f in _fields(schemas.TopologyFile) if f"`{f}`" not in topo]
    assert not missing, f"docs/topology.md lacks {missing}"
    node = (ROOT / "docs" / "node-config.md").read_text()
    missing = [f for f in _fields(schemas.NodeConfigFile) if f"`{f}`" not in node]
    assert not missing, f"docs/node-config.md lacks {missing}"


def test_every_subcommand_is_in_the_cli_page():
    page = (ROOT / "docs" / "cli.md").read_text()
    import argparse

    def walk(p: argparse.ArgumentParser, prefix: str):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield f"{prefix} {name}"
                    yield from walk(sub, f"{prefix} {name}")

    for cmd in walk(build_parser(), "sdqkd"):
        if cmd != "sdqkd net":
            assert f"`{cmd}" in page, cmd


def test_every_benchmark_is_named_in_the_cli_page():
    from sdqkd import bench

    row = next(line for line in (ROOT / "docs" / "cli.md").read_text().splitlines() if "`sdqkd bench [NAME" in line)
    missing = [name for name in bench.available() if f"`{name}`" not in row]
    assert not missing, f"docs/cli.md's `sdqkd bench` row lacks {missing}"


def test_no_page_points_at_files_users_do_not_have():
    for page in PAGES:
        text = page.read_text()
        assert "DESIGN" not in text and "shared/" not in text, page
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page}: broken link {target}"
