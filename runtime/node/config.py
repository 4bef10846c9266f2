"""Node configuration (YAML, docs/node-config.md), checked whole before anything starts against
the schema in `runtime.schemas`; every problem is reported as `FILE:LINE: key: what is wrong`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import schemas
from runtime.node.apps import Settings
from runtime.pki import TlsFiles
from runtime.yamlfile import read_yaml_lines


class ConfigError(ValueError):
    pass


@dataclass
class NodeConfig:
    id: str
    name: str
    gnmi_listen: str
    etsi014_listen: str
    etsi004_listen: str
    data_dir: Path
    tls: TlsFiles | None
    saes: list[dict[str, Any]]
    location: str = ""
    users: dict[str, str] = field(default_factory=dict)
    gnmi_mutual_tls: bool = True
    peer_listen: str = "127.0.0.1:0"
    bootstrap: dict[str, Path] = field(default_factory=dict)  # peer node id -> shared secret file
    engine: dict[str, Any] = field(default_factory=dict)
    etsi004_server: str = "h2"  # lkms.etsi004_server: "h2" (fast, default) or "grpcio"
    peers: dict[str, str] = field(default_factory=dict)  # peer node ID -> name (for logs: link A-B)
    applications: Settings = field(default_factory=Settings)
    raw: dict[str, Any] = field(default_factory=dict)


def load_config(path: str | Path) -> NodeConfig:
    """Parse and check a node config file (docs/node-config.md); ConfigError lists every problem
    as `FILE:LINE: key: what is wrong`."""
    p = Path(path)
    raw, lines = read_yaml_lines(p, ConfigError)
    model, problems = schemas.problems(schemas.NodeConfigFile, raw, lines)
    if model is None:
        raise ConfigError("\n".join(problems))
    base = p.parent
    tls = None
    if model.tls is not None:
        files = {k: base / getattr(model.tls, k) for k in ("ca", "cert", "key")}
        problems += [f"{lines.where(('tls', k))}: tls.{k}: no such file {f}" for k, f in files.items() if not f.is_file()]
        tls = TlsFiles(files["ca"], files["cert"], files["key"])
    listens = {k: getattr(model, k).listen for k in ("gnmi", "etsi014", "etsi004", "peer")}
    if tls is None:
        from runtime.agent.serve import is_loopback

        problems += [f"{lines.where((k, 'listen'))}: {k}.listen: {v} is not a loopback address; without `tls` "
                     "a node serves loopback only" for k, v in listens.items() if not is_loopback(v)]
    if model.users is not None and model.gnmi.users is not None:
        problems.append(f"{lines.where(('gnmi', 'users'))}: gnmi.users: give users once (top level or under gnmi)")
    bootstrap = {peer_id: base / f for peer_id, f in model.bootstrap.items()}
    problems += [f"{lines.where(('bootstrap', k))}: bootstrap.{k}: no such file {f}"
                 for k, f in bootstrap.items() if not f.is_file()]
    if problems:
        raise ConfigError("\n".join(problems))
    return NodeConfig(
        id=model.id, name=model.name, gnmi_listen=listens["gnmi"], etsi014_listen=listens["etsi014"],
        etsi004_listen=listens["etsi004"], data_dir=base / model.data_dir, tls=tls,
        saes=[s.model_dump() for s in model.saes], location=model.location,
        users=dict(model.users or model.gnmi.users or {}), gnmi_mutual_tls=model.gnmi.mutual_tls,
        peer_listen=listens["peer"], bootstrap=bootstrap, engine=model.engine.model_dump(exclude_none=True),
        etsi004_server=model.lkms.etsi004_server, peers=dict(model.peers),
        applications=Settings(first_request_wait_s=model.applications.first_request_wait_s,
                              idle_timeout_s=model.applications.idle_timeout_s,
                              sae_nodes=dict(model.applications.sae_nodes) if model.applications.sae_nodes else None),
        raw=raw,
    )
