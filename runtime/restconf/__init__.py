"""RESTCONF (RFC 8040) northbound of a node: a thin wire layer over the agent's model and
transaction (adapter.py is its only door into them), generated resource map
(generated/restconf.py), and the compatibility dialect ETSI TeraFlowSDN speaks (compat.py)."""

from .adapter import ModelAdapter
from .auth import Credentials
from .serve import start_restconf, tls_context
from .server import RestconfServer

__all__ = ["Credentials", "ModelAdapter", "RestconfServer", "start_restconf", "tls_context"]
