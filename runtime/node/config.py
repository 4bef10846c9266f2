"""Node configuration (YAML), checked whole before anything starts; every problem is reported
as `FILE: key: what is wrong`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import SdqkdError
from runtime.node.apps import Settings
from runtime.pki import TlsFiles
from runtime.yamlfile import read_yaml


class ConfigError(SdqkdError, ValueError):
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
    channel_listen: str = "127.0.0.1:0"  # the engines' classical channel (runtime/node/channel.py)
    bootstrap: dict[str, Path] = field(default_factory=dict)  # peer node id -> shared secret file
    engine: dict[str, Any] = field(default_factory=dict)
    log_format: str = "text"  # `log: {format: text|json, level: INFO}`: to stdout either way
    log_level: str = "INFO"
    etsi020_listen: str = "127.0.0.1:0"
    external_peers: list[dict[str, Any]] = field(default_factory=list)  # checked by _external_peers
    applications: Settings = field(default_factory=Settings)
    raw: dict[str, Any] = field(default_factory=dict)
    # RESTCONF northbound: listen address, TLS mode (mutual | server | none), bearer tokens
    restconf_listen: str = "127.0.0.1:0"
    restconf_tls: str = "mutual"
    restconf_tokens: list[str] = field(default_factory=list)
    restconf_plain_outside_loopback: bool = False
    # QKD interfaces and the fibre behind each: [{id, att_point: {device, port}, peer: {node,
    # interface, endpoint}, fibre: {km, loss_db, profile}}] (seeded into qkd_interfaces)
    interfaces: list[dict[str, Any]] = field(default_factory=list)


_PEER_KEYS = {"name", "url", "ca", "identity", "saes", "qkdl_id", "mode", "rate_bps"}


def _external_peers(v: Any, base: Path, problems: list[str]) -> list[dict[str, Any]]:
    """etsi020.external_peers: other vendors' KMSs (runtime.lkms.external); paths made absolute."""
    if v is None:
        return []
    if not isinstance(v, list):
        problems.append("etsi020.external_peers: expected a list of mappings")
        return []
    out: list[dict[str, Any]] = []
    for i, p in enumerate(v):
        key = f"etsi020.external_peers[{i}]"
        if not isinstance(p, dict):
            problems.append(f"{key}: expected a mapping")
            continue
        for k in sorted(set(p) - _PEER_KEYS):
            problems.append(f"{key}.{k}: unknown key (known: {', '.join(sorted(_PEER_KEYS))})")
        for k in ("name", "url", "identity"):
            if not isinstance(p.get(k), str) or not p[k]:
                problems.append(f"{key}.{k}: required, a non-empty string")
        if isinstance(p.get("url"), str) and not p["url"].startswith(("https://", "http://")):
            problems.append(f"{key}.url: expected https://host:port, got {p['url']!r}")
        saes = p.get("saes")
        if not isinstance(saes, list) or not saes or not all(isinstance(s, str) and s for s in saes):
            problems.append(f"{key}.saes: required, a non-empty list of SAE IDs")
        if p.get("mode", "sync") not in ("sync", "async"):
            problems.append(f"{key}.mode: sync or async, got {p.get('mode')!r}")
        rate = p.get("rate_bps")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
            problems.append(f"{key}.rate_bps: expected a positive number")
        if p.get("qkdl_id") is not None:
            try:
                uuid.UUID(str(p["qkdl_id"]))
            except ValueError:
                problems.append(f"{key}.qkdl_id: expected a UUID")
        q = dict(p)
        if p.get("ca") is not None:
            ca = base / str(p["ca"])
            if not ca.is_file():
                problems.append(f"{key}.ca: no such file {ca}")
            q["ca"] = str(ca)
        out.append(q)
    return out


def _listen(v: Any, key: str, problems: list[str]) -> str:
    if not isinstance(v, str) or ":" not in v or not v.rsplit(":", 1)[1].isdigit():
        problems.append(f"{key}: expected host:port, got {v!r}")
        return ""
    port = int(v.rsplit(":", 1)[1])
    if not 0 <= port <= 65535:
        problems.append(f"{key}: port {port} out of range 0..65535")
    return v


def _readable_by_others(f: Path) -> bool:
    return bool(f.stat().st_mode & 0o077)


def _users(v: Any, p: Path, problems: list[str]) -> dict[str, str]:
    """`users: {name: password}` or `{name: {password_file: FILE}}`. A password never sits in a
    file other users can read: an inline one needs the config itself to be 0600 (or 0400), a
    password file likewise."""
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        problems.append("users: expected a mapping username: password or username: {password_file: FILE}")
        return {}
    out: dict[str, str] = {}
    for name, spec in v.items():
        if isinstance(spec, str):
            if _readable_by_others(p):
                problems.append(f"users.{name}: an inline password in a file other users can read; "
                                f"chmod 600 {p} or use password_file")
            out[name] = spec
        elif isinstance(spec, dict) and set(spec) == {"password_file"} and isinstance(spec["password_file"], str):
            f = p.parent / spec["password_file"]
            if not f.is_file():
                problems.append(f"users.{name}.password_file: no such file {f}")
            elif _readable_by_others(f):
                problems.append(f"users.{name}.password_file: {f} is readable by other users; chmod 600 it")
            else:
                out[name] = f.read_text().strip()
        else:
            problems.append(f"users.{name}: expected a password string or {{password_file: FILE}}")
    return out


