"""Route declarations: every route of the API names the least role it needs.

``ROUTES.route("POST", "/api/v1/jobs", role=OPERATOR)`` declares a handler on the
table's one Klein app (tahoe-lafs's storage HTTP server is the model). What the
declaration puts around the handler is the only way into it:

1. unless the role is ``PUBLIC``, authentication and admission (gate.py): 401/429 without
   valid credentials, 403 ``CSRF_REQUIRED``, 429 over the token's rate, 403 below the role;
2. the handler, called with a ``Call`` (the request, its ``Caller``, the detail of its
   audit record) and the path's parameters; it returns ``Json``, or bytes it rendered;
3. a refusal (``ApiError``, ``DomainError``) is answered with the status of its code
   (errors.py), anything else with 500 (logged);
4. a request that may change something (not GET, HEAD or OPTIONS) is audited, whatever
   its outcome, as ``api.<method>`` on its path: actor, status, error code and the
   handler's detail. Failed authentications are audited in aggregate (authfailures.py).

Requests no route matches (404, 405) are answered as JSON errors and audited the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Protocol, TypeVar

import attrs
from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Rule

from viworks.backend.api.errors import REFUSALS, AuthenticationFailed
from viworks.backend.api.gate import ANONYMOUS, READ_METHODS, Caller, Gate
from viworks.backend.api.reply import INTERNAL, Json, error, refusal, render
from viworks.backend.audit import FAILED, OK, REFUSED, AuditLog
from viworks.backend.authz import ADMIN, ROLES

#: No credentials checked by the route's wrapper: health, the console's files, and the
#: routes that authenticate by themselves (the console's login, /metrics).
PUBLIC: Final = "public"


class Call:
    """One request to a declared route, as its handler sees it."""

    __slots__ = ("caller", "detail", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        #: Who sent it (``ANONYMOUS`` on a public route until the route identifies it).
        self.caller: Caller = ANONYMOUS
        #: What the request's audit record says besides method, status and error.
        self.detail: dict[str, Any] | None = None

    def audit(self, **fields: Any) -> None:
        """Add ``fields`` to the detail of the request's audit record (requests that may
        change something are audited, refused ones too: add them before the refusal)."""
        if self.detail is None:
            self.detail = fields
        else:
            self.detail.update(fields)


Reply = Json | bytes
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Reply]])


class RouteOwner(Protocol):
    """What the declared routes' wrapper needs of the object the routes belong to."""

    @property
    def gate(self) -> Gate: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def log(self) -> Logger: ...


@attrs.frozen
class Declaration:
    """What a route declares besides its path and method."""

    handler: Callable[..., Awaitable[Reply]]
    role: str
    #: Whether its requests are audited (they may change something).
    audited: bool


class RouteTable:
    """One Klein app and the declaration of each of its routes (by endpoint)."""

    def __init__(self) -> None:
        self.app = Klein()
        self._declared: dict[str, Declaration] = {}
        self.app.handle_errors(HTTPException)(_unrouted)
        self.app.handle_errors(Exception)(_unexpected)

    def route(
        self, method: str, path: str, *, role: str, branch: bool = False
    ) -> Callable[[Handler], Handler]:
        """Declare ``handler(owner, call, **path_params)`` for ``method path``, open to
        callers of ``role`` and up (``PUBLIC``: no credentials are checked).
        ``branch``: also every path under ``path`` (Klein's branch routes)."""
        if role != PUBLIC and role not in ROLES:
            raise ValueError(f"{method} {path}: unknown role {role!r}")
        audited = method.encode("ascii") not in READ_METHODS

        def declare(handler: Handler) -> Handler:
            endpoint = handler.__name__
            declared = Declaration(handler, role, audited)
            # Klein names endpoints after their handler: one name, one handler and role
            # (a handler may take several paths with the same role).
            if self._declared.get(endpoint, declared) != declared:
                raise ValueError(f"{method} {path}: another route is declared as {endpoint}")
            self._declared[endpoint] = declared
            if branch:
                self._declared[endpoint + "_branch"] = declared
            wrapped = _wrap(handler, declared)
            self.app.route(path, methods=[method], endpoint=endpoint, branch=branch)(wrapped)
            return handler

        return declare

    def rules(self) -> Iterator[tuple[Rule, Declaration | None]]:
        """Every rule of the app, with its declaration (None: declared without one)."""
        for rule in self.app.url_map.iter_rules():
            yield rule, self._declared.get(str(rule.endpoint))

    def required_role(self, method: str, path: str) -> str:
        """The least role that may call ``method path`` (``PUBLIC``: anyone); a request no
        route takes needs ``ADMIN`` (and is answered 404 or 405 in any case)."""
        try:
            endpoint, _ = self.app.url_map.bind("api").match(path, method=method)
        except HTTPException:
            return ADMIN
        return self._declared[str(endpoint)].role


