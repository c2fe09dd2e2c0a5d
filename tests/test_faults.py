"""Fault tests: nothing is lost and nothing runs twice when links and processes fail.

Real backend and gateway processes (twistd, ``tests.processes``) on loopback; where
the link itself must fail, a ``FaultProxy`` in this process sits between gateway
and backend. Every command is a ``mark`` verb that appends its tag to a marks file
on the agent side before it sleeps, so the test can compare what really ran with
what the ledger says. Heartbeats are 1 s, so dead links are found in about 2 s.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import datetime
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.faultproxy import FaultProxy
from tests.fleet import Fleet
from tests.processes import Api, Twistd, create_token
from tests.stack import Stack, eventually, poll, stays
from viworks import lifecycle, protocol

HEARTBEAT = 1.0
WAIT = 30.0


class FaultTestCase(unittest.TestCase):
    """Processes, proxy and ledger/marks bookkeeping shared by the fault tests."""

    timeout = 120

    def setUp(self) -> None:
        self.stack = Stack(self)
        self.marks_file = os.path.join(self.stack.dir, "marks")
        self.ids: dict[str, str] = {}  # tag -> command id

    # -- processes --------------------------------------------------------------------

    def backend(self, **backend: Any) -> Twistd:
        """The backend process (not started); 1 s heartbeats unless overridden."""
        config = self.stack.backend_config(**{"heartbeat_interval": HEARTBEAT, **backend}).path
        self.api = Api(f"http://127.0.0.1:{self.stack.http_port}", create_token(config))
        return Twistd(self, "viworks-backend", config, os.path.join(self.stack.dir, "backend.log"))

    async def start_backend(self, process: Twistd) -> None:
        process.start()
        await poll(lambda: self.api.call("GET", "/health"), lambda r: r[0] == 200, WAIT, 0.1)

    def gateway(self, name: str = "gw-1", port: int | None = None, **outbound: Any) -> Twistd:
        """A gateway process for agent gw-1 (not started), with the ``mark`` verb."""
        config = self.stack.agent_config(
            name=name,
            port=port,
            marks=self.marks_file,
            **{"heartbeat_interval": HEARTBEAT, **outbound},
        ).path
        return Twistd(self, "viworks-gateway", config, os.path.join(self.stack.dir, f"{name}.log"))

    async def proxy(self) -> FaultProxy:
        """A fault proxy in front of the backend's agent port."""
        proxy = FaultProxy(reactor, "127.0.0.1", self.stack.ws_port)
        await proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    # -- the API ----------------------------------------------------------------------

    async def agent_status(self, agent_id: str = "gw-1") -> str | None:
        code, body = await self.api.call("GET", f"/api/v1/agents/{agent_id}")
        return body["status"] if code == 200 else None

    async def wait_agent(self, status: str, timeout: float = WAIT) -> None:
        await poll(self.agent_status, lambda s: s == status, timeout, 0.1)

    async def submit(self, tag: str, sleep: float = 0.0) -> dict:
        """Submit ``mark`` with ``tag`` (a tag names one command in the test)."""
        code, body = await self.api.call(
            "POST",
            "/api/v1/agents/gw-1/commands",
            {"verb": "mark", "args": {"tag": tag, "sleep": sleep}},
        )
        self.assertEqual(code, 201, body)
        self.ids[tag] = body["command_id"]
        return body

    async def command(self, tag: str) -> dict | None:
        code, body = await self.api.call("GET", f"/api/v1/commands/{self.ids[tag]}")
        return body if code == 200 else None

    async def wait_command(self, tag: str, statuses: Any, timeout: float = WAIT) -> dict:
        return await poll(
            lambda: self.command(tag),
            lambda c: c is not None and c["status"] in statuses,
            timeout,
            0.1,
        )

    # -- what ran ---------------------------------------------------------------------

    def marks(self) -> Counter:
        """How often each tag ran on the agent side."""
        if not os.path.exists(self.marks_file):
            return Counter()
        with open(self.marks_file) as f:
            return Counter(f.read().split())

    async def settle(self, expected: dict[str, str], timeout: float = WAIT) -> dict[str, dict]:
        """Every command reaches its expected final status and ran as often as that allows.

        ``succeeded``: ran exactly once. Any other final status (``lost``: the
        verb may have started before the agent died): at most once. Nothing the
        test did not submit ran.
        """
        commands = {tag: await self.wait_command(tag, lifecycle.FINAL, timeout) for tag in expected}
        for tag, status in expected.items():
            self.assertEqual(commands[tag]["status"], status, commands[tag])
        # Give a wrongly redelivered command the time to run a second time.
        await stays(lambda: True, 1.0)
        marks = self.marks()
        self.assertLessEqual(set(marks), set(expected), marks)
        for tag, status in expected.items():
            if status == lifecycle.SUCCEEDED:
                self.assertEqual(marks[tag], 1, f"{tag}: ran {marks[tag]} times")
            else:
                self.assertLessEqual(marks[tag], 1, f"{tag}: ran {marks[tag]} times")
        return commands


