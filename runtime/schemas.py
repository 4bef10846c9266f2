"""The files users write, as one schema library: topology files (with their `settings:`) and
node configs. Documented in docs/topology.md and docs/node-config.md; a field added here must be
added there too (tests/test_schemas.py checks that every field is named in its page).

Why pydantic v2 (not jsonschema): the models are Python types the rest of the code can read with
mypy's help, each error carries the exact location (`loc`) and the offending input, strict mode
refuses the silent coercions YAML invites (`"20"` for a number, `yes` for a port), `extra="forbid"`
names unknown keys, and `model_json_schema()` still gives a JSON Schema for editors.

`check(model, data, where)` validates a whole document and raises one error listing every
problem as `FILE:LINE: place: what is wrong`; cross-reference checks (a link naming an unknown
node, a duplicate name) stay with the code that owns the meaning (`sdqkd.controller.topology`,
`sdqkd.node.config`) and use the same `Lines` to name file and line."""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from sdqkd.yamlfile import Lines, Loc, dotted

# Kept in step with sdqkd.engine.cascade.VARIANTS (asserted by the tests) without importing
# the C engine just to read a file.
CascadeVariant = Literal["original", "optimized"]
Etsi004Server = Literal["h2", "grpcio"]


def _uuid(v: str) -> str:
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise ValueError(f"{v!r} is not a UUID") from None


