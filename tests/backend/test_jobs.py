"""Jobs: one verb fanned out to many agents, over a real SQLite store, a Clock and fake agents.

The fake agents count what they are running, so the concurrency window is
checked where it matters: on the agents' side.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend.helpers import VERBS, json_call, result_fields, sqlite_store, wire
from tests.stack import eventually, poll, stays
from viworks import protocol
from viworks.backend.api.errors import STATUS
from viworks.backend.errors import DomainError
from viworks.backend.jobs import JobRunner
from viworks.backend.jobspec import parse_job_spec, parse_limit, resolve_limit
from viworks.backend.registry import SessionRegistry
from viworks.backend.tokens import hash_token

TOKEN = "vw_jobs-token"


class Fleet:
    """Fake agents sharing one view of what runs where (the agents' side)."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}  # command_id -> agent_id
        self.max_running = 0
        self.ran: list[str] = []  # agent ids, in the order they got a command
        self.cancels: list[str] = []
        self.seen: set[str] = set()  # every command id an agent was sent (its journal)


class FleetSession:
    """A live session of one fake agent: records commands it is sent, like a journal would."""

    peer = "tcp:192.0.2.1:40000"
    cert_serial = None

    def __init__(self, fleet: Fleet, agent_id: str) -> None:
        self.fleet = fleet
        self.agent_id = agent_id
        self.session_id = "s-" + agent_id
        self.agent_protocol = protocol.HELLO_PROTOCOL

    def send_frame(self, payload: bytes) -> None:
        frame = protocol.decode(payload)
        if frame.type == "command" and frame["command_id"] not in self.fleet.seen:
            self.fleet.seen.add(frame["command_id"])  # a redelivery is answered, never run twice
            self.fleet.running[frame["command_id"]] = self.agent_id
            self.fleet.ran.append(self.agent_id)
            self.fleet.max_running = max(self.fleet.max_running, len(self.fleet.running))
        elif frame.type == "cancel":
            self.fleet.cancels.append(frame["command_id"])

    def close_replaced(self) -> None:
        pass

    def complain(self, log_format: str, **fields: object) -> None:
        pass

    def close_going_away(self, retry_after: float) -> None:
        pass

    def abort(self) -> None:
        pass

    def close_revoked(self) -> None:
        pass


class JobTestsBase(unittest.TestCase):
    agents = 6

    async def _setUp(self):
        self.store = await sqlite_store(self)
        self.clock = Clock()
        self.clock.advance(10000)
        self.registry = SessionRegistry()
        self.fleet = Fleet()
        for i in range(self.agents):
            site = "prod" if i % 3 else "lab"
            await self.add_agent(f"gw-{i}", site=site, labels={"role": "edge" if i % 2 else "core"})
        await self.start_backend()

    def setUp(self):
        return Deferred.fromCoroutine(self._setUp())

    async def start_backend(self) -> None:
        """The command path and its job runner on the store (again: a backend restart)."""
        self.backend = wire(self, self.store, self.clock, registry=self.registry)
        self.hub, self.ledger, self.runner = (
            self.backend.hub,
            self.backend.ledger,
            self.backend.jobs,
        )
        await self.backend.commands.start()

    async def add_agent(self, agent_id: str, site: str = "prod", labels=None, verbs=VERBS):
        await self.store.upsert_agent_online(
            agent_id,
            version="0.1.0",
            site=site,
            hostname="host-" + agent_id,
            protocol=1,
            verbs=verbs,
            peer="tcp:127.0.0.1:5000",
            session_id="s-" + agent_id,
            labels=labels or {},
            now=1000.0,
        )

    def online(self, *agent_ids: str) -> None:
        """Connect agents (as a session's HELLO does: register, announce, deliver the backlog)."""
        for agent_id in agent_ids:
            session = FleetSession(self.fleet, agent_id)
            self.registry.register(session)
            self.hub.publish("agent.online", {"agent_id": agent_id})
            Deferred.fromCoroutine(self.backend.commands.dispatcher.deliver_pending(session))
        self.clock.advance(0)  # the runner starts newly online agents on the next turn

    def all_online(self) -> None:
        self.online(*[f"gw-{i}" for i in range(self.agents)])

    def offline(self, agent_id: str) -> None:
        session = self.registry.get(agent_id)
        self.registry.unregister(session)

    async def finish(self, command_id: str, status: str = "succeeded") -> None:
        """The agent running ``command_id`` reports its result."""
        agent_id = self.fleet.running.pop(command_id)
        session = self.registry.get(agent_id)
        fields = result_fields(command_id, status=status)
        if status != "succeeded":
            fields.update(exit_code=1, error={"code": "FAILED", "message": "boom"})
        await self.ledger.on_result(session, fields)

    async def job(self, job_id: str) -> dict:
        return await self.runner.describe(job_id)

    async def until(self, job_id: str, predicate) -> dict:
        """Wait (bounded) for the job as stored to satisfy ``predicate``."""
        return await poll(lambda: self.job(job_id), predicate)

    async def until_running(self, count: int) -> None:
        await eventually(lambda: len(self.fleet.running) == count)

    async def create(self, **body) -> dict:
        spec = parse_job_spec({"verb": "ping", "selector": "role=edge|core", **body})
        return await self.runner.create(spec)


class JobRunnerTests(JobTestsBase):
    agents = 10

    async def test_concurrency_window_never_exceeded(self):
        """With concurrency 3, the agents never run more than 3 at once, and each runs once."""
        self.all_online()
        job = await self.create(concurrency=3, max_errors=10)
        self.assertEqual(job["concurrency_limit"], 3)
        remaining = 10
        while remaining:
            window = min(3, remaining)
            await self.until_running(window)
            # The window stays full but is not overfilled while nothing finishes.
            await stays(lambda w=window: len(self.fleet.running) == w, 0.2)
            await self.finish(sorted(self.fleet.running)[-1])
            remaining -= 1
        done = await self.until(job["job_id"], lambda j: j["status"] == "completed")
        self.assertEqual(self.fleet.max_running, 3)
        self.assertEqual(sorted(self.fleet.ran), sorted(f"gw-{i}" for i in range(10)))
        self.assertEqual(done["counts"], {"pending": 0, "succeeded": 10})
        self.assertIsNotNone(done["finished_at"])
        self.assertEqual(len({c["command_id"] for c in done["commands"]}), 10)

    async def test_percentage_concurrency(self):
        """``"20%"`` of 10 targets is a window of 2 (agents' side)."""
        self.all_online()
        job = await self.create(concurrency="20%", max_errors="50%")
        self.assertEqual((job["concurrency"], job["concurrency_limit"]), ("20%", 2))
        self.assertEqual((job["max_errors"], job["max_errors_limit"]), ("50%", 5))
        for _ in range(10):
            await self.until_running(min(2, 10 - len(self.fleet.ran) + len(self.fleet.running)))
            await self.finish(next(iter(self.fleet.running)))
        await self.until(job["job_id"], lambda j: j["status"] == "completed")
        self.assertEqual(self.fleet.max_running, 2)

    async def test_whole_window_starts_together(self):
        """With a window of every target, all start in one pump, their store writes
        sharing transactions (not one commit per target after another)."""
        self.all_online()
        batches = self.store.batches.batches
        job = await self.create(concurrency="100%", max_errors="100%")
        await self.until_running(10)
        # Sequentially that would be 10 targets x (command, dispatch, job record) = 30+.
        self.assertLess(self.store.batches.batches - batches, 15)
        for agent_id in sorted(self.fleet.running):
            await self.finish(agent_id)
        done = await self.until(job["job_id"], lambda j: j["status"] == "completed")
        self.assertEqual(done["counts"], {"pending": 0, "succeeded": 10})
        self.assertEqual(sorted(self.fleet.ran), sorted(f"gw-{i}" for i in range(10)))

    async def test_error_threshold_stops_the_job(self):
        """When failures reach max_errors the job stops; the remaining agents never run the verb."""
        self.all_online()
        job = await self.create(concurrency=2, max_errors=2)
        await self.until_running(2)
        first, second = sorted(self.fleet.running)
        await self.finish(first, "failed")
        # One failure: a replacement is started.
        await self.until_running(2)
        await self.finish(second, "failed")
        stopped = await self.until(job["job_id"], lambda j: j["status"] == "stopped")
        self.assertEqual(stopped["error"]["code"], "MAX_ERRORS")
        # The one still running finishes; nothing new starts.
        [last] = self.fleet.running
        await self.finish(last)
        await stays(lambda: not self.fleet.running, 0.3)
        final = await self.until(job["job_id"], lambda j: j["counts"].get("succeeded") == 1)
        self.assertEqual(len(self.fleet.ran), 3)
        self.assertEqual(final["counts"], {"pending": 7, "failed": 2, "succeeded": 1})
        self.assertEqual(final["status"], "stopped")
        never = {c["agent_id"] for c in final["commands"] if c["status"] == "pending"}
        self.assertEqual(never & set(self.fleet.ran), set())
        self.assertEqual(len(never), 7)

    async def test_late_result_of_a_lost_target_gives_its_error_back(self):
        """A target lost (no result within timeout + lost_grace) counts as an error; when
        its agent reports success later the error is given back while the job runs, so a
        later failure does not reach max_errors and every target runs."""
        self.all_online()
        job = await self.create(
            selector="id=gw-0|gw-1|gw-2", concurrency=1, max_errors=2, timeout=5
        )
        await self.until_running(1)
        [late] = self.fleet.running
        self.clock.advance(65)  # timeout 5 + lost_grace 60: the backend gives up on it
        await poll(lambda: self.store.get_command(late), lambda c: c.status == "lost")
        await self.until_running(2)  # the error budget allowed the next target
        await self.finish(late)  # the real outcome, late
        counted = await self.until(job["job_id"], lambda j: "lost" not in j["counts"])
        self.assertEqual(counted["counts"]["succeeded"], 1)
        [second] = self.fleet.running
        await self.finish(second, "failed")
        await self.until_running(1)  # 1 error of 2: the last target starts
        [third] = self.fleet.running
        await self.finish(third)
        done = await self.until(job["job_id"], lambda j: j["status"] == "completed")
        self.assertEqual(done["counts"], {"pending": 0, "succeeded": 2, "failed": 1})

    async def test_canary_pauses_until_resumed(self):
        """A canary of 2 runs the first two agents, then pauses; resume runs the rest."""
        self.all_online()
        job = await self.create(concurrency=5, canary=2)
        await self.until_running(2)
        await stays(lambda: len(self.fleet.running) == 2, 0.2)
        self.assertEqual(sorted(self.fleet.ran), ["gw-0", "gw-1"])
        for command_id in list(self.fleet.running):
            await self.finish(command_id)
        paused = await self.until(job["job_id"], lambda j: j["status"] == "paused")
        self.assertEqual(paused["error"]["code"], "CANARY")
        self.assertEqual(paused["counts"], {"pending": 8, "succeeded": 2})
        await stays(lambda: len(self.fleet.ran) == 2, 0.2)
        resumed = await self.runner.resume(job["job_id"])
        self.assertEqual(resumed["status"], "running")
        self.assertIsNone(resumed["error"])
        await self.until_running(5)
        while self.fleet.running:
            await self.finish(next(iter(self.fleet.running)))
            await eventually(lambda: self.fleet.running or len(self.fleet.ran) == 10)
        await self.until(job["job_id"], lambda j: j["status"] == "completed")
        self.assertEqual(self.fleet.max_running, 5)

    async def test_canary_auto_continues_when_all_succeeded(self):
        """With canary_auto, a successful canary continues by itself."""
        self.all_online()
        job = await self.create(concurrency=10, canary=3, canary_auto=True)
        await self.until_running(3)
        for command_id in list(self.fleet.running):
            await self.finish(command_id)
        await self.until_running(7)
        self.assertEqual((await self.job(job["job_id"]))["status"], "running")
        self.assertTrue((await self.job(job["job_id"]))["canary_passed"])

    async def test_canary_auto_pauses_on_a_failure(self):
        """With canary_auto, a canary with a failure pauses the job instead of continuing."""
        self.all_online()
        job = await self.create(concurrency=10, canary=2, canary_auto=True, max_errors=5)
        await self.until_running(2)
        first, second = list(self.fleet.running)
        await self.finish(first, "failed")
        await self.finish(second)
        paused = await self.until(job["job_id"], lambda j: j["status"] == "paused")
        self.assertIn("not every one", paused["error"]["message"])
        await stays(lambda: len(self.fleet.ran) == 2, 0.2)

    async def test_pause_resume_cancel(self):
        """Pause starts nothing new, resume continues, cancel cancels what is in flight."""
        self.all_online()
        job = await self.create(concurrency=2)
        await self.until_running(2)
        paused = await self.runner.pause(job["job_id"], by="alice")
        self.assertEqual(paused["status"], "paused")
        self.assertEqual(
            paused["error"],
            {"code": "PAUSED", "message": "paused by token 'alice'; resume to continue"},
        )
        for command_id in list(self.fleet.running):
            await self.finish(command_id)
        await stays(lambda: len(self.fleet.ran) == 2, 0.3)
        with self.assertRaises(DomainError) as caught:
            await self.runner.pause(job["job_id"])
        self.assertEqual(caught.exception.code, "JOB_PAUSED")
        self.assertEqual(STATUS[caught.exception.code], 409)
        await self.runner.resume(job["job_id"])
        await self.until_running(2)
        in_flight = set(self.fleet.running)
        cancelled = await self.runner.cancel(job["job_id"])
        self.assertEqual(cancelled["status"], "cancelled")
        self.assertEqual(set(self.fleet.cancels), in_flight)
        for command_id in in_flight:
            await self.finish(command_id, "cancelled")
        final = await self.until(job["job_id"], lambda j: j["counts"].get("cancelled") == 2)
        self.assertEqual(final["counts"], {"pending": 6, "succeeded": 2, "cancelled": 2})
        await stays(lambda: len(self.fleet.ran) == 4, 0.2)
        with self.assertRaises(DomainError) as caught:
            await self.runner.resume(job["job_id"])
        self.assertEqual(caught.exception.code, "JOB_CANCELLED")
        self.assertEqual(STATUS[caught.exception.code], 409)

    async def test_offline_targets_wait_until_ttl_then_expire(self):
        """Offline targets are started when they come online; still offline at the TTL: expired."""
        self.online("gw-0", "gw-1")
        job = await self.create(
            selector="id=gw-0|gw-1|gw-2|gw-3", concurrency=4, ttl=60, max_errors=5
        )
        await self.until_running(2)
        for command_id in list(self.fleet.running):
            await self.finish(command_id)
        self.clock.advance(30)
        self.online("gw-2")
        await self.until_running(1)
        await self.finish(next(iter(self.fleet.running)))
        self.clock.advance(29)
        await stays(lambda: True, 0.1)
        self.assertEqual((await self.job(job["job_id"]))["counts"]["pending"], 1)
        self.clock.advance(1)
        done = await self.until(job["job_id"], lambda j: j["status"] == "completed")
        self.assertEqual(done["counts"], {"pending": 0, "succeeded": 3, "expired": 1})
        [expired] = [c for c in done["commands"] if c["status"] == "expired"]
        self.assertEqual((expired["agent_id"], expired["command_id"]), ("gw-3", None))
        self.assertEqual(expired["error"]["code"], "EXPIRED")
        # It never runs, even if it comes back.
        self.online("gw-3")
        await stays(lambda: "gw-3" not in self.fleet.ran, 0.2)

    async def test_expired_targets_count_as_errors(self):
        """An offline target expiring at the TTL counts toward max_errors."""
        self.online("gw-0")
        job = await self.create(selector="id=gw-0|gw-1", concurrency=2, ttl=10)
        await self.until_running(1)
        self.clock.advance(10)
        stopped = await self.until(job["job_id"], lambda j: j["status"] == "stopped")
        self.assertEqual(stopped["counts"], {"pending": 0, "dispatched": 1, "expired": 1})

    async def test_resume_after_backend_restart(self):
        """A new JobRunner on the same store reloads a running job and continues it.

        Commands started before the restart are not started again; completions
        that arrive after it are taken from the store and the new hub.
        """
        self.all_online()
        job = await self.create(selector="id=gw-0|gw-1|gw-2|gw-3", concurrency=2)
        await self.until_running(2)
        before = set(self.fleet.running)
        # The backend stops: no live sessions survive it.
        self.backend.commands.stop()
        for i in range(self.agents):
            self.offline(f"gw-{i}")
        await self.start_backend()
        reloaded = await self.job(job["job_id"])
        self.assertEqual(reloaded["status"], "running")
        self.assertEqual(reloaded["counts"], {"pending": 2, "dispatched": 2})
        self.all_online()  # the agents reconnect (their journals answer redeliveries)
        await stays(lambda: len(self.fleet.running) == 2, 0.2)
        for command_id in before:
            await self.finish(command_id)
        await self.until_running(2)
        self.assertEqual(set(self.fleet.running) & before, set())
        for command_id in list(self.fleet.running):
            await self.finish(command_id)
        done = await self.until(job["job_id"], lambda j: j["status"] == "completed")
        self.assertEqual(done["counts"], {"pending": 0, "succeeded": 4})
        self.assertEqual(sorted(self.fleet.ran), ["gw-0", "gw-1", "gw-2", "gw-3"])

    async def test_restart_between_command_and_record(self):
        """A crash after a command was created but before the job recorded it runs nothing twice.

        Each target is submitted with an idempotency key (job, agent): the
        reloaded runner gets the existing command back instead of a new one.
        """
        self.all_online()
        job = await self.create(selector="id=gw-0", concurrency=1)
        await self.until_running(1)
        [command_id] = self.fleet.running
        self.runner.stop()
        await self.store._run(
            self.store._update_count_txn, "UPDATE job_targets SET command_id = NULL", ()
        )
        self.runner = JobRunner(
            store=self.store,
            ledger=self.ledger,
            registry=self.registry,
            hub=self.hub,
            secrets=self.backend.commands.secrets,
            clock=self.clock,
            default_timeout=60.0,
            default_ttl=3600.0,
        )
        self.addCleanup(self.runner.stop)
        await self.runner.start()
        again = await self.until(job["job_id"], lambda j: j["commands"][0]["command_id"])
        self.assertEqual(again["commands"][0]["command_id"], command_id)
        self.assertEqual(self.fleet.ran, ["gw-0"])
        await self.finish(command_id)
        await self.until(job["job_id"], lambda j: j["status"] == "completed")

    async def test_secret_args_lost_in_a_restart_stop_the_job(self):
        """Secret args are never stored: after a restart, remaining targets cannot start."""
        self.all_online()
        job = await self.runner.create(
            parse_job_spec(
                {
                    "verb": "create_panel_user",
                    "args": {"username": "alice", "password": "s3cret-pw!"},
                    "selector": "id=gw-0|gw-1",
                }
            )
        )
        self.assertEqual(job["args"], {"username": "alice", "password": "***"})
        await self.until_running(1)
        row = await self.store._run(self.store._select_txn, "SELECT args FROM jobs", ())
        self.assertNotIn("s3cret", row[0][0])
        self.runner.stop()
        await self.start_backend()
        await self.finish(next(iter(self.fleet.running)))
        stopped = await self.until(job["job_id"], lambda j: j["status"] == "stopped")
        self.assertEqual(stopped["error"]["code"], "SECRETS_UNAVAILABLE")
        self.assertEqual(self.fleet.ran, ["gw-0"])

    async def test_job_progress_events(self):
        """``job.progress`` events carry the status and counts each time they change."""
        events = []
        self.hub.subscribe(lambda e: e.type == "job.progress" and events.append(e.data))
        self.all_online()
        job = await self.create(selector="id=gw-0|gw-1", concurrency=1)
        await self.until_running(1)
        await self.finish(next(iter(self.fleet.running)))
        await self.until_running(1)
        await self.finish(next(iter(self.fleet.running)))
        await self.until(job["job_id"], lambda j: j["status"] == "completed")
        await eventually(lambda: events and events[-1]["status"] == "completed")
        self.assertTrue(all(e["job_id"] == job["job_id"] for e in events))
        self.assertEqual(
            events[0], {"job_id": job["job_id"], "status": "running", "counts": {"pending": 2}}
        )
        self.assertEqual(events[-1]["counts"], {"pending": 0, "succeeded": 2})
        seen = [(e["status"], tuple(sorted(e["counts"].items()))) for e in events]
        self.assertEqual(len(seen), len(set(seen)), "an event is published only on a change")
        self.assertIn(("running", (("dispatched", 1), ("pending", 1))), seen)
        self.assertIn(("running", (("dispatched", 1), ("pending", 0), ("succeeded", 1))), seen)

    def test_resolve_limit(self):
        """Counts are >= 1; percentages are of the targets, rounded down, at least 1;
        anything else is a 400 BAD_REQUEST naming the field."""

        def resolve(value, targets, default):
            return resolve_limit(parse_limit("c", value), targets, default)

        self.assertEqual(resolve(3, 10, 1), ("3", 3))
        self.assertEqual(resolve("10%", 10, 1), ("10%", 1))
        self.assertEqual(resolve("10%", 5, 1), ("10%", 1))
        self.assertEqual(resolve("25%", 10, 1), ("25%", 2))
        self.assertEqual(resolve(" 25% ", 10, 1), ("25%", 2))
        self.assertEqual(resolve("100%", 7, 1), ("100%", 7))
        self.assertEqual(resolve(None, 7, 1), ("1", 1))
        for bad in (0, -1, True, 1.5, "0%", "101%", "abc", "%", "5", [1]):
            with self.assertRaises(DomainError, msg=repr(bad)) as caught:
                parse_limit("c", bad)
            self.assertEqual((caught.exception.code, caught.exception.field), ("BAD_REQUEST", "c"))
            self.assertEqual(STATUS[caught.exception.code], 400)


class JobAPITests(JobTestsBase):
    """The jobs routes and the selector dry run, through Klein with StubTreq."""

    async def _setUp(self):
        await super()._setUp()
        await self.store.create_token("tester", hash_token(TOKEN), 1.0)
        await self.add_agent("gw-x", site="prod", labels={"role": "edge"}, verbs={})
        self.api = self.backend.api()
        self.http = StubTreq(self.api.resource())

    async def call(self, method, path, body=None):
        headers = {b"authorization": [f"Bearer {TOKEN}".encode()]}
        response, decoded = await json_call(self.http, method, path, body, headers)
        return response.code, decoded

    async def test_selector_dry_run(self):
        """GET /api/v1/agents?selector= lists exactly the agents a job would target."""
        code, body = await self.call("GET", "/api/v1/agents?selector=site%3Dprod%2Crole%3Dedge")
        self.assertEqual(code, 200)
        self.assertEqual([a["agent_id"] for a in body["agents"]], ["gw-1", "gw-5", "gw-x"])
        code, body = await self.call("GET", "/api/v1/agents?selector=id%3Dgw-0%7Cgw-4")
        self.assertEqual([a["agent_id"] for a in body["agents"]], ["gw-0", "gw-4"])
        code, body = await self.call("GET", "/api/v1/agents")
        self.assertEqual(len(body["agents"]), 7)

    async def test_malformed_selector_is_a_400_naming_the_term(self):
        """A malformed selector is a 400 on field selector whose message names the term."""
        code, body = await self.call("GET", "/api/v1/agents?selector=site%3Dprod%2Croleedge")
        self.assertEqual(code, 400)
        self.assertEqual(body["error"]["field"], "selector")
        self.assertIn("'roleedge'", body["error"]["message"])
        code, body = await self.call(
            "POST", "/api/v1/jobs", {"verb": "ping", "selector": "site=prod,role=|x"}
        )
        self.assertEqual((code, body["error"]["field"]), (400, "selector"))
        self.assertIn("'role=|x'", body["error"]["message"])

    async def test_create_show_and_list(self):
        """POST creates a job (201) with its targets; GET shows it and lists it."""
        self.all_online()
        code, job = await self.call(
            "POST",
            "/api/v1/jobs",
            {"verb": "ping", "selector": "site=lab", "concurrency": "50%", "max_errors": 1},
        )
        self.assertEqual(code, 201)
        for key in ("job_id", "status", "counts", "commands", "verb", "selector", "created_at"):
            self.assertIn(key, job)
        self.assertEqual(job["status"], "running")
        self.assertEqual(job["concurrency"], "50%")
        self.assertEqual(job["max_errors"], 1)
        self.assertEqual([c["agent_id"] for c in job["commands"]], ["gw-0", "gw-3"])
        self.assertEqual(job["created_by"], "tester")
        await self.until_running(1)
        code, shown = await self.call("GET", f"/api/v1/jobs/{job['job_id']}")
        self.assertEqual(code, 200)
        self.assertEqual(shown["counts"], {"pending": 1, "dispatched": 1})
        [started] = [c for c in shown["commands"] if c["command_id"]]
        self.assertEqual(started["status"], "dispatched")
        code, listed = await self.call("GET", "/api/v1/jobs")
        self.assertEqual(code, 200)
        self.assertEqual([j["job_id"] for j in listed["jobs"]], [job["job_id"]])
        self.assertNotIn("commands", listed["jobs"][0])
        self.assertEqual(listed["jobs"][0]["counts"], shown["counts"])
        code, listed = await self.call("GET", "/api/v1/jobs?status=completed")
        self.assertEqual(listed["jobs"], [])
        code, body = await self.call("GET", "/api/v1/jobs?status=nope")
        self.assertEqual(code, 400)
        code, body = await self.call("GET", "/api/v1/jobs/nope")
        self.assertEqual((code, body["error"]["code"]), (404, "JOB_NOT_FOUND"))

    async def test_pause_resume_cancel_routes(self):
        """pause/resume/cancel answer the job; an impossible change is a 409."""
        self.all_online()
        code, job = await self.call(
            "POST", "/api/v1/jobs", {"verb": "ping", "selector": "role=core"}
        )
        path = f"/api/v1/jobs/{job['job_id']}"
        code, body = await self.call("POST", path + "/pause")
        self.assertEqual((code, body["status"]), (200, "paused"))
        self.assertEqual(body["error"]["code"], "PAUSED")  # why, and by which token
        self.assertIn("paused by token", body["error"]["message"])
        code, body = await self.call("POST", path + "/pause")
        self.assertEqual((code, body["error"]["code"]), (409, "JOB_PAUSED"))
        code, body = await self.call("POST", path + "/resume")
        self.assertEqual((code, body["status"], body["error"]), (200, "running", None))
        code, body = await self.call("POST", path + "/cancel")
        self.assertEqual((code, body["status"]), (200, "cancelled"))
        code, body = await self.call("POST", path + "/explode")
        self.assertIn(code, (403, 404))  # not an operator route; admins get the 404
        code, body = await self.call("POST", "/api/v1/jobs/nope/cancel")
        self.assertEqual((code, body["error"]["code"]), (404, "JOB_NOT_FOUND"))

    async def test_validation(self):
        """Bad limits and selectors are 400s; verbs and args are checked per agent (422)."""
        cases = [
            ({"selector": "role=core", "concurrency": 0}, 400, "concurrency"),
            ({"selector": "role=core", "concurrency": "150%"}, 400, "concurrency"),
            ({"selector": "role=core", "max_errors": "x"}, 400, "max_errors"),
            ({"selector": "role=core", "canary": 0}, 400, "canary"),
            ({"selector": "role=core", "canary_auto": True}, 400, "canary_auto"),
            ({"selector": "role=core", "bogus": 1}, 400, "bogus"),
            ({}, 400, "selector"),
            ({"selector": "role=nobody"}, 422, "selector"),
            ({"selector": "role=core", "verb": "nope"}, 422, "verb"),
            # gw-x matches role=edge but offers no verbs at all.
            ({"selector": "role=edge"}, 422, "verb"),
            ({"selector": "role=core", "ttl": -1}, 422, "ttl"),
            (
                {
                    "selector": "role=core",
                    "verb": "create_panel_user",
                    "args": {"username": "x", "password": "long-enough"},
                },
                422,
                "username",
            ),
        ]
        for overrides, status, field in cases:
            code, body = await self.call("POST", "/api/v1/jobs", {"verb": "ping", **overrides})
            self.assertEqual((code, body["error"].get("field")), (status, field), overrides)
        code, body = await self.call(
            "POST", "/api/v1/jobs", {"verb": "ping", "selector": "role=edge"}
        )
        self.assertIn("'gw-x'", body["error"]["message"])
        code, listed = await self.call("GET", "/api/v1/jobs")
        self.assertEqual(listed["jobs"], [])