class ProcessFaultTests(FaultTestCase):
    async def test_backend_killed_with_commands_queued_and_running(self):
        """kill -9 the backend while a verb runs and commands wait; all finish once after restart.

        The agent (behind the proxy) is offline when the backend dies: ``run-1`` is
        running on it, ``queued-1``/``queued-2`` wait in the ledger. After the restart on
        the same database ``queued-3`` is submitted while the agent is still away; then
        the link is allowed again. ``run-1``'s result is replayed from the agent's
        journal, the queued ones are delivered; each ran exactly once.
        """
        backend = self.backend()
        await self.start_backend(backend)
        proxy = await self.proxy()
        self.gateway(port=proxy.port).start()
        await self.wait_agent("online")
        await self.submit("done-1")
        await self.wait_command("done-1", lifecycle.FINAL)
        await self.submit("run-1", sleep=3)
        await self.wait_command("run-1", (lifecycle.RUNNING,))

        proxy.refuse()
        proxy.cut()
        await self.wait_agent("offline")
        for tag in ("queued-1", "queued-2"):
            self.assertEqual((await self.submit(tag))["status"], lifecycle.QUEUED)
        self.assertEqual(backend.kill(), -9)

        await self.start_backend(backend)
        self.assertEqual((await self.command("run-1"))["status"], lifecycle.RUNNING)
        self.assertEqual((await self.submit("queued-3"))["status"], lifecycle.QUEUED)
        proxy.restore()
        await self.settle(
            {
                tag: lifecycle.SUCCEEDED
                for tag in ("done-1", "run-1", "queued-1", "queued-2", "queued-3")
            }
        )

    async def test_gateway_killed_mid_verb(self):
        """kill -9 the gateway mid-verb: after its restart the command is lost, never rerun.

        The restarted gateway (same state_dir) finds the command open in its journal and
        reports it ``lost`` (AGENT_RESTARTED) right after its hello; a command queued
        while it was down runs once.
        """
        await self.start_backend(self.backend())
        gateway = self.gateway().start()
        await self.wait_agent("online")
        await self.submit("slow", sleep=5)
        await self.wait_command("slow", (lifecycle.RUNNING,))
        self.assertEqual(gateway.kill(), -9)
        await self.wait_agent("offline")
        self.assertEqual((await self.submit("queued"))["status"], lifecycle.QUEUED)

        restarted = reactor.seconds()
        gateway.start()
        lost = await self.wait_command("slow", lifecycle.FINAL, timeout=15)
        self.assertLess(reactor.seconds() - restarted, 15)
        self.assertEqual(lost["error"]["code"], "AGENT_RESTARTED", lost)
        commands = await self.settle({"slow": lifecycle.LOST, "queued": lifecycle.SUCCEEDED})
        self.assertEqual(commands["slow"]["status"], lifecycle.LOST)
        self.assertIn("reporting it as lost", gateway.log_text())


