"""Reading requests: query parameters, JSON bodies and headers, with 400s naming the input.

Everything here is attacker input: bounded in size, refused with a clear error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection
from typing import Any

from twisted.web.iweb import IRequest

from viworks.backend.api.errors import ApiError
from viworks.backend.api.gate import Caller
from viworks.backend.ledger import Idempotency

MAX_BODY = 1 << 20
MAX_IDEMPOTENCY_KEY = 255


def query(request: IRequest, name: str) -> str | None:
    """The first ``?name=`` value (None: absent)."""
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def number(request: IRequest, name: str, low: float, high: float) -> float | None:
    """``?name=`` as a number in [low, high] (None: absent); 400 otherwise."""
    raw = query(request, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ApiError("BAD_REQUEST", f"{name} must be a number in [{low:g}, {high:g}]", name)
    return value


def json_body(request: IRequest) -> dict[str, Any]:
    """The body as a JSON object (none: ``{}``); 413 past ``MAX_BODY``, 400 otherwise."""
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError("PAYLOAD_TOO_LARGE", f"request bodies are limited to {MAX_BODY}")
    try:
        body = json.loads(data or b"{}")
    except ValueError as e:
        raise ApiError("BAD_REQUEST", f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError("BAD_REQUEST", "the body must be a JSON object")
    return body


def only_fields(body: dict[str, Any], known: Collection[str]) -> None:
    """400 naming the first field of ``body`` (in sorted order) not in ``known``."""
    unknown = set(body) - set(known)
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError("BAD_REQUEST", f"unknown field {field!r}", field)


def string_list(body: dict[str, Any], key: str) -> list[str] | None:
    """``body[key]``: absent or null (no limit), else a list of non-empty strings."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ApiError("BAD_REQUEST", f"{key} must be a list of names, or null", key)
    return value


def idempotency(
    request: IRequest, caller: Caller, agent_id: str, body: dict[str, Any]
) -> Idempotency | None:
    """The request's Idempotency-Key, scoped to its token, with a digest of the request.

    The digest is keyed with the token itself, so stored digests of requests
    carrying secrets cannot be brute-forced by someone reading the database.
    """
    raw = request.getHeader(b"idempotency-key")
    if raw is None:
        return None
    key = raw.decode("latin-1").strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ApiError(
            "BAD_REQUEST",
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
            "Idempotency-Key",
        )
    canonical = json.dumps(
        {"agent_id": agent_id, **body}, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")
    digest = hmac.new(caller.token.encode("utf-8"), canonical, hashlib.sha256).hexdigest()
    return Idempotency(caller.name, key, digest)


def last_event_id(request: IRequest) -> int:
    """Where a follower resumes: the Last-Event-ID header, or ?after=, else the start."""
    raw_header = request.getHeader(b"last-event-id")
    raw = raw_header.decode("latin-1") if raw_header is not None else query(request, "after")
    if raw is None:
        return -1
    try:
        after = int(raw)
    except ValueError:
        after = None
    # Compared with stored sequence numbers: beyond 64 bits the database refuses it.
    if after is None or not -(2**63) <= after < 2**63:
        raise ApiError("BAD_REQUEST", "Last-Event-ID must be a 64-bit integer", "after")
    return after
