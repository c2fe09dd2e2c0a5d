"""The web console's login sessions: cookie, session id, CSRF token.

``POST /api/v1/session`` trades an API token for a random session id in an
HttpOnly, SameSite=Strict cookie: the page's scripts never hold the token, and
EventSource (which cannot send an Authorization header) is authenticated by the
cookie. The store keeps only the SHA-256 of the id (``console_sessions``), so
reading the database gives no session away, and every replica knows every
session. Requests authenticated by the cookie that change something must also
carry ``X-CSRF-Token``: a value derived from the session id (HMAC, so it reveals
nothing of the id) that the page reads from ``GET /api/v1/session``; another
site can neither read it nor, without CORS, send the header.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

COOKIE = b"viworks_session"
CSRF_HEADER = b"x-csrf-token"
_CSRF_LABEL = b"viworks console csrf"


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    """What the store keeps of a session id."""
    return hashlib.sha256(b"session:" + session_id.encode("utf-8")).hexdigest()


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_ok(request: Any, session_id: str) -> bool:
    """Whether the request carries the session's CSRF token."""
    sent = request.getHeader(CSRF_HEADER)
    return sent is not None and hmac.compare_digest(sent, csrf_token(session_id).encode())


def session_cookie(request: Any) -> str | None:
    """The session id the request's cookie carries, if any."""
    value = request.getCookie(COOKIE)
    if not value:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _secure(request: Any) -> bool:
    # Behind a TLS-terminating proxy the backend sees plain HTTP: trust the proxy's
    # word here, since it can only make the cookie stricter.
    return bool(request.isSecure()) or request.getHeader(b"x-forwarded-proto") == b"https"


def set_cookie(request: Any, session_id: str, max_age: float) -> None:
    request.addCookie(
        COOKIE,
        session_id.encode("ascii"),
        max_age=str(max(0, int(max_age))).encode(),
        path=b"/",
        secure=_secure(request),
        httpOnly=True,
        sameSite="strict",
    )


def clear_cookie(request: Any) -> None:
    request.addCookie(
        COOKIE,
        b"",
        max_age=b"0",
        path=b"/",
        secure=_secure(request),
        httpOnly=True,
        sameSite="strict",
    )