class LinkFaultTests(FaultTestCase):
    async def test_link_cut_mid_run(self):
        """Cut the link (RST both ways) while a verb runs: its result is spooled, then delivered.

        The proxy refuses reconnects until the verb has finished on the agent, so the
        result is produced while there is no link and must come from the journal.
        """
        await self.start_backend(self.backend())
        proxy = await self.proxy()
        gateway = self.gateway(port=proxy.port).start()
        await self.wait_agent("online")
        await self.submit("cut", sleep=2)
        await self.wait_command("cut", (lifecycle.RUNNING,))
        mark = gateway.log_mark()
        proxy.refuse()
        proxy.cut()
        await eventually(lambda: "finished: succeeded" in gateway.log_text(mark), WAIT)
        self.assertEqual((await self.command("cut"))["status"], lifecycle.RUNNING)
        proxy.restore()
        await self.settle({"cut": lifecycle.SUCCEEDED})

    async def test_link_blackholed(self):
        """A half-open link (no FIN, no RST): both ends notice within ~2 heartbeats.

        The backend shows the agent offline within three intervals; a command
        submitted meanwhile stays queued; once the network is back the agent
        reconnects by itself and the command runs once.
        """
        await self.start_backend(self.backend())
        proxy = await self.proxy()
        gateway = self.gateway(port=proxy.port).start()
        await self.wait_agent("online")
        mark = gateway.log_mark()
        started = reactor.seconds()
        proxy.blackhole()
        await self.wait_agent("offline", timeout=10 * HEARTBEAT)
        self.assertLessEqual(reactor.seconds() - started, 3 * HEARTBEAT + 0.5)
        await eventually(lambda: "backend link down" in gateway.log_text(mark), 5 * HEARTBEAT)
        self.assertEqual((await self.submit("after-blackhole"))["status"], lifecycle.QUEUED)
        proxy.restore()
        # A reconnect attempt made during the black hole hangs until the opening
        # handshake times out (10 s), so allow for that.
        await self.settle({"after-blackhole": lifecycle.SUCCEEDED}, timeout=WAIT)

    async def test_two_gateways_same_id(self):
        """Two gateways with one identity: one registry entry, replaced loudly, no flapping.

        With reconnect_max = 3 a replaced gateway waits at least 3 s, so over 10 s
        there are at most 10 / 3 + 2 replacements; commands run once on one of them.
        """
        backend = self.backend()
        await self.start_backend(backend)
        reconnect_max, window = 3.0, 10.0
        for name in ("gw-1a", "gw-1b"):
            self.gateway(name=name, reconnect_max=reconnect_max).start()
        await eventually(lambda: "replaced" in backend.log_text(), WAIT)
        mark = backend.log_mark()

        async def one_entry() -> None:
            code, body = await self.api.call("GET", "/api/v1/agents")
            self.assertEqual(code, 200)
            self.assertEqual([a["agent_id"] for a in body["agents"]], ["gw-1"])

        for i in range(int(window / 0.25)):
            await one_entry()
            if i == 10:
                await self.submit("during-flap-1")
            await stays(lambda: True, 0.25)
        replaced = backend.log_text(mark).count("replaced by a newer connection")
        self.assertLessEqual(replaced, window / reconnect_max + 2, f"{replaced} replacements")
        await self.submit("during-flap-2")
        await self.settle(
            {"during-flap-1": lifecycle.SUCCEEDED, "during-flap-2": lifecycle.SUCCEEDED}
        )


_ONLINE = re.compile(r"^(\S+) \[[^\]]*\] agent (\S+) online", re.M)


def online_seconds(log: str) -> Counter:
    """How many sessions came online in each second (twistd's log stamps are seconds)."""
    return Counter(
        int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp())
        for stamp, _agent in _ONLINE.findall(log)
    )


