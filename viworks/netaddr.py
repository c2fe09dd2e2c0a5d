"""Network addresses as the configuration spells them: ``host:port``, ``wss://`` URLs, CIDRs.

Pure parsing (no sockets, no Twisted): the config loader validates with these functions
and the services use them to split what it accepted. Each raises ``ValueError`` with a
message fit to follow the key's name in a one-line configuration error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["is_ipv6", "parse_bind", "parse_networks", "parse_wss_url"]

_BIND = re.compile(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d{1,5})|([^\[\]:\s]+):(\d{1,5})")


def parse_bind(value: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6addr]:port`` into ``(host, port)``; raise ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port', got {value!r}")
    m = _BIND.fullmatch(value)
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


def parse_networks(values: Iterable[str]) -> tuple[str, ...]:
    """IP addresses or CIDR networks, normalised (``10.1.2.3/8`` -> ``10.0.0.0/8``,
    ``::1`` -> ``::1/128``); raise ValueError naming the first bad item."""
    out = []
    for i, item in enumerate(values):
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(
                f"item {i} must be an IP address or CIDR network, got {item!r}"
            ) from None
    return tuple(out)


def is_ipv6(host: str) -> bool:
    """True when ``host`` is an IPv6 address (not a name, not IPv4)."""
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
