"""The OpenAPI description (viworks/backend/openapi.yaml) against the real API.

Every Klein route is described with the same methods and nothing else is; the document
is valid OpenAPI 3.1; real answers of the API (StubTreq over a real SQLite store), good
and bad, validate against the schemas it gives for their status codes.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend.helpers import (
    VERBS,
    FakeSession,
    add_agent,
    json_call,
    result_fields,
    settled,
    sqlite_store,
    wire,
)
from viworks.backend import openapi
from viworks.backend.api import BackendAPI
from viworks.backend.registry import SessionRegistry
from viworks.backend.tokens import hash_token

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENS = {"admin": "vw_admin-token", "viewer": "vw_viewer-token"}
BASE = "urn:viworks:openapi"
# Klein's branch=True route ("/ui/") adds a rule for everything under it, "/ui/<path:__rest__>".
_BRANCH_REST = "__rest__"


def described() -> dict[str, Any]:
    return openapi.description()


def routes() -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every rule of the API's Klein app (HEAD: werkzeug's own)."""
    found = set()
    for rule in BackendAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        path = path.replace("{" + _BRANCH_REST + "}", "{file}")
        found |= {(method, path) for method in rule.methods or () if method != "HEAD"}
    return found


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def response_schema(
    document: dict[str, Any], path: str, method: str, status: int, media: str
) -> str | None:
    """The JSON pointer of the schema of ``method path``'s answer ``status`` as ``media``
    (None: the description has no such answer), following a ``$ref`` to a shared response."""
    responses = document["paths"][path][method.lower()]["responses"]
    response = responses.get(str(status))
    if response is None:
        return None
    pointer = "/" + "/".join(
        map(_escape, ("paths", path, method.lower(), "responses", str(status)))
    )
    if "$ref" in response:
        pointer = response["$ref"][1:]
        response = document
        for segment in pointer.split("/")[1:]:
            response = response[segment.replace("~1", "/").replace("~0", "~")]
    if media not in response.get("content", {}):
        return None
    return pointer + "/content/" + _escape(media) + "/schema"


def parse_sse(stream: bytes) -> list[dict[str, Any]]:
    """The events of a Server-Sent Events stream: ``{"event", "data", "id"?}`` each (a
    block without data, e.g. ``retry:`` alone, is no event; comments are skipped)."""
    events = []
    for block in stream.decode("utf-8").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append({"event": fields.get("event", "message"), **fields})
    return events


