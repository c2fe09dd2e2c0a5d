"""Who may call what: API token roles, in one table.

- ``viewer``: reads (every GET).
- ``operator``: reads, plus running verbs and cancelling commands; a token may
  be limited to a list of verbs and a list of sites (None: any).
- ``admin``: everything (also any route added later without a row here).

``ROUTES`` is matched top to bottom by method and path; the first row gives the
least role allowed. A route missing from it needs ``admin`` unless it is a GET:
new write routes are closed by default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from viworks.backend.model import ADMIN, OPERATOR, VIEWER
from viworks.backend.model import TOKEN_ROLES as ROLES

_RANK = {role: rank for rank, role in enumerate(ROLES)}

# (method or "*", full-match path pattern, least role). Operator routes are
# further limited by the token's verbs/sites (``scope_refusal``).
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/api/v1/agents/[^/]+/commands"), OPERATOR),
    ("POST", re.compile(r"/api/v1/commands/[^/]+/cancel"), OPERATOR),
    # Jobs (fan-out): the route also checks the token's verbs/sites on every target.
    ("POST", re.compile(r"/api/v1/jobs(/[^/]+/(pause|resume|cancel))?"), OPERATOR),
    # The web console's login and logout: any valid token.
    ("POST", re.compile(r"/api/v1/session"), VIEWER),
    ("DELETE", re.compile(r"/api/v1/session"), VIEWER),
    # Tokens are listed, made and revoked by admins only (reads included).
    ("*", re.compile(r"/api/v1/tokens(/[^/]+)?"), ADMIN),
    ("POST", re.compile(r"/api/v1/agents/[^/]+/certificate/revoke"), ADMIN),
    ("GET", re.compile(r".*"), VIEWER),
    ("HEAD", re.compile(r".*"), VIEWER),
    ("*", re.compile(r".*"), ADMIN),
]


def required_role(method: str, path: str) -> str:
    """The least role that may call ``method path``."""
    for route_method, pattern, role in ROUTES:
        if route_method in ("*", method) and pattern.fullmatch(path):
            return role
    return ADMIN


def role_allows(role: str, method: str, path: str) -> bool:
    """Whether a token with ``role`` may call ``method path`` (scopes aside)."""
    return _RANK.get(role, -1) >= _RANK[required_role(method, path)]


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
