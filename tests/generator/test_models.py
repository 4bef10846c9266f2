"""models/ holds the standard files unchanged, with licences and provenance."""

from __future__ import annotations

import hashlib

from genutil import ROOT

PUBLISHED = {
    "etsi-qkd-node-types.yang": "7883ff57519ae201581d8171ea26b4f0fba92cc0c7bdc0bbf9d71568296f9f33",
    "etsi-qkd-sdn-node.yang": "67a3383c7cc24f354b5a7ea4e22deedc8d289d4e722e761c50db61806d929354",
}


def test_etsi_modules_byte_identical_to_published():
    for name, digest in PUBLISHED.items():
        assert hashlib.sha256((ROOT / "models" / "yang" / name).read_bytes()).hexdigest() == digest, name


def test_etsi_license_header_kept():
    for name in PUBLISHED:
        assert "BSD-3 Clause" in (ROOT / "models" / "yang" / name).read_text()[:200]


def test_gnmi_proto_is_0_10_0_with_license():
    text = (ROOT / "models" / "proto" / "gnmi" / "gnmi.proto").read_text()
    assert 'option (gnmi_service) = "0.10.0";' in text
    assert "Apache License" in (ROOT / "models" / "proto" / "gnmi" / "LICENSE.openconfig-gnmi").read_text()


def test_provenance_documents_every_model_file():
    prov = (ROOT / "models" / "README.md").read_text()
    for f in sorted((ROOT / "models").rglob("*")):
        if f.suffix in (".yang", ".proto"):
            assert f.name in prov, f"{f.name} missing from models/README.md"


def test_augmentation_leaves_all_documented():
    text = (ROOT / "models" / "yang" / "sdqkd-node-ext.yang").read_text()
    from sdqkd.generated import schema

    ours = [n for n in schema.NODES.values() if n["module"] == "sdqkd-node-ext"]
    assert len(ours) >= 15
    for n in ours:
        assert n.get("description"), f"{n['name']} has no description"
        assert n["name"] in text
