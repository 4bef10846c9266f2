"""Every deploy test writes a whole PKI, bootstrap secrets and key stores under its tmp_path:
removed when the test ends (failures carry the logs they need in their messages), so nothing
secret stays behind in /tmp."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _remove_secrets(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
