"""Reading the project's YAML files (node configs, topologies) with one kind of error message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, error: type[Exception]) -> Any:
    """The document in `path`; `error("FILE: what is wrong")` when it cannot be read or parsed."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML ({e})") from None
