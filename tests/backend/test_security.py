"""Roles, rate limits, flood control and the audit log (in memory, real SQLite store)."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.backend import test_sessions
from tests.backend.helpers import (
    FakeSession,
    add_agent,
    json_call,
    result_fields,
    sqlite_store,
    wire,
)
from tests.stack import poll
from viworks import protocol
from viworks.backend import auditchain, authz
from viworks.backend.api import BackendAPI
from viworks.backend.registry import SessionRegistry
from viworks.backend.tokens import hash_token

TOKENS = {
    "viewer": "vw_viewer",
    "operator": "vw_operator",
    "admin": "vw_admin",
    "pinger": "vw_pinger",  # operator limited to ping on site "test"
    "elsewhere": "vw_elsewhere",  # operator limited to site "other"
    "old": "vw_expired",
    "gone": "vw_revoked",
}


class RolesAndLimitsTests(unittest.TestCase):
    async def _setUp(self) -> None:
        self.store = await sqlite_store(self)
        create = self.store.create_token
        await create("viewer", hash_token(TOKENS["viewer"]), 1.0, role="viewer")
        await create("operator", hash_token(TOKENS["operator"]), 1.0)
        await create("admin", hash_token(TOKENS["admin"]), 1.0, role="admin")
        await create("pinger", hash_token(TOKENS["pinger"]), 1.0, verbs=["ping"], sites=["test"])
        await create("elsewhere", hash_token(TOKENS["elsewhere"]), 1.0, sites=["other"])
        await create("old", hash_token(TOKENS["old"]), 1.0, role="admin", expires_at=1500.0)
        await create("gone", hash_token(TOKENS["gone"]), 1.0, role="admin")
        await self.store.revoke_token("gone", 2.0)
        await add_agent(self.store)  # gw-1, site "test", verbs ping + create_panel_user
        self.clock = Clock()
        self.clock.advance(2000)
        self.registry = SessionRegistry()
        self.backend = wire(self, self.store, self.clock, registry=self.registry)
        self.ledger = self.backend.ledger
        self.api = self.backend.api(rate_limit_per_token=2.0, rate_limit_burst=3)
        self.http = StubTreq(self.api.resource())
        self.registry.register(FakeSession("gw-1"))

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def call(self, method, path, body=None, who="admin"):
        headers = {b"authorization": [f"Bearer {TOKENS.get(who, who)}".encode()]}
        return await json_call(self.http, method, path, body, headers)

    async def post_ping(self, who, verb="ping"):
        args = {} if verb == "ping" else {"username": "alice", "password": "s3cret-pw"}
        return await self.call(
            "POST", "/api/v1/agents/gw-1/commands", {"verb": verb, "args": args}, who
        )

    async def audit_rows(self, count):
        await self.api.audit.flush()
        rows = await self.store.audit_records()
        self.assertGreaterEqual(len(rows), count, rows)
        return rows

    def test_route_table(self):
        """The routes' declarations decide: GETs need viewer, commands/cancel operator,
        the rest admin (so does a path no route takes)."""
        required = BackendAPI.routes.required_role
        self.assertEqual(required("GET", "/api/v1/agents"), "viewer")
        self.assertEqual(required("POST", "/api/v1/agents/x/commands"), "operator")
        self.assertEqual(required("POST", "/api/v1/commands/c/cancel"), "operator")
        self.assertEqual(required("DELETE", "/api/v1/anything"), "admin")
        self.assertFalse(authz.role_allows("viewer", required("POST", "/api/v1/agents/x/commands")))
        self.assertTrue(authz.role_allows("admin", required("PUT", "/api/v1/whatever")))

    async def test_viewer_reads_but_cannot_run(self):
        """A viewer lists agents (200) but POSTing a command is a JSON 403 FORBIDDEN."""
        response, body = await self.call("GET", "/api/v1/agents", who="viewer")
        self.assertEqual(response.code, 200)
        response, body = await self.post_ping("viewer")
        self.assertEqual(response.code, 403)
        self.assertEqual(body["error"]["code"], "FORBIDDEN")
        self.assertEqual(await self.store.list_commands(), [])

    async def test_operator_and_admin_run(self):
        """An unlimited operator and an admin both create commands (201)."""
        for who in ("operator", "admin"):
            response, body = await self.post_ping(who)
            self.assertEqual(response.code, 201, body)

    async def test_operator_limited_to_verbs_and_sites(self):
        """A limited operator runs its verb on its site; another verb or site is 403,
        and so is cancelling a command whose verb it may not run."""
        response, _ = await self.post_ping("pinger")
        self.assertEqual(response.code, 201)
        response, body = await self.post_ping("pinger", verb="create_panel_user")
        self.assertEqual((response.code, body["error"]["code"]), (403, "FORBIDDEN"))
        self.assertIn("create_panel_user", body["error"]["message"])
        response, body = await self.post_ping("elsewhere")
        self.assertEqual((response.code, body["error"]["code"]), (403, "FORBIDDEN"))
        self.assertIn("site", body["error"]["message"])
        response, other = await self.post_ping("admin", verb="create_panel_user")
        response, body = await self.call(
            "POST", f"/api/v1/commands/{other['command_id']}/cancel", who="pinger"
        )
        self.assertEqual(response.code, 403)
        self.assertEqual(len(await self.store.list_commands()), 2)

    async def test_expired_and_revoked_tokens(self):
        """An expired or a revoked token is 401, even with the admin role."""
        for who, why in (("old", "expired"), ("gone", "revoked")):
            response, body = await self.call("GET", "/api/v1/agents", who=who)
            self.assertEqual(response.code, 401)
            self.assertEqual(body["error"]["code"], "UNAUTHORIZED")
            self.assertIn(why, body["error"]["message"])

    async def test_rate_limit(self):
        """Past its burst a token gets 429 RATE_LIMITED with Retry-After; others are not
        affected, and after waiting (Clock) it is served again."""
        for _ in range(3):
            response, _ = await self.call("GET", "/api/v1/agents", who="operator")
            self.assertEqual(response.code, 200)
        response, body = await self.call("GET", "/api/v1/agents", who="operator")
        self.assertEqual(response.code, 429)
        self.assertEqual(body["error"]["code"], "RATE_LIMITED")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        response, _ = await self.call("GET", "/api/v1/agents", who="viewer")
        self.assertEqual(response.code, 200)
        self.clock.advance(0.5)
        response, _ = await self.call("GET", "/api/v1/agents", who="operator")
        self.assertEqual(response.code, 200)

    async def test_changes_are_audited(self):
        """Every POST with a valid token is audited, refused ones too (who, route, status),
        without secrets; failed authentications in aggregate (api.refused, once the interval
        ends); so is a command's final outcome."""
        response, created = await self.post_ping("pinger")
        await self.post_ping("viewer")
        await self.post_ping("admin", verb="create_panel_user")
        await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"}, who="nobody")
        await self.call("POST", f"/api/v1/commands/{created['command_id']}/cancel", who="operator")
        self.clock.advance(self.api.auth_failures.interval)
        rows = await self.audit_rows(5)
        api = [r for r in rows if r.action in ("api.post", "api.refused")]
        self.assertEqual(
            [(r.actor, r.action, r.outcome) for r in api],
            [
                ("pinger", "api.post", "ok"),
                ("viewer", "api.post", "refused"),
                ("admin", "api.post", "ok"),
                ("operator", "api.post", "ok"),
                ("anonymous", "api.refused", "refused"),
            ],
        )
        self.assertEqual(
            [json.loads(r.detail).get("status") for r in api], [201, 403, 201, 202, None]
        )
        self.assertEqual(json.loads(api[4].detail)["count"], 1)
        self.assertEqual(api[0].target, "/api/v1/agents/gw-1/commands")
        self.assertEqual(json.loads(api[0].detail)["command_id"], created["command_id"])
        self.assertEqual(json.loads(api[1].detail)["error"], "FORBIDDEN")
        for row in rows:
            self.assertNotIn("s3cret-pw", row.detail or "")
        self.assertEqual(auditchain.verify_chain(rows), len(rows))
        # The command was dispatched, so the cancel was only requested: the ledger
        # audits the final status when the agent reports it.
        session = self.registry.get("gw-1")
        await self.ledger.on_result(
            session,
            result_fields(
                created["command_id"],
                status="cancelled",
                exit_code=None,
                result=None,
                stdout="",
                error={"code": "CANCELLED", "message": "stopped"},
            ),
        )
        await self.backend.audit.flush()
        final = [r for r in await self.store.audit_records() if r.action == "command.finished"]
        self.assertEqual([(r.actor, r.outcome) for r in final], [("gw-1", "cancelled")])
        self.assertEqual(final[0].target, f"command:{created['command_id']}")


