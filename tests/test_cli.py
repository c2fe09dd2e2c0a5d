"""The operator CLI against a fake HTTP API (a loopback stdlib server in a thread).

The fake answers canned JSON and Server-Sent Events and records every request, so
these tests pin the CLI's side of the API contract (agents, run with live output,
jobs, commands, telemetry), its tables, ``--json``, exit codes and completion.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.trial import unittest

from viworks import cli
from viworks.cli import completion, terminal
from viworks.cli.parser import build_parser

AGENTS = {
    "agents": [
        {
            "agent_id": "gw-1",
            "status": "online",
            "site": "prod",
            "labels": {"role": "edge", "region": "eu"},
            "version": "0.1.0",
            "hostname": "host-1",
            "last_seen": "2025-01-01T00:00:00.000Z",
            "verbs": ["echo", "ping"],
        },
        {
            "agent_id": "gw-2",
            "status": "offline",
            "site": "prod",
            "labels": {},
            "version": "0.1.0",
            "hostname": "host-2",
            "last_seen": None,
            "verbs": ["echo", "ping"],
        },
    ]
}
VERBS = {"agent_id": "gw-1", "verbs": {"echo": {"params": {"n": {"type": "integer"}}}}}


def command(status: str = "queued", **extra: Any) -> dict:
    body = {
        "command_id": "c1",
        "agent_id": "gw-1",
        "verb": "echo",
        "args": {"n": 3},
        "status": status,
        "exit_code": None,
        "result": None,
        "stdout": "",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "error": None,
        "created_at": "2025-01-01T00:00:00.000Z",
    }
    body.update(extra)
    return body


def sse(event: str, data: Any, event_id: Any = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def job(status: str, statuses: list[str]) -> dict:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return {
        "job_id": "j1",
        "status": status,
        "verb": "echo",
        "selector": "site=prod",
        "counts": counts,
        "commands": [
            {"agent_id": f"gw-{i + 1}", "command_id": f"c{i + 1}", "status": s}
            for i, s in enumerate(statuses)
        ],
    }


class FakeAPI:
    """Routes: (METHOD, path) -> fn(request) returning (status, json) or a list of SSE chunks.

    A chunk may be a float (sleep that long) or a callable (called; e.g. to interrupt).
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Callable[[dict], Any]] = {}
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = {
                    "method": self.command,
                    "path": url.path,
                    "query": dict(urllib.parse.parse_qsl(url.query)),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": json.loads(raw) if raw else None,
                }
                api.requests.append(request)
                route = api.routes.get((self.command, url.path))
                if route is None:
                    answer: Any = (404, {"error": {"code": "NOT_FOUND", "message": "no route"}})
                else:
                    answer = route(request)
                if isinstance(answer, tuple):
                    status, body = answer
                    data = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for chunk in answer:
                    if isinstance(chunk, float):
                        time.sleep(chunk)
                    elif callable(chunk):
                        chunk()
                    else:
                        self.wfile.write(chunk)
                        self.wfile.flush()

            do_GET = do_POST = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def json(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.routes[(method, path)] = lambda request: (status, body)

    def sequence(self, method: str, path: str, bodies: list[Any]) -> None:
        """Answer each call with the next body (the last one repeats)."""
        answers = list(bodies)

        def answer(request: dict) -> Any:
            body = answers.pop(0) if len(answers) > 1 else answers[0]
            return body if isinstance(body, (tuple, list)) else (200, body)

        self.routes[(method, path)] = answer

    def called(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if (r["method"], r["path"]) == (method, path)]


class CLITestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.api = FakeAPI()
        self.addCleanup(self.api.close)
        self.patch(terminal, "stdin_is_tty", lambda: False)

    def viworks(self, *argv: str) -> tuple[int, str, str]:
        """Run the CLI in-process against the fake API: (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            code = cli.main([*argv, "--url", self.api.url, "--token", "t0k"])
        finally:
            self.patch(sys, "stdout", sys.__stdout__)
            self.patch(sys, "stderr", sys.__stderr__)
        return code, out.getvalue(), err.getvalue()


class AgentsTests(CLITestCase):
    def test_table_and_json(self):
        """`agents` prints a table with labels; --json prints the API's JSON as it is."""
        self.api.json("GET", "/api/v1/agents", AGENTS)
        code, out, _ = self.viworks("agents")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:4], ["AGENT", "STATUS", "SITE", "LABELS"])
        self.assertIn("region=eu,role=edge", lines[1])
        self.assertRegex(lines[2], r"^gw-2\s+offline\s+prod\s+-")
        code, out, _ = self.viworks("agents", "--json")
        self.assertEqual((code, json.loads(out)), (0, AGENTS))
        self.assertEqual(self.api.requests[0]["headers"]["authorization"], "Bearer t0k")

    def test_selector(self):
        """--selector is passed to the API (a dry run of what a job would target)."""
        self.api.json("GET", "/api/v1/agents", AGENTS)
        self.viworks("agents", "--selector", "site=prod,role=edge|core")
        self.assertEqual(self.api.requests[0]["query"], {"selector": "site=prod,role=edge|core"})

    def test_bad_selector_is_an_api_error(self):
        """A 400 from the API (malformed selector) exits 3 with the API's message."""
        error = {"error": {"code": "BAD_SELECTOR", "message": "bad term 'x'", "field": "selector"}}
        self.api.json("GET", "/api/v1/agents", error, status=400)
        code, out, err = self.viworks("agents", "--selector", "x")
        self.assertEqual((code, out), (3, ""))
        self.assertIn("BAD_SELECTOR: bad term 'x' (field: selector)", err)

    def test_watch_until_ctrl_c(self):
        """--watch redraws every interval; Ctrl-C ends it with exit code 0."""
        self.api.json("GET", "/api/v1/agents", AGENTS)
        sleeps = []

        def sleep(seconds):
            sleeps.append(seconds)
            if len(sleeps) == 2:
                raise KeyboardInterrupt

        self.patch(terminal, "sleep", sleep)
        code, out, _ = self.viworks("agents", "--watch")
        self.assertEqual(code, 0)
        self.assertEqual(sleeps, [2.0, 2.0])
        self.assertEqual(out.count("1/2 online"), 2)
        self.assertEqual(len(self.api.called("GET", "/api/v1/agents")), 2)

    def test_no_token(self):
        """Without a token: a usage error (2), and no request is made."""
        self.patch(os, "environ", {})
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(cli.main(["agents", "--url", self.api.url]), 2)
        self.assertIn("no API token", err.getvalue())

    def test_unreachable(self):
        """An API that cannot be reached: exit code 3."""
        self.api.close()
        code, _, err = self.viworks("agents")
        self.assertEqual(code, 3)
        self.assertIn("cannot reach the API", err)


class RunTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.api.json("GET", "/api/v1/agents/gw-1/verbs", VERBS)
        self.api.json("POST", "/api/v1/agents/gw-1/commands", command(), status=201)
        self.follow = "/api/v1/commands/c1/output"

    def test_streams_output_then_status(self):
        """`run` posts without waiting, prints output chunks as they come, then the result."""
        final = command("succeeded", exit_code=0, result={"echoed": 3}, stdout="hello\nworld\n")
        self.api.routes[("GET", self.follow)] = lambda request: [
            sse("command.output", {"seq": 0, "stream": "stdout", "data": "hello\n"}, 0),
            0.05,
            sse("command.output", {"seq": 1, "stream": "stderr", "data": "careful\n"}, 1),
            sse("command.output", {"seq": 2, "stream": "stdout", "data": "world\n"}, 2),
            sse("command.status", final),
        ]
        code, out, err = self.viworks("run", "gw-1", "echo", "n=3")
        self.assertEqual(code, 0)
        [post] = self.api.called("POST", "/api/v1/agents/gw-1/commands")
        self.assertEqual(post["body"], {"verb": "echo", "args": {"n": 3}})
        self.assertNotIn("wait", post["query"])
        [follow] = self.api.called("GET", self.follow)
        self.assertEqual(follow["query"], {"follow": "1"})
        self.assertTrue(out.startswith("hello\nworld\n"), out)
        self.assertIn("status: succeeded (exit code 0)", out)
        self.assertIn('"echoed": 3', out)
        self.assertNotIn("--- stdout", out, "streamed output is not printed twice")
        self.assertIn("careful\n", err)
        self.assertIn("command c1: echo on gw-1 (queued)", err)

    def test_failed_command_exit_1(self):
        """A final status other than succeeded exits 1 and shows the error."""
        final = command("failed", exit_code=1, error={"code": "NOT_FOUND", "message": "nope"})
        final["stderr"] = "no such user\n"
        self.api.routes[("GET", self.follow)] = lambda r: [sse("command.status", final)]
        code, out, _ = self.viworks("run", "gw-1", "echo")
        self.assertEqual(code, 1)
        self.assertIn("error: NOT_FOUND: nope", out)
        self.assertIn("--- stderr\nno such user", out)

    def test_verbs_own_failure_shows_no_exit_code(self):
        """A failure the verb judged itself (NOT_FOUND after its program exited 0) says what
        happened without the program's exit code; an EXIT_NONZERO failure shows it."""
        final = command(
            "failed", exit_code=0, error={"code": "NOT_FOUND", "message": "panel user not found"}
        )
        self.api.routes[("GET", self.follow)] = lambda r: [sse("command.status", final)]
        code, out, _ = self.viworks("run", "gw-1", "echo")
        self.assertEqual(code, 1)
        self.assertIn("status: failed\nerror: NOT_FOUND: panel user not found\n", out)
        self.assertNotIn("exit code", out)
        final = command(
            "failed", exit_code=2, error={"code": "EXIT_NONZERO", "message": "exited with code 2"}
        )
        code, out, _ = self.viworks("run", "gw-1", "echo")
        self.assertIn("status: failed (exit code 2)\n", out)

    def test_help_describes_the_arguments(self):
        """`run --help` explains AGENT, VERB and key=value, and points at `viworks verbs`."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit):
            cli.main(["run", "--help"])
        text = " ".join(out.getvalue().split())
        self.assertIn("the verb's arguments, typed by its schema", text)
        self.assertIn("the verb to run (viworks verbs AGENT)", text)
        self.assertIn("the agent's id", text)

    def test_json(self):
        """--json prints only the final command's JSON (no live chunks on stdout)."""
        final = command("succeeded", exit_code=0, stdout="x\n")
        self.api.routes[("GET", self.follow)] = lambda r: [
            sse("command.output", {"seq": 0, "stream": "stdout", "data": "x\n"}, 0),
            sse("command.status", final),
        ]
        code, out, _ = self.viworks("run", "gw-1", "echo", "--json")
        self.assertEqual((code, json.loads(out)), (0, final))

    def test_still_pending(self):
        """When --wait runs out before a final status: exit 4, the status as it stands."""
        self.api.routes[("GET", self.follow)] = lambda r: [b": keep-alive\n\n", 2.0]
        self.api.json("GET", "/api/v1/commands/c1", command("running"))
        code, _, err = self.viworks("run", "gw-1", "echo", "--wait", "0.3")
        self.assertEqual(code, 4)
        self.assertIn("still running", err)

    def test_resumes_a_broken_stream(self):
        """A stream cut before the final status is reopened with Last-Event-ID."""
        self.patch(terminal, "sleep", lambda s: None)
        streams = [
            [sse("command.output", {"seq": 0, "stream": "stdout", "data": "one\n"}, 0)],
            [
                sse("command.output", {"seq": 1, "stream": "stdout", "data": "two\n"}, 1),
                sse("command.status", command("succeeded", exit_code=0)),
            ],
        ]
        self.api.routes[("GET", self.follow)] = lambda r: streams.pop(0)
        code, out, _ = self.viworks("run", "gw-1", "echo")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("one\ntwo\n"), out)
        first, second = self.api.called("GET", self.follow)
        self.assertNotIn("last-event-id", first["headers"])
        self.assertEqual(second["headers"]["last-event-id"], "0")

    def test_api_refusal_exit_3(self):
        """A refused command (e.g. 422 UNKNOWN_VERB) exits 3 with the API's error."""
        error = {"error": {"code": "UNKNOWN_VERB", "message": "no verb", "field": "verb"}}
        self.api.json("POST", "/api/v1/agents/gw-1/commands", error, status=422)
        code, _, err = self.viworks("run", "gw-1", "launch")
        self.assertEqual(code, 3)
        self.assertIn("UNKNOWN_VERB", err)

    def test_bad_argument_usage_error(self):
        """An argument that does not fit its schema type is a usage error (2)."""
        code, _, err = self.viworks("run", "gw-1", "echo", "n=three")
        self.assertEqual(code, 2)
        self.assertIn("n must be a integer", err)


class JobTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.api.json("GET", "/api/v1/agents", AGENTS)
        self.api.json("GET", "/api/v1/agents/gw-1/verbs", VERBS)
        self.api.json("POST", "/api/v1/jobs", job("running", ["queued"] * 3), status=201)
        # Each job.progress event wakes the CLI, which then reads the job.
        self.api.routes[("GET", "/api/v1/events")] = lambda r: [
            sse("job.progress", {"job_id": "other"}, 1),
            sse("job.progress", {"job_id": "j1"}, 2),
            0.1,
            sse("job.progress", {"job_id": "j1"}, 3),
            0.1,
            sse("job.progress", {"job_id": "j1"}, 4),
            5.0,
        ]

    def assertJobDefaults(self):
        """Without --max-errors the API's default applies; --canary-auto is sent as a flag."""
        self.api.sequence("GET", "/api/v1/jobs/j1", [job("completed", ["succeeded"])])
        code, _out, err = self.viworks(
            "job", "start", "echo", "n=1", "--selector", "site=prod", "--canary", "1",
            "--canary-auto",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        post = self.api.called("POST", "/api/v1/jobs")[-1]
        self.assertNotIn("max_errors", post["body"])
        self.assertTrue(post["body"]["canary_auto"])

    def test_start_progress_then_summary(self):
        """`job start` posts the job, shows per-status progress, then a summary table."""
        self.api.sequence(
            "GET",
            "/api/v1/jobs/j1",
            [
                job("running", ["succeeded", "running", "queued"]),
                job("running", ["succeeded", "succeeded", "running"]),
                job("completed", ["succeeded", "succeeded", "succeeded"]),
            ],
        )
        code, out, err = self.viworks(
            "job", "start", "echo", "n=2", "--selector", "site=prod",
            "--concurrency", "10%", "--max-errors", "2", "--canary", "1", "--ttl", "600",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        [post] = self.api.called("POST", "/api/v1/jobs")
        self.assertEqual(
            post["body"],
            {"verb": "echo", "args": {"n": 2}, "selector": "site=prod", "concurrency": "10%",
             "max_errors": 2, "canary": 1, "ttl": 600.0},
        )  # fmt: skip
        [events] = self.api.called("GET", "/api/v1/events")
        self.assertEqual(events["query"], {"types": "job.progress"})
        self.assertJobDefaults()
        progress = err.splitlines()
        self.assertIn("[........................] 0/3  queued 3", progress[0])
        self.assertIn("1/3  succeeded 1  running 1  queued 1", progress[1])
        self.assertIn("job j1 completed", progress[-1])
        self.assertIn("3/3  succeeded 3", progress[-1])
        self.assertIn("job j1: completed", out)
        self.assertRegex(out, r"AGENT\s+STATUS\s+COMMAND\ngw-1\s+succeeded\s+c1\n")

    def test_failures_exit_1_and_json(self):
        """A stopped job (error threshold) exits 1; --json prints the final job only."""
        final = job("stopped", ["succeeded", "failed", "failed"])
        self.api.json("GET", "/api/v1/jobs/j1", final)
        code, out, err = self.viworks("job", "start", "echo", "--selector", "site=prod", "--json")
        self.assertEqual((code, json.loads(out)), (1, final))
        self.assertEqual(err, "")

    def ctrl_c_on_first_read(self, states: list[dict]) -> None:
        """The first GET of the job presses Ctrl-C (a SIGINT to the main thread)."""
        # Trial's reactor may own SIGINT: Python's own handler raises KeyboardInterrupt.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        reads = []

        def read(request):
            reads.append(request)
            if len(reads) == 1:
                _thread.interrupt_main()
            return 200, states[-1]

        self.api.routes[("GET", "/api/v1/jobs/j1")] = read

    def test_ctrl_c_without_tty_detaches(self):
        """Ctrl-C with no terminal on stdin detaches: the job goes on, exit code 4."""
        self.ctrl_c_on_first_read([job("running", ["running"] * 3)])
        code, _, err = self.viworks("job", "start", "echo", "--selector", "site=prod")
        self.assertEqual(code, 4)
        self.assertIn("detached: job j1 goes on", err)
        self.assertEqual(self.api.called("POST", "/api/v1/jobs/j1/cancel"), [])

    def test_ctrl_c_then_cancel(self):
        """Ctrl-C at a terminal asks; "c" cancels the job and shows how it ended."""
        self.patch(terminal, "stdin_is_tty", lambda: True)
        self.patch(terminal, "ask", lambda prompt: "c")
        states = [job("running", ["running"] * 3)]
        self.ctrl_c_on_first_read(states)

        def cancel(request):
            states.append(job("cancelled", ["succeeded", "cancelled", "cancelled"]))
            return 200, states[-1]

        self.api.routes[("POST", "/api/v1/jobs/j1/cancel")] = cancel
        code, out, _ = self.viworks("job", "start", "echo", "--selector", "site=prod")
        self.assertEqual(code, 1)
        self.assertIn("job j1: cancelled", out)

    def test_show_pause_resume_cancel(self):
        """show/pause/resume/cancel print the job (table or --json) and exit 0."""
        body = job("paused", ["succeeded", "queued"])
        self.api.json("GET", "/api/v1/jobs/j1", body)
        for action in ("pause", "resume", "cancel"):
            self.api.json("POST", f"/api/v1/jobs/j1/{action}", body)
        code, out, _ = self.viworks("job", "show", "j1")
        self.assertEqual(code, 0)
        self.assertIn("job j1: paused", out)
        self.assertIn("counts: succeeded 1  queued 1", out)
        for action in ("pause", "resume", "cancel"):
            code, out, _ = self.viworks("job", action, "j1", "--json")
            self.assertEqual((code, json.loads(out)), (0, body))
            self.assertEqual(len(self.api.called("POST", f"/api/v1/jobs/j1/{action}")), 1)

    def test_show_says_why_a_job_is_paused(self):
        """`job show` of a job paused after its canary gives the reason and the next step;
        one stopped by its error budget gives that reason."""
        body = job("paused", ["succeeded", "queued"])
        body["error"] = {"code": "CANARY", "message": "the first 1 agents ran; resume to continue"}
        self.api.json("GET", "/api/v1/jobs/j1", body)
        code, out, _ = self.viworks("job", "show", "j1")
        self.assertEqual(code, 0)
        self.assertIn(
            "job j1: paused\nreason: CANARY: the first 1 agents ran; resume to continue\n"
            "next: viworks job resume j1",
            out,
        )
        body = job("stopped", ["failed", "queued"])
        body["error"] = {"code": "MAX_ERRORS", "message": "1 of 2 agents failed"}
        self.api.json("GET", "/api/v1/jobs/j1", body)
        code, out, _ = self.viworks("job", "show", "j1")
        self.assertIn("reason: MAX_ERRORS: 1 of 2 agents failed\n", out)
        self.assertNotIn("next:", out)

    def test_detach_exits_4(self):
        """--detach returns at once with exit 4 (unfinished: the job goes on), as the exit
        code table says; it never claims success (0) for a job that has not run."""
        code, out, _ = self.viworks("job", "start", "echo", "--selector", "site=prod", "--detach")
        self.assertEqual(code, 4)
        self.assertIn("job j1 started (running); viworks job show j1", out)
        code, out, _ = self.viworks(
            "job", "start", "echo", "--selector", "site=prod", "--detach", "--json"
        )
        self.assertEqual((code, json.loads(out)["job_id"]), (4, "j1"))
        self.assertEqual(self.api.called("GET", "/api/v1/jobs/j1"), [], "no watching")

    def test_bad_concurrency(self):
        """--concurrency must be N or N%: anything else is a usage error before any POST."""
        code, _, err = self.viworks(
            "job", "start", "echo", "--selector", "a=b", "--concurrency", "lots"
        )
        self.assertEqual(code, 2)
        self.assertIn("--concurrency", err)
        self.assertEqual(self.api.called("POST", "/api/v1/jobs"), [])


AGENT_VERBS = {
    "agent_id": "gw-1",
    "verbs": {
        "create_panel_user": {
            "changes_state": True,
            "description": "Create or update a panel user.",
            "params": {
                "username": {
                    "type": "string",
                    "min_length": 3,
                    "max_length": 64,
                    "pattern": "[a-z]+",
                    "description": "panel user name",
                },
                "password": {"type": "secret", "min_length": 8},
                "role": {"type": "enum", "values": ["admin", "user"], "default": "user"},
            },
        },
        "ping": {"changes_state": False, "description": "Check the agent.", "params": {}},
        "tail": {
            "changes_state": False,
            "params": {
                "lines": {"type": "integer", "min": 1, "max": 1000, "default": 100},
                "source": {"type": "ip", "required": False},
            },
        },
    },
}


class VerbsTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.api.json("GET", "/api/v1/agents/gw-1/verbs", AGENT_VERBS)

    def test_table(self):
        """`verbs AGENT` lists every verb with its effect and each parameter's type,
        whether it is required, its default and its limits; secrets are marked."""
        code, out, _ = self.viworks("verbs", "gw-1")
        self.assertEqual(code, 0)
        self.assertIn("agent gw-1: 3 verbs\n", out)
        self.assertIn("create_panel_user (changes state): Create or update a panel user.", out)
        self.assertRegex(
            out, r"username\s+string\s+yes\s+-\s+length 3\.\.64; pattern \[a-z\]\+\s+panel user"
        )
        self.assertRegex(out, r"password\s+secret\s+yes\s+-\s+length >= 8; SECRET: never stored")
        self.assertRegex(out, r'role\s+enum\s+no\s+"user"\s+one of "admin", "user"')
        self.assertIn("ping (read-only): Check the agent.\n  (no parameters)", out)
        self.assertRegex(out, r"lines\s+integer\s+no\s+100\s+1\.\.1000")
        self.assertRegex(out, r"source\s+ip\s+no\s+-\s+an IPv4 or IPv6 address")

    def test_one_verb_and_json(self):
        """`verbs AGENT VERB` shows one verb; --json prints the API's JSON (for it)."""
        code, out, _ = self.viworks("verbs", "gw-1", "ping")
        self.assertEqual(code, 0)
        self.assertIn("agent gw-1: 1 verb\nping (read-only)", out)
        self.assertNotIn("create_panel_user", out)
        code, out, _ = self.viworks("verbs", "gw-1", "--json")
        self.assertEqual((code, json.loads(out)), (0, AGENT_VERBS))
        code, out, _ = self.viworks("verbs", "gw-1", "ping", "--json")
        self.assertEqual(json.loads(out)["verbs"], {"ping": AGENT_VERBS["verbs"]["ping"]})

    def test_unknown_verb_and_agent(self):
        """A verb the agent does not offer is a usage error naming what it offers (2);
        an unknown agent is the API's 404 (3)."""
        code, _, err = self.viworks("verbs", "gw-1", "reboot")
        self.assertEqual(code, 2)
        self.assertIn("does not offer verb 'reboot' (create_panel_user, ping, tail)", err)
        code, _, err = self.viworks("verbs", "gw-9")
        self.assertEqual(code, 3)


class OtherCommandsTests(CLITestCase):
    def test_commands(self):
        """`commands` filters by agent, status and limit, and prints a table."""
        self.api.json("GET", "/api/v1/commands", {"commands": [command("failed", exit_code=2)]})
        code, out, _ = self.viworks(
            "commands", "--agent", "gw-1", "--status", "failed", "--limit", "5"
        )
        self.assertEqual(code, 0)
        self.assertEqual(
            self.api.requests[0]["query"], {"agent_id": "gw-1", "status": "failed", "limit": "5"}
        )
        self.assertRegex(out.splitlines()[1], r"^c1\s+gw-1\s+echo\s+failed\s+2\s+2025-\S+\s+-$")

    def test_commands_verdict_failure(self):
        """In the commands table a verb's own failure shows its error code, not the exit
        code of a program that exited 0."""
        failed = command("failed", exit_code=0, error={"code": "NOT_FOUND", "message": "x"})
        self.api.json("GET", "/api/v1/commands", {"commands": [failed]})
        code, out, _ = self.viworks("commands")
        self.assertEqual(code, 0)
        self.assertRegex(
            out.splitlines()[1], r"^c1\s+gw-1\s+echo\s+failed\s+-\s+2025-\S+\s+NOT_FOUND$"
        )

    def test_telemetry(self):
        """`telemetry` flattens the agent's latest metrics into a table; --json as is."""
        body = {
            "agent_id": "gw-1",
            "at": "2025-01-01T00:00:00.000Z",
            "metrics": {"load": [0.5, 0.2], "disk": {"root": {"used": 10}}, "up": True},
        }
        self.api.json("GET", "/api/v1/agents/gw-1/telemetry", body)
        code, out, _ = self.viworks("telemetry", "gw-1")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"disk\.root\.used\s+10\n")
        self.assertRegex(out, r"load\s+\[0\.5, 0\.2\]\n")
        code, out, _ = self.viworks("telemetry", "gw-1", "--json")
        self.assertEqual(json.loads(out), body)


class CompletionTests(unittest.TestCase):
    def complete(self, *words: str) -> list[str]:
        script = completion.completion_script("bash", build_parser())
        line = " ".join(words)
        test = (
            f"{script}\nCOMP_WORDS=(viworks {line}); COMP_CWORD={len(words)}; _viworks; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        run = subprocess.run(["bash", "-c", test], capture_output=True, text=True, check=True)
        return run.stdout.split()

    def test_bash(self):
        """The bash script (generated from the parser) completes commands and options."""
        if shutil.which("bash") is None:
            raise unittest.SkipTest("no bash")
        self.assertEqual(self.complete("jo"), ["job"])
        self.assertEqual(sorted(self.complete("job", "")), sorted(
            ["-h", "--help", "start", "show", "pause", "resume", "cancel"]
        ))  # fmt: skip
        self.assertIn("--max-errors", self.complete("job", "--json", "start", "--m"))
        self.assertEqual(self.complete("completion", "z"), ["zsh"])

    def test_zsh(self):
        """`viworks completion zsh` prints a #compdef script covering the same tree."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(cli.main(["completion", "zsh"]), 0)
        script = out.getvalue()
        self.assertTrue(script.startswith("#compdef viworks\n"))
        self.assertIn('("job start") opts=(', script)
        if shutil.which("zsh"):
            subprocess.run(["zsh", "-n", "-c", script], check=True)
