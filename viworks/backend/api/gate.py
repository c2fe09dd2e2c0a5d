"""Who is calling the API, and whether it may: credentials, CSRF, rate per token, role.

Credentials are ``Authorization: Bearer <token>``, else the web console's session
cookie (viworks/backend/websession.py). Without valid ones the answer is 401, or 429
once the source address has failed too often: both ``AuthenticationFailed``, counted per
source and audited in aggregate (viworks/backend/authfailures.py). A caller that is
identified may still be refused: 403 ``CSRF_REQUIRED`` (a cookie without the CSRF header
on a request that changes something), 429 over its token's rate, 403 when its role is
below the route's (declared with the route: viworks/backend/api/routing.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from viworks.backend import authz, websession
from viworks.backend.api.errors import ApiError, AuthenticationFailed, rate_limited
from viworks.backend.authfailures import AuthFailures, request_source
from viworks.backend.model import ConsoleSession, Token
from viworks.backend.store import Store
from viworks.backend.tokens import hash_token
from viworks.ratelimit import TokenBucket

# Token and console-session rows are cached this long: a revocation or a logout takes
# effect on every replica within it (a store read per request dominated the API's cost).
TOKEN_CACHE_SECONDS = 2.0
TOKEN_CACHE_SIZE = 10000
# Requests that change nothing (neither audited nor needing the CSRF header).
READ_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ConsoleLogin:
    """The web console's session a request was authenticated by."""

    session_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the token's name, the secret that authenticated the request
    (the token, or a console session id; never stored), its role and, for operators,
    the verbs and sites it is limited to (None: any); ``session`` when the console's
    cookie authenticated it."""

    name: str
    token: str
    role: str = authz.OPERATOR
    verbs: tuple[str, ...] | None = None
    sites: tuple[str, ...] | None = None
    session: ConsoleLogin | None = None

    def refusal(self, verb: str | None, site: str | None) -> str | None:
        """Why this caller may not act with ``verb`` on site ``site`` (None: it may)."""
        return authz.scope_refusal(self.role, self.verbs, self.sites, verb, site)


#: The caller of a request no credentials were checked for (public routes, unknown ones).
ANONYMOUS: Final = Caller("anonymous", "", role="public")

_Row = TypeVar("_Row")


class _RowCache(Generic[_Row]):
    """Rows by key (a missing one too) for ``TOKEN_CACHE_SECONDS``, at most
    ``TOKEN_CACHE_SIZE`` of them."""

    def __init__(self, clock: IReactorTime, load: Callable[[str], Awaitable[_Row | None]]) -> None:
        self.clock = clock
        self._load = load
        self._rows: dict[str, tuple[float, _Row | None]] = {}

    async def get(self, key: str) -> _Row | None:
        now = self.clock.seconds()
        cached = self._rows.get(key)
        if cached is not None and now - cached[0] < TOKEN_CACHE_SECONDS:
            return cached[1]
        row = await self._load(key)
        if len(self._rows) >= TOKEN_CACHE_SIZE:
            self._rows.clear()
        self._rows[key] = (now, row)
        return row

    def forget(self, key: str) -> None:
        self._rows.pop(key, None)


class Gate:
    """Identifies callers and admits them to routes (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        auth_failures: AuthFailures,
        *,
        rate: float,
        burst: int,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.clock = clock
        self.auth_failures = auth_failures
        # Proxies whose X-Forwarded-For names the client ([backend] trusted_proxies).
        self.trusted_proxies = trusted_proxies
        # One token bucket per token name ([api] rate_limit_per_token / _burst).
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._tokens: _RowCache[Token] = _RowCache(clock, store.token_for_hash)
        self._sessions: _RowCache[ConsoleSession] = _RowCache(clock, store.console_session)

    async def identify(self, request: Request) -> Caller:
        """The caller its bearer token, else its console session cookie, names;
        ``AuthenticationFailed`` if neither is sent or the one sent is not valid."""
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        session_id = websession.session_cookie(request)
        try:
            if header or session_id is None:
                scheme, _, token = header.partition(" ")
                token = token.strip()
                if scheme.lower() != "bearer" or not token:
                    raise AuthenticationFailed("send Authorization: Bearer <token>")
                return self._caller(await self._token(token), token)
            return await self._session_caller(request, session_id)
        except AuthenticationFailed as refused:
            raise self.refuse(request, refused) from None

    async def login(self, request: Request, token: str) -> tuple[Token, Caller]:
        """The token a console login sends, and its caller; ``AuthenticationFailed`` as
        for a bearer token."""
        try:
            row = await self._token(token)
            return row, self._caller(row, token)
        except AuthenticationFailed as refused:
            raise self.refuse(request, refused) from None

    def admit(self, request: Request, caller: Caller, least: str) -> None:
        """403 without the CSRF header (cookie callers changing something), 429 over the
        token's rate, 403 when ``caller``'s role is below ``least``."""
        if (
            caller.session is not None
            and request.method not in READ_METHODS
            and not websession.csrf_ok(request, caller.session.session_id)
        ):
            raise ApiError(
                "CSRF_REQUIRED",
                "requests authenticated by the console cookie that change something need"
                " the X-CSRF-Token header (its value: GET /api/v1/session)",
            )
        bucket = self._buckets.get(caller.name)
        if bucket is None:
            bucket = self._buckets[caller.name] = TokenBucket(self.rate, self.burst, self.clock)
        if not bucket.take():
            raise rate_limited("too many requests for this token", bucket.wait_time())
        if not authz.role_allows(caller.role, least):
            method = request.method.decode("latin-1")
            path = request.path.decode("utf-8", "replace")
            raise ApiError(
                "FORBIDDEN", f"a {caller.role} token may not {method} {path} (needs {least})"
            )

    def refuse(self, request: Request, refused: AuthenticationFailed) -> AuthenticationFailed:
        """Count a failed authentication against its source: ``refused``, or 429 past the
        source's rate. Audited in aggregate by ``auth_failures``, not one by one."""
        wait = self.auth_failures.refuse(
            request_source(request, self.trusted_proxies),
            request.path.decode("utf-8", "replace"),
            refused.actor,
        )
        if wait is None:
            return refused
        limited = rate_limited("too many failed authentications from this address", wait)
        return AuthenticationFailed(limited.message, code=limited.code, headers=limited.headers)

    def forget_session(self, session_hash: str) -> None:
        """A console session ended here: stop answering from the cache at once."""
        self._sessions.forget(session_hash)

    async def _token(self, token: str) -> Token:
        """The token's row (cached); 401 for an unknown token."""
        row = await self._tokens.get(hash_token(token))
        if row is None:
            raise AuthenticationFailed("the token is not valid")
        return row

    async def _session_caller(self, request: Request, session_id: str) -> Caller:
        """The caller of a live console session; 401 (and the cookie cleared) once it
        has ended."""
        session = await self._sessions.get(websession.session_hash(session_id))
        if session is None or session.expires_at <= self.clock.seconds():
            websession.clear_cookie(request)
            raise AuthenticationFailed("the console session has ended; log in again")
        return self._caller(session.token, session_id, ConsoleLogin(session_id, session.expires_at))

    def _caller(self, token: Token, secret: str, session: ConsoleLogin | None = None) -> Caller:
        """The caller a valid token stands for; ``secret`` authenticated it (the token,
        or a console session id) and keys its idempotency digests."""
        if token.revoked_at is not None:
            raise AuthenticationFailed("the token was revoked", token.name)
        if token.expires_at is not None and token.expires_at <= self.clock.seconds():
            raise AuthenticationFailed("the token has expired", token.name)
        return Caller(
            token.name,
            secret,
            token.role,
            None if token.verbs is None else tuple(token.verbs),
            None if token.sites is None else tuple(token.sites),
            session,
        )
