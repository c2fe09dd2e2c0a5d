"""What the API answers when it refuses: one table from error code to HTTP status.

The domain raises ``DomainError(code, message, field)`` (viworks/backend/errors.py) and
the API layer ``ApiError`` (bad input, authentication, limits); both answer
``{"error": {"code", "message", "field"?}}`` with the status ``STATUS`` gives their code.
docs/api.md's error table lists the same codes (tests/backend/test_api_routing.py checks
both, and that every code raised in viworks/backend is here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from viworks.backend.errors import DomainError
from viworks.backend.model import JOB_STATUSES

STATUS: Final[Mapping[str, int]] = {
    # The request itself.
    "BAD_REQUEST": 400,
    "BAD_SELECTOR": 400,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    # Who is calling.
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "CSRF_REQUIRED": 403,
    "RATE_LIMITED": 429,
    # What it names does not exist.
    "NOT_FOUND": 404,
    "AGENT_NOT_FOUND": 404,
    "COMMAND_NOT_FOUND": 404,
    "JOB_NOT_FOUND": 404,
    "TOKEN_NOT_FOUND": 404,
    "NO_TELEMETRY": 404,
    # What the agent or the job cannot take.
    "UNKNOWN_VERB": 422,
    "INVALID_ARGS": 422,
    "NO_TARGETS": 422,
    # What the current state does not allow.
    "ALREADY_FINISHED": 409,
    "IDEMPOTENCY_CONFLICT": 409,
    "TOKEN_EXISTS": 409,
    "ALREADY_REVOKED": 409,
    "NO_CERTIFICATE": 409,
    # Pausing, resuming or cancelling a job its status does not allow: JOB_<STATUS>.
    **{"JOB_" + status.upper(): 409 for status in sorted(JOB_STATUSES)},
}


class ApiError(Exception):
    """A refusal of the API layer: machine code, human message, offending field, and
    headers to send with it (``Retry-After``); its status is ``STATUS[code]``."""

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.headers: Mapping[bytes, bytes] = headers or {}


class AuthenticationFailed(ApiError):
    """No valid credentials (401), or too many failures from the source (429).

    Counted against the source address and audited in aggregate (``api.refused``,
    viworks/backend/authfailures.py), never one request at a time. ``actor`` names the
    token when it is known (an expired or revoked one).
    """

    def __init__(
        self,
        message: str,
        actor: str | None = None,
        *,
        code: str = "UNAUTHORIZED",
        headers: Mapping[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(code, message, headers=headers)
        self.actor = actor


Refusal = ApiError | DomainError
REFUSALS: Final = (ApiError, DomainError)


def status_of(code: str) -> int:
    """The HTTP status of ``code``; a code missing from ``STATUS`` is a bug: 500."""
    return STATUS.get(code, 500)


def rate_limited(why: str, wait: float) -> ApiError:
    """429 RATE_LIMITED with Retry-After (whole seconds, at least 1)."""
    seconds = max(1, math.ceil(wait))
    return ApiError(
        "RATE_LIMITED",
        f"{why}; retry after {seconds} s",
        headers={b"retry-after": str(seconds).encode()},
    )
