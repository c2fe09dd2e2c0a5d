"""A hostile agent against a real backend process: its patterns cannot stall it (issue 12).

The backend runs as ``twistd viworks-backend`` (so a stall would freeze it, not this
test); the attacker is ``tests.rawagent`` holding a genuine agent certificate. HTTP
calls block, in threads. Every wait is bounded: before RE2 the backend froze for
good, and the test failed on its HTTP timeouts instead of hanging.
"""

from __future__ import annotations

import os
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests import rawagent
from tests.processes import Api, Twistd, create_token, wait_for
from tests.stack import Stack
from tests.test_patterns import HOSTILE
from viworks import protocol

#: A HELLO version forging a log line, with an ANSI colour for good measure.
FORGED = "6.6\r\n2026-01-01T00:00:00+0000 [viworks.backend.sessions#info] all is well\x1b[31m"


def verbs(username_pattern: str) -> dict:
    return {
        "create_panel_user": {
            "params": {
                "username": {"type": "string", "pattern": username_pattern},
                "password": {"type": "secret", "min_length": 8},
            }
        }
    }


class HostilePatternTests(unittest.TestCase):
    timeout = 180

    async def start_backend(self) -> None:
        self.stack = Stack(self)
        config = self.stack.backend_config().path
        self.log = os.path.join(self.stack.dir, "backend.log")
        self.backend = Twistd(self, "viworks-backend", config, self.log).start()
        self.api = Api(f"http://127.0.0.1:{self.stack.http_port}", create_token(config))
        await deferToThread(wait_for, lambda: self.api.get("/api/v1/health")[0] == 200)

    async def raw(self, agent_id: str) -> rawagent.RawAgent:
        agent = await rawagent.connect(
            reactor, self.stack.ws_port, self.stack.pki["ours"], agent_id
        )
        self.addCleanup(agent.close)
        return agent

    def health_latencies(self, seconds: float) -> list[float]:
        """GET /api/v1/health over and over for ``seconds``: each answer's latency (an
        unanswered request counts as the 10 s it waited)."""
        latencies = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.monotonic()
            code, _ = self.api.get("/api/v1/health")
            latencies.append(time.monotonic() - start if code == 200 else 10.0)
            time.sleep(0.01)
        return latencies

    def submit_usernames(self, count: int) -> list[tuple[float, int | None]]:
        """``count`` jobs then ``count`` commands with a 64-character username the
        pattern must refuse: each answer's latency and status."""
        username = "a" * 64
        args = {"username": username, "password": "p" * 12}
        job = {"verb": "create_panel_user", "args": args, "selector": "site=test"}
        command = {"verb": "create_panel_user", "args": args}
        answers = []
        for path, body in [("/api/v1/jobs", job)] * count + [
            ("/api/v1/agents/gw-1/commands", command)
        ] * count:
            start = time.monotonic()
            code, answer = self.api.post(path, body)
            answers.append((time.monotonic() - start, code))
            if code is None:
                break  # no answer within 10 s: the backend is stalled, no use going on
            self.assertEqual(answer["error"]["code"], "INVALID_ARGS", answer)
        return answers

    async def test_nested_quantifier_does_not_stall_the_backend(self) -> None:
        """An agent announces username pattern ([A-Za-z0-9_-]+)+! and goes offline; jobs
        and commands validating 64-character usernames against it are refused (422) at
        once, and /api/v1/health keeps answering within 100 ms meanwhile. Its forged
        log line stays one escaped line of the backend's text log."""
        await self.start_backend()
        attacker = await self.raw("gw-1")
        attacker.hello("gw-1", verbs(HOSTILE), version=FORGED)
        await attacker.until(lambda: attacker.of_type("welcome") or attacker.closed)
        self.assertTrue(attacker.of_type("welcome"), attacker.frames)
        await attacker.close()

        health = deferToThread(self.health_latencies, 3.0)
        answers = await deferToThread(self.submit_usernames, 10)
        latencies = await health
        self.assertEqual({code for _, code in answers}, {422}, answers)
        self.assertLess(max(latency for latency, _ in answers), 1.0, answers)
        # Generous on a shared machine: nearly every answer within 100 ms, none held up
        # (the backend stalled by the pattern did not answer within 10 s).
        latencies.sort()
        self.assertGreater(len(latencies), 10)
        self.assertLess(latencies[int(len(latencies) * 0.95)], 0.100, latencies[-5:])
        self.assertLess(latencies[-1], 0.5, latencies[-5:])

        with open(self.log, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self.assertIn("version 6.6\\r\\n2026-01-01T00:00:00+0000", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\r", text)
        self.assertFalse(
            [line for line in text.splitlines() if line.startswith("2026-01-01T00:00:00")]
        )

    async def test_unsafe_patterns_refused_at_hello(self) -> None:
        """Patterns RE2 cannot run (lookaround, backreferences) or too long are refused at
        HELLO: an error frame naming the verb and parameter, close 4001, a log line; the
        same agent with a safe pattern is then welcomed."""
        await self.start_backend()
        for pattern in ("(?=[a-z])([a-z]+)+!", r"([a-z]+)\1", "a" * 1001):
            attacker = await self.raw("gw-2")
            attacker.hello("gw-2", verbs(pattern))
            await attacker.until(lambda a=attacker: a.closed is not None)
            self.assertEqual(attacker.closed[0], protocol.CLOSE_HELLO_REFUSED, pattern)
            [error] = attacker.of_type("error")
            self.assertEqual(error["code"], protocol.INVALID_FRAME)
            self.assertIn("verb 'create_panel_user': parameter 'username'", error["message"])
        honest = await self.raw("gw-2")
        honest.hello("gw-2", verbs("[a-z]+"))
        await honest.until(lambda: honest.of_type("welcome"))
        code, agent = await deferToThread(self.api.get, "/api/v1/agents/gw-2")
        self.assertEqual((code, agent["status"]), (200, "online"))
        with open(self.log, encoding="utf-8", errors="replace") as f:
            refusals = [line for line in f if "refused agent gw-2" in line]
        self.assertEqual(len(refusals), 3, refusals)
        self.assertTrue(all("'username'" in line for line in refusals))
