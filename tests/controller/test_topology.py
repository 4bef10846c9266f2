"""Topology files: the contract format, and a clear error before anything starts."""

from __future__ import annotations

import pytest

from runtime.controller.topology import TopologyError, link_id, load, node_id, parse, reach_db

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
    (lambda d: d["links"].append({"a": "A", "b": "C", "km": -3}), "km must be a number >= 0"),
    (lambda d: d["links"].append({"a": "A", "b": "C", "km": 400}), "beyond the reach of profile 'commercial'"),
    (lambda d: d["links"].append({"a": "A", "b": "C", "km": 10, "profile": "nope"}), "unknown profile 'nope'"),
    (lambda d: d["links"].append({"a": "B", "b": "A", "km": 3}), "duplicate link between B and A"),
    (lambda d: d["links"].append({"a": "A", "b": "A", "km": 3}), "two different nodes"),
    (lambda d: d["saes"].append({"name": "sae-a", "node": "B"}), "duplicate SAE name 'sae-a'"),
    (lambda d: d["saes"].append({"name": "sae-x", "node": "Q"}), "unknown node 'Q'"),
    (lambda d: d.update(colour="blue"), "colour: unknown key"),
    (lambda d: d["nodes"].append({"name": "D", "id": "not-a-uuid"}), "is not a UUID"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-q"}]), "apps[0].slave: unknown SAE 'sae-q'"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-a"}]), "apps[0]: master and slave must differ"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-c", "rate": -1}]), "apps[0].rate: expected bit/s"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-c", "priority": "hi"}]), "apps[0].priority"),
    (lambda d: d.update(apps=[{"master": "sae-a", "slave": "sae-c", "qos": 1}]), "apps[0].qos: unknown key"),
    (lambda d: d.update(apps={"master": "sae-a"}), "apps: expected a list"),
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
