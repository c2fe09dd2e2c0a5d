"""The HTTP API over a real SQLite store, driven with StubTreq and a fake agent session."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend.helpers import (
    FakeSession,
    add_agent,
    json_call,
    result_fields,
    settled,
    sqlite_store,
    wire,
)
from tests.stack import eventually
from viworks.backend.registry import SessionRegistry
from viworks.backend.tokens import hash_token

TOKEN = "vw_test-token"


class APITests(unittest.TestCase):
    async def _setUp(self):
        self.store = await sqlite_store(self)
        await self.store.create_token("tester", hash_token(TOKEN), 1.0)
        await add_agent(self.store)
        self.clock = Clock()
        self.clock.advance(2000)
        self.registry = SessionRegistry()
        self.backend = wire(self, self.store, self.clock, registry=self.registry)
        self.ledger = self.backend.ledger
        self.api = self.backend.api()
        self.http = StubTreq(self.api.resource())

    def setUp(self):
        return Deferred.fromCoroutine(self._setUp())

    async def call(self, method, path, body=None, token=TOKEN, raw=None, headers=None):
        headers = dict(headers or {})
        if token:
            headers[b"authorization"] = [f"Bearer {token}".encode()]
        response, decoded = await json_call(self.http, method, path, body, headers, raw)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return response.code, decoded

    def go_online(self, agent_id="gw-1") -> FakeSession:
        session = FakeSession(agent_id)
        self.registry.register(session)
        return session

    async def test_health_needs_no_token(self):
        """/health and /api/v1/health answer healthy with an RFC 3339 timestamp, without auth."""
        for path in ("/health", "/api/v1/health"):
            code, body = await self.call("GET", path, token=None)
            self.assertEqual(code, 200)
            self.assertEqual(body["status"], "healthy")
            self.assertRegex(body["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    async def test_auth_required(self):
        """Without a token, or with a wrong one, every other route is a JSON 401."""
        for token in (None, "wrong"):
            code, body = await self.call("GET", "/api/v1/agents", token=token)
            self.assertEqual(code, 401)
            self.assertEqual(body["error"]["code"], "UNAUTHORIZED")

    async def test_agents(self):
        """Agents are listed with the contract fields; offline unless a live session exists."""
        code, body = await self.call("GET", "/api/v1/agents")
        self.assertEqual(code, 200)
        [agent] = body["agents"]
        self.assertEqual(agent["agent_id"], "gw-1")
        self.assertEqual(agent["status"], "offline")
        self.assertEqual(agent["verbs"], ["create_panel_user", "ping"])
        for key in ("version", "site", "hostname", "connected_at", "last_seen", "peer"):
            self.assertIn(key, agent)
        self.go_online()
        code, agent = await self.call("GET", "/api/v1/agents/gw-1")
        self.assertEqual((code, agent["status"]), (200, "online"))

    async def test_agent_not_found(self):
        """An unknown agent is a 404 with code AGENT_NOT_FOUND."""
        code, body = await self.call("GET", "/api/v1/agents/nope")
        self.assertEqual((code, body["error"]["code"]), (404, "AGENT_NOT_FOUND"))

    async def test_verbs(self):
        """The verbs route returns the schemas the agent announced."""
        code, body = await self.call("GET", "/api/v1/agents/gw-1/verbs")
        self.assertEqual(code, 200)
        self.assertEqual(body["verbs"]["create_panel_user"]["params"]["password"]["type"], "secret")

    async def test_unknown_route(self):
        """Unknown paths get a JSON 404, not an HTML page."""
        code, body = await self.call("GET", "/api/v1/nothing-here")
        self.assertEqual(code, 404)
        self.assertIn("code", body["error"])

    async def test_queued_while_offline_then_delivered(self):
        """A command for an offline agent is queued (201) and delivered when it comes back."""
        code, command = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
        self.assertEqual((code, command["status"]), (201, "queued"))
        session = self.go_online()
        sent = await self.backend.commands.dispatcher.deliver_pending(session)
        self.assertEqual(sent, 1)
        [frame] = session.commands()
        self.assertEqual(frame["command_id"], command["command_id"])
        code, stored = await self.call("GET", f"/api/v1/commands/{command['command_id']}")
        self.assertEqual(stored["status"], "dispatched")
        self.assertIsNotNone(stored["dispatched_at"])

    async def test_online_dispatch_and_secret_redaction(self):
        """An online agent gets the real args; the stored and returned args are redacted."""
        session = self.go_online()
        code, command = await self.call(
            "POST",
            "/api/v1/agents/gw-1/commands",
            {"verb": "create_panel_user", "args": {"username": "alice", "password": "s3cret-pw!"}},
        )
        self.assertEqual((code, command["status"]), (201, "dispatched"))
        self.assertEqual(command["args"], {"username": "alice", "password": "***"})
        [frame] = session.commands()
        self.assertEqual(frame["args"]["password"], "s3cret-pw!")
        code, listed = await self.call("GET", "/api/v1/commands?agent_id=gw-1")
        self.assertNotIn("s3cret-pw!", json.dumps(listed))

    async def test_unknown_verb(self):
        """An unknown verb is a 422 UNKNOWN_VERB and creates nothing."""
        code, body = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "rm_rf"})
        self.assertEqual(
            (code, body["error"]["code"], body["error"]["field"]), (422, "UNKNOWN_VERB", "verb")
        )
        code, listed = await self.call("GET", "/api/v1/commands")
        self.assertEqual(listed["commands"], [])

    async def test_invalid_args(self):
        """Bad args are a 422 INVALID_ARGS naming the field, and nothing is sent or stored."""
        session = self.go_online()
        for args, field in (
            ({"username": "a", "password": "longenough"}, "username"),
            ({"username": "alice"}, "password"),
            ({"username": "alice", "password": "longenough", "x": 1}, "x"),
        ):
            code, body = await self.call(
                "POST", "/api/v1/agents/gw-1/commands", {"verb": "create_panel_user", "args": args}
            )
            self.assertEqual((code, body["error"]["code"]), (422, "INVALID_ARGS"))
            self.assertEqual(body["error"]["field"], field)
        self.assertEqual(session.sent, [])
        code, listed = await self.call("GET", "/api/v1/commands")
        self.assertEqual(listed["commands"], [])

    async def test_bad_requests(self):
        """Malformed bodies, bad timeouts and bad query values get clear 400/422 errors."""
        path = "/api/v1/agents/gw-1/commands"
        code, body = await self.call("POST", path, raw=b"{not json")
        self.assertEqual((code, body["error"]["code"]), (400, "BAD_REQUEST"))
        code, body = await self.call("POST", path, raw=b"[1]")
        self.assertEqual(code, 400)
        code, body = await self.call("POST", path, {"verb": "ping", "timeout": -1})
        self.assertEqual((code, body["error"]["field"]), (422, "timeout"))
        code, body = await self.call("POST", path + "?wait=abc", {"verb": "ping"})
        self.assertEqual((code, body["error"]["field"]), (400, "wait"))
        code, body = await self.call("GET", "/api/v1/commands?status=bogus")
        self.assertEqual((code, body["error"]["field"]), (400, "status"))
        code, body = await self.call("GET", "/api/v1/commands/nope")
        self.assertEqual((code, body["error"]["code"]), (404, "COMMAND_NOT_FOUND"))

    async def test_wait_returns_result(self):
        """?wait holds the response until the agent's result arrives, then answers 200."""
        session = self.go_online()
        pending = Deferred.fromCoroutine(
            self.call("POST", "/api/v1/agents/gw-1/commands?wait=30", {"verb": "ping"})
        )
        await eventually(lambda: session.commands())
        [frame] = session.commands()
        await self.ledger.on_ack(session, frame["command_id"])
        await self.ledger.on_result(session, result_fields(frame["command_id"]))
        code, command = await pending
        self.assertEqual((code, command["status"]), (200, "succeeded"))
        self.assertEqual(command["result"], {"ok": True})
        self.assertIsNotNone(command["started_at"])
        self.assertIsNotNone(command["finished_at"])

    async def test_wait_runs_out(self):
        """When the wait runs out first, the answer is 202 with the command as it stands."""
        session = self.go_online()
        pending = Deferred.fromCoroutine(
            self.call("POST", "/api/v1/agents/gw-1/commands?wait=5", {"verb": "ping"})
        )
        await eventually(lambda: session.commands())
        self.clock.advance(5)
        code, command = await pending
        self.assertEqual((code, command["status"]), (202, "dispatched"))

    async def test_duplicate_result_ignored(self):
        """A second result for a finished command changes nothing."""
        session = self.go_online()
        _, command = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
        await self.ledger.on_result(session, result_fields(command["command_id"]))
        await self.ledger.on_result(
            session, result_fields(command["command_id"], status="failed", exit_code=9)
        )
        _, stored = await self.call("GET", f"/api/v1/commands/{command['command_id']}")
        self.assertEqual((stored["status"], stored["exit_code"]), ("succeeded", 0))

    async def test_result_from_another_agent_refused(self):
        """An agent cannot report on another agent's command."""
        await add_agent(self.store, "gw-2")
        self.go_online()
        intruder = FakeSession("gw-2")
        self.registry.register(intruder)
        _, command = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
        await self.ledger.on_result(intruder, result_fields(command["command_id"]))
        _, stored = await self.call("GET", f"/api/v1/commands/{command['command_id']}")
        self.assertEqual(stored["status"], "dispatched")
        self.assertEqual(
            [f["code"] for f in intruder.sent if f.type == "error"], ["UNKNOWN_COMMAND"]
        )

    async def test_list_filters(self):
        """Commands can be filtered by agent and status, newest first, with a limit."""
        ids = []
        for _ in range(3):
            self.clock.advance(1)
            _, command = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
            ids.append(command["command_id"])
        _, body = await self.call("GET", "/api/v1/commands?agent_id=gw-1&status=queued&limit=2")
        self.assertEqual([c["command_id"] for c in body["commands"]], ids[::-1][:2])
        _, body = await self.call("GET", "/api/v1/commands?agent_id=other")
        self.assertEqual(body["commands"], [])

    async def test_idempotency_key(self):
        """The same Idempotency-Key from the same token returns the same command (200)."""
        path, body = "/api/v1/agents/gw-1/commands", {"verb": "ping"}
        key = {b"idempotency-key": [b"deploy-42"]}
        code, first = await self.call("POST", path, body, headers=key)
        self.assertEqual(code, 201)
        code, again = await self.call("POST", path, body, headers=key)
        self.assertEqual((code, again["command_id"]), (200, first["command_id"]))
        _, listed = await self.call("GET", "/api/v1/commands")
        self.assertEqual(len(listed["commands"]), 1)

    async def test_idempotency_conflict(self):
        """The same key with a different body is a 409 IDEMPOTENCY_CONFLICT; nothing is created."""
        path, key = "/api/v1/agents/gw-1/commands", {b"idempotency-key": [b"k1"]}
        await self.call("POST", path, {"verb": "ping"}, headers=key)
        code, body = await self.call("POST", path, {"verb": "ping", "ttl": 5}, headers=key)
        self.assertEqual((code, body["error"]["code"]), (409, "IDEMPOTENCY_CONFLICT"))
        _, listed = await self.call("GET", "/api/v1/commands")
        self.assertEqual(len(listed["commands"]), 1)

    async def test_idempotency_scoped_to_token(self):
        """Another token using the same key gets its own command."""
        await self.store.create_token("other", hash_token("vw_other"), 1.0)
        path, key = "/api/v1/agents/gw-1/commands", {b"idempotency-key": [b"k1"]}
        _, first = await self.call("POST", path, {"verb": "ping"}, headers=key)
        code, second = await self.call(
            "POST", path, {"verb": "ping"}, token="vw_other", headers=key
        )
        self.assertEqual(code, 201)
        self.assertNotEqual(first["command_id"], second["command_id"])

    async def test_ttl(self):
        """ttl sets expires_at; a bad ttl is a 422 naming the field."""
        path = "/api/v1/agents/gw-1/commands"
        code, command = await self.call("POST", path, {"verb": "ping", "ttl": 30})
        self.assertEqual(code, 201)
        self.assertEqual(command["expires_at"], "1970-01-01T00:33:50.000Z")
        code, body = await self.call("POST", path, {"verb": "ping", "ttl": 0})
        self.assertEqual((code, body["error"]["field"]), (422, "ttl"))

    async def test_history_in_command(self):
        """GET of one command includes its recorded status history."""
        self.go_online()
        _, command = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
        _, body = await self.call("GET", f"/api/v1/commands/{command['command_id']}")
        self.assertEqual([e["status"] for e in body["events"]], ["queued", "dispatched"])

    async def start_running(self) -> tuple[FakeSession, dict]:
        """An online agent running a ping (acknowledged)."""
        session = self.go_online()
        _, command = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
        await self.ledger.on_ack(session, command["command_id"])
        return session, command

    async def output(self, session, command_id, seq, data, stream="stdout"):
        await self.ledger.on_output(
            session, {"command_id": command_id, "seq": seq, "stream": stream, "data": data}
        )

    async def test_cancel_queued(self):
        """Cancelling a queued command finishes it at once (200, cancelled); it is never sent."""
        _, command = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
        code, body = await self.call("POST", f"/api/v1/commands/{command['command_id']}/cancel")
        self.assertEqual((code, body["status"]), (200, "cancelled"))
        session = self.go_online()
        self.assertEqual(await self.backend.commands.dispatcher.deliver_pending(session), 0)

    async def test_cancel_running(self):
        """Cancelling a running command asks its agent (202); the agent's result says cancelled."""
        session, command = await self.start_running()
        cid = command["command_id"]
        code, body = await self.call("POST", f"/api/v1/commands/{cid}/cancel")
        self.assertEqual((code, body["status"]), (202, "running"))
        self.assertEqual(session.sent[-1].type, "cancel")
        await self.ledger.on_result(session, result_fields(cid, status="cancelled"))
        _, body = await self.call("GET", f"/api/v1/commands/{cid}")
        self.assertEqual(body["status"], "cancelled")
        code, body = await self.call("POST", f"/api/v1/commands/{cid}/cancel")
        self.assertEqual((code, body["error"]["code"]), (409, "ALREADY_FINISHED"))

    async def test_cancel_delivered_on_reconnect(self):
        """A cancel asked while the agent was away is sent when it comes back."""
        session, command = await self.start_running()
        self.registry.unregister(session)
        await self.call("POST", f"/api/v1/commands/{command['command_id']}/cancel")
        again = self.go_online()
        await self.backend.commands.dispatcher.deliver_pending(again)
        self.assertEqual([f["command_id"] for f in again.sent if f.type == "cancel"],
                         [command["command_id"]])  # fmt: skip

    async def test_output_so_far(self):
        """While a command runs, GET shows its output so far and /output lists the chunks."""
        session, command = await self.start_running()
        cid = command["command_id"]
        await self.output(session, cid, 0, "hello ")
        await self.output(session, cid, 1, "world\n")
        await self.output(session, cid, 1, "world\n")  # a replayed chunk is ignored
        _, body = await self.call("GET", f"/api/v1/commands/{cid}")
        self.assertEqual(body["stdout"], "hello world\n")
        _, body = await self.call("GET", f"/api/v1/commands/{cid}/output")
        self.assertEqual([c["seq"] for c in body["chunks"]], [0, 1])

    async def test_follow_output(self):
        """?follow=1 streams Server-Sent Events: backlog, live chunks, then the final status."""
        session, command = await self.start_running()
        cid = command["command_id"]
        await self.output(session, cid, 0, "early\n")
        response = self.http.get(
            f"http://api/api/v1/commands/{cid}/output?follow=1",
            headers={b"authorization": [f"Bearer {TOKEN}".encode()]},
        )
        await self.output(session, cid, 1, "late\n")
        await self.ledger.on_result(session, result_fields(cid))
        text = await self.finish_stream(response)
        self.assertEqual(
            [line for line in text.splitlines() if line.startswith(("id:", "event:"))],
            ["id: 0", "event: command.output", "id: 1", "event: command.output",
             "event: command.status"],
        )  # fmt: skip
        self.assertIn('"status":"succeeded"', text)

    async def test_follow_resumes_after_last_event_id(self):
        """A follower reconnecting with Last-Event-ID gets only what came after it."""
        session, command = await self.start_running()
        cid = command["command_id"]
        for seq in range(3):
            await self.output(session, cid, seq, f"line {seq}\n")
        await self.ledger.on_result(session, result_fields(cid))
        response = self.http.get(
            f"http://api/api/v1/commands/{cid}/output?follow=1",
            headers={
                b"authorization": [f"Bearer {TOKEN}".encode()],
                b"last-event-id": [b"1"],
            },
        )
        text = await self.finish_stream(response)
        self.assertIn("line 2", text)
        self.assertNotIn("line 1", text)

    async def finish_stream(self, pending) -> str:
        return await settled(self.http, pending.addCallback(lambda r: r.text()))

    async def test_telemetry(self):
        """The latest telemetry and a bounded history are served per agent."""
        code, body = await self.call("GET", "/api/v1/agents/gw-1/telemetry")
        self.assertEqual((code, body["error"]["code"]), (404, "NO_TELEMETRY"))
        for i in range(3):
            await self.store.record_telemetry("gw-1", 100.0 + i, {"load": i})
        code, body = await self.call("GET", "/api/v1/agents/gw-1/telemetry")
        self.assertEqual((code, body["metrics"]), (200, {"load": 2}))
        _, body = await self.call("GET", "/api/v1/agents/gw-1/telemetry/history?limit=2")
        self.assertEqual([h["metrics"]["load"] for h in body["history"]], [2, 1])
