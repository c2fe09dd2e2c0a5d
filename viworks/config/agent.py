"""The gateway agent's configuration (``agent.toml``): one dataclass per section.

A key is one field: its TOML type, default and check (``spec``). A section is one
dataclass listed in ``AGENT_SECTIONS``; ``[verbs.NAME]`` tables are in
``viworks.config.verbs``; ``[signing]`` is optional (off without it).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from viworks import signing
from viworks.config import checks
from viworks.config.spec import Ctx, Invalid, Sections, Table, load_file, optional_section, spec
from viworks.config.verbs import VerbConfig, load_verbs
from viworks.netaddr import parse_bind, parse_wss_url

__all__ = [
    "AGENT_SECTIONS",
    "AGENT_TABLES",
    "AgentConfig",
    "AgentSection",
    "AgentSigning",
    "AgentTLS",
    "BootstrapSection",
    "ContainersSection",
    "FwknopSection",
    "LogsSection",
    "OutboundSection",
    "PanelSection",
    "ServicesSection",
    "VPNSection",
    "load_agent_config",
]

_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UNIT = re.compile(r"[A-Za-z0-9@._-]{1,128}")


def _agent_id(value: str, ctx: Ctx) -> str:
    if not _AGENT_ID.fullmatch(value):
        raise Invalid(
            f"must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a"
            f" letter or digit; got {value!r}"
        )
    return value


def _unit_names(value: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:
    for unit in value:
        if not _UNIT.fullmatch(unit) or unit.startswith("-"):
            raise Invalid(f"not a systemd unit name: {unit!r}")
    return value


def _port_range(value: str, ctx: Ctx) -> str:
    match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 65535:
        raise Invalid(f'must be "LOW-HIGH" with 1 <= LOW <= HIGH <= 65535, got {value!r}')
    return value


def _spki_pins(value: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:
    for i, pin in enumerate(value):
        prefix, _, encoded = pin.partition("/")
        try:
            raw = base64.b64decode(encoded, validate=True) if prefix == "sha256" else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise Invalid(
                f"item {i} must be 'sha256/<base64 of a 32-byte SHA-256 digest>', got {pin!r}"
            )
    return value


def _signing_public_keys(value: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:
    """The backend's public signing keys the agent trusts: [current] or [current, next]."""
    if not value:
        raise Invalid("must list at least one public key file (the backend's signing.pub)")
    paths = []
    for i, item in enumerate(value):
        try:
            path = checks.readable_file(item, ctx)
            if ctx.check_files:
                signing.load_public_key(path)
        except (Invalid, signing.SigningKeyError) as e:
            raise Invalid(f"item {i}: {e}") from None
        paths.append(path)
    return tuple(paths)


@dataclass(frozen=True)
class AgentSection:
    bind_address: str = spec("string", "127.0.0.1:8443", checks.bind)
    log_level: str = spec("string", "info", checks.log_level)
    site: str = spec("string", "production", checks.non_empty)
    state_dir: str = spec("string", "/var/lib/viworks/agent", checks.path)
    max_connections: int = spec("integer", 100, checks.at_least(1))
    request_timeout: float = spec("number", 30.0, checks.positive)
    labels: dict[str, str] = spec("string table", {})
    # false: refuse every verb with changes_state (status "rejected", code EXEC_DISABLED).
    exec_enable: bool = spec("boolean", True)
    # Seconds between telemetry reports (host metrics) to the backend.
    telemetry_interval: float = spec("number", 30.0, checks.positive)
    # Verbs running at once on this gateway, and how many more may wait for a slot
    # (beyond that a command is rejected with QUEUE_FULL).
    max_concurrency: int = spec("integer", 8, checks.at_least(1))
    queue_limit: int = spec("integer", 64, checks.at_least(0))
    # When the agent runs as root: the user subprocess verbs run as ("" = the agent's own).
    run_as_user: str = spec("string", "")

    @property
    def bind_host(self) -> str:
        return parse_bind(self.bind_address)[0]

    @property
    def bind_port(self) -> int:
        return parse_bind(self.bind_address)[1]


@dataclass(frozen=True)
class OutboundSection:
    backend_url: str = spec("string", check=checks.wss_url)
    agent_id: str = spec("string", check=_agent_id)
    heartbeat_interval: float = spec("number", 15.0, checks.positive)
    reconnect_initial: float = spec("number", 1.0, checks.positive)
    reconnect_max: float = spec("number", 60.0, checks.positive)

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
        raise Invalid(
            f"must be >= reconnect_initial ({values['reconnect_initial']}),"
            f" got {values['reconnect_max']}",
            subkey="reconnect_max",
        )