def _listen(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {v!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    return v


def _profile(v: str) -> str:
    from sdqkd.engine.profiles import PROFILES

    if v not in PROFILES:
        raise ValueError(f"unknown profile {v!r} (known: {', '.join(sorted(PROFILES))})")
    return v


Uuid = Annotated[str, AfterValidator(_uuid)]
Listen = Annotated[str, AfterValidator(_listen)]
Name = Annotated[str, Field(min_length=1)]
# a class to import: `package.module:Class`, or `file.py:Class` (a file beside the config)
ClassRef = Annotated[str, Field(pattern=r"^(?:[A-Za-z_][\w.]*|[^:]+\.py):[A-Za-z_]\w*$")]
# Node and SAE names become file names (nodes/NAME/, pki/saes/NAME.pem), certificate CNs and
# SAE IDs in URLs: letters, digits, '.', '_', '-', starting with a letter or digit.
IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Ident = Annotated[str, Field(pattern=IDENT_PATTERN)]
# A DNS name (RFC 1123 labels) or an IPv4/IPv6 address, as other hosts reach a node.
HostName = Annotated[str, Field(pattern=r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|[0-9A-Fa-f:.]+)$")]
Km = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Profile = Annotated[str, AfterValidator(_profile)]


class Strict(BaseModel):
    """No unknown keys, no coercion (a number must be a number), finite floats."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ------------------------------------------------------------------ engine settings (both files)


class EngineSettings(Strict):
    """Engine knobs a topology's `settings:` gives every node and a node config's `engine:` one node."""

    clock_scale: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    block_sifted_bits: Annotated[float, Field(ge=1e3, le=1e9, allow_inf_nan=False)] | None = None
    cascade_variant: CascadeVariant | None = None
    # Bob's order of bisections (runtime/engine/cascade.py): serial (published efficiency), balanced
    # (the network default: pass 2's blocks halved, ~0.3x serial's round trips) or parallel (~0.55x)
    cascade_schedule: Literal["serial", "balanced", "parallel"] | None = None
    blocks_in_flight: Annotated[int, Field(ge=1, le=128)] | None = None  # a link's window (runtime/node/session.py)


# ------------------------------------------------------------------ topology files


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
KeyCount = Annotated[int, Field(ge=1, le=10**9)]


RestconfTls = Literal["mutual", "server", "none"]


class NetworkRestconf(Strict):
    """`settings.restconf`: every node's RESTCONF transport, for a manager that cannot present the
    network's client certificates (ETSI TeraFlowSDN's QKD driver speaks plain HTTP only). With
    it, the build also gives every node one bearer token, in a file beside the gNMI password,
    unless `anonymous` says no credentials are asked at all."""

    tls: RestconfTls = "mutual"
    plain_http_outside_loopback: bool = False
    anonymous: bool = False  # every node's restconf.anonymous; no token is made then


class Settings(EngineSettings):
    """`settings:` of a topology file."""

    base_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    first_request_wait_s: Seconds | None = None  # every node's applications.first_request_wait_s
    app_idle_timeout_s: Seconds | None = None  # every node's applications.idle_timeout_s
    max_key_count: KeyCount | None = None  # every node's lkms.max_key_count
    restconf: NetworkRestconf | None = None  # every node's restconf section (tls, plain HTTP) and a token


class NodeEntry(Strict):
    name: Ident
    id: Uuid | None = None
    location: str = ""
    host: HostName | None = None  # the name or IP other hosts reach it by (`sdqkd net export`)


class LinkEntry(Strict):
    a: Ident
    b: Ident
    km: Km
    loss_db: Km | None = None
    profile: Profile = "commercial"


class SaeEntry(Strict):
    name: Ident
    node: Ident


class AppEntry(Strict):
    """An application registered up front (any other pair registers by its first key request)."""

    master: Ident
    slave: Ident
    rate: Km = 0.0  # bit/s the path must carry (the app's min_bandwidth)
    priority: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0


def _url(v: str) -> str:
    if not v.startswith(("https://", "http://")):
        raise ValueError(f"expected https://host:port, got {v!r}")
    return v


Url = Annotated[str, AfterValidator(_url)]


class ExternalPeerEntry(Strict):
    """Another vendor's KMS reached over ETSI GS QKD 020 from a gateway node (runtime/controller/external.py).
    With `url`, `net up` and `net export` also write it into the gateway's node config."""

    name: Name
    node: Ident
    saes: Annotated[list[Name], Field(min_length=1)]
    rate_bps: Km = 0.0
    url: Url | None = None  # its ETSI 020 base URL, as the gateway dials it
    identity: Name | None = None  # the name its TLS certificate must carry (with url)
    ca: Name | None = None  # CA file that signs its certificate, relative to the topology file
    mode: Literal["sync", "async"] = "sync"  # ext_keys without or with ack_callback_url


class TopologyFile(Strict):
    name: str | None = None
    nodes: Annotated[list[NodeEntry], Field(min_length=1)]
    links: list[LinkEntry] = []
    saes: list[SaeEntry] = []
    apps: list[AppEntry] = []
    external_peers: list[ExternalPeerEntry] = []
    settings: Settings = Settings()


# ------------------------------------------------------------------ node configs


class ListenSection(Strict):
    listen: Listen


class PasswordFile(Strict):
    password_file: Name  # a file only its owner can read (checked by runtime/node/config.py)


Password = str | PasswordFile  # inline (the config must then be 0600) or from a file


class GnmiSection(ListenSection):
    mutual_tls: bool = True
    users: dict[Name, Password] | None = None


class TlsSection(Strict):
    ca: Name
    cert: Name
    key: Name


class SaeConfig(Strict):
    id: Name


class ExternalKms(Strict):
    """One `etsi020.external_peers[]` entry of a node config (runtime/lkms/external.py, docs/etsi020.md)."""

    name: Name
    url: Url
    identity: Name
    saes: Annotated[list[Name], Field(min_length=1)]
    ca: Name | None = None
    qkdl_id: Uuid | None = None
    mode: Literal["sync", "async"] = "sync"
    rate_bps: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class Etsi020Section(Strict):
    listen: Listen = "127.0.0.1:0"
    external_peers: list[ExternalKms] = []


class ApplicationsSection(Strict):
    """Registration on first request (runtime/node/apps.py)."""

    first_request_wait_s: Seconds = 3.0
    idle_timeout_s: Seconds = 900.0
    sae_nodes: dict[Name, Uuid] | None = None  # SAE ID -> node ID: an unknown SAE gets 400 at once


class LogSection(Strict):
    format: Literal["text", "json"] = "text"  # runtime/logsetup.py: to stdout either way
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class LkmsSection(Strict):
    etsi004_server: Etsi004Server = "h2"
    max_key_count: KeyCount | None = None  # keys a link's pool holds before its engine pauses; None: Limits' default
    erase_deleted_links: bool = False  # a link deleted from the model takes its pool's keys with it


class RestconfSection(Strict):
    """The RESTCONF northbound (docs/restconf.md); absent: the gNMI host, port 0, mutual TLS
    when the node has `tls`."""

    listen: Listen | None = None
    tls: RestconfTls | None = None
    bearer_tokens: list[Annotated[str, Field(min_length=16)]] = []
    plain_http_outside_loopback: bool = False
    # no credentials asked, `users` and `bearer_tokens` notwithstanding: TeraFlowSDN's QKD driver
    # creates links without any (docs/restconf.md)
    anonymous: bool = False


class InterfacePeer(Strict):
    """The node and interface at the far end of an interface's fibre; `endpoint` its key-relay
    (peer) port, `channel` its engine channel port, where fixed."""

    node: Uuid
    interface: int | None = None
    endpoint: str | None = None
    channel: str | None = None


class InterfaceEntry(Strict):
    """One QKD interface and the fibre behind it (seeded into qkd_interfaces; the model checks
    the inner members when it is seeded)."""

    id: Annotated[int, Field(ge=1, lt=2**32)]
    att_point: dict[str, Any] | None = None
    peer: InterfacePeer | None = None
    fibre: dict[str, Any] | None = None


class NodeConfigFile(Strict):
    id: Uuid
    name: Name
    location: str = ""
    gnmi: GnmiSection
    etsi014: ListenSection
    etsi004: ListenSection
    etsi020: Etsi020Section = Etsi020Section()
    peer: ListenSection = ListenSection(listen="127.0.0.1:0")
    channel: ListenSection = ListenSection(listen="127.0.0.1:0")  # the engines' classical channel
    data_dir: Name
    tls: TlsSection | None = None
    saes: list[SaeConfig] = []
    users: dict[Name, Password] | None = None
    engine: EngineSettings = EngineSettings()
    lkms: LkmsSection = LkmsSection()
    applications: ApplicationsSection = ApplicationsSection()
    bootstrap: dict[Name, Name] = {}
    peers: dict[Uuid, Name] = {}  # peer node ID -> name, so logs can name links A-B
    restconf: RestconfSection | None = None
    interfaces: list[InterfaceEntry] = []
    log: LogSection = LogSection()
    hooks: ClassRef | None = None  # a vendor's hooks: a NodeProvisioning subclass (docs/node-config.md)


# ------------------------------------------------------------------ checking

M = TypeVar("M", bound=BaseModel)


def _label(data: Any, loc: Loc) -> str:
    """`links[2] (A-B).km`: list items are named by their `name` or their ends, where they have them."""
    out = ""
    cur = data
    for part in loc:
        out += dotted((part,)) if isinstance(part, int) or not out else "." + dotted((part,))
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            cur = None
        if isinstance(part, int) and isinstance(cur, dict):
            if isinstance(cur.get("name"), str):
                out += f" ({cur['name']})"
            elif isinstance(cur.get("a"), str) and isinstance(cur.get("b"), str):
                out += f" ({cur['a']}-{cur['b']})"
    return out


def _what(err: Any, model: type[BaseModel]) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return "unknown key" + _known(model, err["loc"][:-1])
    if kind == "missing":
        return "required"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        return f"must be {op} {_num(next(iter(ctx.values())))}, got {got!r}"
    if kind in ("float_type", "int_type", "finite_number", "int_from_float"):
        want = {"float_type": "a number", "finite_number": "a finite number"}.get(kind, "a whole number")
        return f"must be {want}, got {got!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "string_pattern_mismatch":
        return f"must be 1-64 letters, digits, '.', '_' or '-' (it names files and certificates), got {got!r}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind in ("string_type", "bool_type", "dict_type", "list_type", "model_type"):
        want = {"string_type": "a string", "bool_type": "true or false", "dict_type": "a mapping",
                "list_type": "a list", "model_type": "a mapping"}[kind]
        return f"must be {want}, got {got!r}"
    return f"{err['msg']}, got {got!r}"


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _known(model: type[BaseModel], loc: Loc) -> str:
    """` (known: a, b, c)` for the mapping at `loc`, found by walking the model's fields."""
    cls: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return ""
        cls = _model_in(field.annotation)
        if cls is None:
            return ""
    fields = getattr(cls, "model_fields", None)
    return f" (known: {', '.join(fields)})" if fields else ""


def _model_in(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in getattr(tp, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def problems(model: type[M], data: Any, lines: Lines) -> tuple[M | None, list[str]]:
    """Validate `data` as `model`: the model, or None and every problem as `FILE:LINE: place: what`."""
    if not isinstance(data, dict):
        return None, [f"{lines.source}: expected a mapping at the top level, got {type(data).__name__}"]
    try:
        return model.model_validate(data), []
    except ValidationError as e:
        out = []
        for err in e.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            is_key = loc[-1:] == ("[key]",)
            loc = loc[:-1] if is_key else loc
            place = _label(data, loc) or "(top level)"
            out.append(f"{lines.where(loc)}: {place}: {'key: ' if is_key else ''}{_what(err, model)}")
        return None, out


def entries(model: type[M], items: Any) -> list[tuple[int, dict[str, Any], M | None]]:
    """(index, raw mapping, model or None) for every mapping in a list: cross-reference checks run
    on entries the schema refused too (their problems are already listed by `problems`)."""
    out: list[tuple[int, dict[str, Any], M | None]] = []
    for i, raw in enumerate(items if isinstance(items, list) else []):
        if not isinstance(raw, dict):
            continue
        try:
            out.append((i, raw, model.model_validate(raw)))
        except ValidationError:
            out.append((i, raw, None))
    return out
