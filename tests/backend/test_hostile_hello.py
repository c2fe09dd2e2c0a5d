"""A hostile agent's HELLO (issue 12): its schemas, its types and its text are attacker input.

In memory: real ``AgentSession``s (the fixtures of ``test_sessions``), a real ledger,
job runner, API (``StubTreq``) and SQLite store. The hostile agent is a WebSocket client
holding a valid identity that announces what it likes.
"""

from __future__ import annotations

import copy
import glob
import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import (
    eventAsJSON,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.trial import unittest

from tests.backend import test_sessions
from tests.backend.helpers import VERBS, json_call, wire
from tests.test_patterns import builtin_params
from viworks import logs, protocol
from viworks.backend import secrecy
from viworks.backend.model import AuditRecord
from viworks.backend.tokens import hash_token
from viworks.schema import MAX_VERBS

SECRET = "correct-horse-battery-9"
VIEWER = "vw_viewer"
OPERATOR = "vw_operator"

#: create_panel_user with its password announced as a plain string.
DOWNGRADED = copy.deepcopy(VERBS)
DOWNGRADED["create_panel_user"]["params"]["password"]["type"] = "string"

#: A verb no built-in table knows: only announcements say that "key" is secret.
ROTATE = {"params": {"key": {"type": "secret"}}, "description": "rotate a key"}
HONEST = {**VERBS, "rotate_key": ROTATE}
HOSTILE = {**DOWNGRADED, "rotate_key": {"params": {"key": {"type": "string"}}}}


class HostileHelloBase(unittest.TestCase):
    # The session fixtures of the AgentSession tests, without their tests.
    _base_setUp = test_sessions.AgentSessionTests._setUp
    session_factory = test_sessions.AgentSessionTests.session_factory
    connect = test_sessions.AgentSessionTests.connect
    flush = test_sessions.AgentSessionTests.flush
    until = test_sessions.AgentSessionTests.until
    store_until = test_sessions.AgentSessionTests.store_until
    command_row = test_sessions.AgentSessionTests.command_row
    assertClosed = test_sessions.AgentSessionTests.assertClosed
    _close_all = test_sessions.AgentSessionTests._close_all

    async def _setUp(self) -> None:
        await self._base_setUp()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        # Every line, debug included, must be clean.
        logs.set_log_level("debug")
        self.addCleanup(logs.set_log_level, "info")

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def hello(self, agent_id: str, verbs: dict, **fields: str) -> test_sessions.AgentClient:
        client = self.connect(agent_id)
        client.hello(agent_id, verbs, **fields)
        await self.until(lambda: client.of_type("welcome") or client.closed)
        return client

    async def audit_rows(self, action: str) -> list[AuditRecord]:
        await self.backend.audit.flush()
        return [r for r in await self.store.audit_records() if r.action == action]

    def log_lines(self) -> list[str]:
        """Our events as twistd's text log writes them."""
        return [
            formatEventAsClassicLogText(event) or ""
            for event in self.events
            if str(event.get("log_namespace", "")).startswith("viworks")
        ]


class PatternRefusalTests(HostileHelloBase):
    async def test_backtracking_pattern_refused_at_hello(self) -> None:
        """A HELLO whose pattern RE2 cannot run (lookahead) is answered with an error
        frame naming the verb and the parameter, closed 4001, logged and audited; the
        agent is not registered."""
        verbs = copy.deepcopy(VERBS)
        verbs["create_panel_user"]["params"]["username"]["pattern"] = "(?=a)([a-z]+)+!"
        client = await self.hello("gw-1", verbs)
        self.assertClosed(client, protocol.CLOSE_HELLO_REFUSED)
        [error] = client.of_type("error")
        self.assertEqual(error["code"], protocol.INVALID_FRAME)
        self.assertIn("verb 'create_panel_user': parameter 'username'", error["message"])
        self.assertIn("bad pattern", error["message"])
        self.assertEqual(len(self.registry), 0)
        self.assertIsNone(await self.store.get_agent("gw-1"))
        [row] = await self.audit_rows("connection.refused")
        detail = json.loads(row.detail)
        self.assertEqual((row.actor, row.outcome), ("gw-1", "refused"))
        self.assertEqual(detail["reason"], "invalid verb schema")
        self.assertEqual((detail["verb"], detail["param"]), ("create_panel_user", "username"))
        self.assertTrue(
            any("refused agent gw-1" in line and "'username'" in line for line in self.log_lines())
        )

    async def test_oversized_announcement_refused(self) -> None:
        """More verbs than MAX_VERBS: refused at HELLO (bounded cost), audited."""
        self.factory.setProtocolOptions(maxMessagePayloadSize=1 << 20, maxFramePayloadSize=1 << 20)
        client = await self.hello("gw-1", {f"v{i}": {"params": {}} for i in range(MAX_VERBS + 1)})
        self.assertClosed(client, protocol.CLOSE_HELLO_REFUSED)
        self.assertIn(f"more than {MAX_VERBS} verbs", client.of_type("error")[0]["message"])
        [row] = await self.audit_rows("connection.refused")
        self.assertEqual(json.loads(row.detail)["reason"], "invalid verb schema")


class SecretDowngradeTests(HostileHelloBase):
    """An agent announcing a secret as a plain string cannot have it stored or shown."""

    async def _setUp(self) -> None:
        await super()._setUp()
        await self.store.create_token("viewer", hash_token(VIEWER), 1.0, role="viewer")
        await self.store.create_token("operator", hash_token(OPERATOR), 1.0)
        self.api = self.backend.api()
        self.http = StubTreq(self.api.resource())

    async def call(self, method: str, path: str, body=None, token: str = OPERATOR):
        headers = {b"authorization": [f"Bearer {token}".encode()]}
        return await json_call(self.http, method, path, body, headers)

    async def assertSecretNowhere(self, paths: list[str]) -> None:
        """Not in the viewer's API answers, the database files, the audit log or the logs."""
        for path in paths:
            response, body = await self.call("GET", path, token=VIEWER)
            self.assertEqual(response.code, 200, body)
            self.assertNotIn(SECRET, json.dumps(body), path)
        await self.backend.audit.flush()
        self.assertNotIn(SECRET, repr(await self.store.audit_records()))
        for name in glob.glob(self.store.path + "*"):  # the database, its WAL
            with open(name, "rb") as f:
                self.assertNotIn(SECRET.encode(), f.read(), name)
        self.assertTrue(self.events)
        for event in self.events:
            self.assertNotIn(SECRET, formatEventAsClassicLogText(event) or "")
            self.assertNotIn(SECRET, eventAsJSON(event))

    def sent_password(self, client: test_sessions.AgentClient) -> list[str]:
        """What the agent was sent: the secret itself (it runs the verb)."""
        self.flush()
        return [f["args"]["password"] for f in client.of_type("command")]

    async def test_builtin_secret_kept_from_a_downgrading_agent(self) -> None:
        """create_panel_user.password is secret in the built-in verbs' canonical schema:
        a job and a single command to the agent announcing it as a string store and
        show "***" (the agent still gets the value it needs to run the verb)."""
        hostile = await self.hello("gw-2", DOWNGRADED)
        args = {"username": "alice", "password": SECRET}
        response, job = await self.call(
            "POST",
            "/api/v1/jobs",
            {"verb": "create_panel_user", "args": args, "selector": "site=test"},
        )
        self.assertEqual(response.code, 201, job)
        self.assertEqual(job["args"]["password"], "***")
        response, command = await self.call(
            "POST", "/api/v1/agents/gw-2/commands", {"verb": "create_panel_user", "args": args}
        )
        self.assertEqual(response.code, 201, command)
        self.assertEqual(command["args"], {"username": "alice", "password": "***"})
        await self.until(lambda: len(self.sent_password(hostile)) == 2)
        self.assertEqual(self.sent_password(hostile), [SECRET, SECRET])
        await self.assertSecretNowhere(
            [
                "/api/v1/commands",
                "/api/v1/commands?agent_id=gw-2",
                f"/api/v1/commands/{command['command_id']}",
                f"/api/v1/jobs/{job['job_id']}",
                "/api/v1/jobs",
            ]
        )

    async def test_secret_announced_by_any_agent_is_secret_for_all(self) -> None:
        """rotate_key.key, secret for one agent and a string for another, is redacted in
        a job to both and in a command to the downgrading one; after a restart the
        ledger learns it again from the agents in the store."""
        honest = await self.hello("gw-1", HONEST)
        hostile = await self.hello("gw-2", HOSTILE)
        args = {"key": SECRET}
        response, job = await self.call(
            "POST",
            "/api/v1/jobs",
            {"verb": "rotate_key", "args": args, "selector": "site=test", "concurrency": 2},
        )
        self.assertEqual(response.code, 201, job)
        response, command = await self.call(
            "POST", "/api/v1/agents/gw-2/commands", {"verb": "rotate_key", "args": args}
        )
        self.assertEqual((response.code, command["args"]), (201, {"key": "***"}))
        await self.until(lambda: len(hostile.of_type("command")) == 2)
        await self.until(lambda: len(honest.of_type("command")) == 1)
        await self.assertSecretNowhere(["/api/v1/commands", f"/api/v1/jobs/{job['job_id']}"])
        # Queued for the downgrading agent, offline; then a new process: nothing in memory,
        # the agents' last announcements in the store.
        hostile.dropConnection(abort=True)
        honest.dropConnection(abort=True)
        await self.until(lambda: self.registry.get("gw-2") is None)
        lost, _ = await self.ledger.submit("gw-2", "rotate_key", args)
        restarted = wire(self, self.store, self.clock, registry=self.registry)
        await restarted.commands.start()
        secrets = restarted.commands.secrets
        self.assertIn("key", secrets.of("rotate_key", HOSTILE["rotate_key"]["params"]))
        queued, _ = await restarted.ledger.submit("gw-2", "rotate_key", args)
        self.assertEqual(queued.args, {"key": "***"})
        # Its value is gone with the old process: it fails rather than run with "***".
        self.factory = self.session_factory(restarted)
        back = await self.hello("gw-2", HOSTILE)
        failed = await self.command_row(lost.command_id, "failed")
        self.assertEqual(failed.error["code"], "SECRETS_UNAVAILABLE")
        self.assertNotIn(lost.command_id, [f["command_id"] for f in back.of_type("command")])


class LogLineTests(HostileHelloBase):
    """Agent text cannot forge log lines or send terminal escapes."""

    FORGED = "\r\n2026-01-01T00:00:00+0000 [viworks.backend.sessions#info] agent gw-9 online"

    def assertClean(self, lines: list[str]) -> None:
        """No carriage return, escape or line separator; no line that starts like a
        log line of its own (twistd indents the continuation of a multi-line event)."""
        for line in lines:
            self.assertNotIn("\r", line)
            self.assertNotIn("\x1b", line)
            self.assertNotIn("\u2028", line)
            for continued in line.split("\n")[1:]:
                self.assertFalse(continued.startswith("2026-01-01"), repr(line))

    async def test_hello_and_error_text_escaped(self) -> None:
        """A HELLO version with CR LF and a fake line, a site with an ANSI colour and an
        error frame with both are logged escaped, each on its own single line."""
        client = await self.hello(
            "gw-1", VERBS, version="1.0" + self.FORGED + "\x1b[31m", site="t\x1b[2J\u2028x"
        )
        self.assertTrue(client.of_type("welcome"))
        client.send("error", code="BOOM\x1b[0m", message="failed" + self.FORGED)
        await self.until(lambda: any("BOOM" in line for line in self.log_lines()))
        lines = self.log_lines()
        self.assertClean(lines)
        [online] = [line for line in lines if "agent gw-1 online" in line]
        self.assertIn("version 1.0\\r\\n2026-01-01T00:00:00+0000 [viworks.backend", online)
        self.assertIn("\\x1b[31m", online)
        self.assertIn("site t\\x1b[2J\\u2028x", online)
        [error] = [line for line in lines if "BOOM" in line]
        self.assertIn("BOOM\\x1b[0m: failed\\r\\n2026", error)

    async def test_refused_hello_text_escaped(self) -> None:
        """The refusal of a HELLO naming another agent quotes that text escaped."""
        client = self.connect("gw-1")
        client.hello("gw-1\r\n2026-01-01 fake\x1b[31m")
        self.assertClosed(client, protocol.CLOSE_HELLO_REFUSED)
        lines = [line for line in self.log_lines() if "refused agent gw-1" in line]
        self.assertEqual(len(lines), 1)
        self.assertClean(lines)


class CanonicalSecretsTests(unittest.TestCase):
    def test_table_matches_the_gateway(self) -> None:
        """BUILTIN_SECRET_PARAMS names exactly the secret parameters of the gateway's
        built-in verbs (so the backend's canonical view cannot drift from them)."""
        declared = {
            verb: frozenset(n for n, spec in params.items() if spec["type"] == "secret")
            for verb, params in builtin_params(self).items()
        }
        self.assertEqual(
            {verb: names for verb, names in declared.items() if names},
            dict(secrecy.BUILTIN_SECRET_PARAMS),
        )

    def test_learning_is_bounded(self) -> None:
        """Announcements teach at most MAX_LEARNED new secret parameters (a hostile agent
        could invent names forever); the built-in ones and those learned stay."""
        secrets = secrecy.SecretParams()
        self.patch(secrecy, "MAX_LEARNED", 3)
        secrets.learn({"v": {"params": {f"p{i}": {"type": "secret"} for i in range(5)}}})
        self.assertEqual(secrets.of("v", {}), {"p0", "p1", "p2"})
        self.assertEqual(secrets.of("create_panel_user", {}), {"password"})
        self.assertEqual(secrets.of("v", {"own": {"type": "secret"}}), {"p0", "p1", "p2", "own"})