class InMemorySessions:
    """The session fixtures of the AgentSession tests, without their tests."""

    _base_setUp = test_sessions.AgentSessionTests._setUp
    session_factory = test_sessions.AgentSessionTests.session_factory
    connect = test_sessions.AgentSessionTests.connect
    flush = test_sessions.AgentSessionTests.flush
    until = test_sessions.AgentSessionTests.until
    welcomed = test_sessions.AgentSessionTests.welcomed
    assertClosed = test_sessions.AgentSessionTests.assertClosed
    _close_all = test_sessions.AgentSessionTests._close_all

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())


class FloodTests(InMemorySessions, unittest.TestCase):
    """An agent sending beyond [backend] agent_frame_rate (in-memory sessions)."""

    async def _setUp(self) -> None:
        await self._base_setUp()
        # 5 frames/s, bursts of 10; more than 10 drops within 10 s disconnects.
        self.factory.frame_rate = 5.0
        self.factory.frame_burst = 10.0
        self.factory.flood_limit = 10

    async def test_flood_throttled_then_disconnected(self):
        """Frames beyond the rate are dropped with RATE_LIMITED errors; a steady sender is
        fine; one that keeps flooding is closed with 4005 "flood; retry-after=N", and
        the refusal is in the audit log."""
        client = await self.welcomed()
        # Within the rate: heartbeats every 0.5 s go through.
        for _ in range(6):
            self.clock.advance(0.5)
            client.send("heartbeat", ts=1.0)
            self.flush()
        self.assertEqual(client.error_codes(), [])
        # A burst: the bucket (about 10) empties, then each frame is dropped.
        for _ in range(15):
            client.send("heartbeat", ts=1.0)
        self.flush()
        dropped = client.error_codes().count(protocol.RATE_LIMITED)
        self.assertGreater(dropped, 0)
        self.assertTrue(client.live)
        # Keep flooding: past 10 drops in 10 s the session is closed.
        for _ in range(15):
            client.send("heartbeat", ts=1.0)
        self.flush()
        self.assertClosed(client, protocol.CLOSE_FLOOD)
        self.assertEqual(protocol.parse_retry_after(client.closed[1]), 60.0)
        self.assertTrue(client.closed[1].startswith("flood; retry-after="))
        await self.until(lambda: self.registry.get("gw-1") is None)
        await self.backend.audit.flush()
        [row] = [r for r in await self.store.audit_records() if r.action == "connection.refused"]
        self.assertEqual((row.actor, row.target, row.outcome), ("gw-1", "agent:gw-1", "refused"))
        self.assertEqual(json.loads(row.detail)["reason"], "flood")

    async def test_answers_to_commands_are_never_dropped(self):
        """ack and result frames for commands in flight do not count against the rate:
        a busy agent answering far more than its burst loses none of them (a dropped
        result would leave its command hanging until a reconnect)."""
        client = await self.welcomed()
        ids = [(await self.ledger.submit("gw-1", "ping", {}))[0].command_id for _ in range(15)]
        for command_id in ids:
            client.send("ack", command_id=command_id)
            client.send("result", **result_fields(command_id))
        self.flush()
        await self.until(
            lambda: set(ids) <= {f["command_id"] for f in client.of_type("result_ack")}
        )
        self.assertEqual(client.error_codes(), [])
        self.assertTrue(client.live)
        statuses = {(await self.store.get_command(c)).status for c in ids}
        self.assertEqual(statuses, {"succeeded"})
        # Other frames still spend the budget: a heartbeat burst is throttled, and so are
        # answers the agent no longer owes (a repeated ack or result).
        for _ in range(15):
            client.send("heartbeat", ts=1.0)
        self.flush()
        self.assertIn(protocol.RATE_LIMITED, client.error_codes())

    async def test_owed_answers_are_exempt_once(self):
        """Only the first ack and the first result of a command skip the budget: a flood
        of repeated answers for one command is throttled like any other frames."""
        client = await self.welcomed()
        command_id = (await self.ledger.submit("gw-1", "ping", {}))[0].command_id
        for _ in range(8):
            client.send("ack", command_id=command_id)
        for _ in range(8):
            client.send("result", **result_fields(command_id))
        self.flush()
        # The bucket had 9 tokens left after the HELLO; 16 frames, 2 of them exempt:
        # 14 counted, 5 dropped (the clock does not move: no refill).
        await self.until(lambda: client.of_type("result_ack"))
        self.assertEqual(client.error_codes().count(protocol.RATE_LIMITED), 5)
        self.assertTrue(client.live)
        self.assertEqual((await self.store.get_command(command_id)).status, "succeeded")

    async def test_revoked_serial_refused_at_handshake(self):
        """A certificate serial in the factory's revoked set is refused (403) at the
        upgrade and audited; another serial of the same agent is accepted."""
        self.factory.cert_serial = lambda transport, request: getattr(transport, "serial", None)
        self.factory.revoked_serials.add("abc")

        def connect_with(serial):
            # The serial rides on the transport, set when the session asks who it is.
            original = self.factory.identify

            def identify(transport, request):
                transport.serial = serial
                return original(transport, request)

            self.factory.identify = identify
            try:
                return self.connect("gw-1")
            finally:
                self.factory.identify = original

        refused = connect_with("abc")
        self.flush()
        self.assertEqual(refused.http_status_line.split()[1], "403")
        fresh = connect_with("def")
        fresh.hello()
        await self.until(lambda: fresh.of_type("welcome"))
        self.assertEqual((await self.store.get_agent("gw-1")).cert_serial, "def")
        await self.backend.audit.flush()
        reasons = [
            json.loads(r.detail)["reason"]
            for r in await self.store.audit_records()
            if r.action == "connection.refused"
        ]
        self.assertEqual(reasons, ["certificate revoked"])


