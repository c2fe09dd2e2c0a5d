"""The API's route declarations (viworks/backend/api/routing.py) and its error table.

Every route of the real API declares its role; the wrapper a declaration puts around a
handler authenticates, admits, answers refusals by the error table, and audits what may
change state, exactly once, as today. Driven in memory (StubTreq) over a small route
table with a synchronous fake store and audit log: no reactor, no clock but ``Clock``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from viworks.backend.api import BackendAPI
from viworks.backend.api.errors import STATUS
from viworks.backend.api.gate import READ_METHODS, Gate
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import PUBLIC, Call, RouteTable
from viworks.backend.authfailures import AuthFailures
from viworks.backend.authz import ADMIN, OPERATOR, ROLES, VIEWER
from viworks.backend.errors import DomainError
from viworks.backend.model import JOB_STATUSES, Token
from viworks.backend.tokens import hash_token
from viworks.logs import Logger

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKEND = os.path.join(ROOT, "viworks", "backend")


def undeclared(table: RouteTable) -> list[str]:
    """The rules of ``table``'s Klein app that no declaration covers."""
    return [f"{sorted(r.methods or ())} {r.rule}" for r, declared in table.rules() if not declared]


class FakeStore:
    """The two reads the gate makes, answered at once."""

    def __init__(self, tokens: dict[str, Token]) -> None:
        self.tokens = {hash_token(secret): token for secret, token in tokens.items()}

    def token_for_hash(self, digest: str) -> Deferred[Token | None]:
        return succeed(self.tokens.get(digest))

    def console_session(self, digest: str) -> Deferred[None]:
        return succeed(None)


class FakeAuditLog:
    """Records what would be audited."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str | None, str, Any]] = []

    def record_later(
        self, actor: str, action: str, target: str | None, outcome: str, detail: Any = None
    ) -> Deferred[None]:
        self.records.append((actor, action, target, outcome, detail))
        return succeed(None)


TOY = RouteTable()


class Toy:
    """A route owner with one route of each kind."""

    app = TOY.app
    log = Logger()

    def __init__(self, gate: Gate, audit: FakeAuditLog) -> None:
        self.gate = gate
        self.audit = audit
        self.pending: Deferred[None] = Deferred()
        self.calls: list[Call] = []

    @TOY.route("GET", "/open", role=PUBLIC)
    async def open_to_all(self, call: Call) -> Json:
        return Json({"caller": call.caller.name})

    @TOY.route("GET", "/read", role=VIEWER)
    @TOY.route("GET", "/also-read", role=VIEWER)
    async def read(self, call: Call) -> Json:
        return Json({"caller": call.caller.name, "role": call.caller.role})

    @TOY.route("GET", "/raw", role=VIEWER)
    async def raw(self, call: Call) -> bytes:
        call.request.setHeader(b"content-type", b"text/plain")
        return b"as written"

    @TOY.route("POST", "/things/<thing>", role=OPERATOR)
    async def change(self, call: Call, thing: str) -> Json:
        call.audit(thing=thing)
        if thing == "refused":
            raise DomainError("JOB_PAUSED", "the job is paused", "thing")
        if thing == "broken":
            raise RuntimeError("a bug")
        if thing == "slow":
            self.calls.append(call)
            await self.pending
        call.audit(done=True)
        return Json({"thing": thing}, 201)


TOKENS = {
    "vw_viewer": Token("viewer", 1.0, VIEWER, None, None, None, None),
    "vw_operator": Token("operator", 1.0, OPERATOR, None, None, None, None),
}


class DeclarationTests(unittest.TestCase):
    def test_every_api_route_declares_a_role(self) -> None:
        """Every rule of the API's Klein app was declared with a role (none added around
        the declarations); exactly the routes that may change something are audited."""
        self.assertEqual(undeclared(BackendAPI.routes), [])
        for rule, declared in BackendAPI.routes.rules():
            assert declared is not None
            self.assertIn(declared.role, (PUBLIC, *ROLES), rule.rule)
            writes = {m.encode() for m in rule.methods or ()} - READ_METHODS
            self.assertEqual(declared.audited, bool(writes), rule.rule)

    def test_a_route_added_around_the_declarations_is_found(self) -> None:
        """A route registered on the Klein app directly (no role) is what the check finds."""
        table = RouteTable()

        @table.route("GET", "/declared", role=VIEWER)
        async def declared(owner: object, call: Call) -> Json:
            return Json({})

        table.app.route("/sneaky", methods=["POST"])(lambda owner, request: b"")
        self.assertEqual(undeclared(table), ["['POST'] /sneaky"])

    def test_role_is_checked_when_declared(self) -> None:
        """A role that is not public, viewer, operator or admin is refused at import time."""
        with self.assertRaises(ValueError):
            RouteTable().route("GET", "/x", role="superuser")

    def test_one_endpoint_one_handler(self) -> None:
        """Klein names endpoints after their handlers: a second handler of the same name
        is refused (it would silently replace the first), and so is one handler declared
        with two roles; one handler may take several paths with one role."""
        table = RouteTable()

        async def handler(owner: object, call: Call) -> Json:
            return Json({})

        table.route("GET", "/a", role=VIEWER)(handler)
        table.route("GET", "/b", role=VIEWER)(handler)
        with self.assertRaises(ValueError):
            table.route("POST", "/c", role=OPERATOR)(handler)

        async def other(owner: object, call: Call) -> Json:
            return Json({})

        other.__name__ = "handler"
        with self.assertRaises(ValueError):
            table.route("GET", "/d", role=VIEWER)(other)

    def test_required_role(self) -> None:
        """The least role of a request: the declared one of the route that takes it; HEAD
        as GET; admin for a request no route takes, e.g. an unknown job action."""
        required = BackendAPI.routes.required_role
        self.assertEqual(required("GET", "/health"), PUBLIC)
        self.assertEqual(required("HEAD", "/api/v1/tokens"), ADMIN)
        self.assertEqual(required("POST", "/api/v1/jobs/j1/pause"), OPERATOR)
        self.assertEqual(required("POST", "/api/v1/jobs/j1/reboot"), ADMIN)
        self.assertEqual(required("PATCH", "/api/v1/agents"), ADMIN)

    def test_call_audit_accumulates(self) -> None:
        """Fields given to ``Call.audit`` add up in the request's audit detail."""
        call = Call(None)  # type: ignore[arg-type]
        self.assertIsNone(call.detail)
        call.audit(verb="ping")
        call.audit(command_id="c1", verb="pong")
        self.assertEqual(call.detail, {"verb": "pong", "command_id": "c1"})


class WrapperTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.audit = FakeAuditLog()
        self.failures = AuthFailures(self.audit, self.clock)  # type: ignore[arg-type]
        gate = Gate(FakeStore(TOKENS), self.clock, self.failures, rate=100.0, burst=100)  # type: ignore[arg-type]
        self.toy = Toy(gate, self.audit)
        self.http = StubTreq(self.toy.app.resource())

    def call(self, method: str, path: str, token: str | None = None) -> tuple[int, Headers, bytes]:
        """One request, answered synchronously (every fake answers at once)."""
        headers = {} if token is None else {b"authorization": [b"Bearer " + token.encode()]}
        done: list[Any] = []
        d = self.http.request(method, "http://toy" + path, headers=headers)
        d.addCallback(lambda r: r.content().addCallback(lambda body: (r, body)))
        d.addBoth(done.append)
        self.http.flush()
        self.assertEqual(len(done), 1, "no answer yet")
        if isinstance(done[0], Failure):
            done[0].raiseException()
        response, body = done[0]
        return response.code, response.headers, body

    def test_public_route_needs_no_credentials(self) -> None:
        """A public route answers without credentials; its caller is anonymous."""
        code, _, body = self.call("GET", "/open")
        self.assertEqual((code, body), (200, b'{"caller":"anonymous"}'))

    def test_authenticated_route(self) -> None:
        """A viewer route answers a viewer token with its caller; without credentials
        it is 401 with WWW-Authenticate, on each path the handler takes."""
        for path in ("/read", "/also-read"):
            code, _, body = self.call("GET", path, "vw_viewer")
            self.assertEqual((code, body), (200, b'{"caller":"viewer","role":"viewer"}'))
            code, headers, _ = self.call("GET", path)
            self.assertEqual(code, 401)
            self.assertEqual(
                headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="viworks"']
            )
        self.assertEqual(self.audit.records, [])

    def test_handler_renders_its_own_answer(self) -> None:
        """A handler returning bytes is answered with them as it wrote them."""
        code, headers, body = self.call("GET", "/raw", "vw_viewer")
        self.assertEqual((code, body), (200, b"as written"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain"])

    def test_change_audited_with_the_handlers_detail(self) -> None:
        """A POST that succeeds is audited once: api.post by its caller on its path, with
        method, status and the detail its handler added."""
        code, _, body = self.call("POST", "/things/lamp", "vw_operator")
        self.assertEqual((code, body), (201, b'{"thing":"lamp"}'))
        self.assertEqual(
            self.audit.records,
            [
                (
                    "operator",
                    "api.post",
                    "/things/lamp",
                    "ok",
                    {"method": "POST", "status": 201, "thing": "lamp", "done": True},
                )
            ],
        )

    def test_role_below_the_route(self) -> None:
        """A viewer on an operator route: 403 FORBIDDEN naming the role needed, audited
        as refused by the viewer (the handler never ran)."""
        code, _, body = self.call("POST", "/things/lamp", "vw_viewer")
        self.assertEqual(code, 403)
        self.assertEqual(
            body,
            b'{"error":{"code":"FORBIDDEN",'
            b'"message":"a viewer token may not POST /things/lamp (needs operator)"}}',
        )
        self.assertEqual(
            self.audit.records,
            [
                (
                    "viewer",
                    "api.post",
                    "/things/lamp",
                    "refused",
                    {"method": "POST", "status": 403, "error": "FORBIDDEN"},
                )
            ],
        )

    def test_domain_refusal_by_the_error_table(self) -> None:
        """A DomainError is answered with its code's status from the table, its message and
        field; audited as refused with the detail added before it and the error code."""
        code, _, body = self.call("POST", "/things/refused", "vw_operator")
        self.assertEqual(code, 409)
        self.assertEqual(
            body,
            b'{"error":{"code":"JOB_PAUSED","message":"the job is paused","field":"thing"}}',
        )
        [(_, _, _, outcome, detail)] = self.audit.records
        self.assertEqual(outcome, "refused")
        self.assertEqual(
            detail, {"method": "POST", "status": 409, "thing": "refused", "error": "JOB_PAUSED"}
        )

    def test_unexpected_failure(self) -> None:
        """Anything else is 500 INTERNAL (the failure is logged), audited as failed."""
        code, _, body = self.call("POST", "/things/broken", "vw_operator")
        self.assertEqual(code, 500)
        self.assertEqual(
            body, b'{"error":{"code":"INTERNAL","message":"internal error; see the log"}}'
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [(_, _, _, outcome, detail)] = self.audit.records
        self.assertEqual((outcome, detail["error"]), ("failed", "INTERNAL"))

    def test_failed_authentication_audited_in_aggregate_only(self) -> None:
        """A POST without valid credentials is not audited by itself: the failed
        authentications of its source are, in one api.refused record."""
        for token in (None, "vw_unknown"):
            code, _, _ = self.call("POST", "/things/lamp", token)
            self.assertEqual(code, 401)
        self.assertEqual(self.audit.records, [])
        self.clock.advance(self.failures.interval)
        [(actor, action, _, _, detail)] = self.audit.records
        self.assertEqual((action, detail["count"]), ("api.refused", 2))

    def test_unrouted_requests(self) -> None:
        """A path no route takes is a JSON 404 (audited as anonymous when it is a POST);
        a method the path does not take is 405 with Allow."""
        code, _, body = self.call("POST", "/nowhere")
        self.assertEqual(code, 404)
        self.assertIn(b'"code":"NOT_FOUND"', body)
        code, _, _ = self.call("GET", "/nowhere")
        self.assertEqual(code, 404)
        self.assertEqual(
            self.audit.records,
            [
                (
                    "anonymous",
                    "api.post",
                    "/nowhere",
                    "refused",
                    {"method": "POST", "status": 404, "error": "NOT_FOUND"},
                )
            ],
        )
        code, headers, body = self.call("DELETE", "/read", "vw_viewer")
        self.assertEqual(code, 405)
        [allow] = headers.getRawHeaders(b"allow")
        self.assertEqual(sorted(allow.split(b", ")), [b"GET", b"HEAD"])

    def test_client_gone(self) -> None:
        """A request whose client has left is stopped (what it awaits is cancelled),
        neither answered nor audited."""
        d = self.http.request(
            "POST", "http://toy/things/slow", headers={b"authorization": [b"Bearer vw_operator"]}
        )
        self.http.flush()
        [call] = self.toy.calls
        call.request.connectionLost(Failure(ConnectionDone()))
        self.http.flush()
        # Cancelled (and the handler stopped there): it never added its "done".
        self.assertTrue(self.toy.pending.called)
        self.assertEqual(call.detail, {"thing": "slow"})
        self.assertEqual(self.audit.records, [])
        d.cancel()
        self.failureResultOf(d)


class ErrorTableTests(unittest.TestCase):
    def test_every_code_raised_has_a_status(self) -> None:
        """Every code raised in viworks/backend, by the domain (``DomainError``) or the
        API (``ApiError``, ``AuthenticationFailed(code=...)``), is in the table; so is
        JOB_<STATUS> for every job status (built from the job's status). The domain's
        codes keep the statuses they had: tests/backend/test_command_path.py."""
        pattern = re.compile(
            r'(?:DomainError|ApiError)\(\s*"([A-Z][A-Z_]*[A-Z])"|code="([A-Z][A-Z_]*[A-Z])"'
        )
        raised = set()
        for folder, _, names in os.walk(BACKEND):
            for name in names:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        raised |= {a or b for a, b in pattern.findall(f.read())}
        self.assertGreater(len(raised), 20)
        self.assertEqual(raised - set(STATUS), set())
        for status in JOB_STATUSES:
            self.assertEqual(STATUS["JOB_" + status.upper()], 409)

    def test_docs_list_every_code(self) -> None:
        """docs/api.md's error table gives every code of the table with its status."""
        with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
            text = f.read()
        section = text[text.index("## Errors") :]
        documented: dict[str, int] = {}
        for line in section.splitlines():
            match = re.match(r"\| (\d{3})[^|]*\| ([^|]+)\|", line)
            if match:
                for code in re.findall(r"`([A-Z_]+)`", match.group(2)):
                    documented[code] = int(match.group(1))
        self.assertEqual({c: documented.get(c) for c in STATUS}, dict(STATUS))
