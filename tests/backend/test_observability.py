"""GET /api/v1/events (Server-Sent Events with resume) and GET /metrics, over StubTreq."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend.helpers import (
    FakeSession,
    add_agent,
    result_fields,
    settled,
    sqlite_store,
    wire,
)
from tests.stack import eventually, poll
from viworks.backend.events import EventHub
from viworks.backend.jobspec import parse_job_spec
from viworks.backend.metrics import Metrics
from viworks.backend.registry import SessionRegistry
from viworks.backend.tokens import hash_token

TOKEN = "vw_test-token"
AUTH = {b"authorization": [f"Bearer {TOKEN}".encode()]}


def parse_sse(text: str) -> list[dict]:
    """SSE messages as dicts (id, event, data parsed as JSON); comments dropped."""
    messages = []
    for block in text.split("\n\n"):
        message: dict = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            field, _, value = line.partition(": ")
            message[field] = json.loads(value) if field == "data" else value
        if "event" in message:
            messages.append(message)
    return messages


class _Base(unittest.TestCase):
    metrics_token = ""

    async def _setUp(self):
        self.store = await sqlite_store(self)
        await self.store.create_token("tester", hash_token(TOKEN), 1.0)
        await add_agent(self.store)
        self.clock = Clock()
        self.clock.advance(2000)
        self.registry = SessionRegistry()
        self.hub = EventHub(history=5)
        self.backend = wire(self, self.store, self.clock, registry=self.registry, hub=self.hub)
        self.metrics, self.ledger = self.backend.metrics, self.backend.ledger
        self.api = self.backend.api(metrics_token=self.metrics_token)
        self.http = StubTreq(self.api.resource())

    def setUp(self):
        return Deferred.fromCoroutine(self._setUp())

    async def settle(self, d: Deferred):
        return await settled(self.http, d)

    async def get(self, path: str, headers=None) -> tuple[int, dict, str]:
        d = self.http.get("http://api" + path, headers=headers)
        d.addCallback(lambda r: r.text().addCallback(lambda t: (r.code, r.headers, t)))
        return await self.settle(d)


class EventsTests(_Base):
    def open_stream(self, query: str = "", last_event_id: str | None = None) -> Deferred:
        headers = dict(AUTH)
        if last_event_id is not None:
            headers[b"last-event-id"] = [last_event_id.encode()]
        d = self.http.get("http://api/api/v1/events" + query, headers=headers)
        d.addCallback(lambda r: r.text().addCallback(lambda t: (r, t)))
        return d

    async def close_stream(self, pending: Deferred) -> tuple:
        """End the stream from the backend's side (as on shutdown) and read all of it."""
        await eventually(lambda: self.http.flush() or self.api.streams.open)
        self.api.stop_streams()
        return await self.settle(pending)

    async def test_live_events(self):
        """Events published while a client follows arrive as SSE messages with hub ids."""
        listeners = list(self.hub._listeners)
        pending = self.open_stream()
        await eventually(lambda: self.http.flush() or self.api.streams.open)
        self.hub.publish("agent.online", {"agent_id": "gw-1"})
        session = FakeSession("gw-1")
        self.registry.register(session)
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        await self.ledger.on_ack(session, command.command_id)
        response, text = await self.close_stream(pending)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        messages = parse_sse(text)
        self.assertEqual(
            [m["event"] for m in messages],
            ["agent.online", "command.status", "command.status"],
        )
        self.assertEqual([m["data"]["status"] for m in messages[1:]], ["dispatched", "running"])
        ids = [int(m["id"]) for m in messages]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(messages[0]["data"], {"agent_id": "gw-1"})
        self.assertEqual(self.hub._listeners, listeners, "the stream unsubscribed")

    async def test_job_events_none_dropped(self):
        """A job's command statuses reach a follower with the job.progress events they
        cause (published while a status is being delivered), in id order, none dropped.
        (Delivered nested, a job.progress overtook its command.status, which the stream
        then skipped as older than the last id it had written.)"""
        pending = self.open_stream()
        await eventually(lambda: self.http.flush() or self.api.streams.open)
        session = FakeSession("gw-1")
        self.registry.register(session)
        jobs = self.backend.jobs
        job = await jobs.create(parse_job_spec({"verb": "ping", "selector": "id=gw-1"}))
        [frame] = session.commands()
        await self.ledger.on_ack(session, frame["command_id"])
        await self.ledger.on_result(session, result_fields(frame["command_id"]))
        await poll(lambda: jobs.describe(job["job_id"]), lambda j: j["status"] == "completed")
        _, text = await self.close_stream(pending)
        messages = parse_sse(text)
        ids = [int(m["id"]) for m in messages]
        self.assertEqual(ids, list(range(ids[0], ids[0] + len(ids))))
        self.assertEqual(
            [m["data"]["status"] for m in messages if m["event"] == "command.status"],
            ["dispatched", "running", "succeeded"],
        )
        self.assertEqual(messages[-1]["event"], "job.progress")
        self.assertEqual(messages[-1]["data"]["status"], "completed")

    async def test_resume_with_last_event_id(self):
        """Last-Event-ID replays the history after it, then live events follow."""
        for i in range(1, 4):
            self.hub.publish("agent.online", {"agent_id": f"gw-{i}"})
        pending = self.open_stream(last_event_id="1")
        await eventually(lambda: self.http.flush() or self.api.streams.open)
        self.hub.publish("agent.offline", {"agent_id": "gw-9"})
        _, text = await self.close_stream(pending)
        messages = parse_sse(text)
        self.assertEqual([m["id"] for m in messages], ["2", "3", "4"])
        self.assertEqual(messages[-1]["event"], "agent.offline")
        self.assertNotIn("events.gap", text)

    async def test_resume_past_history_reports_a_gap(self):
        """A resume point older than the bounded history (or from before a restart) says so."""
        for i in range(8):
            self.hub.publish("agent.online", {"agent_id": f"gw-{i}"})
        _, text = await self.close_stream(self.open_stream(last_event_id="1"))
        messages = parse_sse(text)
        self.assertEqual(messages[0]["event"], "events.gap")
        self.assertEqual(messages[0]["data"], {"after": 1, "first": 4, "last": 8})
        self.assertEqual([m["id"] for m in messages[1:]], ["4", "5", "6", "7", "8"])
        # A client that saw id 50 of an earlier process: a gap, then what there is now.
        _, text = await self.close_stream(self.open_stream(last_event_id="50"))
        self.assertEqual(parse_sse(text)[0]["event"], "events.gap")

    async def test_types_filter(self):
        """?types= keeps only the listed types; a trailing * matches a prefix."""
        self.hub.publish("agent.online", {"agent_id": "gw-1"})
        self.hub.publish("command.status", {"command_id": "c1", "status": "queued"})
        self.hub.publish("job.progress", {"job_id": "j1"})
        self.hub.publish("command.output", {"command_id": "c1", "seq": 0})
        _, text = await self.close_stream(self.open_stream("?types=job.progress,command.*", "0"))
        self.assertEqual(
            [m["event"] for m in parse_sse(text)],
            ["command.status", "job.progress", "command.output"],
        )

    async def test_keepalive_and_auth(self):
        """Idle streams get comment keep-alives; without a token the route is a JSON 401."""
        pending = self.open_stream()
        await eventually(lambda: self.http.flush() or self.api.streams.open)
        self.clock.advance(16)
        _, text = await self.close_stream(pending)
        self.assertIn(": keep-alive\n\n", text)
        code, _, body = await self.get("/api/v1/events")
        self.assertEqual((code, json.loads(body)["error"]["code"]), (401, "UNAUTHORIZED"))
        code, _, body = await self.get("/api/v1/events?types=", headers=AUTH)
        self.assertEqual(code, 400)