class RefusalLogTests(InMemorySessions, unittest.TestCase):
    """What a hostile agent makes the backend log, within its frame budget."""

    async def _setUp(self) -> None:
        await self._base_setUp()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def test_refusals_within_the_budget_do_not_flood_the_log(self):
        """Hundreds of refused frames (output for unknown commands, bad frames, agent
        error reports) an agent sends within its rate make at most a burst of log
        lines per minute, then one line counting the rest."""
        client = await self.welcomed()
        for i in range(300):
            self.clock.advance(0.05)
            if i % 3 == 0:
                client.send("output", command_id=f"c{i}", seq=0, stream="stdout", data="x")
            elif i % 3 == 1:
                client.send("ack")  # no command_id: INVALID_FRAME
            else:
                client.send("error", code="X", message="y")
            self.flush()
        await self.until(lambda: len(client.error_codes()) >= 200)
        self.assertTrue(client.live)
        warnings = [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.warn and "gw-1" in formatEvent(e)
        ]
        self.assertLessEqual(len(warnings), 11, [formatEvent(e) for e in warnings])
        client.sendClose(1000)
        self.flush()
        await self.until(lambda: self.registry.get("gw-1") is None)
        summary = [formatEvent(e) for e in self.events if "left out of the log" in formatEvent(e)]
        self.assertEqual(len(summary), 1, summary)
        self.assertIn("290 more warnings caused by agent gw-1", summary[0])