@dataclass(frozen=True)
class AgentTLS:
    cert: str = spec("string", check=checks.readable_file)
    key: str = spec("string", check=checks.readable_file)
    ca: str = spec("string", check=checks.readable_file)
    backend_spki_pins: tuple[str, ...] = spec("string array", (), _spki_pins)


@dataclass(frozen=True)
class PanelSection:
    users_file: str = spec("string", "/etc/viworks/panel.htpasswd", checks.path)
    htpasswd: str = spec("string", "/usr/bin/htpasswd", checks.path)


@dataclass(frozen=True)
class VPNSection:
    """SoftEther VPN server, managed through vpncmd."""

    vpncmd: str = spec("string", "/usr/bin/vpncmd", checks.path)
    server: str = spec("string", "localhost:5555", checks.non_empty)
    hub: str = spec("string", "VPN", checks.non_empty)
    # File holding the hub administrator password ("" = no password).
    hub_password_file: str = spec("string", "", checks.optional_path)


@dataclass(frozen=True)
class FwknopSection:
    """fwknop single-packet authorization: one access.conf stanza per VPN user."""

    access_file: str = spec("string", "/etc/fwknop/access.conf", checks.path)
    open_ports: str = spec("string", "tcp/443", checks.non_empty)
    fwknopd: str = spec("string", "/usr/sbin/fwknopd", checks.path)


@dataclass(frozen=True)
class ContainersSection:
    """Per-session workspace containers."""

    engine: str = spec("string", "docker", checks.one_of("docker", "podman"))
    # The engine's executable ("" = /usr/bin/<engine>).
    engine_path: str = spec("string", "", checks.optional_path)
    images: tuple[str, ...] = spec("string array", ())
    default_image: str = spec("string", "")
    port_range: str = spec("string", "20000-20999", _port_range)
    container_port: int = spec("integer", 8080, checks.at_least(1))
    network: str = spec("string", "")

    @property
    def executable(self) -> str:
        return self.engine_path or f"/usr/bin/{self.engine}"

    @property
    def ports(self) -> tuple[int, int]:
        low, high = self.port_range.split("-")
        return int(low), int(high)


def _check_containers(values: Mapping[str, Any]) -> None:
    if values["default_image"] and values["default_image"] not in values["images"]:
        raise Invalid("must be one of images (the allowlist)", subkey="default_image")


@dataclass(frozen=True)
class ServicesSection:
    # The unit names Debian's packages ship (softether-vpnserver, fwknop-server).
    units: tuple[str, ...] = spec(
        "string array",
        ("docker", "nginx", "softether-vpnserver", "fwknop-server"),
        _unit_names,
    )
    systemctl: str = spec("string", "/usr/bin/systemctl", checks.path)


@dataclass(frozen=True)
class LogsSection:
    # Units whose journal tail_logs may read (an allowlist).
    units: tuple[str, ...] = spec(
        "string array",
        ("viworks-gateway-agent", "nginx", "softether-vpnserver", "fwknop-server"),
        _unit_names,
    )
    journalctl: str = spec("string", "/usr/bin/journalctl", checks.path)


@dataclass(frozen=True)
class BootstrapSection:
    """Short-lived connection bundles handed to users (generate_bootstrap)."""

    # The address users connect to (SPA packets and VPN); "" = the agent's hostname.
    public_host: str = spec("string", "")
    spa_port: int = spec("integer", 62201, checks.at_least(1))
    vpn_port: int = spec("integer", 443, checks.at_least(1))
    max_ttl: float = spec("number", 86400.0, checks.positive)


@dataclass(frozen=True)
class AgentSigning:
    """``[signing]``: run only commands signed by the backend (optional; off without it)."""

    # Paths of the backend's signing.pub: [current] or [current, next] during a rotation.
    public_keys: tuple[str, ...] = spec("string array", check=_signing_public_keys)
    # Seconds a command's issued_at may differ from this agent's clock.
    clock_window: float = spec("number", 60.0, checks.positive)


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


#: The sections every agent.toml has (missing ones get their defaults).
AGENT_SECTIONS: Sections = {
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
#: The names loaded their own way: named subtables, an optional section.
AGENT_TABLES: Mapping[str, Table] = {
    "verbs": Table(load_verbs),
    "signing": optional_section("signing", AgentSigning),
}


def load_agent_config(path: str, *, check_files: bool = True) -> AgentConfig:
    """Load and validate a gateway agent configuration file.

    ``check_files=False`` skips the check that TLS files exist (only for tests of example
    files); paths are still resolved.
    """
    return AgentConfig(**load_file(path, AGENT_SECTIONS, check_files, AGENT_TABLES))
