"""Topology files: the contract format, and a clear error before anything starts."""

from __future__ import annotations

import pytest

from sdqkd.controller.topology import TopologyError, link_id, load, node_id, parse, reach_db

GOOD = {
    "nodes": [{"name": "A"}, {"name": "B", "location": "lab"}, {"name": "C", "id": "0f5e8a4e-1111-4222-8333-444455556666"}],
    "links": [{"a": "A", "b": "B", "km": 20}, {"a": "B", "b": "C", "km": 35, "loss_db": 9.5, "profile": "commercial"}],
    "saes": [{"name": "sae-a", "node": "A"}, {"name": "sae-c", "node": "C"}],
}


def test_good_topology():
    t = parse(GOOD)
    assert list(t.nodes) == ["A", "B", "C"]
    assert t.nodes["A"].id == node_id("A") and t.nodes["C"].id == "0f5e8a4e-1111-4222-8333-444455556666"
    ab, bc = t.links
    assert ab.loss_db == 4.0 and ab.profile == "commercial" and ab.id == link_id("B", "A")
    assert bc.loss_db == 9.5
    assert t.saes["sae-c"].node == "C"
    assert t.link_between("C", "B") is bc and t.link_between("A", "C") is None


def test_apps_are_parsed():
    t = parse({**GOOD, "apps": [{"master": "sae-a", "slave": "sae-c", "rate": 1000, "priority": 2},
                                {"master": "sae-c", "slave": "sae-a"}]})
    assert [(a.master, a.slave, a.rate, a.priority) for a in t.apps] == [("sae-a", "sae-c", 1000.0, 2),
                                                                          ("sae-c", "sae-a", 0.0, 0)]
    assert parse(GOOD).apps == []


def test_load_from_file(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("nodes: [{name: A}, {name: B}]\nlinks: [{a: A, b: B, km: 10}]\nsaes: []\n")
    assert load(f).links[0].km == 10
    f.write_text("nodes: [{name: A}\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load(f)
    with pytest.raises(TopologyError, match="cannot read"):
        load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("change, words", [
    (lambda d: d["links"].append({"a": "A", "b": "Z", "km": 1}), "unknown node 'Z'"),
    (lambda d: d["nodes"].append({"name": "A"}), "duplicate node name 'A'"),
    (lambda d: d["links"].append({"a": "A", "b": "C", "km": -3}), "links[2] (A-C).km: must be >= 0, got -3"),
    (lambda d: d["links"].append({"a": "A", "b": "C", "km": 400}), "beyond the reach of profile 'commercial'"),
    (lambda d: d["links"].append({"a": "A", "b": "C", "km": 10, "profile": "nope"}), "unknown profile 'nope'"),
    (lambda d: d["links"].append({"a": "B", "b": "A", "km": 3}), "duplicate link between B and A"),
    (lambda d: d["links"].append({"a": "A", "b": "A", "km": 3}), "two different nodes"),
    (lambda d: d["saes"].append({"name": "sae-a", "node": "B"}), "duplicate SAE name 'sae-a'"),
    (lambda d: d["saes"].append({"name": "sae-x", "node": "Q"}), "unknown node 'Q'"),
    (lambda d: d.update(colour="blue"), "colour: unknown key"),
    (lambda d: d["nodes"].append({"name": "D", "id": "not-a-uuid"}), "is not a UUID"),
    (lambda d: d.update(settings={"base_prot": 47300}), "settings.base_prot: unknown key (known: "),
    (lambda d: d.update(settings={"clock_scale": "fast"}), "settings.clock_scale: must be a number, got 'fast'"),
    (lambda d: d.update(settings={"cascade_variant": "turbo"}), "settings.cascade_variant: must be one of"),
    (lambda d: d.update(settings={"base_port": 70000}), "settings.base_port: must be <= 65535"),
    (lambda d: d["saes"].append({"name": "sae-x", "nod": "A"}), "saes[2] (sae-x).nod: unknown key (known: name, node)"),
    (lambda d: d["nodes"].append({"name": "D", "colour": "red"}), "nodes[3] (D).colour: unknown key"),
    (lambda d: d["links"].append({"a": "A", "b": "C", "km": "10"}), "links[2] (A-C).km: must be a number, got '10'"),
    (lambda d: d["saes"].append({"name": "../etc", "node": "A"}), "saes[2] (../etc).name: must be 1-64 letters, digits"),
    (lambda d: d["nodes"].append({"name": "node D"}), "nodes[3] (node D).name: must be 1-64 letters"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-q"}]), "apps[0].slave: unknown SAE 'sae-q'"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-a"}]), "apps[0]: master and slave must differ"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-c", "rate": -1}]), "apps[0].rate: must be >= 0, got -1"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-c", "priority": "hi"}]), "apps[0].priority"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-c", "qos": 1}]), "apps[0].qos: unknown key"),
    (lambda d: d.update(apps={"master": "sae-a"}), "apps: must be a list"),
])
def test_bad_topology_is_refused_with_a_clear_error(change, words):
    import copy

    d = copy.deepcopy(GOOD)
    change(d)
    with pytest.raises(TopologyError) as e:
        parse(d, "topo.yaml")
    assert words in str(e.value) and str(e.value).startswith("topo.yaml: ")