class StolenCertificateTests(InMemorySessions, unittest.TestCase):
    """A second valid certificate for an agent id (in-memory sessions): every serial a
    handshake shows is recorded, and a takeover by another certificate is audited."""

    async def _setUp(self) -> None:
        await self._base_setUp()
        # The serial of the next connection's certificate (read at its upgrade).
        self.serial = "aaa"
        self.factory.cert_serial = lambda transport, request: self.serial

    async def with_serial(self, serial: str, hello: bool = True):
        self.serial = serial
        return await self.welcomed() if hello else self.connect()

    async def test_takeover_by_another_certificate_recorded_and_audited(self):
        """A second certificate taking over gw-1's session closes the first with 4002, is
        logged and audited as session.replaced with both serials; every certificate a
        handshake showed is recorded (even one that never said HELLO), and a reconnect
        with the same certificate is not audited as a takeover."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        legit = await self.with_serial("aaa")
        thief = await self.with_serial("bbb")
        self.assertClosed(legit, protocol.CLOSE_REPLACED)
        self.assertIs(self.registry.get("gw-1").connection, thief.server)
        await self.with_serial("ccc", hello=False)
        again = await self.with_serial("bbb")
        self.assertClosed(thief, protocol.CLOSE_REPLACED)
        self.assertIs(self.registry.get("gw-1").connection, again.server)
        seen = await poll(
            lambda: self.store.agent_certificates(agent_id="gw-1"), lambda rows: len(rows) == 3
        )
        self.assertEqual([c.serial for c in seen], ["aaa", "bbb", "ccc"])
        await self.backend.audit.flush()
        replaced = [
            (r.actor, r.target, json.loads(r.detail))
            for r in await self.store.audit_records()
            if r.action == "session.replaced"
        ]
        self.assertEqual(len(replaced), 1, replaced)
        actor, target, detail = replaced[0]
        self.assertEqual((actor, target), ("gw-1", "agent:gw-1"))
        self.assertEqual((detail["old_serial"], detail["new_serial"]), ("aaa", "bbb"))
        self.assertEqual(detail["old_session"], legit.server.session_id)
        self.assertEqual(detail["new_session"], thief.server.session_id)
        [line] = [
            formatEvent(e)
            for e in logged
            if "replaced by certificate" in (e.get("log_format") or "")
        ]
        self.assertIn("aaa", line)
        self.assertIn("bbb", line)
