"""Routes: the web console's files (``/ui/``) and its login sessions (``/api/v1/session``).

A login trades an API token for a session cookie (viworks/backend/websession.py): the
page's scripts never hold the token.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from viworks import __version__
from viworks.backend import websession
from viworks.backend.api.errors import ApiError
from viworks.backend.api.gate import Caller, Gate
from viworks.backend.api.parse import json_body, only_fields
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import PUBLIC, ROUTES, Call
from viworks.backend.authz import VIEWER
from viworks.backend.store import Store
from viworks.console.files import ConsoleFiles
from viworks.timeutil import rfc3339

# Console sessions last this long (capped by the token's own expiry): [api] session_ttl.
SESSION_TTL = 8 * 3600.0


class ConsoleRoutes:
    store: Store
    clock: IReactorTime
    gate: Gate
    console: ConsoleFiles | None
    session_ttl: float

    @ROUTES.route("GET", "/ui", role=PUBLIC)
    async def console_root(self, call: Call) -> bytes:
        self._console()
        call.request.redirect(b"/ui/")
        return b""

    @ROUTES.route("GET", "/ui/", role=PUBLIC, branch=True)
    async def console_file(self, call: Call) -> bytes:
        path = call.request.path.decode("utf-8", "replace")[len("/ui/") :]
        return self._console().render(call.request, path)

    @ROUTES.route("POST", "/api/v1/session", role=PUBLIC)
    async def create_session(self, call: Call) -> Json:
        """Trade an API token (``{"token": ...}``) for a console session cookie: the
        route authenticates the token itself (as any valid one, viewer and up).

        JSON only: another site's form cannot send it (no login CSRF)."""
        request = call.request
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/json":
            raise ApiError("UNSUPPORTED_MEDIA_TYPE", "send the token as application/json")
        body = json_body(request)
        only_fields(body, ("token",))
        token = body.get("token")
        if not isinstance(token, str) or not token.strip():
            raise ApiError("BAD_REQUEST", 'the body needs the token: {"token": "vw_..."}')
        row, call.caller = await self.gate.login(request, token.strip())
        self.gate.admit(request, call.caller, VIEWER)
        now = self.clock.seconds()
        expires_at = now + self.session_ttl
        if row.expires_at is not None:
            expires_at = min(expires_at, row.expires_at)
        session_id = websession.new_session_id()
        await self.store.create_console_session(
            websession.session_hash(session_id), call.caller.name, now, expires_at
        )
        websession.set_cookie(request, session_id, expires_at - now)
        call.audit(session="created")
        return Json(_session_json(call.caller, session_id, expires_at), 201)

    @ROUTES.route("GET", "/api/v1/session", role=VIEWER)
    async def get_session(self, call: Call) -> Json:
        """Who the page is logged in as, what it may do, and its CSRF token."""
        session = call.caller.session
        if session is None:
            return Json(_session_json(call.caller, None, None))
        return Json(_session_json(call.caller, session.session_id, session.expires_at))

    @ROUTES.route("DELETE", "/api/v1/session", role=VIEWER)
    async def delete_session(self, call: Call) -> Json:
        """Log out: the session ends on every replica within the token cache's time."""
        session = call.caller.session
        if session is None:
            raise ApiError("BAD_REQUEST", "no console session: this request carried a token")
        digest = websession.session_hash(session.session_id)
        await self.store.delete_console_session(digest)
        self.gate.forget_session(digest)
        websession.clear_cookie(call.request)
        return Json({"ended": True})

    def _console(self) -> ConsoleFiles:
        if self.console is None:
            raise ApiError("NOT_FOUND", "the web console is off ([api] console = false)")
        return self.console


def _session_json(
    caller: Caller, session_id: str | None, expires_at: float | None
) -> dict[str, Any]:
    return {
        "name": caller.name,
        "role": caller.role,
        "verbs": None if caller.verbs is None else list(caller.verbs),
        "sites": None if caller.sites is None else list(caller.sites),
        "via": "bearer" if session_id is None else "cookie",
        "expires_at": rfc3339(expires_at),
        "csrf_token": None if session_id is None else websession.csrf_token(session_id),
        "version": __version__,
    }
