"""The operators' JSON HTTP API (Klein). Routes are thin: parse, call, render."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

from viworks import __version__, lifecycle
from viworks.backend import audit, authz, openapi, tokens, websession
from viworks.backend.authfailures import AuthFailures, request_source
from viworks.backend.errors import DomainError
from viworks.backend.events import Event, EventHub, sse_frame
from viworks.backend.health import StoreHealth
from viworks.backend.jobs import JobRunner
from viworks.backend.jobspec import parse_job_spec
from viworks.backend.ledger import CommandLedger, Idempotency
from viworks.backend.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from viworks.backend.metrics import Metrics
from viworks.backend.model import (
    JOB_STATUSES,
    Agent,
    AgentSummary,
    AuditRecord,
    Command,
    ConsoleSession,
    OutputChunk,
    TelemetryReport,
    Token,
    api_fields,
)
from viworks.backend.registry import SessionRegistry
from viworks.backend.revocation import revoke_agent_certificates
from viworks.backend.store import DuplicateToken, Store
from viworks.backend.tokens import hash_token
from viworks.backend.waiters import CommandWaiters
from viworks.console.files import ConsoleFiles
from viworks.logs import Logger
from viworks.ratelimit import TokenBucket
from viworks.selectors import SelectorError
from viworks.selectors import parse as parse_selector
from viworks.timeutil import rfc3339

MAX_BODY = 1 << 20
# Requests that change nothing; every other one is audited.
_READ_METHODS = (b"GET", b"HEAD", b"OPTIONS")
MAX_WAIT = 300.0
MAX_IDEMPOTENCY_KEY = 255
SSE_KEEPALIVE = 15.0
# [api] sse_buffer_bytes: unsent data an event stream may pile up before it is dropped.
SSE_BUFFER_BYTES = 1 << 20
TOKEN_CACHE_SECONDS = 2.0
TOKEN_CACHE_SIZE = 10000
# Console sessions last this long (capped by the token's own expiry): [api] session_ttl.
SESSION_TTL = 8 * 3600.0
# The fleet summary lists agent certificates ending within this many days.
CERT_WARNING_DAYS = 30
# Final statuses the fleet summary lists as recent failures.
_FAILED = ("failed", "timed_out", "lost", "rejected", "expired")


#: The HTTP status of each code the domain refuses with (``DomainError``).
DOMAIN_STATUS = {
    "BAD_REQUEST": 400,
    "BAD_SELECTOR": 400,
    "FORBIDDEN": 403,
    "AGENT_NOT_FOUND": 404,
    "COMMAND_NOT_FOUND": 404,
    "JOB_NOT_FOUND": 404,
    "ALREADY_FINISHED": 409,
    "IDEMPOTENCY_CONFLICT": 409,
    # A job action its status does not allow (JOB_ + the status).
    **{"JOB_" + status.upper(): 409 for status in JOB_STATUSES},
    "INVALID_ARGS": 422,
    "NO_TARGETS": 422,
    "UNKNOWN_VERB": 422,
}


class ApiError(Exception):
    """An error response: status, machine code, human message, offending field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the token's name, the secret that authenticated the request
    (the token, or a console session id; never stored), its role and, for operators,
    the verbs and sites it is limited to (None: any)."""

    name: str
    token: str
    role: str = authz.OPERATOR
    verbs: tuple[str, ...] | None = None
    sites: tuple[str, ...] | None = None

    def refusal(self, verb: str | None, site: str | None) -> str | None:
        """Why this caller may not act with ``verb`` on site ``site`` (None: it may)."""
        return authz.scope_refusal(self.role, self.verbs, self.sites, verb, site)


def agent_json(agent: Agent, online: bool) -> dict[str, Any]:
    """The API's view of an agent; ``online`` comes from the live-session registry."""
    return {
        "agent_id": agent.agent_id,
        "status": "online" if online else "offline",
        "version": agent.version,
        "site": agent.site,
        "hostname": agent.hostname,
        "labels": agent.labels or {},
        "protocol": agent.protocol,
        # Whether the agent verifies command signatures (its HELLO said so).
        "signing": agent.signing or "off",
        "verbs": sorted(agent.verbs),
        "connected_at": rfc3339(agent.connected_at),
        "last_seen": rfc3339(agent.last_seen),
        "peer": agent.peer,
    }


_COMMAND_VIEW = api_fields(Command)
_COMMAND_TIMES = tuple(name for name in _COMMAND_VIEW if name.endswith("_at"))


def command_json(command: Command) -> dict[str, Any]:
    """The API's view of a command: its fields but the hidden ones, in order, output as
    text ("" for none), times in RFC 3339 (args were redacted before they were stored)."""
    body = {name: getattr(command, name) for name in _COMMAND_VIEW}
    body["stdout"] = command.stdout or ""
    body["stderr"] = command.stderr or ""
    for name in _COMMAND_TIMES:
        body[name] = rfc3339(body[name])
    return body


