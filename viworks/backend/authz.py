"""Who may call what: API token roles, least to most privileged, and operators' limits.

- ``viewer``: reads (every GET but the tokens list).
- ``operator``: reads, plus running verbs, cancelling commands and driving jobs; a token
  may be limited to a list of verbs and a list of sites (None: any).
- ``admin``: everything.

Each route declares the least role it needs where it is declared
(viworks/backend/api/routing.py); a test checks that every route does.
"""

from __future__ import annotations

from collections.abc import Sequence

from viworks.backend.model import ADMIN, OPERATOR, VIEWER
from viworks.backend.model import TOKEN_ROLES as ROLES

__all__ = ["ADMIN", "OPERATOR", "ROLES", "VIEWER", "parse_list", "role_allows", "scope_refusal"]

_RANK = {role: rank for rank, role in enumerate(ROLES)}


def role_allows(role: str, least: str) -> bool:
    """Whether a token with ``role`` may call a route that needs ``least`` (scopes aside);
    an unknown role may call nothing."""
    return _RANK.get(role, -1) >= _RANK[least]


def scope_refusal(
    role: str,
    verbs: Sequence[str] | None,
    sites: Sequence[str] | None,
    verb: str | None,
    site: str | None,
) -> str | None:
    """Why an operator token may not act with ``verb`` on an agent of ``site``, or None.

    Admins are never limited; the lists only narrow operators.
    """
    if role == ADMIN:
        return None
    if verbs is not None and verb not in verbs:
        return f"this token may not run verb {verb!r} (allowed: {', '.join(verbs) or 'none'})"
    if sites is not None and site not in sites:
        return f"this token may not act on site {site!r} (allowed: {', '.join(sites) or 'none'})"
    return None


def parse_list(value: str | None) -> list[str] | None:
    """``a,b`` (CLI) -> ``["a", "b"]``; None stays None (no restriction)."""
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]
