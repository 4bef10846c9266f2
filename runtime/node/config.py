"""Node configuration (YAML, docs/node-config.md), checked whole before anything starts against
the schema in `sdqkd.schemas`; every problem is reported as `FILE:LINE: key: what is wrong`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdqkd import schemas
from sdqkd.errors import SdqkdError
from sdqkd.pki import TlsFiles
from sdqkd.yamlfile import Lines, dotted, read_yaml_lines


class ConfigError(SdqkdError, ValueError):
    pass


@dataclass
class Settings:
    """`applications:` (runtime/node/apps.py): how long a first ETSI 014 request waits for its key
    path, when an idle registration ends, and which node each SAE is at (validated in schemas.py).
    Here, not in apps.py, so that reading a config (`sdqkd health`) does not import the LKMS."""

    first_request_wait_s: float = 3.0
    idle_timeout_s: float = 900.0
    sae_nodes: dict[str, str] | None = None


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
    channel_listen: str = "127.0.0.1:0"  # the engines' classical channel (runtime/node/channel.py)
    bootstrap: dict[str, Path] = field(default_factory=dict)  # peer node id -> shared secret file
    engine: dict[str, Any] = field(default_factory=dict)
    etsi004_server: str = "h2"  # lkms.etsi004_server: "h2" (fast, default) or "grpcio"
    max_key_count: int | None = None  # lkms.max_key_count: keys per link pool before the engine pauses (None: Limits')
    erase_deleted_links: bool = False  # lkms.erase_deleted_links: a link deleted from the model erases its pool
    peers: dict[str, str] = field(default_factory=dict)  # peer node ID -> name (for logs: link A-B)
    log_format: str = "text"  # `log: {format: text|json, level: INFO}`: to stdout either way
    log_level: str = "INFO"
    etsi020_listen: str = "127.0.0.1:0"
    external_peers: list[dict[str, Any]] = field(default_factory=list)  # etsi020.external_peers, ca absolute
    applications: Settings = field(default_factory=Settings)
    raw: dict[str, Any] = field(default_factory=dict)
    # RESTCONF northbound: listen address, TLS mode (mutual | server | none), bearer tokens
    restconf_listen: str = "127.0.0.1:0"
    restconf_tls: str = "mutual"
    restconf_tokens: list[str] = field(default_factory=list)
    restconf_plain_outside_loopback: bool = False
    restconf_anonymous: bool = False  # no credentials asked (restconf.anonymous)
    # QKD interfaces and the fibre behind each: [{id, att_point: {device, port}, peer: {node,
    # interface, endpoint, channel}, fibre: {km, loss_db, profile}}] (seeded into qkd_interfaces)
    interfaces: list[dict[str, Any]] = field(default_factory=list)
    # a vendor's hooks (`hooks:`): a NodeProvisioning subclass, built with the node as ours is
    hooks: type | None = None


def _files(raw: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """(place, relative path) of every file a config names, read from the raw document so that
    missing files are reported together with the schema's problems."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    if not isinstance(raw, dict):
        return out
    tls = raw.get("tls")
    if isinstance(tls, dict):
        out += [(("tls", k), tls[k]) for k in ("ca", "cert", "key") if isinstance(tls.get(k), str)]
    boot = raw.get("bootstrap")
    if isinstance(boot, dict):
        out += [(("bootstrap", str(k)), v) for k, v in boot.items() if isinstance(v, str)]
    e20 = raw.get("etsi020")
    peers = e20.get("external_peers") if isinstance(e20, dict) else None
    if isinstance(peers, list):
        out += [(("etsi020", "external_peers", i, "ca"), q["ca"]) for i, q in enumerate(peers)
                if isinstance(q, dict) and isinstance(q.get("ca"), str)]
    return out


def _readable_by_others(f: Path) -> bool:
    return bool(f.stat().st_mode & 0o077)


def _passwords(model: schemas.NodeConfigFile, p: Path, lines: Lines, problems: list[str]) -> dict[str, str]:
    """`users: {name: password}` or `{name: {password_file: FILE}}` (top level or under gnmi). A
    password never sits in a file other users can read: an inline one needs the config itself to
    be 0600 (or 0400), a password file likewise."""
    where = ("users",) if model.users is not None else ("gnmi", "users")
    out: dict[str, str] = {}
    for name, spec in (model.users or model.gnmi.users or {}).items():
        at = f"{lines.where((*where, name))}: {dotted((*where, name))}"
        if isinstance(spec, str):
            if _readable_by_others(p):
                problems.append(f"{at}: an inline password in a file other users can read; chmod 600 {p} "
                                "or use password_file")
            out[name] = spec
            continue
        f = p.parent / spec.password_file
        if not f.is_file():
            problems.append(f"{at}.password_file: no such file {f}")
        elif _readable_by_others(f):
            problems.append(f"{at}.password_file: {f} is readable by other users; chmod 600 it")
        else:
            out[name] = f.read_text().strip()
    return out