def _parameter(document: dict[str, Any]) -> Any:
    """A function resolving a parameter's ``$ref`` (to components/parameters)."""

    def resolve(parameter: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in parameter:
            return document["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        return parameter

    return resolve


class DescriptionTests(unittest.TestCase):
    def test_valid_openapi_31(self) -> None:
        """The shipped description is a valid OpenAPI 3.1 document, and docs/openapi.yaml
        is that very file."""
        document = described()
        self.assertTrue(document["openapi"].startswith("3.1"))
        validate_openapi(document)
        self.assertEqual(
            os.path.realpath(os.path.join(ROOT, "docs", "openapi.yaml")),
            os.path.realpath(os.path.join(ROOT, "viworks", "backend", "openapi.yaml")),
        )

    def test_every_route_described(self) -> None:
        """Every route of the Klein app is in the description with the same methods, and the
        description has no route the app lacks."""
        document = described()
        spec = {
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "put", "post", "delete", "patch", "options", "head", "trace")
        }
        app = routes()
        self.assertEqual(sorted(app - spec), [], "routes missing from openapi.yaml")
        self.assertEqual(sorted(spec - app), [], "openapi.yaml describes routes the API lacks")
        self.assertIn(("GET", "/api/v1/openapi.json"), app)

    def test_operations_are_complete(self) -> None:
        """Each operation has an operationId (unique) and a summary, declares its path
        parameters, and says what its JSON answers hold."""
        document = described()
        ids = []
        for path, item in document["paths"].items():
            names = set(re.findall(r"\{([^}]+)\}", path))
            for method, operation in item.items():
                if method == "parameters":
                    continue
                where = f"{method.upper()} {path}"
                ids.append(operation["operationId"])
                self.assertTrue(operation.get("summary"), where)
                parameters = [*item.get("parameters", ()), *operation.get("parameters", ())]
                declared = {
                    p["name"] for p in map(_parameter(document), parameters) if p["in"] == "path"
                }
                self.assertEqual(names, declared, where)
                for status, response in operation["responses"].items():
                    content = response.get("content", {})
                    if "application/json" in content:
                        self.assertIn("schema", content["application/json"], (where, status))
        self.assertEqual(len(ids), len(set(ids)))


class ConformanceTests(unittest.TestCase):
    """Answers of the real API validate against the description."""

    async def _setUp(self) -> None:
        self.store = await sqlite_store(self)
        for role, token in TOKENS.items():
            await self.store.create_token(role, hash_token(token), 1.0, role=role)
        self.clock = Clock()
        self.clock.advance(2000)
        self.registry = SessionRegistry()
        backend = wire(self, self.store, self.clock, registry=self.registry)
        self.ledger = backend.ledger
        self.api = backend.api(rate_limit_per_token=1000.0, rate_limit_burst=1000)
        self.http = StubTreq(self.api.resource())
        self.document = described()
        self.registry_of_schemas = Registry().with_resource(
            BASE, DRAFT202012.create_resource(self.document)
        )

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = "admin"
    ) -> tuple[int, Any]:
        headers = {b"content-type": [b"application/json"]}
        if token is not None:
            headers[b"authorization"] = [f"Bearer {TOKENS[token]}".encode()]
        response, decoded = await json_call(self.http, method, path, body, headers)
        self.assertConforms(method, path, response.code, decoded)
        return response.code, decoded

    def assertConforms(self, method: str, path: str, status: int, body: Any) -> None:
        """``body`` (JSON) validates against the schema of ``status`` for the operation
        whose path template matches ``path``."""
        template = self._template(method, path.split("?")[0])
        pointer = response_schema(self.document, template, method, status, "application/json")
        self.assertIsNotNone(pointer, f"{method} {template}: {status} not described")
        assert pointer is not None
        errors = self._errors(pointer, body)
        self.assertEqual(errors, [], f"{method} {path} -> {status}: {json.dumps(body)[:500]}")

    def assertEventsConform(self, path: str, stream: bytes) -> list[dict[str, Any]]:
        """Each Server-Sent Event of ``stream`` (the answer of GET ``path``) validates
        against the description's event schema, its JSON data against the contentSchema
        of its type. Returns the events."""
        template = self._template("GET", path.split("?")[0])
        pointer = response_schema(self.document, template, "GET", 200, "text/event-stream")
        self.assertIsNotNone(pointer, f"GET {template}: no text/event-stream answer")
        schema = self._resolve(pointer)
        if "$ref" in schema:
            pointer = schema["$ref"][1:]
            schema = self._resolve(pointer)
        events = parse_sse(stream)
        self.assertTrue(events, stream)
        for event in events:
            self.assertEqual(self._errors(pointer, event), [], event)
            [branch] = [
                i
                for i, option in enumerate(schema["oneOf"])
                if option["properties"]["event"]["const"] == event["event"]
            ]
            content = f"{pointer}/oneOf/{branch}/properties/data/contentSchema"
            self.assertEqual(self._errors(content, json.loads(event["data"])), [], event)
        return events

    def _resolve(self, pointer: str) -> Any:
        node: Any = self.document
        for segment in pointer.split("/")[1:]:
            node = node[segment.replace("~1", "/").replace("~0", "~")]
        return node

    def _errors(self, pointer: str, instance: Any) -> list[str]:
        validator = Draft202012Validator(
            {"$ref": BASE + "#" + pointer},
            registry=self.registry_of_schemas,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]

    def _template(self, method: str, path: str) -> str:
        for template, item in self.document["paths"].items():
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            if method.lower() in item and re.fullmatch(pattern, path):
                return template
        raise AssertionError(f"no operation for {method} {path}")

    async def _command_finished(self, session: FakeSession) -> dict[str, Any]:
        code, command = await self.call(
            "POST",
            "/api/v1/agents/gw-1/commands",
            {"verb": "create_panel_user", "args": {"username": "alice", "password": "s3cret-pw"}},
        )
        self.assertEqual(code, 201)
        await self.ledger.on_ack(session, command["command_id"])
        await self.ledger.on_output(
            session,
            {"command_id": command["command_id"], "seq": 0, "stream": "stdout", "data": "hi\n"},
        )
        await self.ledger.on_result(session, result_fields(command["command_id"]))
        return command

    async def test_agents_commands_and_telemetry(self) -> None:
        """Agents (a page, one, its verbs, telemetry), commands (created, finished, listed,
        their output, cancelled) and their errors conform."""
        await self.store.upsert_agent_online(
            "gw-1",
            version="0.1.0",
            site="test",
            hostname="h1",
            protocol=2,
            verbs=VERBS,
            peer="tcp:127.0.0.1:5000",
            session_id="s1",
            labels={"role": "edge"},
            now=1000.0,
            cert_serial="1a",
            cert_not_after=2000.0 + 86400,
            signing="on",
        )
        await add_agent(self.store, "gw-2")
        session = FakeSession("gw-1")
        self.registry.register(session)
        await self.store.record_telemetry("gw-1", 1500.0, {"load": [0.1, 0.2, 0.3]})
        for path in (
            "/api/v1/agents",
            "/api/v1/agents?limit=1&offset=1&status=offline&selector=site=test",
            "/api/v1/agents/gw-1",
            "/api/v1/agents/gw-1/verbs",
            "/api/v1/agents/gw-1/telemetry",
            "/api/v1/agents/gw-1/telemetry/history?limit=5&since=0",
        ):
            self.assertEqual((await self.call("GET", path))[0], 200, path)
        command = await self._command_finished(session)
        command_id = command["command_id"]
        for path in (
            f"/api/v1/commands/{command_id}",
            f"/api/v1/commands/{command_id}/output?after=-1",
            "/api/v1/commands?agent_id=gw-1&status=succeeded&limit=5",
        ):
            self.assertEqual((await self.call("GET", path))[0], 200, path)
        code, queued = await self.call("POST", "/api/v1/agents/gw-2/commands", {"verb": "ping"})
        self.assertEqual(code, 201)
        cancel = f"/api/v1/commands/{queued['command_id']}/cancel"
        self.assertEqual((await self.call("POST", cancel))[0], 200)
        self.assertEqual((await self.call("POST", cancel))[0], 409)
        code, running = await self.call("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"})
        self.assertEqual(
            (await self.call("POST", f"/api/v1/commands/{running['command_id']}/cancel"))[0], 202
        )
        for method, path, body, status in (
            ("GET", "/api/v1/agents/nope", None, 404),
            ("GET", "/api/v1/agents/gw-2/telemetry", None, 404),
            ("GET", "/api/v1/agents?limit=0", None, 400),
            ("GET", "/api/v1/agents?selector=x", None, 400),
            ("GET", "/api/v1/commands?status=nope", None, 400),
            ("GET", "/api/v1/commands/nope", None, 404),
            ("GET", "/api/v1/commands/nope/output", None, 404),
            ("POST", "/api/v1/agents/gw-1/commands", {"verb": "nope"}, 422),
            ("POST", "/api/v1/agents/gw-1/commands", {"verb": "ping", "x": 1}, 400),
            ("POST", "/api/v1/agents/nope/commands", {"verb": "ping"}, 404),
        ):
            self.assertEqual((await self.call(method, path, body))[0], status, path)

    async def test_jobs(self) -> None:
        """A job created, listed, shown, paused, resumed and cancelled conforms, as do
        its errors."""
        await add_agent(self.store, "gw-1")
        code, job = await self.call(
            "POST",
            "/api/v1/jobs",
            {"verb": "ping", "selector": "site=test", "concurrency": "50%", "canary": 1},
        )
        self.assertEqual(code, 201)
        job_id = job["job_id"]
        for path in (
            "/api/v1/jobs",
            "/api/v1/jobs?status=running&limit=5",
            f"/api/v1/jobs/{job_id}",
        ):
            self.assertEqual((await self.call("GET", path))[0], 200, path)
        for action, status in (("pause", 200), ("pause", 409), ("resume", 200), ("cancel", 200)):
            code, _ = await self.call("POST", f"/api/v1/jobs/{job_id}/{action}")
            self.assertEqual(code, status, action)
        for method, path, body, status in (
            ("GET", "/api/v1/jobs/nope", None, 404),
            ("POST", "/api/v1/jobs/nope/cancel", None, 404),
            ("POST", f"/api/v1/jobs/{job_id}/explode", None, 404),
            ("POST", "/api/v1/jobs", {"verb": "ping", "selector": "site=nowhere"}, 422),
            ("POST", "/api/v1/jobs", {"verb": "ping"}, 400),
            ("GET", "/api/v1/jobs?status=nope", None, 400),
        ):
            self.assertEqual((await self.call(method, path, body))[0], status, path)

    async def test_console_audit_tokens_and_health(self) -> None:
        """Health, the session, the fleet, the audit log, tokens, certificate revocation
        and this description conform, as do 401 and 403 answers."""
        await add_agent(self.store, "gw-1")
        await self.store.record_certificate("gw-1", "1a", 900.0)
        for path in ("/health", "/api/v1/health"):
            self.assertEqual((await self.call("GET", path, token=None))[0], 200)
        for method, path, body in (
            ("GET", "/api/v1/session", None),
            ("GET", "/api/v1/fleet?cert_days=10", None),
            ("GET", "/api/v1/audit?limit=2", None),
            ("GET", "/api/v1/audit/verify?full=1", None),
            ("GET", "/api/v1/tokens", None),
            ("POST", "/api/v1/agents/gw-1/certificate/revoke", {"reason": "lost"}),
        ):
            self.assertEqual((await self.call(method, path, body))[0], 200, path)
        code, created = await self.call(
            "POST",
            "/api/v1/tokens",
            {"name": "ops", "role": "operator", "verbs": ["ping"], "sites": None},
        )
        self.assertEqual(code, 201)
        self.assertEqual((await self.call("DELETE", "/api/v1/tokens/ops"))[0], 200)
        for method, path, body, token, status in (
            ("DELETE", "/api/v1/tokens/ops", None, "admin", 409),
            ("DELETE", "/api/v1/tokens/nope", None, "admin", 404),
            ("POST", "/api/v1/tokens", {"name": "ops"}, "admin", 409),
            ("POST", "/api/v1/tokens", {"name": "-"}, "admin", 400),
            ("GET", "/api/v1/tokens", None, "viewer", 403),
            ("GET", "/api/v1/agents", None, None, 401),
            ("POST", "/api/v1/agents/gw-2/certificate/revoke", {}, "admin", 404),
            ("POST", "/api/v1/session", {"token": "vw_nope"}, None, 401),
            ("DELETE", "/api/v1/session", None, "admin", 400),
            ("GET", "/api/v1/audit?since=-1", None, "admin", 400),
        ):
            self.assertEqual((await self.call(method, path, body, token))[0], status, path)
        # Last: StubTreq keeps the session cookie for the requests after it.
        code, session = await self.call(
            "POST", "/api/v1/session", {"token": TOKENS["viewer"]}, token=None
        )
        self.assertEqual((code, session["via"]), (201, "cookie"))

    async def test_event_streams(self) -> None:
        """The live output of a command and the event stream (replayed from the hub's
        history, then ended as when the backend stops) hold only described events."""
        await add_agent(self.store, "gw-1")
        session = FakeSession("gw-1")
        self.registry.register(session)
        command = await self._command_finished(session)
        code, _ = await self.call("POST", "/api/v1/jobs", {"verb": "ping", "selector": "id=gw-1"})
        self.assertEqual(code, 201)
        path = f"/api/v1/commands/{command['command_id']}/output?follow=1"
        events = self.assertEventsConform(path, await self.stream(path))
        self.assertEqual([e["event"] for e in events], ["command.output", "command.status"])
        for path, last_event_id in (("/api/v1/events?after=0", None), ("/api/v1/events", b"99")):
            d = self.http.get(
                "http://api" + path,
                headers={
                    b"authorization": [f"Bearer {TOKENS['admin']}".encode()],
                    **({b"last-event-id": [last_event_id]} if last_event_id else {}),
                },
            )
            self.http.flush()
            self.api.stop_streams()
            response = await settled(self.http, d)
            body = await settled(self.http, response.content())
            types = {e["event"] for e in self.assertEventsConform(path, body)}
            expected = {"command.status", "command.output", "job.progress"}
            self.assertTrue(
                expected <= types if last_event_id is None else types == {"events.gap"}, types
            )

    async def stream(self, path: str) -> bytes:
        d = self.http.get(
            "http://api" + path, headers={b"authorization": [f"Bearer {TOKENS['admin']}".encode()]}
        )
        response = await settled(self.http, d)
        self.assertEqual(response.code, 200)
        return await settled(self.http, response.content())

    async def test_out_of_range_integers_refused(self) -> None:
        """Integers past what the store holds are a 400 naming the field, not a 500 (found
        by schemathesis): a resume point beyond 64 bits, job counts beyond 32 bits."""
        await add_agent(self.store, "gw-1")
        session = FakeSession("gw-1")
        self.registry.register(session)
        command = await self._command_finished(session)
        output = f"/api/v1/commands/{command['command_id']}/output"
        for query in (f"?after={2**63}", f"?after={-(2**63) - 1}&follow=1"):
            code, body = await self.call("GET", output + query)
            self.assertEqual((code, body["error"]["field"]), (400, "after"), query)
        code, body = await self.call("GET", output + f"?after={2**63 - 1}")
        self.assertEqual((code, body["chunks"]), (200, []))
        for field in ("canary", "concurrency", "max_errors"):
            job = {"verb": "ping", "selector": "id=gw-1", field: 2**31}
            code, body = await self.call("POST", "/api/v1/jobs", job)
            self.assertEqual((code, body["error"]["field"]), (400, field))
        job = {"verb": "ping", "selector": "id=gw-1", "concurrency": 2**31 - 1, "canary": 1}
        self.assertEqual((await self.call("POST", "/api/v1/jobs", job))[0], 201)

    async def test_undescribed_method(self) -> None:
        """A method a path does not take is a JSON 405 whose Allow header lists the ones it
        does (the methods the description gives, plus HEAD with GET)."""
        for method, path in (("PUT", "/api/v1/agents"), ("TRACE", "/api/v1/session")):
            d = self.http.request(method, "http://api" + path)
            response = await settled(self.http, d)
            body = json.loads(await settled(self.http, response.content()))
            self.assertEqual((response.code, body["error"]["code"]), (405, "METHOD_NOT_ALLOWED"))
            [allow] = response.headers.getRawHeaders(b"allow")
            described_methods = {m.upper() for m in self.document["paths"][path]} - {"PARAMETERS"}
            if "GET" in described_methods:
                described_methods.add("HEAD")
            self.assertEqual(set(allow.decode().split(", ")), described_methods)

    async def test_served_description(self) -> None:
        """GET /api/v1/openapi.json serves the description as JSON to any valid token (a
        viewer's too), and needs one."""
        code, body = await self.call("GET", "/api/v1/openapi.json", token="viewer")
        self.assertEqual((code, body), (200, described()))
        code, body = await self.call("GET", "/api/v1/openapi.json", token=None)
        self.assertEqual((code, body["error"]["code"]), (401, "UNAUTHORIZED"))

    async def test_console_files_and_metrics(self) -> None:
        """The console's files and the metrics page answer with a media type the
        description gives for that status."""
        for path, status in (
            ("/ui/", 200),
            ("/ui/index.html", 200),
            ("/ui/nope.js", 404),
            ("/metrics", 200),
        ):
            d = self.http.get("http://api" + path)
            response = await settled(self.http, d)
            self.assertEqual(response.code, status, path)
            media = response.headers.getRawHeaders(b"content-type")[0].decode().split(";")[0]
            template = self._template("GET", path)
            responses = self.document["paths"][template]["get"]["responses"][str(status)]
            if "$ref" in responses:
                responses = self.document["components"]["responses"][
                    responses["$ref"].rsplit("/", 1)[1]
                ]
            self.assertIn(media, responses["content"], path)