class MetricsTests(_Base):
    async def test_metrics_after_activity(self):
        """Commands, latencies, truncations and store timings show up under viworks_ names."""
        session = FakeSession("gw-1")
        self.registry.register(session)
        self.metrics.watch_sessions(self.registry)
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        cid = command.command_id
        await self.ledger.on_ack(session, cid)
        self.clock.advance(2.5)
        await self.ledger.on_result(session, result_fields(cid, stdout_truncated=True))
        code, headers, text = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        for line in (
            "viworks_agents_connected 1.0",
            'viworks_commands_total{status="succeeded",verb="ping"} 1.0',
            "viworks_command_dispatch_seconds_count 1.0",
            "viworks_command_execution_seconds_count 1.0",
            'viworks_command_execution_seconds_bucket{le="5.0"} 1.0',
            'viworks_output_truncations_total{stream="stdout"} 1.0',
        ):
            self.assertIn(line + "\n", text)
        self.assertIn('viworks_store_seconds_count{operation="transition"}', text)
        figures = dict(
            line.split(" ")
            for line in text.splitlines()
            if line.startswith(("viworks_store_transactions_total", "viworks_store_calls_total"))
        )
        self.assertEqual(
            float(figures["viworks_store_calls_total"]), self.store.batches.interactions
        )
        self.assertGreaterEqual(
            float(figures["viworks_store_calls_total"]),
            float(figures["viworks_store_transactions_total"]),
        )
        self.assertGreater(float(figures["viworks_store_transactions_total"]), 0)
        for name in (
            "viworks_sessions_opened_total",
            "viworks_sessions_refused_total",
            "viworks_reconnects_total",
            "viworks_handshakes_refused_total",
            "viworks_handshake_tokens_available",
            "viworks_frames_received_total",
            "viworks_frames_sent_total",
        ):
            self.assertIn(f"# TYPE {name.removesuffix('_total')}", text)
        names = {
            line.split("{")[0].split(" ")[0]
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        self.assertTrue(all(n.startswith("viworks_") for n in names), names)

    async def test_metrics_need_no_token_by_default(self):
        """Without [api] metrics_token, /metrics is open (it is on the loopback API port)."""
        code, _, text = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn("viworks_agents_connected", text)

    async def test_private_registries(self):
        """Two backends in one process keep separate counts (no global registry)."""
        a, b = Metrics(), Metrics()
        a.session_opened("gw-1")
        a.session_opened("gw-1")
        self.assertIn(b"viworks_reconnects_total 1.0", a.render())
        self.assertIn(b"viworks_reconnects_total 0.0", b.render())


class MetricsTokenTests(_Base):
    metrics_token = "scrape-secret"

    async def test_metrics_token_enforced(self):
        """With [api] metrics_token set, /metrics needs it as bearer token (API tokens do not)."""
        for headers in (None, AUTH, {b"authorization": [b"Bearer nope"]}):
            code, _, body = await self.get("/metrics", headers=headers)
            self.assertEqual((code, json.loads(body)["error"]["code"]), (401, "UNAUTHORIZED"))
        code, _, text = await self.get(
            "/metrics", headers={b"authorization": [b"Bearer scrape-secret"]}
        )
        self.assertEqual(code, 200)
        self.assertIn("viworks_commands", text)


class JSONLogTests(unittest.TestCase):
    def test_json_observer(self):
        """viworks.logs.json_observer (twistd --logger) writes one JSON object per line,
        with the ids as keys and the module's namespace."""
        import io
        import sys

        from twisted.logger import LogPublisher

        from viworks import logs

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        publisher = LogPublisher(logs.json_observer())
        logger = logs.Logger()
        logger.observer = publisher
        logger.info("command {command_id} for {agent_id}", command_id="c1", agent_id="gw-1")
        [line] = out.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual((event["command_id"], event["agent_id"]), ("c1", "gw-1"))
        self.assertEqual(event["log_namespace"], __name__)
