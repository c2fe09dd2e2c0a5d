"""What a command request may ask for in time, and the check of it (pure).

Used where a request names a timeout or a TTL: one command (the ledger) and a job's
commands (``viworks.backend.jobspec``).
"""

from __future__ import annotations

from viworks.backend.errors import DomainError

#: The longest timeout and TTL a command may ask for, in seconds.
MAX_TIMEOUT = 86400.0
MAX_TTL = 7 * 86400.0


def check_seconds(field: str, value: object, maximum: float) -> float | None:
    """``value`` as seconds in (0, maximum]; None (the default applies) stays None.

    Anything else is refused as ``INVALID_ARGS`` naming ``field``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DomainError("INVALID_ARGS", f"{field} must be a number of seconds", field)
    if not 0 < value <= maximum:
        raise DomainError("INVALID_ARGS", f"{field} must be in (0, {maximum:g}] seconds", field)
    return float(value)