def test_reach_of_commercial_profile_is_in_the_30s_of_db():
    assert 30 <= reach_db("commercial") <= 45


def test_negative_km_is_one_clear_message():
    d = {"nodes": [{"name": "A"}, {"name": "B"}], "links": [{"a": "A", "b": "B", "km": -5}]}
    with pytest.raises(TopologyError) as e:
        parse(d, "t.yaml")
    assert str(e.value) == "t.yaml: links[0] (A-B).km: must be >= 0, got -5"


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path):
    f = tmp_path / "lab.yaml"
    f.write_text("nodes:\n  - name: A\n  - name: B\nlinks:\n  - {a: A, b: B, km: 10}\n  - {a: A, b: Z, km: 5}\n"
                 "saes:\n  - {name: s, nod: A}\nsettings:\n  base_prot: 47300\n  restconf: {tls: plain, plane: 1}\n")
    with pytest.raises(TopologyError) as e:
        load(f)
    msg = str(e.value).splitlines()
    assert f"{f}:6: links[1] (A-Z): unknown node 'Z' (nodes: A, B)" in msg
    assert f"{f}:8: saes[0] (s).node: required" in msg
    assert f"{f}:8: saes[0] (s).nod: unknown key (known: name, node)" in msg
    assert (f"{f}:10: settings.base_prot: unknown key (known: clock_scale, block_sifted_bits, cascade_variant, cascade_schedule, "
            "blocks_in_flight, base_port, first_request_wait_s, app_idle_timeout_s, max_key_count, restconf)") in msg
    assert f"{f}:11: settings.restconf.tls: must be one of 'mutual', 'server' or 'none', got 'plain'" in msg
    assert f"{f}:11: settings.restconf.plane: unknown key (known: tls, plain_http_outside_loopback, anonymous)" in msg
    f.write_text("nodes:\n  - name: A\n  - name: B\nlinks:\n  - {a: A, b: Z, km: 5}\n")
    with pytest.raises(TopologyError) as e:
        load(f)
    assert str(e.value) == f"{f}:5: links[0] (A-Z): unknown node 'Z' (nodes: A, B)"


def test_broken_yaml_names_the_file_and_line(tmp_path):
    f = tmp_path / "lab.yaml"
    f.write_text("nodes:\n  - name: A\n  - {name: B\nlinks: []\n")
    with pytest.raises(TopologyError) as e:
        load(f)
    assert str(e.value).startswith(f"{f}:4:") and "not valid YAML" in str(e.value)
    assert "<unicode string>" not in str(e.value)
    f.write_text("nodes: [{name: A}]\nnodes: [{name: B}]\n")
    with pytest.raises(TopologyError, match=f"{f}:2: nodes: duplicate key"):
        load(f)


def test_settings_reach_the_topology():
    t = parse({**GOOD, "settings": {"clock_scale": 0.5, "base_port": 47300, "cascade_variant": "original"}})
    assert t.settings.clock_scale == 0.5 and t.settings.base_port == 47300
    assert t.extra["settings"] == {"clock_scale": 0.5, "base_port": 47300, "cascade_variant": "original"}


def test_schema_variants_follow_the_engine():
    from typing import get_args

    from sdqkd.engine.cascade import VARIANTS
    from sdqkd.schemas import CascadeVariant

    assert set(get_args(CascadeVariant)) == set(VARIANTS)
