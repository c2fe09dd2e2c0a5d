"""The backend's configuration (``backend.toml``): one dataclass per section.

A key is one field: its TOML type, default and check (``spec``). A section is one
dataclass listed in ``BACKEND_SECTIONS``; ``[signing]`` is optional (commands go out
unsigned without it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from viworks import signing
from viworks.config import checks
from viworks.config.spec import Ctx, Invalid, Sections, Table, load_file, optional_section, spec
from viworks.netaddr import parse_bind
from viworks.protocol import MAX_TELEMETRY_BYTES

__all__ = [
    "BACKEND_SECTIONS",
    "BACKEND_TABLES",
    "ApiSection",
    "BackendConfig",
    "BackendSection",
    "BackendSigning",
    "BackendTLS",
    "load_backend_config",
]

_POSTGRES = ("postgresql://", "postgres://")


def _ws_path(value: str, ctx: Ctx) -> str:
    if not value.startswith("/"):
        raise Invalid(f"must start with '/', got {value!r}")
    return value


def _database(value: str, ctx: Ctx) -> str:
    """A PostgreSQL URL is kept as is; anything else is an SQLite file path."""
    if value.startswith(_POSTGRES):
        return value
    if "://" in value:
        raise Invalid(f"must be a file path (SQLite) or a postgresql:// URL, got {value!r}")
    return checks.path(value, ctx)


def _signing_private_key(value: str, ctx: Ctx) -> str:
    """The backend's Ed25519 signing key (``viworks pki signing-key``)."""
    path = checks.readable_file(value, ctx)
    if ctx.check_files:
        try:
            signing.load_private_key(path)
        except signing.SigningKeyError as e:
            raise Invalid(str(e)) from None
    return path


@dataclass(frozen=True)
class BackendSection:
    http_bind: str = spec("string", "127.0.0.1:8080", checks.bind)
    ws_bind: str = spec("string", "0.0.0.0:8081", checks.bind)
    ws_path: str = spec("string", "/ws/agent", _ws_path)
    database: str = spec("string", "/var/lib/viworks/backend.db", _database)
    log_level: str = spec("string", "info", checks.log_level)
    heartbeat_interval: float = spec("number", 15.0, checks.positive)
    max_message_size: int = spec("integer", 1048576, checks.at_least(1024))
    default_command_timeout: float = spec("number", 60.0, checks.positive)
    default_ttl: float = spec("number", 3600.0, checks.positive)
    lost_grace: float = spec("number", 60.0, checks.positive)
    # Seconds after start-up during which no command is declared lost (agents reconnect).
    startup_grace: float = spec("number", 120.0, checks.at_least(0))
    handshake_rate: float = spec("number", 200.0, checks.positive)
    handshake_burst: int = spec("integer", 200, checks.at_least(1))
    # Frames per second one agent may send (burst: twice that); see etc/backend.toml.
    agent_frame_rate: float = spec("number", 50.0, checks.positive)
    # What one agent can make the backend keep (docs/security.md, "A hostile agent"):
    # output stored per command and stream, the bytes of telemetry history per agent and
    # the spacing of stored reports, the encoded bytes of the in-memory event history.
    max_output_bytes: int = spec("integer", 1 << 20, checks.at_least(1024))
    telemetry_history_bytes: int = spec("integer", 4 << 20, checks.at_least(MAX_TELEMETRY_BYTES))
    telemetry_min_interval: float = spec("number", 1.0, checks.at_least(0))
    event_history_bytes: int = spec("integer", 16 << 20, checks.at_least(1 << 16))
    # Agents through a TLS-terminating nginx: a plain-TCP WebSocket listener ("" = off) that
    # takes the agent's identity from nginx's verified-client-certificate headers, and only
    # when the TCP peer is one of trusted_proxies (IPs or CIDRs). See docs/security.md.
    proxied_ws_bind: str = spec("string", "", checks.optional_bind)
    trusted_proxies: tuple[str, ...] = spec("string array", (), checks.networks)

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
        return self.database.startswith(_POSTGRES)


@dataclass(frozen=True)
class BackendTLS:
    cert: str = spec("string", check=checks.readable_file)
    key: str = spec("string", check=checks.readable_file)
    client_ca: str = spec("string", check=checks.readable_file)


@dataclass(frozen=True)
class BackendSigning:
    """``[signing]``: sign every command delivered to agents (optional)."""

    # The Ed25519 private key written by `viworks pki signing-key DIR` (DIR/signing.key).
    key: str = spec("string", check=_signing_private_key)


@dataclass(frozen=True)
class ApiSection:
    """``[api]``: the operators' HTTP API."""

    # Per API token: requests per second, and how many may come at once (burst).
    rate_limit_per_token: float = spec("number", 20.0, checks.positive)
    rate_limit_burst: int = spec("integer", 40, checks.at_least(1))
    # GET /metrics (Prometheus) needs "Authorization: Bearer <metrics_token>" ("" = open).
    metrics_token: str = spec("string", "")
    # Failed authentications per source address: per second, and at once (burst); past
    # them 429 with Retry-After. At most auth_failure_sources addresses are tracked; the
    # refusals are audited as one api.refused record per source and interval (seconds).
    auth_failure_rate: float = spec("number", 1.0, checks.positive)
    auth_failure_burst: int = spec("integer", 20, checks.at_least(1))
    auth_failure_sources: int = spec("integer", 4096, checks.at_least(1))
    auth_failure_audit_interval: float = spec("number", 60.0, checks.positive)
    # An event stream whose client stops reading is dropped past this many unsent bytes.
    sse_buffer_bytes: int = spec("integer", 1 << 20, checks.at_least(1 << 16))
    # The web console at /ui/, and how long its login sessions last (seconds; capped by
    # the token's own expiry).
    console: bool = spec("boolean", True)
    session_ttl: float = spec("number", 28800.0, checks.positive)


@dataclass(frozen=True)
class BackendConfig:
    path: str
    backend: BackendSection
    tls: BackendTLS
    api: ApiSection = field(default_factory=ApiSection)
    # None when the file has no [signing] section (commands go out unsigned).
    signing: BackendSigning | None = None


#: The sections every backend.toml has (missing ones get their defaults).
BACKEND_SECTIONS: Sections = {
    "backend": (BackendSection, ()),
    "tls": (BackendTLS, ()),
    "api": (ApiSection, ()),
}
#: The names loaded their own way: the optional [signing].
BACKEND_TABLES: Mapping[str, Table] = {"signing": optional_section("signing", BackendSigning)}


def load_backend_config(path: str, *, check_files: bool = True) -> BackendConfig:
    """Load and validate a backend configuration file (see ``load_agent_config``)."""
    return BackendConfig(**load_file(path, BACKEND_SECTIONS, check_files, BACKEND_TABLES))
