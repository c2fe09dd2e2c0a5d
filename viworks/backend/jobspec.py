"""A job request, parsed and checked: ``parse_job_spec(body) -> JobSpec`` (pure).

The API parses ``POST /api/v1/jobs`` bodies here; ``viworks.backend.jobs.JobRunner``
takes the ``JobSpec`` and decides what needs the store (which agents match, what each
offers). Counts keep the form they were given in (``3`` or ``"10%"``): a percentage is
resolved against the number of targets when the job is made (``resolve_limit``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from viworks.backend.bounds import MAX_TIMEOUT, MAX_TTL, check_seconds
from viworks.backend.errors import DomainError
from viworks.selectors import Selector, SelectorError
from viworks.selectors import parse as parse_selector

__all__ = [
    "BODY_FIELDS",
    "MAX_COUNT",
    "JobSpec",
    "Limit",
    "parse_job_spec",
    "parse_limit",
    "parse_job_selector",
    "resolve_limit",
]

BODY_FIELDS = frozenset(
    {"verb", "args", "selector", "concurrency", "max_errors", "canary", "canary_auto"}
    | {"ttl", "timeout"}
)
#: The largest count a job takes (concurrency, max_errors, canary): what the store's
#: INTEGER columns hold on every engine (32 bits on PostgreSQL).
MAX_COUNT = 2**31 - 1

#: A count as given: an integer, a percentage of the targets (``"10%"``), or None (default).
Limit = int | str | None


@attrs.frozen
class JobSpec:
    """What a job request asks for, checked but not resolved: None means the default
    (``concurrency`` and ``max_errors`` 1, the backend's ``default_command_timeout`` and
    ``default_ttl``)."""

    verb: str
    args: dict[str, Any]
    selector: str  # checked: parse_job_selector takes it
    concurrency: Limit = None
    max_errors: Limit = None
    canary: int | None = None
    canary_auto: bool = False
    ttl: float | None = None
    timeout: float | None = None


def parse_job_spec(body: object) -> JobSpec:
    """The ``JobSpec`` of a request body; ``DomainError`` naming the first bad field."""
    if not isinstance(body, Mapping):
        raise DomainError("BAD_REQUEST", "the body must be a JSON object")
    unknown = set(body) - BODY_FIELDS
    if unknown:
        name = str(sorted(map(str, unknown))[0])
        raise DomainError("BAD_REQUEST", f"unknown field {name!r}", name)
    selector = body.get("selector")
    if not isinstance(selector, str):
        raise DomainError("BAD_REQUEST", "the body needs a selector (key=value,...)", "selector")
    parse_job_selector(selector)
    verb = body.get("verb")
    if not isinstance(verb, str) or not verb:
        raise DomainError("UNKNOWN_VERB", "the body needs a verb", "verb")
    args = body.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise DomainError("INVALID_ARGS", "args must be a JSON object", "args")
    concurrency = parse_limit("concurrency", body.get("concurrency"))
    max_errors = parse_limit("max_errors", body.get("max_errors"))
    canary = body.get("canary")
    if canary is not None and (
        isinstance(canary, bool) or not isinstance(canary, int) or not 1 <= canary <= MAX_COUNT
    ):
        raise DomainError(
            "BAD_REQUEST", f"canary must be an integer >= 1 (at most {MAX_COUNT})", "canary"
        )
    canary_auto = body.get("canary_auto", False)
    if not isinstance(canary_auto, bool):
        raise DomainError("BAD_REQUEST", "canary_auto must be a boolean", "canary_auto")
    if canary_auto and canary is None:
        raise DomainError("BAD_REQUEST", "canary_auto needs a canary", "canary_auto")
    return JobSpec(
        verb=verb,
        args=args,
        selector=selector,
        concurrency=concurrency,
        max_errors=max_errors,
        canary=canary,
        canary_auto=canary_auto,
        timeout=check_seconds("timeout", body.get("timeout"), MAX_TIMEOUT),
        ttl=check_seconds("ttl", body.get("ttl"), MAX_TTL),
    )


def parse_job_selector(text: str) -> Selector:
    """The parsed selector; ``BAD_SELECTOR`` naming the first bad term."""
    try:
        return parse_selector(text)
    except SelectorError as e:
        raise DomainError("BAD_SELECTOR", str(e), "selector") from None


def parse_limit(field_name: str, value: object) -> Limit:
    """A count (an integer in [1, MAX_COUNT]) or a percentage ``"N%"`` (0 < N <= 100,
    kept without surrounding blanks); None stays None. Anything else is ``BAD_REQUEST``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_COUNT:
            raise DomainError(
                "BAD_REQUEST", f"{field_name} must be >= 1 (at most {MAX_COUNT})", field_name
            )
        return value
    if isinstance(value, str) and _percent(value) is not None:
        return value.strip()
    raise DomainError(
        "BAD_REQUEST",
        f'{field_name} must be an integer >= 1 or a percentage like "10%" (0-100]',
        field_name,
    )


def resolve_limit(value: Limit, targets: int, default: int) -> tuple[str, int]:
    """``(as given, resolved)`` for a checked count (``parse_limit``): a percentage is
    that share of ``targets`` rounded down, but at least 1; None is ``default``."""
    if value is None:
        value = default
    if isinstance(value, int):
        return str(value), value
    percent = _percent(value)
    if percent is None:
        raise ValueError(f"{value!r} is not a checked limit (parse_limit)")
    return value, max(1, math.floor(targets * percent / 100))


def _percent(text: str) -> float | None:
    """N of ``"N%"`` when 0 < N <= 100, else None."""
    text = text.strip()
    if not text.endswith("%"):
        return None
    try:
        percent = float(text[:-1])
    except ValueError:
        return None
    return percent if 0 < percent <= 100 else None
