from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from genutil import ROOT


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A vendor's copy of the project: models/ only (generated/ comes from sdqkd gen)."""
    shutil.copytree(ROOT / "models", tmp_path / "models")
    return tmp_path