def load_config(path: str | Path) -> NodeConfig:
    """Parse and check a node config file; ConfigError lists every problem."""
    p = Path(path)
    raw = read_yaml(p, ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    problems: list[str] = []
    known = {"id", "name", "location", "gnmi", "etsi014", "etsi004", "etsi020", "peer", "channel", "data_dir", "tls",
             "saes", "users", "engine", "bootstrap", "applications", "restconf", "interfaces", "log"}
    for k in sorted(set(raw) - known):
        problems.append(f"{k}: unknown key (known: {', '.join(sorted(known))})")
    node_id = raw.get("id")
    try:
        node_id = str(uuid.UUID(str(node_id)))
    except ValueError:
        problems.append(f"id: expected a UUID, got {node_id!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: required, a non-empty string")

    def section(key: str) -> dict[str, Any]:
        v = raw.get(key)
        if not isinstance(v, dict) or "listen" not in v:
            problems.append(f"{key}: required, a mapping with `listen: host:port`")
            return {}
        return v

    gnmi, e14, e04 = section("gnmi"), section("etsi014"), section("etsi004")
    tls_raw = raw.get("tls")
    tls = None
    if tls_raw is not None:
        if not isinstance(tls_raw, dict) or not {"ca", "cert", "key"} <= set(tls_raw):
            problems.append("tls: expected a mapping with ca, cert and key file paths")
        else:
            base = p.parent
            files = {k: (base / str(tls_raw[k])) for k in ("ca", "cert", "key")}
            for k, f in files.items():
                if not f.is_file():
                    problems.append(f"tls.{k}: no such file {f}")
            tls = TlsFiles(files["ca"], files["cert"], files["key"])
    peer = raw.get("peer", {"listen": "127.0.0.1:0"})
    if not isinstance(peer, dict) or "listen" not in peer:
        problems.append("peer: expected a mapping with `listen: host:port`")
        peer = {}
    channel = raw.get("channel", {"listen": "127.0.0.1:0"})
    if not isinstance(channel, dict) or "listen" not in channel:
        problems.append("channel: expected a mapping with `listen: host:port`")
        channel = {}
    e20 = raw.get("etsi020", {"listen": "127.0.0.1:0"})
    if not isinstance(e20, dict) or not set(e20) <= {"listen", "external_peers"}:
        problems.append("etsi020: expected a mapping with `listen: host:port` and optional `external_peers`")
        e20 = {}
    e20.setdefault("listen", "127.0.0.1:0")
    externals = _external_peers(e20.get("external_peers"), p.parent, problems)
    restconf = _restconf_section(raw.get("restconf"), gnmi, tls is not None, problems)
    listens = {k: _listen(s.get("listen"), f"{k}.listen", problems) for k, s in
               (("gnmi", gnmi), ("etsi014", e14), ("etsi004", e04), ("peer", peer), ("etsi020", e20),
                ("channel", channel), ("restconf", restconf)) if s}
    if tls is None:
        from runtime.agent.serve import is_loopback

        for k, v in listens.items():
            if k == "restconf" and restconf.get("plain_http_outside_loopback"):
                continue
            if v and not is_loopback(v):
                problems.append(f"{k}.listen: {v} is not a loopback address; without `tls` a node serves loopback only")
    saes = raw.get("saes", [])
    if not isinstance(saes, list) or not all(isinstance(s, dict) and isinstance(s.get("id"), str) for s in saes):
        problems.append("saes: expected a list of mappings with an `id`")
        saes = []
    users = _users(raw.get("users", gnmi.get("users", {})) or {}, p, problems)
    bootstrap: dict[str, Path] = {}
    for peer_id, f in (raw.get("bootstrap") or {}).items():
        bf = p.parent / str(f)
        if not bf.is_file():
            problems.append(f"bootstrap.{peer_id}: no such file {bf}")
        bootstrap[str(peer_id)] = bf
    engine = raw.get("engine") or {}
    if not isinstance(engine, dict):
        problems.append("engine: expected a mapping")
        engine = {}
    log_format, log_level = _log(raw.get("log"), problems)
    interfaces = _interfaces(raw.get("interfaces"), problems)
    apps_raw = raw.get("applications") or {}
    if not isinstance(apps_raw, dict):
        problems.append("applications: expected a mapping")
        apps_raw = {}
    applications = Settings.from_dict(apps_raw, "applications", problems)
    data_dir = raw.get("data_dir")
    if not isinstance(data_dir, str) or not data_dir:
        problems.append("data_dir: required, a directory path")
    if problems:
        raise ConfigError(f"{p}: " + f"\n{p}: ".join(problems))
    assert isinstance(node_id, str) and isinstance(name, str) and data_dir is not None  # checked above
    return NodeConfig(
        id=node_id, name=name, gnmi_listen=listens["gnmi"], etsi014_listen=listens["etsi014"],
        etsi004_listen=listens["etsi004"], data_dir=(p.parent / data_dir), tls=tls, saes=saes,
        location=str(raw.get("location", "")), users=users, gnmi_mutual_tls=bool(gnmi.get("mutual_tls", True)),
        peer_listen=listens.get("peer", "127.0.0.1:0"), channel_listen=listens.get("channel", "127.0.0.1:0"),
        bootstrap=bootstrap, engine=engine,
        etsi020_listen=listens.get("etsi020", "127.0.0.1:0"), external_peers=externals,
        applications=applications, raw=raw, log_format=log_format, log_level=log_level,
        restconf_listen=listens.get("restconf", "127.0.0.1:0"), restconf_tls=restconf.get("tls", "none"),
        restconf_tokens=list(restconf.get("bearer_tokens", [])),
        restconf_plain_outside_loopback=bool(restconf.get("plain_http_outside_loopback", False)),
        interfaces=interfaces,
    )


def _restconf_section(v: Any, gnmi: dict[str, Any], has_tls: bool, problems: list[str]) -> dict[str, Any]:
    """`restconf: {listen, tls: mutual|server|none, bearer_tokens: [..], plain_http_outside_loopback}`;
    absent: the gNMI host, port 0, mutual TLS when the node has TLS."""
    host = str(gnmi.get("listen", "127.0.0.1:0")).rsplit(":", 1)[0] or "127.0.0.1"
    out: dict[str, Any] = {"listen": f"{host}:0", "tls": "mutual" if has_tls else "none"}
    if v is None:
        return out
    if not isinstance(v, dict):
        problems.append("restconf: expected a mapping (listen, tls, bearer_tokens)")
        return out
    for k in sorted(set(v) - {"listen", "tls", "bearer_tokens", "plain_http_outside_loopback"}):
        problems.append(f"restconf.{k}: unknown key (known: bearer_tokens, listen, plain_http_outside_loopback, tls)")
    out.update(v)
    if out["tls"] not in ("mutual", "server", "none"):
        problems.append(f"restconf.tls: expected mutual, server or none, got {out['tls']!r}")
    elif out["tls"] != "none" and not has_tls:
        problems.append(f"restconf.tls: {out['tls']} needs the node's `tls` files")
    tokens = out.get("bearer_tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) and len(t) >= 16 for t in tokens):
        problems.append("restconf.bearer_tokens: expected a list of strings of at least 16 characters")
        out["bearer_tokens"] = []
    return out


def _interfaces(v: Any, problems: list[str]) -> list[dict[str, Any]]:
    """`interfaces: [{id, att_point: {device, port}, peer: {node, interface, endpoint, channel},
    fibre: {km, loss_db, profile}}]`, checked for shape here and by the model when seeded
    (endpoint: the peer's key-relay port, channel: its engine channel port)."""
    if v is None:
        return []
    if not isinstance(v, list):
        problems.append("interfaces: expected a list of mappings")
        return []
    seen: set[int] = set()
    out = []
    for i, itf in enumerate(v):
        where = f"interfaces[{i}]"
        if not isinstance(itf, dict) or not isinstance(itf.get("id"), int) or not 1 <= itf["id"] < 2**32:
            problems.append(f"{where}.id: required, an integer 1..4294967295")
            continue
        if itf["id"] in seen:
            problems.append(f"{where}.id: {itf['id']} given twice")
        seen.add(itf["id"])
        for k in sorted(set(itf) - {"id", "att_point", "peer", "fibre"}):
            problems.append(f"{where}.{k}: unknown key (known: att_point, fibre, id, peer)")
        peer = itf.get("peer") or {}
        if peer:
            try:
                uuid.UUID(str(peer.get("node")))
            except ValueError:
                problems.append(f"{where}.peer.node: expected the peer's node UUID, got {peer.get('node')!r}")
        out.append(itf)
    return out


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log(v: Any, problems: list[str]) -> tuple[str, str]:
    """The `log` section: {format: text|json, level: DEBUG|INFO|WARNING|ERROR}."""
    from runtime.logsetup import FORMATS

    if v is None:
        return "text", "INFO"
    if not isinstance(v, dict) or set(v) - {"format", "level"}:
        problems.append("log: expected a mapping with `format` (text or json) and/or `level`")
        return "text", "INFO"
    fmt, level = v.get("format", "text"), v.get("level", "INFO")
    if fmt not in FORMATS:
        problems.append(f"log.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if level not in LOG_LEVELS:
        problems.append(f"log.level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return str(fmt), str(level)