def _query(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _number(request: Any, name: str, low: float, high: float) -> float | None:
    raw = _query(request, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ApiError(400, "BAD_REQUEST", f"{name} must be a number in [{low:g}, {high:g}]", name)
    return value


def _idempotency(request: Any, caller: Caller, agent_id: str, body: dict) -> Idempotency | None:
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
            400,
            "BAD_REQUEST",
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
            "Idempotency-Key",
        )
    canonical = json.dumps(
        {"agent_id": agent_id, **body}, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")
    digest = hmac.new(caller.token.encode("utf-8"), canonical, hashlib.sha256).hexdigest()
    return Idempotency(caller.name, key, digest)


def _last_event_id(request: Any) -> int:
    """Where a follower resumes: the Last-Event-ID header, or ?after=, else the start."""
    raw = request.getHeader(b"last-event-id")
    raw = raw.decode("latin-1") if raw is not None else _query(request, "after")
    if raw is None:
        return -1
    try:
        after = int(raw)
    except ValueError:
        after = None
    # Compared with stored sequence numbers: beyond 64 bits the database refuses it.
    if after is None or not -(2**63) <= after < 2**63:
        raise ApiError(400, "BAD_REQUEST", "Last-Event-ID must be a 64-bit integer", "after")
    return after


def _chunk_json(chunk: OutputChunk) -> dict[str, Any]:
    return {
        "seq": chunk.seq,
        "stream": chunk.stream,
        "data": chunk.data,
        "at": rfc3339(chunk.at),
    }


def _telemetry_json(report: TelemetryReport) -> dict[str, Any]:
    return {"at": rfc3339(report.at), "metrics": report.data}


_Cached = TypeVar("_Cached")


class _RowCache(Generic[_Cached]):
    """Values by key (a missing one too) for ``TOKEN_CACHE_SECONDS``, at most
    ``TOKEN_CACHE_SIZE`` of them."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._rows: dict[str, tuple[float, _Cached | None]] = {}

    async def get(
        self, key: str, load: Callable[[str], Awaitable[_Cached | None]]
    ) -> _Cached | None:
        now = self.clock.seconds()
        cached = self._rows.get(key)
        if cached is not None and now - cached[0] < TOKEN_CACHE_SECONDS:
            return cached[1]
        row = await load(key)
        if len(self._rows) >= TOKEN_CACHE_SIZE:
            self._rows.clear()
        self._rows[key] = (now, row)
        return row

    def forget(self, key: str) -> None:
        self._rows.pop(key, None)


@implementer(IPushProducer)
class _Follower:
    """Events for one streaming response, with keep-alives while nothing happens.

    It is the response's push producer: the connection pauses it while its send
    buffer is full (the client stopped reading) and resumes it once the buffer has
    drained. Events keep arriving meanwhile; once the unsent data (events waiting
    here, plus what was written while paused) passes ``max_unsent`` bytes, the
    client is dropped: the connection is aborted and its buffer freed.
    """

    def __init__(
        self,
        clock: IReactorTime,
        request: Any,
        max_unsent: int,
        dropped: Callable[[_Follower], None],
    ) -> None:
        self.clock = clock
        self.request = request
        self.max_unsent = max_unsent
        self._dropped = dropped
        self.gone = False
        self.stopping = False
        self.paused = False
        self._events: list[Event] = []
        self._queued = 0  # bytes of the events waiting here
        self._buffered = 0  # bytes written while the connection was paused
        self._wake: Deferred | None = None
        request.notifyFinish().addBoth(self._closed)
        if request.channel is None:  # the client left already
            self.gone = True
        else:
            request.registerProducer(self, True)

    @property
    def unsent(self) -> int:
        return self._queued + self._buffered

    def _closed(self, _: Any) -> None:
        self.gone = True
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)

    def push(self, event: Event) -> None:
        if self.gone:
            return
        self._events.append(event)
        self._queued += event.size
        self._check()
        self._poke()

    def write(self, data: bytes) -> None:
        """Write to the client (nothing once it is gone)."""
        if self.gone:
            return
        self.request.write(data)
        if self.paused:
            self._buffered += len(data)
            self._check()

    def _check(self) -> None:
        if self.unsent > self.max_unsent and not self.gone:
            self.gone = True
            self._dropped(self)
            self.request.channel.transport.abortConnection()

    def stop(self) -> None:
        """End the stream (the backend is stopping): the route returns and finishes it."""
        self.stopping = True
        self._poke()

    def release(self) -> None:
        """Detach from the response (the route is done with it)."""
        request = self.request
        if request.channel is not None:
            request.unregisterProducer()
        else:
            request.producer = None  # the connection is gone: nothing to unregister from
        if self.gone:
            # twisted.web and Klein leave a request in reference cycles that only the
            # garbage collector frees, and the request's (legacy) transport attribute
            # holds the connection's unsent data: let go of it now, not at the next full
            # collection (minutes away under runtime.tune_gc, never on an idle backend).
            request.transport = None

    # -- IPushProducer (called by the connection) ------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._buffered = 0
        self._poke()

    def stopProducing(self) -> None:
        self._closed(None)

    # -- what the routes await -----------------------------------------------------

    async def _sleep(self, seconds: float | None = None) -> bool:
        """Wait for a poke (or ``seconds``); True when the time ran out."""
        self._wake = Deferred()
        timer = None if seconds is None else self.clock.callLater(seconds, self._poke)
        await self._wake
        if timer is None:
            return False
        if timer.active():
            timer.cancel()
            return False
        return True

    async def writable(self) -> None:
        """Return once the client can take more (or is gone, or the stream stops)."""
        while self.paused and not self.gone and not self.stopping:
            await self._sleep()

    async def next_events(self, keepalive: float) -> list[Event]:
        """The events received so far, once the client can take them, waiting up to
        ``keepalive`` s for one (then a comment line keeps the connection alive)."""
        await self.writable()
        if not self._events and not self.gone and not self.stopping:
            if await self._sleep(keepalive) and not self.gone:
                self.write(b": keep-alive\n\n")
            await self.writable()
        events, self._events, self._queued = self._events, [], 0
        return events


class BackendAPI:
    """The HTTP API over the store, the live registry and the ledger."""

    app = Klein()
    log = Logger()

    def __init__(
        self,
        store: Store,
        registry: SessionRegistry,
        ledger: CommandLedger,
        clock: IReactorTime,
        *,
        hub: EventHub,
        waiters: CommandWaiters,
        jobs: JobRunner,
        metrics: Metrics,
        audit_log: audit.AuditLog,
        auth_failures: AuthFailures,
        store_health: StoreHealth,
        console: ConsoleFiles | None,
        metrics_token: str = "",
        rate_limit_per_token: float = 20.0,
        rate_limit_burst: int = 40,
        trusted_proxies: Iterable[Any] = (),
        sse_buffer_bytes: int = SSE_BUFFER_BYTES,
        session_ttl: float = SESSION_TTL,
    ) -> None:
        self.store = store
        self.registry = registry
        self.ledger = ledger
        self.clock = clock
        # Live events (GET /api/v1/events) and the waits of ?wait=N.
        self.hub = hub
        self.waiters = waiters
        # One token bucket per token name ([api] rate_limit_per_token / _burst).
        self.rate_limit = (rate_limit_per_token, rate_limit_burst)
        self._buckets: dict[str, TokenBucket] = {}
        # Token and console-session rows by hash; a revocation takes effect within
        # TOKEN_CACHE_SECONDS (a store read per request dominated the API's cost).
        self._tokens: _RowCache[Token] = _RowCache(clock)
        self._sessions: _RowCache[ConsoleSession] = _RowCache(clock)
        self.session_ttl = session_ttl
        # GET /ui/: the web console ([api] console = false leaves it out: None).
        self.console = console
        # Every request that changes something (or tries to) is audited.
        self.audit = audit_log
        # Failed authentications: limited per source, audited in aggregate (authfailures).
        self.auth_failures = auth_failures
        # Proxies whose X-Forwarded-For names the client ([backend] trusted_proxies).
        self.trusted_proxies = list(trusted_proxies)
        # /health probes whether the store takes writes (at most once per TTL).
        self.store_health = store_health
        # GET /metrics (shared with the command path and the sessions); a bearer
        # token is needed only when [api] metrics_token is set.
        self.metrics = metrics
        self.metrics_token = metrics_token
        self._streams: set[_Follower] = set()
        self.sse_buffer_bytes = sse_buffer_bytes
        # Fan-out jobs (started with the backend service; see viworks.backend.jobs).
        self.jobs = jobs
        self.chain = audit.ChainStatus(store, clock)

    def resource(self):
        return self.app.resource()

    # -- plumbing ---------------------------------------------------------------

    def _json(self, request: Any, body: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        # Failed authentications are audited in aggregate (self.auth_failures).
        unauthenticated = getattr(request, "viworks_unauthenticated", False)
        if request.method not in _READ_METHODS and not unauthenticated:
            self._audit_request(request, status, body)
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def _audit_request(self, request: Any, status: int, body: Any) -> None:
        """Audit a request that changes something, whatever its outcome (in the background)."""
        caller = getattr(request, "viworks_caller", None)
        detail: dict[str, Any] = {
            "method": request.method.decode("latin-1"),
            "status": status,
            **getattr(request, "viworks_audit", {}),
        }
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail["error"] = body["error"].get("code")
        outcome = audit.OK if status < 400 else audit.REFUSED if status < 500 else audit.FAILED
        self.audit.record_later(
            caller.name if caller is not None else getattr(request, "viworks_actor", "anonymous"),
            "api." + request.method.decode("latin-1").lower(),
            request.path.decode("utf-8", "replace"),
            outcome,
            detail,
        )

    async def _authenticate(self, request: Any) -> Caller:
        """The caller, if its credentials are valid, within its rate and its role allows the route.

        Credentials: ``Authorization: Bearer <token>``, else the console's session
        cookie (plus ``X-CSRF-Token`` on requests that change something). 401
        without valid credentials of either kind (unknown, expired, revoked), or 429
        once its source address has failed too often (``_failed_authentication``);
        403 without the CSRF token, 429 over the token's rate, 403 when the role does
        not allow the route (authz.ROUTES).
        """
        try:
            caller = await self._credentials_caller(request)
        except ApiError as refusal:
            raise self._failed_authentication(request, refusal) from None
        request.viworks_caller = caller
        session = getattr(request, "viworks_session", None)
        if (
            session is not None
            and request.method not in _READ_METHODS
            and not websession.csrf_ok(request, session[0])
        ):
            raise ApiError(
                403,
                "CSRF_REQUIRED",
                "requests authenticated by the console cookie that change something need"
                " the X-CSRF-Token header (its value: GET /api/v1/session)",
            )
        self._admit(request, caller)
        return caller

    def _failed_authentication(self, request: Any, refusal: ApiError) -> ApiError:
        """Count a 401 against its source address: ``refusal``, or 429 past the source's rate.

        Not audited one by one: ``auth_failures`` writes one record per source and interval.
        """
        request.viworks_unauthenticated = True
        wait = self.auth_failures.refuse(
            request_source(request, self.trusted_proxies),
            request.path.decode("utf-8", "replace"),
            getattr(request, "viworks_actor", None),
        )
        if wait is None:
            return refusal
        return _rate_limited("too many failed authentications from this address", wait)

    async def _credentials_caller(self, request: Any) -> Caller:
        """The caller its bearer token, else its console session cookie, names; 401 if
        neither is sent or the one sent is not valid."""
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        session_id = websession.session_cookie(request)
        if header or session_id is None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "UNAUTHORIZED", "send Authorization: Bearer <token>")
            return self._caller(request, await self._token_row(token.strip()), token.strip())
        return await self._session_caller(request, session_id)

    async def _token_row(self, token: str) -> Token:
        """The token (cached); 401 for an unknown token."""
        row = await self._tokens.get(hash_token(token), self.store.token_for_hash)
        if row is None:
            raise ApiError(401, "UNAUTHORIZED", "the token is not valid")
        return row

    async def _session_caller(self, request: Any, session_id: str) -> Caller:
        """The caller of a live console session (``request.viworks_session`` set); 401
        (and the cookie cleared) once it has ended."""
        session = await self._sessions.get(
            websession.session_hash(session_id), self.store.console_session
        )
        if session is None or session.expires_at <= self.clock.seconds():
            websession.clear_cookie(request)
            raise ApiError(401, "UNAUTHORIZED", "the console session has ended; log in again")
        caller = self._caller(request, session.token, session_id)
        request.viworks_session = (session_id, session.expires_at)
        return caller

    def _caller(self, request: Any, token: Token, secret: str) -> Caller:
        """The caller a valid token stands for; ``secret`` authenticated it (the
        token, or a console session id) and keys its idempotency digests."""
        if token.revoked_at is not None:
            request.viworks_actor = token.name
            raise ApiError(401, "UNAUTHORIZED", "the token was revoked")
        if token.expires_at is not None and token.expires_at <= self.clock.seconds():
            request.viworks_actor = token.name
            raise ApiError(401, "UNAUTHORIZED", "the token has expired")
        return Caller(
            token.name,
            secret,
            token.role,
            None if token.verbs is None else tuple(token.verbs),
            None if token.sites is None else tuple(token.sites),
        )

    def _admit(self, request: Any, caller: Caller) -> None:
        """429 over the token's rate; 403 when its role does not allow the route."""
        bucket = self._buckets.get(caller.name)
        if bucket is None:
            bucket = self._buckets[caller.name] = TokenBucket(*self.rate_limit, self.clock)
        if not bucket.take():
            raise _rate_limited("too many requests for this token", bucket.wait_time())
        method = request.method.decode("latin-1")
        path = request.path.decode("utf-8", "replace")
        if not authz.role_allows(caller.role, method, path):
            raise ApiError(
                403,
                "FORBIDDEN",
                f"a {caller.role} token may not {method} {path}"
                f" (needs {authz.required_role(method, path)})",
            )

    async def _check_scope(self, caller: Caller, verb: Any, agent_id: str) -> None:
        """403 when an operator limited to verbs/sites may not act with ``verb`` on the agent."""
        if caller.role == authz.ADMIN or (caller.verbs is None and caller.sites is None):
            return
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            return  # the ledger answers 404
        refusal = caller.refusal(verb if isinstance(verb, str) else None, agent.site)
        if refusal is not None:
            raise ApiError(403, "FORBIDDEN", refusal)

    def _body(self, request: Any) -> dict:
        data = request.content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"request bodies are limited to {MAX_BODY}")
        try:
            body = json.loads(data or b"{}")
        except ValueError as e:
            raise ApiError(400, "BAD_REQUEST", f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "BAD_REQUEST", "the body must be a JSON object")
        return body

    @app.handle_errors(ApiError, DomainError)
    def _domain_error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        # A code missing from DOMAIN_STATUS is a bug (a test checks every raise).
        status = e.status if isinstance(e, ApiError) else DOMAIN_STATUS.get(e.code, 500)
        error = {"code": e.code, "message": e.message}
        if e.field is not None:
            error["field"] = e.field
        if status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="viworks"')
        for name, value in getattr(e, "headers", {}).items():
            request.setHeader(name, value)
        return self._json(request, {"error": error}, status)

    @app.handle_errors(HTTPException)
    def _http_error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        code = (e.name or "error").upper().replace(" ", "_")
        # A 405 says which methods the path takes (RFC 9110).
        if getattr(e, "valid_methods", None):
            request.setHeader(b"allow", ", ".join(e.valid_methods).encode("ascii"))
        return self._json(request, {"error": {"code": code, "message": e.description}}, e.code)

    @app.handle_errors(Exception)
    def _unexpected(self, request: Any, failure: Any) -> bytes:
        self.log.failure("API request {uri} failed", failure, uri=request.uri)
        return self._json(
            request, {"error": {"code": "INTERNAL", "message": "internal error; see the log"}}, 500
        )

    # -- routes -------------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    @app.route("/api/v1/health", methods=["GET"])
    async def health(self, request: Any) -> bytes:
        """200 healthy; 503 when the store does not take writes ("store": "read-only")
        or does not answer ("unavailable"). The store is probed at most once per TTL."""
        store = await self.store_health.state()
        healthy = store == StoreHealth.OK
        return self._json(
            request,
            {
                "status": "healthy" if healthy else "unhealthy",
                "timestamp": rfc3339(self.clock.seconds()),
                "version": __version__,
                "agents_online": len(self.registry),
                "store": store,
            },
            200 if healthy else 503,
        )

    @app.route("/api/v1/openapi.json", methods=["GET"])
    async def openapi_description(self, request: Any) -> bytes:
        """This API's OpenAPI 3.1 description (viworks/backend/openapi.yaml)."""
        await self._authenticate(request)
        return self._json(request, openapi.description())

    @app.route("/api/v1/agents", methods=["GET"])
    async def list_agents(self, request: Any) -> bytes:
        """Every agent, or (``?limit=``/``?offset=``) one page of them with ``total``.

        ``?selector=`` keeps the agents it matches (a job's dry run); ``?status=``
        keeps the online or offline ones. A page is read without the other
        agents' verb schemas, so large fleets page quickly.
        """
        await self._authenticate(request)
        raw_selector = _query(request, "selector")
        selector = None
        if raw_selector is not None:
            try:
                selector = parse_selector(raw_selector)
            except SelectorError as e:
                raise ApiError(400, "BAD_SELECTOR", str(e), "selector") from None
        status = _query(request, "status")
        if status not in (None, "online", "offline"):
            raise ApiError(400, "BAD_REQUEST", "status must be online or offline", "status")
        limit = _number(request, "limit", 1, 1000)
        offset = _number(request, "offset", 0, 1e9)

        def wanted(agent: Agent | AgentSummary) -> bool:
            if selector is not None and not selector.matches(agent):
                return False
            return status is None or (self._online(agent.agent_id) == (status == "online"))

        if limit is None and offset is None:
            agents = [a for a in await self.store.list_agents() if wanted(a)]
            return self._json(
                request,
                {"agents": [agent_json(a, self._online(a.agent_id)) for a in agents]},
            )
        matching = [a for a in await self.store.agent_keys() if wanted(a)]
        start, count = int(offset or 0), int(limit or 100)
        page = await self.store.agents_by_id([a.agent_id for a in matching[start : start + count]])
        return self._json(
            request,
            {
                "agents": [agent_json(a, self._online(a.agent_id)) for a in page],
                "total": len(matching),
                "online": sum(1 for a in matching if self._online(a.agent_id)),
                "offset": start,
                "limit": count,
            },
        )

    def _online(self, agent_id: str) -> bool:
        return self.registry.get(agent_id) is not None

    async def _agent(self, agent_id: str) -> Agent:
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise ApiError(404, "AGENT_NOT_FOUND", f"no agent {agent_id!r} is known")
        return agent

    @app.route("/api/v1/agents/<agent_id>", methods=["GET"])
    async def get_agent(self, request: Any, agent_id: str) -> bytes:
        await self._authenticate(request)
        agent = await self._agent(agent_id)
        body = agent_json(agent, self._online(agent_id))
        # The certificate it last said HELLO with, and how many sessions it has had.
        body["certificate"] = {
            "serial": agent.cert_serial,
            "not_after": rfc3339(agent.cert_not_after),
        }
        body["sessions"] = agent.epoch
        return self._json(request, body)

    @app.route("/api/v1/agents/<agent_id>/verbs", methods=["GET"])
    async def get_verbs(self, request: Any, agent_id: str) -> bytes:
        await self._authenticate(request)
        agent = await self._agent(agent_id)
        return self._json(request, {"agent_id": agent_id, "verbs": agent.verbs})

    @app.route("/api/v1/agents/<agent_id>/commands", methods=["POST"])
    async def create_command(self, request: Any, agent_id: str) -> bytes:
        caller = await self._authenticate(request)
        wait = _number(request, "wait", 0, MAX_WAIT)
        body = self._body(request)
        unknown = set(body) - {"verb", "args", "timeout", "ttl"}
        if unknown:
            field = sorted(unknown)[0]
            raise ApiError(400, "BAD_REQUEST", f"unknown field {field!r}", field)
        if "verb" not in body:
            raise ApiError(422, "UNKNOWN_VERB", "the body needs a verb", "verb")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise ApiError(422, "INVALID_ARGS", "args must be a JSON object", "args")
        # Argument names only: values may be secrets.
        request.viworks_audit = {"verb": body["verb"], "arg_names": sorted(map(str, args))}
        await self._check_scope(caller, body["verb"], agent_id)
        command, created = await self.ledger.submit(
            agent_id,
            body["verb"],
            args,
            body.get("timeout"),
            body.get("ttl"),
            _idempotency(request, caller, agent_id, body),
        )
        request.viworks_audit["command_id"] = command.command_id
        if wait is None:
            return self._json(request, command_json(command), 201 if created else 200)
        if command.status not in lifecycle.FINAL:
            finished = await self.waiters.wait_final(command.command_id, wait, unfinished=created)
            if finished is None:
                # Still running: report it as it stands now.
                command = await self.store.get_command(command.command_id) or command
                return self._json(request, command_json(command), 202)
            command = finished
        return self._json(request, command_json(command), 200)

    @app.route("/api/v1/commands/<command_id>", methods=["GET"])
    async def get_command(self, request: Any, command_id: str) -> bytes:
        await self._authenticate(request)
        command = await self._command(command_id)
        body = command_json(command)
        if command.status not in lifecycle.FINAL:
            body["stdout"], body["stderr"] = await self.store.output_text(command_id)
        body["events"] = [
            {"status": e.status, "at": rfc3339(e.at), "detail": e.detail}
            for e in await self.store.command_events(command_id)
        ]
        return self._json(request, body)

    async def _command(self, command_id: str) -> Command:
        command = await self.store.get_command(command_id)
        if command is None:
            raise ApiError(404, "COMMAND_NOT_FOUND", f"no command {command_id!r}")
        return command

    @app.route("/api/v1/commands/<command_id>/cancel", methods=["POST"])
    async def cancel_command(self, request: Any, command_id: str) -> bytes:
        caller = await self._authenticate(request)
        existing = await self._command(command_id)
        request.viworks_audit = {"verb": existing.verb, "agent_id": existing.agent_id}
        await self._check_scope(caller, existing.verb, existing.agent_id)
        command = await self.ledger.cancel(command_id)
        # 200: cancelled now; 202: the agent was asked to stop it.
        status = 200 if command.status == lifecycle.CANCELLED else 202
        return self._json(request, command_json(command), status)

    @app.route("/api/v1/commands/<command_id>/output", methods=["GET"])
    async def command_output(self, request: Any, command_id: str) -> bytes:
        await self._authenticate(request)
        command = await self._command(command_id)
        after = _last_event_id(request)
        if _query(request, "follow") not in ("1", "true"):
            chunks = await self.store.output_since(command_id, after, limit=100000)
            return self._json(
                request,
                {
                    "command_id": command_id,
                    "status": command.status,
                    "chunks": [_chunk_json(c) for c in chunks],
                },
            )
        await self._follow_output(request, command_id, after)
        return b""

    async def _follow_output(self, request: Any, command_id: str, after: int) -> None:
        """Stream output chunks as Server-Sent Events until the command is final."""
        _sse_headers(request)
        follower = self._follower(request)

        def listener(event: Event) -> None:
            if event.data.get("command_id") == command_id and event.type in (
                "command.output",
                "command.status",
            ):
                follower.push(event)

        # Subscribe before reading the backlog so that nothing falls in between.
        unsubscribe = self.hub.subscribe(listener)
        try:
            last = after
            for chunk in await self.store.output_since(command_id, after, limit=100000):
                await follower.writable()
                follower.write(sse_frame("command.output", _chunk_json(chunk), chunk.seq))
                last = chunk.seq
            command = await self._command(command_id)
            while not follower.gone and command.status not in lifecycle.FINAL:
                for event in await follower.next_events(SSE_KEEPALIVE):
                    if event.type == "command.status":
                        command = await self._command(command_id)
                    elif event.data["seq"] > last:
                        last = event.data["seq"]
                        follower.write(sse_frame("command.output", event.data, last))
            follower.write(sse_frame("command.status", command_json(command)))
        finally:
            unsubscribe()
            follower.release()

    @app.route("/api/v1/agents/<agent_id>/telemetry", methods=["GET"])
    async def telemetry(self, request: Any, agent_id: str) -> bytes:
        await self._authenticate(request)
        await self._agent(agent_id)
        latest = await self.store.latest_telemetry(agent_id)
        if latest is None:
            raise ApiError(404, "NO_TELEMETRY", f"agent {agent_id!r} has not reported yet")
        return self._json(request, {"agent_id": agent_id, **_telemetry_json(latest)})

    @app.route("/api/v1/agents/<agent_id>/telemetry/history", methods=["GET"])
    async def telemetry_history(self, request: Any, agent_id: str) -> bytes:
        await self._authenticate(request)
        await self._agent(agent_id)
        limit = int(_number(request, "limit", 1, 10000) or 100)
        since = _number(request, "since", 0, float("inf"))
        history = await self.store.telemetry_history(agent_id, limit=limit, since=since)
        return self._json(
            request, {"agent_id": agent_id, "history": [_telemetry_json(t) for t in history]}
        )

    @app.route("/api/v1/commands", methods=["GET"])
    async def list_commands(self, request: Any) -> bytes:
        await self._authenticate(request)
        status = _query(request, "status")
        if status is not None and status not in lifecycle.ALL:
            raise ApiError(400, "BAD_REQUEST", f"unknown status {status!r}", "status")
        limit = _number(request, "limit", 1, 1000)
        commands = await self.store.list_commands(
            agent_id=_query(request, "agent_id"),
            status=status,
            limit=int(limit or 100),
        )
        return self._json(request, {"commands": [command_json(c) for c in commands]})

    # -- jobs: one verb fanned out to the agents a selector matches -----------------------

    @app.route("/api/v1/jobs", methods=["POST"])
    async def create_job(self, request: Any) -> bytes:
        caller = await self._authenticate(request)
        body = self._body(request)
        verb = body.get("verb")
        request.viworks_audit = {
            "verb": verb,
            "selector": body.get("selector"),
            "arg_names": sorted(map(str, body.get("args") or {}))
            if isinstance(body.get("args"), dict)
            else [],
        }
        job = await self.jobs.create(
            parse_job_spec(body),
            created_by=caller.name,
            refusal=lambda agent: caller.refusal(
                verb if isinstance(verb, str) else None, agent.site
            ),
        )
        request.viworks_audit["job_id"] = job["job_id"]
        return self._json(request, job, 201)

    @app.route("/api/v1/jobs", methods=["GET"])
    async def list_jobs(self, request: Any) -> bytes:
        await self._authenticate(request)
        status = _query(request, "status")
        if status is not None and status not in JOB_STATUSES:
            raise ApiError(400, "BAD_REQUEST", f"unknown job status {status!r}", "status")
        limit = int(_number(request, "limit", 1, 1000) or 100)
        jobs = await self.jobs.list(None if status is None else [status], limit=limit)
        return self._json(request, {"jobs": jobs})

    @app.route("/api/v1/jobs/<job_id>", methods=["GET"])
    async def get_job(self, request: Any, job_id: str) -> bytes:
        await self._authenticate(request)
        return self._json(request, await self.jobs.describe(job_id))

    @app.route("/api/v1/jobs/<job_id>/<action>", methods=["POST"])
    async def job_action(self, request: Any, job_id: str, action: str) -> bytes:
        caller = await self._authenticate(request)
        if action not in ("pause", "resume", "cancel"):
            raise ApiError(404, "NOT_FOUND", f"no job action {action!r} (pause, resume, cancel)")
        request.viworks_audit = {"job_id": job_id, "action": action}
        job = await self.jobs.describe(job_id)
        # An operator limited to verbs/sites must be allowed the job's verb on every site.
        sites = {a.site for a in await self._job_agents(job)}
        for site in sorted(sites, key=str):
            refusal = caller.refusal(job["verb"], site)
            if refusal is not None:
                raise ApiError(403, "FORBIDDEN", refusal)
        if action == "pause":
            job = await self.jobs.pause(job_id, by=caller.name)
        else:
            job = await getattr(self.jobs, action)(job_id)
        return self._json(request, job)

    async def _job_agents(self, job: dict[str, Any]) -> list[Agent]:
        targets = {c["agent_id"] for c in job["commands"]}
        return [a for a in await self.store.list_agents() if a.agent_id in targets]

    # -- the web console: its files, sessions, and what its pages need ---------------------

    @app.route("/ui", methods=["GET"])
    def console_root(self, request: Any) -> bytes:
        if self.console is None:
            raise ApiError(404, "NOT_FOUND", "the web console is off ([api] console = false)")
        request.redirect(b"/ui/")
        return b""

    @app.route("/ui/", branch=True, methods=["GET"])
    def console_file(self, request: Any) -> bytes:
        if self.console is None:
            raise ApiError(404, "NOT_FOUND", "the web console is off ([api] console = false)")
        return self.console.render(request, request.path.decode("utf-8", "replace")[len("/ui/") :])

    @app.route("/api/v1/session", methods=["POST"])
    async def create_session(self, request: Any) -> bytes:
        """Trade an API token (``{"token": ...}``) for a console session cookie.

        JSON only: another site's form cannot send it (no login CSRF)."""
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/json":
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the token as application/json")
        body = self._body(request)
        unknown = set(body) - {"token"}
        if unknown:
            field = sorted(unknown)[0]
            raise ApiError(400, "BAD_REQUEST", f"unknown field {field!r}", field)
        token = body.get("token")
        if not isinstance(token, str) or not token.strip():
            raise ApiError(400, "BAD_REQUEST", 'the body needs the token: {"token": "vw_..."}')
        try:
            row = await self._token_row(token.strip())
            caller = self._caller(request, row, token.strip())
        except ApiError as refusal:
            raise self._failed_authentication(request, refusal) from None
        request.viworks_caller = caller
        self._admit(request, caller)
        now = self.clock.seconds()
        expires_at = now + self.session_ttl
        if row.expires_at is not None:
            expires_at = min(expires_at, row.expires_at)
        session_id = websession.new_session_id()
        await self.store.create_console_session(
            websession.session_hash(session_id), caller.name, now, expires_at
        )
        websession.set_cookie(request, session_id, expires_at - now)
        request.viworks_audit = {"session": "created"}
        return self._json(request, self._session_json(caller, session_id, expires_at), 201)

    @app.route("/api/v1/session", methods=["GET"])
    async def get_session(self, request: Any) -> bytes:
        """Who the page is logged in as, what it may do, and its CSRF token."""
        caller = await self._authenticate(request)
        session_id, expires_at = getattr(request, "viworks_session", (None, None))
        return self._json(request, self._session_json(caller, session_id, expires_at))

    @app.route("/api/v1/session", methods=["DELETE"])
    async def delete_session(self, request: Any) -> bytes:
        """Log out: the session ends on every replica within TOKEN_CACHE_SECONDS."""
        await self._authenticate(request)
        session_id, _ = getattr(request, "viworks_session", (None, None))
        if session_id is None:
            raise ApiError(400, "BAD_REQUEST", "no console session: this request carried a token")
        digest = websession.session_hash(session_id)
        await self.store.delete_console_session(digest)
        self._sessions.forget(digest)
        websession.clear_cookie(request)
        return self._json(request, {"ended": True})

    def _session_json(
        self, caller: Caller, session_id: str | None, expires_at: float | None
    ) -> dict:
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

    @app.route("/api/v1/fleet", methods=["GET"])
    async def fleet(self, request: Any) -> bytes:
        """The fleet at a glance: online/offline by site and version, certificates
        ending within ``?cert_days=`` (default 30), the latest failed commands."""
        await self._authenticate(request)
        cert_days = _number(request, "cert_days", 0, 3650)
        horizon = self.clock.seconds() + 86400 * (
            CERT_WARNING_DAYS if cert_days is None else cert_days
        )
        keys = await self.store.agent_keys()
        sites: dict[str, dict[str, int]] = {}
        versions: dict[str, dict[str, int]] = {}
        online = 0
        for agent in keys:
            state = "online" if self._online(agent.agent_id) else "offline"
            online += state == "online"
            for table, key in ((sites, agent.site), (versions, agent.version)):
                counts = table.setdefault(str(key), {"online": 0, "offline": 0})
                counts[state] += 1
        ending = sorted(
            (a for a in keys if a.cert_not_after is not None and a.cert_not_after <= horizon),
            key=lambda a: a.cert_not_after or 0.0,
        )
        failed: list[Command] = []
        for status in _FAILED:
            failed += await self.store.list_commands(status=status, limit=10)
        failed.sort(key=lambda c: c.created_at, reverse=True)
        return self._json(
            request,
            {
                "agents": len(keys),
                "online": online,
                "sites": [{"site": k, **v} for k, v in sorted(sites.items())],
                "versions": [{"version": k, **v} for k, v in sorted(versions.items())],
                "certificates": [
                    {
                        "agent_id": a.agent_id,
                        "serial": a.cert_serial,
                        "not_after": rfc3339(a.cert_not_after),
                    }
                    for a in ending[:100]
                ],
                "failed_commands": [_command_summary(c) for c in failed[:10]],
                "backend": {"version": __version__, "agents_online": len(self.registry)},
            },
        )

    @app.route("/api/v1/agents/<agent_id>/certificate/revoke", methods=["POST"])
    async def revoke_certificate(self, request: Any, agent_id: str) -> bytes:
        """Revoke every certificate the agent id has connected with (admin), as ``viworks
        pki revoke AGENT_ID`` does; sessions using them are dropped within seconds.

        ``serial``: the one of its last HELLO (else the last seen); ``already_revoked``:
        nothing was left to revoke; ``serials``: each one, first seen first."""
        caller = await self._authenticate(request)
        body = self._body(request)
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            raise ApiError(400, "BAD_REQUEST", "reason must be a string of up to 500", "reason")
        agent = await self._agent(agent_id)
        request.viworks_audit = {"agent_id": agent_id}
        done = await revoke_agent_certificates(
            self.store, agent_id, caller.name, self.clock.seconds(), reason
        )
        if not done:
            raise ApiError(409, "NO_CERTIFICATE", f"no certificate is known for {agent_id!r}")
        serials = [cert.serial for cert, _ in done]
        current = agent.cert_serial
        return self._json(
            request,
            {
                "agent_id": agent_id,
                "serial": current if current in serials else serials[-1],
                "already_revoked": not any(revoked for _, revoked in done),
                "serials": [
                    {
                        "serial": cert.serial,
                        "first_seen": rfc3339(cert.first_seen),
                        "last_seen": rfc3339(cert.last_seen),
                        "already_revoked": not revoked,
                    }
                    for cert, revoked in done
                ],
            },
        )

    @app.route("/api/v1/audit", methods=["GET"])
    async def audit_records(self, request: Any) -> bytes:
        """Audit records newest first, filtered; ``next_before`` pages to older ones."""
        await self._authenticate(request)
        limit = int(_number(request, "limit", 1, 1000) or 100)
        before = _number(request, "before", 1, 2**62)
        rows = await self.store.audit_search(
            **_audit_filters(request),
            before_seq=None if before is None else int(before),
            limit=limit + 1,
        )
        return self._json(
            request,
            {
                "records": [_audit_json(row) for row in rows[:limit]],
                "next_before": rows[limit - 1].seq if len(rows) > limit else None,
            },
        )

    @app.route("/api/v1/audit/verify", methods=["GET"])
    async def audit_verify(self, request: Any) -> bytes:
        """How far the hash chain is verified (``?full=1`` re-reads it all)."""
        await self._authenticate(request)
        status = await self.chain.check(full=_query(request, "full") in ("1", "true"))
        return self._json(request, {**status, "checked_at": rfc3339(status["checked_at"])})

    @app.route("/api/v1/audit/export", methods=["GET"])
    async def audit_export(self, request: Any) -> bytes:
        """The filtered records as JSON lines, oldest first (``viworks audit export``'s format)."""
        await self._authenticate(request)
        filters = _audit_filters(request)
        request.setHeader(b"content-type", b"application/x-ndjson")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-disposition", b'attachment; filename="viworks-audit.jsonl"')
        after = 0
        while rows := await self.store.audit_search(
            **filters, after_seq=after, newest_first=False, limit=1000
        ):
            request.write(
                b"".join(
                    json.dumps(
                        audit.export_record(r), sort_keys=True, separators=(",", ":")
                    ).encode("utf-8")
                    + b"\n"
                    for r in rows
                )
            )
            after = rows[-1].seq
        return b""

    @app.route("/api/v1/tokens", methods=["GET"])
    async def list_tokens(self, request: Any) -> bytes:
        await self._authenticate(request)
        now = self.clock.seconds()
        return self._json(
            request, {"tokens": [tokens.token_json(t, now) for t in await self.store.list_tokens()]}
        )

    @app.route("/api/v1/tokens", methods=["POST"])
    async def create_token(self, request: Any) -> bytes:
        """A new token; its secret is in this answer (``token``) and nowhere else, ever."""
        caller = await self._authenticate(request)
        body = self._body(request)
        unknown = set(body) - {"name", "role", "verbs", "sites", "expires_in"}
        if unknown:
            field = sorted(unknown)[0]
            raise ApiError(400, "BAD_REQUEST", f"unknown field {field!r}", field)
        name, role = body.get("name"), body.get("role", authz.OPERATOR)
        if not isinstance(name, str) or not tokens.NAME.fullmatch(name):
            raise ApiError(
                400, "BAD_REQUEST", "name: 1-100 of A-Z a-z 0-9 . _ @ : - (not first)", "name"
            )
        if role not in authz.ROLES:
            raise ApiError(400, "BAD_REQUEST", f"role must be one of {authz.ROLES}", "role")
        limits = {key: _string_list(body, key) for key in ("verbs", "sites")}
        expires_in = body.get("expires_in")
        if expires_in is not None and (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, (int, float))
            or not 0 < expires_in <= 10 * 365 * 86400
        ):
            raise ApiError(400, "BAD_REQUEST", "expires_in: seconds > 0", "expires_in")
        request.viworks_audit = {"name": name, "role": role}
        now = self.clock.seconds()
        try:
            secret = await tokens.create_token(
                self.store, name, caller.name, now, role=role, expires_in=expires_in, **limits
            )
        except DuplicateToken:
            raise ApiError(409, "TOKEN_EXISTS", f"a token named {name!r} exists", "name") from None
        row = await self.store.token_for_hash(hash_token(secret))
        if row is None:  # only a concurrent removal of the row could do this
            raise RuntimeError(f"token {name!r} vanished after its creation")
        return self._json(request, {**tokens.token_json(row, now), "token": secret}, 201)

    @app.route("/api/v1/tokens/<name>", methods=["DELETE"])
    async def revoke_token(self, request: Any, name: str) -> bytes:
        """Revoke a token (and end its console sessions) on every replica within 2 s."""
        caller = await self._authenticate(request)
        request.viworks_audit = {"name": name}
        known = {t.name: t for t in await self.store.list_tokens()}
        if name not in known:
            raise ApiError(404, "TOKEN_NOT_FOUND", f"no token named {name!r}")
        now = self.clock.seconds()
        if not await tokens.revoke_token(self.store, name, caller.name, now):
            raise ApiError(409, "ALREADY_REVOKED", f"token {name!r} was already revoked")
        return self._json(
            request, tokens.token_json(attrs.evolve(known[name], revoked_at=now), now)
        )

    # -- live events and metrics ----------------------------------------------------------

    @app.route("/api/v1/events", methods=["GET"])
    async def events(self, request: Any) -> bytes:
        """Hub events as Server-Sent Events until the client goes (or the backend stops).

        ``Last-Event-ID`` (or ``?after=``) replays what the bounded history still holds
        after that id; without it the stream starts now. ``?types=a,b`` keeps only those
        types (``command.*`` keeps every ``command.`` type). A resume point the history
        no longer covers (or from before a backend restart) gets an ``events.gap`` event
        first, so the client knows to re-read the state it cares about.
        """
        await self._authenticate(request)
        after = _last_event_id(request)
        keep = _event_filter(_query(request, "types"))
        _sse_headers(request)
        follower = self._follower(request)
        self._streams.add(follower)
        hub = self.hub

        def listener(event: Event) -> None:
            if keep(event.type):
                follower.push(event)

        # Subscribe and read the history in one go: nothing can fall in between.
        unsubscribe = hub.subscribe(listener)
        try:
            follower.write(b"retry: 2000\n\n")
            last = after
            if after >= 0:
                backlog = hub.since(after)
                first = backlog[0].id if backlog else hub.last_id + 1
                if first > after + 1 or after > hub.last_id:
                    gap = {"after": after, "first": first, "last": hub.last_id}
                    follower.write(sse_frame("events.gap", gap))
                # At the pace the client reads: a long backlog must not count as stalling.
                for event in backlog:
                    await follower.writable()
                    if keep(event.type):
                        follower.write(event.sse)
                    last = event.id
            else:
                last = hub.last_id
            while not follower.gone and not follower.stopping:
                for event in await follower.next_events(SSE_KEEPALIVE):
                    if event.id > last:
                        last = event.id
                        follower.write(event.sse)
        finally:
            unsubscribe()
            self._streams.discard(follower)
            follower.release()
        return b""

    def _follower(self, request: Any) -> _Follower:
        return _Follower(self.clock, request, self.sse_buffer_bytes, self._stream_dropped)

    def _stream_dropped(self, follower: _Follower) -> None:
        self.metrics.sse_dropped.inc()
        self.log.warn(
            "event stream to {peer} dropped: the client stopped reading"
            " ({unsent} bytes unsent, [api] sse_buffer_bytes = {limit})",
            peer=_peer(follower.request),
            unsent=follower.unsent,
            limit=follower.max_unsent,
        )

    def stop_streams(self) -> None:
        """End every open event stream (called when the backend stops)."""
        for follower in list(self._streams):
            follower.stop()

    @app.route("/metrics", methods=["GET"])
    def metrics_page(self, request: Any) -> bytes:
        """Prometheus text exposition; a bearer token only if [api] metrics_token is set."""
        if self.metrics_token:
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.metrics_token.encode()
            ):
                raise self._failed_authentication(
                    request,
                    ApiError(401, "UNAUTHORIZED", "send Authorization: Bearer <metrics_token>"),
                )
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.render()