def load_config(path: str | Path) -> NodeConfig:
    """Parse and check a node config file (docs/node-config.md); ConfigError lists every problem
    (schema, missing files, addresses) as `FILE:LINE: key: what is wrong`."""
    p = Path(path)
    base = p.parent
    raw, lines = read_yaml_lines(p, ConfigError)
    model, problems = schemas.problems(schemas.NodeConfigFile, raw, lines)
    problems += [f"{lines.where(loc)}: {dotted(loc)}: no such file {base / f}" for loc, f in _files(raw)
                 if not (base / f).is_file()]
    if model is None:
        raise ConfigError("\n".join(problems))
    tls = None
    if model.tls is not None:
        tls = TlsFiles(base / model.tls.ca, base / model.tls.cert, base / model.tls.key)
    listens = {k: getattr(model, k).listen for k in ("gnmi", "etsi014", "etsi004", "peer", "etsi020", "channel")}
    externals = []
    for peer in model.etsi020.external_peers:
        q = peer.model_dump(exclude_unset=True)
        if peer.ca is not None:
            q["ca"] = str(base / peer.ca)
        externals.append(q)
    if tls is None:
        from sdqkd.agent.serve import is_loopback

        problems += [f"{lines.where((k, 'listen'))}: {k}.listen: {v} is not a loopback address; without `tls` "
                     "a node serves loopback only" for k, v in listens.items() if not is_loopback(v)]
    restconf = _restconf(model, tls is not None, lines, problems)
    if tls is None and not restconf.plain_http_outside_loopback and restconf.listen is not None:
        from sdqkd.agent.serve import is_loopback

        if not is_loopback(restconf.listen):
            problems.append(f"{lines.where(('restconf', 'listen'))}: restconf.listen: {restconf.listen} is not a "
                            "loopback address; without `tls` a node serves loopback only")
    seen: set[int] = set()
    for i, itf in enumerate(model.interfaces):
        if itf.id in seen:
            problems.append(f"{lines.where(('interfaces', i, 'id'))}: interfaces[{i}].id: {itf.id} given twice")
        seen.add(itf.id)
    if model.users is not None and model.gnmi.users is not None:
        problems.append(f"{lines.where(('gnmi', 'users'))}: gnmi.users: give users once (top level or under gnmi)")
    users = _passwords(model, p, lines, problems)
    hooks = _hooks(model.hooks, base, f"{lines.where(('hooks',))}: hooks", problems) if model.hooks else None
    if problems:
        raise ConfigError("\n".join(problems))
    return NodeConfig(
        id=model.id, name=model.name, gnmi_listen=listens["gnmi"], etsi014_listen=listens["etsi014"],
        etsi004_listen=listens["etsi004"], data_dir=base / model.data_dir, tls=tls,
        saes=[s.model_dump() for s in model.saes], location=model.location,
        users=users, gnmi_mutual_tls=model.gnmi.mutual_tls,
        peer_listen=listens["peer"], bootstrap={k: base / f for k, f in model.bootstrap.items()},
        engine=model.engine.model_dump(exclude_none=True),
        etsi004_server=model.lkms.etsi004_server, max_key_count=model.lkms.max_key_count, peers=dict(model.peers),
        erase_deleted_links=model.lkms.erase_deleted_links,
        log_format=model.log.format, log_level=model.log.level,
        etsi020_listen=listens["etsi020"], external_peers=externals, channel_listen=listens["channel"],
        applications=Settings(first_request_wait_s=model.applications.first_request_wait_s,
                              idle_timeout_s=model.applications.idle_timeout_s,
                              sae_nodes=dict(model.applications.sae_nodes) if model.applications.sae_nodes else None),
        raw=raw,
        restconf_listen=restconf.listen or "127.0.0.1:0", restconf_tls=restconf.tls or "none",
        restconf_tokens=list(restconf.bearer_tokens),
        restconf_plain_outside_loopback=restconf.plain_http_outside_loopback,
        restconf_anonymous=restconf.anonymous,
        interfaces=[i.model_dump(exclude_none=True) for i in model.interfaces],
        hooks=hooks,
    )


def _hooks(ref: str, base: Path, at: str, problems: list[str]) -> type | None:
    """The vendor's hooks class `module:Class` (importable) or `file.py:Class` (beside the
    config): a subclass of NodeProvisioning, so that the node's own hooks still run."""
    from sdqkd.node.provisioning import NodeProvisioning

    where, name = ref.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            f = base / where
            if not f.is_file():
                problems.append(f"{at}: no such file {f}")
                return None
            spec = importlib.util.spec_from_file_location(f"sdqkd_vendor_hooks.{f.stem}", f)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and typing look their module up
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:  # noqa: BLE001 - whatever the vendor's module raises is reported, not a traceback
        problems.append(f"{at}: cannot import {where}: {type(e).__name__}: {e}")
        return None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, NodeProvisioning)):
        problems.append(f"{at}: {ref} is not a subclass of sdqkd.node.provisioning.NodeProvisioning"
                        + ("" if cls is not None else f" ({where} has no {name})"))
        return None
    return cls


def _restconf(model: schemas.NodeConfigFile, has_tls: bool, lines: Lines,
              problems: list[str]) -> schemas.RestconfSection:
    """`restconf:` with its defaults made explicit: the gNMI host with port 0, and mutual TLS
    when the node has `tls` (plain HTTP otherwise, loopback only)."""
    given = model.restconf or schemas.RestconfSection()
    host = model.gnmi.listen.rsplit(":", 1)[0] or "127.0.0.1"
    tls = given.tls or ("mutual" if has_tls else "none")
    if tls != "none" and not has_tls:
        problems.append(f"{lines.where(('restconf', 'tls'))}: restconf.tls: {tls} needs the node's `tls` files")
    return given.model_copy(update={"listen": given.listen or f"{host}:0", "tls": tls})