def _wrap(handler: Handler, declared: Declaration) -> Callable[..., Awaitable[bytes]]:
    """The endpoint Klein calls for ``handler``: see the module's docstring."""
    role = declared.role
    public = role == PUBLIC
    audited = declared.audited

    async def endpoint(owner: RouteOwner, request: Request, **params: str) -> bytes:
        call = Call(request)
        try:
            if not public:
                call.caller = await owner.gate.identify(request)
                owner.gate.admit(request, call.caller, role)
            reply = await handler(owner, call, **params)
        except REFUSALS as refused:
            if request.channel is None:
                raise  # the client has gone: Klein drops the answer (and nothing is audited)
            reply = refusal(request, refused)
            if isinstance(refused, AuthenticationFailed):
                return render(request, reply)
        except Exception:
            if request.channel is None:
                raise
            owner.log.failure("API request {uri} failed", uri=request.uri)
            reply = INTERNAL
        if audited:
            status, code = (
                (request.code, None)
                if isinstance(reply, bytes)
                else (reply.status, reply.error_code)
            )
            audit_request(owner.audit, request, call.caller, status, code, call.detail)
        return reply if isinstance(reply, bytes) else render(request, reply)

    return endpoint


def audit_request(
    log: AuditLog,
    request: IRequest,
    caller: Caller,
    status: int,
    error_code: str | None,
    detail: dict[str, Any] | None,
) -> None:
    """The audit record of a request that may change something (written in the
    background): ``api.<method>`` by the caller on the request's path."""
    method = request.method.decode("latin-1")
    fields: dict[str, Any] = {"method": method, "status": status}
    if detail:
        fields.update(detail)
    if error_code is not None:
        fields["error"] = error_code
    outcome = OK if status < 400 else REFUSED if status < 500 else FAILED
    log.record_later(
        caller.name,
        "api." + method.lower(),
        request.path.decode("utf-8", "replace"),
        outcome,
        fields,
    )


# Klein's error handlers, called as methods of the object the routes belong to (``self``).


def _unrouted(self: RouteOwner, request: IRequest, failure: Failure) -> bytes:
    """A request no route takes (404, 405): a JSON error whose code is the reason."""
    e = failure.value
    assert isinstance(e, HTTPException)
    code = (e.name or "error").upper().replace(" ", "_")
    # A 405 says which methods the path takes (RFC 9110).
    if isinstance(e, MethodNotAllowed) and e.valid_methods:
        request.setHeader(b"allow", ", ".join(e.valid_methods).encode("ascii"))
    return _answer_unrouted(self, request, error(code, e.description, e.code or 500))


def _unexpected(self: RouteOwner, request: IRequest, failure: Failure) -> bytes:
    """A failure outside the routes' wrapper (while matching the request): 500."""
    self.log.failure("API request {uri} failed", failure, uri=request.uri)
    return _answer_unrouted(self, request, INTERNAL)


def _answer_unrouted(owner: RouteOwner, request: IRequest, reply: Json) -> bytes:
    if request.method not in READ_METHODS:
        audit_request(owner.audit, request, ANONYMOUS, reply.status, reply.error_code, None)
    return render(request, reply)


#: The backend API's routes: each route module declares its routes on it.
ROUTES: Final = RouteTable()
