"""Key checks shared by the agent's and the backend's sections (see ``spec.Check``).

Each takes the value (its TOML type already checked) and the load context, raises
``Invalid`` with a message that follows the key's name, and returns the value to keep
(paths come back absolute and normalised). Checks used by one section only live beside
that section.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from viworks.config.spec import Check, Ctx, Invalid
from viworks.netaddr import parse_bind, parse_networks, parse_wss_url

__all__ = [
    "at_least",
    "bind",
    "log_level",
    "networks",
    "non_empty",
    "one_of",
    "optional",
    "optional_bind",
    "optional_path",
    "parsed",
    "path",
    "positive",
    "readable_file",
    "wss_url",
]

T = TypeVar("T")
R = TypeVar("R")

# -- numbers and words


def at_least(minimum: float) -> Check:
    def check(value: Any, ctx: Ctx) -> Any:
        if value < minimum:
            raise Invalid(f"must be >= {minimum}, got {value}")
        return value

    return check


def positive(value: float, ctx: Ctx) -> float:
    if not value > 0:
        raise Invalid(f"must be > 0, got {value}")
    return value


def optional(check: Check) -> Check:
    """``check`` for a key whose default ``None`` means "not set"."""

    def unless_none(value: Any, ctx: Ctx) -> Any:
        return None if value is None else check(value, ctx)

    return unless_none


def non_empty(value: str, ctx: Ctx) -> str:
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def one_of(*choices: str) -> Callable[[str, Ctx], str]:
    def check(value: str, ctx: Ctx) -> str:
        if value not in choices:
            raise Invalid(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return check


_LOG_LEVELS = {"debug", "info", "warn", "warning", "error", "critical"}


def log_level(value: str, ctx: Ctx) -> str:
    """Accept the level names case-insensitively; ``warning`` is normalised to ``warn``."""
    level = value.lower()
    if level not in _LOG_LEVELS:
        raise Invalid(f"must be one of {', '.join(sorted(_LOG_LEVELS))}; got {value!r}")
    return "warn" if level == "warning" else level


# -- files


def path(value: str, ctx: Ctx) -> str:
    """A path, made absolute against the configuration file's directory."""
    non_empty(value, ctx)
    return os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(value)))


def optional_path(value: str, ctx: Ctx) -> str:
    """A path, or "" for "not set"."""
    return path(value, ctx) if value else ""


def readable_file(value: str, ctx: Ctx) -> str:
    """A path to a regular file this process can open (checked unless ``check_files`` is off)."""
    resolved = path(value, ctx)
    if ctx.check_files:
        if not os.path.exists(resolved):
            raise Invalid(f"file does not exist: {resolved}")
        if not os.path.isfile(resolved):
            raise Invalid(f"not a regular file: {resolved}")
        try:
            with open(resolved, "rb"):
                pass
        except OSError as e:
            raise Invalid(f"cannot read {resolved}: {e.strerror or e}") from None
    return resolved


# -- network addresses (viworks.netaddr)


def parsed(parse: Callable[[T], R], value: T) -> R:
    """``parse(value)``, its ``ValueError`` made ``Invalid`` (the message unchanged)."""
    try:
        return parse(value)
    except ValueError as e:
        raise Invalid(str(e)) from None


def bind(value: str, ctx: Ctx) -> str:
    """A ``host:port`` or ``[v6addr]:port`` to listen on."""
    parsed(parse_bind, value)
    return value


def optional_bind(value: str, ctx: Ctx) -> str:
    """A ``host:port``, or "" for "not set"."""
    return bind(value, ctx) if value else ""


def networks(value: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:
    """IP addresses or CIDR networks, normalised (``10.0.0.0/8``, ``::1/128``)."""
    return parsed(parse_networks, value)


def wss_url(value: str, ctx: Ctx) -> str:
    """A ``wss://host[:port][/path]`` URL."""
    parsed(parse_wss_url, value)
    return value