def _rate_limited(why: str, wait: float) -> ApiError:
    """429 RATE_LIMITED with Retry-After (whole seconds, at least 1)."""
    seconds = max(1, math.ceil(wait))
    return ApiError(
        429,
        "RATE_LIMITED",
        f"{why}; retry after {seconds} s",
        headers={b"retry-after": str(seconds).encode()},
    )


def _peer(request: Any) -> str:
    address = request.getClientAddress()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return str(address) if host is None else f"{host}:{port}"


def _command_summary(command: Command) -> dict[str, Any]:
    """A command without its output (for lists)."""
    body = command_json(command)
    for key in ("stdout", "stderr", "result"):
        body.pop(key)
    return body


def _audit_json(row: AuditRecord) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "at": rfc3339(row.at),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "detail": None if row.detail is None else json.loads(row.detail),
        "hash": row.hash,
        "prev_hash": row.prev_hash,
    }


def _audit_filters(request: Any) -> dict[str, Any]:
    """``?actor=&action=&agent=&outcome=&since=&until=`` (times in epoch seconds)."""
    filters: dict[str, Any] = {
        "actor": _query(request, "actor"),
        "action": _query(request, "action"),
        "agent_id": _query(request, "agent"),
        "outcome": _query(request, "outcome"),
        "since": _number(request, "since", 0, 1e11),
        "until": _number(request, "until", 0, 1e11),
    }
    for name, value in filters.items():
        if isinstance(value, str) and (not value or len(value) > 200):
            raise ApiError(400, "BAD_REQUEST", f"{name}: 1-200 characters", name)
    return filters


def _string_list(body: dict, key: str) -> list[str] | None:
    """``body[key]``: absent or null (no limit), else a list of non-empty strings."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ApiError(400, "BAD_REQUEST", f"{key} must be a list of names, or null", key)
    return value


def _sse_headers(request: Any) -> None:
    request.setHeader(b"content-type", b"text/event-stream")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-accel-buffering", b"no")  # nginx: do not buffer the stream


def _event_filter(raw: str | None) -> Callable[[str], bool]:
    """``?types=a,b,c.*``: exact event types, or prefixes ending in ``*``; None keeps all."""
    if raw is None:
        return lambda _: True
    names = [t.strip() for t in raw.split(",") if t.strip()]
    if not names:
        raise ApiError(
            400, "BAD_REQUEST", "types must list event types, e.g. types=agent.online", "types"
        )
    exact = frozenset(n for n in names if not n.endswith("*"))
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    return lambda event_type: event_type in exact or event_type.startswith(prefixes)