class FleetRestartTests(FaultTestCase):
    SIZE = 200
    RATE = 50
    BURST = 20
    LAG = 1

    async def test_backend_restart_with_200_agents(self):
        """200 agents come back after kill -9 and after SIGTERM, under the admission limit.

        The agents are ``BackendLink``s in this process (tests/fleet.py) with a short
        backoff (0.2-2 s), so they storm the restarted backend; admission must refuse
        the excess with retry-after hints and let at most rate * T + burst sessions in
        within any T seconds. On SIGTERM every agent is told when to come back, and
        those delays are spread out.
        """
        backend = self.backend(
            handshake_rate=self.RATE, handshake_burst=self.BURST, heartbeat_interval=5
        )
        await self.start_backend(backend)
        fleet = Fleet(
            reactor,
            os.path.join(self.stack.dir, "fleet"),
            self.stack.pki["ours"],
            self.stack.ws_port,
            self.SIZE,
            heartbeat_interval=5.0,
            reconnect_initial=0.2,
            reconnect_max=2.0,
        )
        fleet.start()
        self.addCleanup(fleet.stop)
        await self.all_online(fleet)

        # kill -9: the agents only see their connections reset.
        early = await self.restart(backend, fleet, backend.kill)

        # SIGTERM: an orderly goodbye with a spread-out retry-after hint for each agent.
        stopping = reactor.seconds()
        early += await self.restart(backend, fleet, lambda: deferToThread(backend.stop))
        hints = []
        for agent_id, events in fleet.events.items():
            goodbye = [e for e in events if e.at >= stopping and e.code == protocol.CLOSE_SHUTDOWN]
            self.assertEqual(len(goodbye), 1, f"{agent_id}: {events}")
            hints.append(protocol.parse_retry_after(goodbye[0].reason))
        self.assertNotIn(None, hints)
        self.assertGreaterEqual(max(hints) - min(hints), 1.0, "hints are not spread out")
        # Agents refused at admission (HTTP 503 "busy; retry-after=N") wait for the hint.
        self.assertEqual(
            early, [], f"{len(early)} retries came before their hint, e.g. {early[:5]}"
        )

    async def all_online(self, fleet: Fleet, timeout: float = 60.0) -> None:
        async def online() -> int:
            code, body = await self.api.call("GET", "/health")
            return body["agents_online"] if code == 200 else -1

        await poll(online, lambda n: n == self.SIZE and fleet.connected == self.SIZE, timeout, 0.25)

    async def restart(self, backend: Twistd, fleet: Fleet, stop: Any) -> list:
        """Stop the backend with ``stop``, start it again, check how the fleet came back.

        Returns the retries that came before their retry-after hint (``early_retries``).
        """
        await maybeDeferred(stop)
        mark = backend.log_mark()
        restarted = reactor.seconds()
        await self.start_backend(backend)
        await self.all_online(fleet)
        log = backend.log_text(mark)
        per_second = online_seconds(log)
        self.assertGreaterEqual(sum(per_second.values()), self.SIZE)
        # An "online" line is written after the hello round trip and a database write,
        # which lag admission by up to LAG s under this load, so a window of T s may
        # hold what was admitted over T + LAG s.
        first, last = min(per_second), max(per_second)
        for start in range(first, last + 1):
            for length in range(1, last - start + 2):
                admitted = sum(per_second[s] for s in range(start, start + length))
                self.assertLessEqual(
                    admitted,
                    self.RATE * (length + self.LAG) + self.BURST,
                    f"{admitted} sessions in {length} s from {start}: {sorted(per_second.items())}",
                )
        # Lag cannot make the fleet come back faster than the bucket allows.
        opened = [e.at for events in fleet.events.values() for e in events if e.kind == "open"]
        opened = [at for at in opened if at >= restarted]
        self.assertGreaterEqual(len(opened), self.SIZE)
        self.assertGreaterEqual(
            max(opened) - min(opened), (self.SIZE - self.BURST) / self.RATE - 0.5
        )
        self.assertIn("admission: refused", log)
        return self.early_retries(fleet, restarted)

    def early_retries(self, fleet: Fleet, since: float) -> list[tuple[str, float, float]]:
        """``(agent, hint, waited)`` for each attempt made sooner than a refusal's hint said."""
        early = []
        for agent_id, events in fleet.events.items():
            events = [e for e in events if e.at >= since]
            for refusal, following in zip(events, events[1:], strict=False):
                hint = (
                    protocol.parse_retry_after(refusal.reason) if refusal.kind == "close" else None
                )
                if hint is not None and following.at - refusal.at < hint - 0.05:
                    early.append((agent_id, hint, round(following.at - refusal.at, 2)))
        return early
