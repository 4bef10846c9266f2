# The C extension's functions are called only from the typed Python module beside it, which
# states the types; this stub tells the type checker the extension exists (PEP 484 partial stub).
from typing import Any

def __getattr__(name: str) -> Any: ...
