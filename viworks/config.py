"""Strictly validated TOML configuration for the backend and the gateway agent.

Every key is described once, by a small spec attached to the dataclass field that holds it
(see ``_spec``): its TOML type, its default (or that it is required) and a validator that
checks and normalises the value.  The loader walks those specs, so adding a key means adding
one field.  Any problem raises ``ConfigError`` whose text is one line naming the file, the
section and the key::

    /etc/viworks/agent.toml: [outbound] backend_url: must be a wss:// URL, got 'https://x'

Relative paths are resolved against the directory of the configuration file.

The agent's ``[verbs.NAME]`` tables (see ``VerbConfig``) override a built-in verb's limits or
declare an extra verb; each table is loaded with the same field specs, as section
``verbs.NAME``.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from viworks.protocol import MAX_TELEMETRY_BYTES
from viworks.schema import validate_schema

__all__ = [
    "AgentConfig",
    "AgentSection",
    "AgentSigning",
    "AgentTLS",
    "ApiSection",
    "BUILTIN_VERBS",
    "BackendConfig",
    "BackendSection",
    "BackendSigning",
    "BackendTLS",
    "ConfigError",
    "OutboundSection",
    "PanelSection",
    "VerbConfig",
    "ensure_private_dir",
    "load_agent_config",
    "load_backend_config",
    "parse_bind",
    "parse_template",
    "parse_wss_url",
]


class ConfigError(Exception):
    """A configuration problem; ``str()`` is a single line naming the file and the key."""

    def __init__(self, path: str, message: str, section: str | None = None, key: str | None = None):
        self.path = path
        self.section = section
        self.key = key
        self.message = message
        super().__init__(path, message, section, key)

    def __str__(self) -> str:
        where = ""
        if self.section is not None:
            where = f"[{self.section}]"
            if self.key is not None:
                where += f" {self.key}"
            where += ": "
        text = f"{self.path}: {where}{self.message}"
        return " ".join(text.split())  # always one line


class _Invalid(ValueError):
    """Raised by validators; ``subkey`` refines the key (``labels.rack``)."""

    def __init__(self, message: str, subkey: str | None = None):
        super().__init__(message)
        self.subkey = subkey


# --------------------------------------------------------------------------- helpers


def parse_bind(value: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6addr]:port`` into ``(host, port)``; raise ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port', got {value!r}")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d{1,5})|([^\[\]:\s]+):(\d{1,5})", value)
    if m is None:
        raise ValueError(f"expected 'host:port' or '[ipv6]:port', got {value!r}")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) if m.group(2) is not None else m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, port


def parse_wss_url(value: str) -> tuple[str, int, str]:
    """Parse a ``wss://host[:port][/path]`` URL into ``(host, port, path)``; raise ValueError."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"invalid URL {value!r}: {e}") from None
    if parts.scheme.lower() != "wss":
        raise ValueError(f"must be a wss:// URL, got {value!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"URL must not contain credentials: {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"URL must not have a query or fragment: {value!r}")
    if port == 0:
        raise ValueError(f"URL port must be between 1 and 65535: {value!r}")
    return parts.hostname, port or 443, parts.path or "/"


def ensure_private_dir(path: str) -> str:
    """Create directory ``path`` (and parents) with mode 0700 if it is missing; return it.

    An existing directory is left as it is.  Raises OSError if it cannot be created or if
    ``path`` exists and is not a directory.
    """
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    return path


_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


def parse_template(text: str) -> tuple[tuple[str, str | None], ...]:
    """Split a verb template into ``(literal, param_name_or_None)`` pairs; raise ValueError.

    ``{name}`` is a placeholder for parameter ``name``; ``{{`` and ``}}`` are literal braces;
    any other brace is an error.  No format specs, indexing or attributes: the value is
    inserted as text, never through a shell.  ``"--config={path}"`` gives
    ``(("--config=", "path"), ("", None))``.
    """
    parts: list[tuple[str, str | None]] = []
    literal: list[str] = []
    pos = 0
    for m in _TEMPLATE_TOKEN.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif m.group(1) is not None:
            parts.append(("".join(literal), m.group(1)))
            literal = []
        else:
            raise ValueError(
                f"unmatched {token!r} at position {m.start()} (placeholders are {{name}};"
                f" write {token * 2!r} for a literal brace)"
            )
    literal.append(text[pos:])
    parts.append(("".join(literal), None))
    return tuple(parts)


# --------------------------------------------------------------------------- field specs

_REQUIRED: Any = object()


@dataclass(frozen=True)
class _Ctx:
    base_dir: str
    check_files: bool


@dataclass(frozen=True)
class _Spec:
    kind: str  # "string", "integer", "number", "boolean", "table", "string table", "string array"
    default: Any = _REQUIRED
    check: Callable[[Any, _Ctx], Any] | None = None


def _spec(kind: str, default: Any = _REQUIRED, check: Callable[[Any, _Ctx], Any] | None = None):
    """A dataclass field described by its TOML type, default and validator."""
    return field(metadata={"spec": _Spec(kind, default, check)})


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def _coerce(kind: str, value: Any) -> Any:
    """Check the TOML type of ``value``; bool is never a number, an integer is a number."""
    actual = _toml_type(value)
    if kind == "string" and actual == "string":
        return value
    if kind == "integer" and actual == "integer":
        return value
    if kind == "number" and actual in ("integer", "float"):
        return float(value)
    if kind == "boolean" and actual == "boolean":
        return value
    if kind == "table" and actual == "table":
        return copy.deepcopy(value)
    if kind == "string array" and actual == "array":
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _Invalid(f"item {i} must be a string, got {_toml_type(item)}")
        return tuple(value)
    if kind == "string table" and actual == "table":
        for k, v in value.items():
            if not isinstance(v, str):
                raise _Invalid(f"must be a string, got {_toml_type(v)}", subkey=k)
        return dict(value)
    expected = {"number": "a number", "integer": "an integer", "boolean": "a boolean"}.get(
        kind, f"a {kind}"
    )
    raise _Invalid(f"expected {expected}, got {actual} ({value!r})")


# --------------------------------------------------------------------------- validators


def _at_least(minimum: float) -> Callable[[Any, _Ctx], Any]:
    def check(value: Any, ctx: _Ctx) -> Any:
        if value < minimum:
            raise _Invalid(f"must be >= {minimum}, got {value}")
        return value

    return check


def _optional(check: Callable[[Any, _Ctx], Any]) -> Callable[[Any, _Ctx], Any]:
    """``check`` for a key whose default ``None`` means "not set"."""

    def optional(value: Any, ctx: _Ctx) -> Any:
        return None if value is None else check(value, ctx)

    return optional


def _optional_path(value: str, ctx: _Ctx) -> str:
    """A path, or "" for "not set"."""
    return _path(value, ctx) if value else ""


def _one_of(*choices: str) -> Callable[[Any, _Ctx], Any]:
    def check(value: str, ctx: _Ctx) -> str:
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return check


_UNIT = re.compile(r"[A-Za-z0-9@._-]{1,128}")


def _unit_names(value: tuple[str, ...], ctx: _Ctx) -> tuple[str, ...]:
    for unit in value:
        if not _UNIT.fullmatch(unit) or unit.startswith("-"):
            raise _Invalid(f"not a systemd unit name: {unit!r}")
    return value


def _port_range(value: str, ctx: _Ctx) -> str:
    match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 65535:
        raise _Invalid(f'must be "LOW-HIGH" with 1 <= LOW <= HIGH <= 65535, got {value!r}')
    return value


def _check_containers(values: Mapping[str, Any]) -> None:
    if values["default_image"] and values["default_image"] not in values["images"]:
        raise _Invalid("must be one of images (the allowlist)", subkey="default_image")


def _positive(value: float, ctx: _Ctx) -> float:
    if not value > 0:
        raise _Invalid(f"must be > 0, got {value}")
    return value


def _non_empty(value: str, ctx: _Ctx) -> str:
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


_LOG_LEVELS = {"debug", "info", "warn", "warning", "error", "critical"}


def _log_level(value: str, ctx: _Ctx) -> str:
    """Accept the level names case-insensitively; ``warning`` is normalised to ``warn``."""
    level = value.lower()
    if level not in _LOG_LEVELS:
        raise _Invalid(f"must be one of {', '.join(sorted(_LOG_LEVELS))}; got {value!r}")
    return "warn" if level == "warning" else level


def _bind(value: str, ctx: _Ctx) -> str:
    try:
        parse_bind(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None
    return value


def _optional_bind(value: str, ctx: _Ctx) -> str:
    """A ``host:port``, or "" for "not set"."""
    return _bind(value, ctx) if value else ""


def _networks(value: tuple[str, ...], ctx: _Ctx) -> tuple[str, ...]:
    """IP addresses or CIDR networks, normalised (``10.0.0.0/8``, ``::1/128``)."""
    out = []
    for i, item in enumerate(value):
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise _Invalid(
                f"item {i} must be an IP address or CIDR network, got {item!r}"
            ) from None
    return tuple(out)


def _wss_url(value: str, ctx: _Ctx) -> str:
    try:
        parse_wss_url(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None
    return value


_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _agent_id(value: str, ctx: _Ctx) -> str:
    if not _AGENT_ID.fullmatch(value):
        raise _Invalid(
            f"must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a"
            f" letter or digit; got {value!r}"
        )
    return value


def _ws_path(value: str, ctx: _Ctx) -> str:
    if not value.startswith("/"):
        raise _Invalid(f"must start with '/', got {value!r}")
    return value


def _path(value: str, ctx: _Ctx) -> str:
    _non_empty(value, ctx)
    return os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(value)))


def _readable_file(value: str, ctx: _Ctx) -> str:
    path = _path(value, ctx)
    if ctx.check_files:
        if not os.path.exists(path):
            raise _Invalid(f"file does not exist: {path}")
        if not os.path.isfile(path):
            raise _Invalid(f"not a regular file: {path}")
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise _Invalid(f"cannot read {path}: {e.strerror or e}") from None
    return path


def _database(value: str, ctx: _Ctx) -> str:
    """A PostgreSQL URL is kept as is; anything else is an SQLite file path."""
    if value.startswith(("postgresql://", "postgres://")):
        return value
    if "://" in value:
        raise _Invalid(f"must be a file path (SQLite) or a postgresql:// URL, got {value!r}")
    return _path(value, ctx)


def _spki_pins(value: tuple[str, ...], ctx: _Ctx) -> tuple[str, ...]:
    for i, pin in enumerate(value):
        prefix, _, encoded = pin.partition("/")
        try:
            raw = base64.b64decode(encoded, validate=True) if prefix == "sha256" else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise _Invalid(
                f"item {i} must be 'sha256/<base64 of a 32-byte SHA-256 digest>', got {pin!r}"
            )
    return value


def _signing_private_key(value: str, ctx: _Ctx) -> str:
    """The backend's Ed25519 signing key (``viworks pki signing-key``)."""
    path = _readable_file(value, ctx)
    if ctx.check_files:
        from viworks import signing

        try:
            signing.load_private_key(path)
        except signing.SigningKeyError as e:
            raise _Invalid(str(e)) from None
    return path


def _signing_public_keys(value: tuple[str, ...], ctx: _Ctx) -> tuple[str, ...]:
    """The backend's public signing keys the agent trusts: [current] or [current, next]."""
    if not value:
        raise _Invalid("must list at least one public key file (the backend's signing.pub)")
    from viworks import signing

    paths = []
    for i, item in enumerate(value):
        try:
            path = _readable_file(item, ctx)
            if ctx.check_files:
                signing.load_public_key(path)
        except (_Invalid, signing.SigningKeyError) as e:
            raise _Invalid(f"item {i}: {e}") from None
        paths.append(path)
    return tuple(paths)


#: The verbs the gateway ships (``viworks.gateway.catalog.builtin_verbs``).  A ``[verbs.NAME]``
#: table for one of them may only set ``_BUILTIN_VERB_KEYS``.
BUILTIN_VERBS = frozenset(
    {
        *("ping", "system_health", "service_status", "tail_logs"),
        *("create_panel_user", "delete_panel_user", "list_panel_users"),
        *("create_vpn_user", "delete_vpn_user", "list_vpn_users"),
        *("spawn_container", "stop_container", "list_containers"),
        *("terminate_session", "get_session_status"),
        *("generate_bootstrap", "get_bootstrap", "revoke_bootstrap"),
    }
)
_BUILTIN_VERB_KEYS = ("timeout", "output_cap", "concurrency", "no_output_timeout", "enabled")
_VERB_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _template(value: str | None, ctx: _Ctx) -> str | None:
    if value is not None:
        try:
            parse_template(value)
        except ValueError as e:
            raise _Invalid(str(e)) from None
    return value


def _argv(value: tuple[str, ...] | None, ctx: _Ctx) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value:
        raise _Invalid("must not be empty")
    if not os.path.isabs(value[0]):
        raise _Invalid(f"item 0 must be an absolute path to the program, got {value[0]!r}")
    for i, item in enumerate(value):
        try:
            parts = parse_template(item)
        except ValueError as e:
            raise _Invalid(f"item {i}: {e}") from None
        if i == 0 and len(parts) > 1:
            raise _Invalid(f"item 0 (the program) must not contain placeholders, got {item!r}")
    return value


def _param_specs(value: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    for name, spec in value.items():
        if not _PARAM_NAME.fullmatch(name):
            raise _Invalid(
                "parameter names must be 1-64 letters, digits or '_', not starting with a digit",
                subkey=name,
            )
        if not isinstance(spec, dict):
            raise _Invalid(
                f'must be a table such as {{type = "string"}}, got {_toml_type(spec)}',
                subkey=name,
            )
        try:
            validate_schema({name: spec})
        except ValueError as e:
            message = str(e).removeprefix(f"parameter {name!r}: ")
            raise _Invalid(message, subkey=name) from None
    return value


def _check_verb_templates(values: Mapping[str, Any]) -> None:
    """Every placeholder names a declared parameter that always has a value; no secret in argv."""
    params = values["params"]
    templates = [("argv", item) for item in values["argv"] or ()]
    if values["stdin"] is not None:
        templates.append(("stdin", values["stdin"]))
    for key, template in templates:
        for _literal, name in parse_template(template):
            if name is None:
                continue
            spec = params.get(name)
            if spec is None:
                raise _Invalid(
                    f"placeholder {{{name}}} does not name a parameter in params"
                    f"{_suggest(name, list(params))}",
                    subkey=key,
                )
            if key == "argv" and spec["type"] == "secret":
                raise _Invalid(
                    f"placeholder {{{name}}} is a secret: secrets may only be passed on stdin"
                    " (other users can read a process's argv)",
                    subkey=key,
                )
            if spec.get("required", True) is False and "default" not in spec:
                raise _Invalid(
                    f"placeholder {{{name}}} names an optional parameter without a default",
                    subkey=key,
                )


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class AgentSection:
    bind_address: str = _spec("string", "127.0.0.1:8443", _bind)
    log_level: str = _spec("string", "info", _log_level)
    site: str = _spec("string", "production", _non_empty)
    state_dir: str = _spec("string", "/var/lib/viworks/agent", _path)
    max_connections: int = _spec("integer", 100, _at_least(1))
    request_timeout: float = _spec("number", 30.0, _positive)
    labels: dict[str, str] = _spec("string table", {})
    # false: refuse every verb with changes_state (status "rejected", code EXEC_DISABLED).
    exec_enable: bool = _spec("boolean", True)
    # Seconds between telemetry reports (host metrics) to the backend.
    telemetry_interval: float = _spec("number", 30.0, _positive)
    # Verbs running at once on this gateway, and how many more may wait for a slot
    # (beyond that a command is rejected with QUEUE_FULL).
    max_concurrency: int = _spec("integer", 8, _at_least(1))
    queue_limit: int = _spec("integer", 64, _at_least(0))
    # When the agent runs as root: the user subprocess verbs run as ("" = the agent's own).
    run_as_user: str = _spec("string", "")

    @property
    def bind_host(self) -> str:
        return parse_bind(self.bind_address)[0]

    @property
    def bind_port(self) -> int:
        return parse_bind(self.bind_address)[1]


@dataclass(frozen=True)
class OutboundSection:
    backend_url: str = _spec("string", check=_wss_url)
    agent_id: str = _spec("string", check=_agent_id)
    heartbeat_interval: float = _spec("number", 15.0, _positive)
    reconnect_initial: float = _spec("number", 1.0, _positive)
    reconnect_max: float = _spec("number", 60.0, _positive)

    @property
    def backend_host(self) -> str:
        return parse_wss_url(self.backend_url)[0]

    @property
    def backend_port(self) -> int:
        return parse_wss_url(self.backend_url)[1]

    @property
    def backend_path(self) -> str:
        return parse_wss_url(self.backend_url)[2]


def _check_outbound(values: Mapping[str, Any]) -> None:
    if values["reconnect_max"] < values["reconnect_initial"]:
        raise _Invalid(
            f"must be >= reconnect_initial ({values['reconnect_initial']}),"
            f" got {values['reconnect_max']}",
            subkey="reconnect_max",
        )


@dataclass(frozen=True)
class AgentTLS:
    cert: str = _spec("string", check=_readable_file)
    key: str = _spec("string", check=_readable_file)
    ca: str = _spec("string", check=_readable_file)
    backend_spki_pins: tuple[str, ...] = _spec("string array", (), _spki_pins)


@dataclass(frozen=True)
class PanelSection:
    users_file: str = _spec("string", "/etc/viworks/panel.htpasswd", _path)
    htpasswd: str = _spec("string", "/usr/bin/htpasswd", _path)


@dataclass(frozen=True)
class VPNSection:
    """SoftEther VPN server, managed through vpncmd."""

    vpncmd: str = _spec("string", "/usr/bin/vpncmd", _path)
    server: str = _spec("string", "localhost:5555", _non_empty)
    hub: str = _spec("string", "VPN", _non_empty)
    # File holding the hub administrator password ("" = no password).
    hub_password_file: str = _spec("string", "", _optional_path)


@dataclass(frozen=True)
class FwknopSection:
    """fwknop single-packet authorization: one access.conf stanza per VPN user."""

    access_file: str = _spec("string", "/etc/fwknop/access.conf", _path)
    open_ports: str = _spec("string", "tcp/443", _non_empty)
    fwknopd: str = _spec("string", "/usr/sbin/fwknopd", _path)


@dataclass(frozen=True)
class ContainersSection:
    """Per-session workspace containers."""

    engine: str = _spec("string", "docker", _one_of("docker", "podman"))
    # The engine's executable ("" = /usr/bin/<engine>).
    engine_path: str = _spec("string", "", _optional_path)
    images: tuple[str, ...] = _spec("string array", ())
    default_image: str = _spec("string", "")
    port_range: str = _spec("string", "20000-20999", _port_range)
    container_port: int = _spec("integer", 8080, _at_least(1))
    network: str = _spec("string", "")

    @property
    def executable(self) -> str:
        return self.engine_path or f"/usr/bin/{self.engine}"

    @property
    def ports(self) -> tuple[int, int]:
        low, high = self.port_range.split("-")
        return int(low), int(high)


@dataclass(frozen=True)
class ServicesSection:
    # The unit names Debian's packages ship (softether-vpnserver, fwknop-server).
    units: tuple[str, ...] = _spec(
        "string array",
        ("docker", "nginx", "softether-vpnserver", "fwknop-server"),
        _unit_names,
    )
    systemctl: str = _spec("string", "/usr/bin/systemctl", _path)


@dataclass(frozen=True)
class LogsSection:
    # Units whose journal tail_logs may read (an allowlist).
    units: tuple[str, ...] = _spec(
        "string array",
        ("viworks-gateway-agent", "nginx", "softether-vpnserver", "fwknop-server"),
        _unit_names,
    )
    journalctl: str = _spec("string", "/usr/bin/journalctl", _path)


@dataclass(frozen=True)
class BootstrapSection:
    """Short-lived connection bundles handed to users (generate_bootstrap)."""

    # The address users connect to (SPA packets and VPN); "" = the agent's hostname.
    public_host: str = _spec("string", "")
    spa_port: int = _spec("integer", 62201, _at_least(1))
    vpn_port: int = _spec("integer", 443, _at_least(1))
    max_ttl: float = _spec("number", 86400.0, _positive)


@dataclass(frozen=True)
class AgentSigning:
    """``[signing]``: run only commands signed by the backend (optional; off without it)."""

    # Paths of the backend's signing.pub: [current] or [current, next] during a rotation.
    public_keys: tuple[str, ...] = _spec("string array", check=_signing_public_keys)
    # Seconds a command's issued_at may differ from this agent's clock.
    clock_window: float = _spec("number", 60.0, _positive)


@dataclass(frozen=True)
class VerbConfig:
    """One ``[verbs.NAME]`` table: overrides of a built-in verb, or a declared verb.

    ``None`` means "not set": a built-in keeps its own value, a declared verb gets the
    gateway default (timeout 30 s, output cap 64 KiB, no concurrency limit).  ``argv`` and
    ``stdin`` are templates (see ``parse_template``) over ``params``, a schema checked with
    ``viworks.schema.validate_schema``.  Built-in verbs accept only ``timeout``,
    ``output_cap``, ``concurrency``, ``no_output_timeout`` and ``enabled``; a declared verb
    requires ``argv``. ``concurrency`` caps how many run at once (beyond it they wait in the
    gateway's queue); ``no_output_timeout`` kills a run that stays silent that long.
    """

    argv: tuple[str, ...] | None = _spec("string array", None, _argv)
    stdin: str | None = _spec("string", None, _template)
    timeout: float | None = _spec("number", None, _optional(_positive))
    output_cap: int | None = _spec("integer", None, _optional(_at_least(1024)))
    concurrency: int | None = _spec("integer", None, _optional(_at_least(1)))
    no_output_timeout: float | None = _spec("number", None, _optional(_positive))
    changes_state: bool = _spec("boolean", True)
    description: str = _spec("string", "")
    params: dict[str, Any] = _spec("table", {}, _param_specs)
    enabled: bool = _spec("boolean", True)


@dataclass(frozen=True)
class AgentConfig:
    path: str
    agent: AgentSection
    outbound: OutboundSection
    tls: AgentTLS
    panel: PanelSection
    vpn: VPNSection = field(default_factory=VPNSection)
    fwknop: FwknopSection = field(default_factory=FwknopSection)
    containers: ContainersSection = field(default_factory=ContainersSection)
    services: ServicesSection = field(default_factory=ServicesSection)
    logs: LogsSection = field(default_factory=LogsSection)
    bootstrap: BootstrapSection = field(default_factory=BootstrapSection)
    verbs: dict[str, VerbConfig] = field(default_factory=dict)
    # None when the file has no [signing] section (commands are not verified).
    signing: AgentSigning | None = None


@dataclass(frozen=True)
class BackendSection:
    http_bind: str = _spec("string", "127.0.0.1:8080", _bind)
    ws_bind: str = _spec("string", "0.0.0.0:8081", _bind)
    ws_path: str = _spec("string", "/ws/agent", _ws_path)
    database: str = _spec("string", "/var/lib/viworks/backend.db", _database)
    log_level: str = _spec("string", "info", _log_level)
    heartbeat_interval: float = _spec("number", 15.0, _positive)
    max_message_size: int = _spec("integer", 1048576, _at_least(1024))
    default_command_timeout: float = _spec("number", 60.0, _positive)
    default_ttl: float = _spec("number", 3600.0, _positive)
    lost_grace: float = _spec("number", 60.0, _positive)
    # Seconds after start-up during which no command is declared lost (agents reconnect).
    startup_grace: float = _spec("number", 120.0, _at_least(0))
    handshake_rate: float = _spec("number", 200.0, _positive)
    handshake_burst: int = _spec("integer", 200, _at_least(1))
    # Frames per second one agent may send (burst: twice that); see etc/backend.toml.
    agent_frame_rate: float = _spec("number", 50.0, _positive)
    # What one agent can make the backend keep (docs/security.md, "A hostile agent"):
    # output stored per command and stream, the bytes of telemetry history per agent and
    # the spacing of stored reports, the encoded bytes of the in-memory event history.
    max_output_bytes: int = _spec("integer", 1 << 20, _at_least(1024))
    telemetry_history_bytes: int = _spec("integer", 4 << 20, _at_least(MAX_TELEMETRY_BYTES))
    telemetry_min_interval: float = _spec("number", 1.0, _at_least(0))
    event_history_bytes: int = _spec("integer", 16 << 20, _at_least(1 << 16))
    # Agents through a TLS-terminating nginx: a plain-TCP WebSocket listener ("" = off) that
    # takes the agent's identity from nginx's verified-client-certificate headers, and only
    # when the TCP peer is one of trusted_proxies (IPs or CIDRs). See docs/security.md.
    proxied_ws_bind: str = _spec("string", "", _optional_bind)
    trusted_proxies: tuple[str, ...] = _spec("string array", (), _networks)

    @property
    def http_host(self) -> str:
        return parse_bind(self.http_bind)[0]

    @property
    def http_port(self) -> int:
        return parse_bind(self.http_bind)[1]

    @property
    def ws_host(self) -> str:
        return parse_bind(self.ws_bind)[0]

    @property
    def ws_port(self) -> int:
        return parse_bind(self.ws_bind)[1]

    @property
    def is_postgres(self) -> bool:
        return self.database.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class BackendTLS:
    cert: str = _spec("string", check=_readable_file)
    key: str = _spec("string", check=_readable_file)
    client_ca: str = _spec("string", check=_readable_file)


@dataclass(frozen=True)
class BackendSigning:
    """``[signing]``: sign every command delivered to agents (optional)."""

    # The Ed25519 private key written by `viworks pki signing-key DIR` (DIR/signing.key).
    key: str = _spec("string", check=_signing_private_key)


@dataclass(frozen=True)
class ApiSection:
    """``[api]``: the operators' HTTP API."""

    # Per API token: requests per second, and how many may come at once (burst).
    rate_limit_per_token: float = _spec("number", 20.0, _positive)
    rate_limit_burst: int = _spec("integer", 40, _at_least(1))
    # GET /metrics (Prometheus) needs "Authorization: Bearer <metrics_token>" ("" = open).
    metrics_token: str = _spec("string", "")
    # Failed authentications per source address: per second, and at once (burst); past
    # them 429 with Retry-After. At most auth_failure_sources addresses are tracked; the
    # refusals are audited as one api.refused record per source and interval (seconds).
    auth_failure_rate: float = _spec("number", 1.0, _positive)
    auth_failure_burst: int = _spec("integer", 20, _at_least(1))
    auth_failure_sources: int = _spec("integer", 4096, _at_least(1))
    auth_failure_audit_interval: float = _spec("number", 60.0, _positive)
    # An event stream whose client stops reading is dropped past this many unsent bytes.
    sse_buffer_bytes: int = _spec("integer", 1 << 20, _at_least(1 << 16))
    # The web console at /ui/, and how long its login sessions last (seconds; capped by
    # the token's own expiry).
    console: bool = _spec("boolean", True)
    session_ttl: float = _spec("number", 28800.0, _positive)


@dataclass(frozen=True)
class BackendConfig:
    path: str
    backend: BackendSection
    tls: BackendTLS
    api: ApiSection = field(default_factory=ApiSection)
    # None when the file has no [signing] section (commands go out unsigned).
    signing: BackendSigning | None = None


# section name -> (dataclass, cross-field checks run after every key is valid)
_SectionTable = dict[str, tuple[type, tuple[Callable[[Mapping[str, Any]], None], ...]]]

_AGENT_SECTIONS: _SectionTable = {
    "agent": (AgentSection, ()),
    "outbound": (OutboundSection, (_check_outbound,)),
    "tls": (AgentTLS, ()),
    "panel": (PanelSection, ()),
    "vpn": (VPNSection, ()),
    "fwknop": (FwknopSection, ()),
    "containers": (ContainersSection, (_check_containers,)),
    "services": (ServicesSection, ()),
    "logs": (LogsSection, ()),
    "bootstrap": (BootstrapSection, ()),
}

# section name -> loader(path, table, ctx) for sections holding named subtables
_TableLoaders = dict[str, Callable[[str, Any, _Ctx], Any]]

_BACKEND_SECTIONS: _SectionTable = {
    "backend": (BackendSection, ()),
    "tls": (BackendTLS, ()),
    "api": (ApiSection, ()),
}


# --------------------------------------------------------------------------- loader


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a configuration file") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read configuration file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not valid UTF-8: {e.reason}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"TOML syntax error: {e}") from None


def _load_section(path: str, name: str, cls: type, checks, table: Any, ctx: _Ctx):
    def fail(message: str, key: str | None = None) -> ConfigError:
        return ConfigError(path, message, section=name, key=key)

    if not isinstance(table, dict):
        raise fail(f"must be a table, got {_toml_type(table)}")
    specs = {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}
    for key in table:
        if key not in specs:
            raise fail(f"unknown key{_suggest(key, list(specs))}", key)
    values: dict[str, Any] = {}
    for key, spec in specs.items():
        if key not in table:
            if spec.default is _REQUIRED:
                raise fail("required key is missing", key)
            raw, convert = spec.default, False
        else:
            raw, convert = table[key], True
        try:
            value = _coerce(spec.kind, raw) if convert else raw
            if isinstance(value, dict):
                value = dict(value)
            # Defaults go through the validator too, so default paths are normalised the
            # same way; defaults never need the file-existence check (no file defaults).
            if spec.check is not None:
                value = spec.check(value, ctx)
        except _Invalid as e:
            subkey = f"{key}.{e.subkey}" if e.subkey else key
            raise fail(str(e), subkey) from None
        values[key] = value
    for check in checks:
        try:
            check(values)
        except _Invalid as e:
            raise fail(str(e), e.subkey) from None
    return cls(**values)


def _load_verbs(path: str, table: Any, ctx: _Ctx) -> dict[str, VerbConfig]:
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table, got {_toml_type(table)}", section="verbs")
    known_keys = {f.name for f in dataclasses.fields(VerbConfig)}
    verbs: dict[str, VerbConfig] = {}
    for name, sub in table.items():
        section = f"verbs.{name}"
        if not _VERB_NAME.fullmatch(name):
            raise ConfigError(
                path,
                f"invalid verb name {name!r}: must be 1-64 characters of a-z, 0-9 and '_',"
                " starting with a letter",
                section=section,
            )
        if name in BUILTIN_VERBS and isinstance(sub, dict):
            for key in sub:
                if key in known_keys and key not in _BUILTIN_VERB_KEYS:
                    raise ConfigError(
                        path,
                        f"cannot be set for the built-in verb {name!r} (only"
                        f" {', '.join(_BUILTIN_VERB_KEYS)}); declare a new verb under another"
                        " name instead",
                        section=section,
                        key=key,
                    )
        verb = _load_section(path, section, VerbConfig, (_check_verb_templates,), sub, ctx)
        if name not in BUILTIN_VERBS and verb.argv is None:
            raise ConfigError(
                path,
                "required key is missing (a declared verb needs the program to run;"
                f" built-in verbs are {', '.join(sorted(BUILTIN_VERBS))})",
                section=section,
                key="argv",
            )
        verbs[name] = verb
    return verbs


def _optional_section(name: str, cls: type) -> Callable[[str, Any, _Ctx], Any]:
    """A loader for a section that may be left out (``None`` then, see ``_load``)."""

    def load(path: str, table: Any, ctx: _Ctx) -> Any:
        return _load_section(path, name, cls, (), table, ctx)

    load.optional = True  # type: ignore[attr-defined]
    return load


_AGENT_TABLES: _TableLoaders = {
    "verbs": _load_verbs,
    "signing": _optional_section("signing", AgentSigning),
}
_BACKEND_TABLES: _TableLoaders = {"signing": _optional_section("signing", BackendSigning)}


def _load(
    path: str, sections: _SectionTable, check_files: bool, tables: _TableLoaders | None = None
) -> dict[str, Any]:
    path = os.path.abspath(os.fspath(path))
    tables = tables or {}
    data = _read_toml(path)
    for name in data:
        if name not in sections and name not in tables:
            names = [*sections, *tables]
            known = ", ".join(f"[{s}]" for s in names)
            raise ConfigError(
                path, f"unknown section [{name}]{_suggest(name, names)}; known: {known}"
            )
    ctx = _Ctx(base_dir=os.path.dirname(path), check_files=check_files)
    loaded: dict[str, Any] = {"path": path}
    for name, (cls, checks) in sections.items():
        loaded[name] = _load_section(path, name, cls, checks, data.get(name, {}), ctx)
    for name, loader in tables.items():
        if getattr(loader, "optional", False) and name not in data:
            loaded[name] = None
            continue
        loaded[name] = loader(path, data.get(name, {}), ctx)
    return loaded


def load_agent_config(path: str, *, check_files: bool = True) -> AgentConfig:
    """Load and validate a gateway agent configuration file.

    ``check_files=False`` skips the check that TLS files exist (only for tests of example
    files); paths are still resolved.
    """
    return AgentConfig(**_load(path, _AGENT_SECTIONS, check_files, _AGENT_TABLES))


def load_backend_config(path: str, *, check_files: bool = True) -> BackendConfig:
    """Load and validate a backend configuration file (see ``load_agent_config``)."""
    return BackendConfig(**_load(path, _BACKEND_SECTIONS, check_files, _BACKEND_TABLES))
