"""BackendLink's command handling with a real journal, in memory (no sockets).

The link is driven frame by frame through ``frame_received`` with a fake
connection; the verb catalogue is a fake whose executions the test finishes.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from viworks import protocol
from viworks.gateway.journal import Journal
from viworks.gateway.link import BackendLink
from viworks.gateway.verbs.model import VerbOutcome


class FakeConnection:
    def __init__(self) -> None:
        self.sent: list[protocol.Frame] = []

    def send_frame(self, payload: bytes) -> None:
        self.sent.append(protocol.decode(payload))

    def of_type(self, frame_type: str) -> list[protocol.Frame]:
        return [f for f in self.sent if f.type == frame_type]


class FakeExecution:
    def __init__(self) -> None:
        self.outcome: Deferred = Deferred()
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeCatalog:
    """Records what was started; the test fires the outcomes and feeds output."""

    running = 0
    queued = 0

    def __init__(self) -> None:
        self.started: list[tuple[str, dict, float]] = []
        self.executions: list[FakeExecution] = []
        self.outputs: list = []

    def describe(self) -> dict:
        return {"ping": {"params": {}, "description": "", "changes_state": False}}

    def names(self) -> list[str]:
        return ["ping"]

    def start(self, verb: str, args: dict, timeout: float, on_output=None) -> FakeExecution:
        self.started.append((verb, args, timeout))
        self.executions.append(FakeExecution())
        self.outputs.append(on_output)
        return self.executions[-1]


def succeeded(stdout: str = "ok") -> VerbOutcome:
    return VerbOutcome(
        status="succeeded",
        exit_code=0,
        result=None,
        stdout=stdout,
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        error=None,
    )


class LinkTestCase(unittest.TestCase):
    """A link over a real journal in the test's directory, driven frame by frame."""

    def setUp(self):
        self.path = os.path.join(self.mktemp(), "journal.db")
        os.makedirs(os.path.dirname(self.path))
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.link = self.new_link()

    def new_link(self) -> BackendLink:
        """A link over the journal at self.path, opened as startService would."""
        self.catalog = FakeCatalog()
        link = BackendLink(
            reactor=self.clock,
            backend_url="wss://backend.test:8081/ws/agent",
            agent_id="gw-1",
            site="test",
            hostname="host",
            catalog=self.catalog,
            journal=Journal(self.path, clock=self.clock),
            tls_options=None,
        )
        self.recovered = link.journal.open()
        self.addCleanup(link.journal.close)
        return link

    def connect(self, link: BackendLink | None = None) -> FakeConnection:
        link = link or self.link
        conn = FakeConnection()
        link.connection_opened(conn)
        link.frame_received(
            conn,
            protocol.encode(
                "welcome",
                session_id="s",
                epoch=1,
                heartbeat_interval=15,
                heartbeat_timeout=30,
                protocol=protocol.HELLO_PROTOCOL,
            ),
            False,
        )
        self.addCleanup(link._stop_timers)
        return conn

    def command(self, conn, command_id="c1", expires_at=None, link=None, **extra) -> None:
        frame = protocol.encode(
            "command",
            command_id=command_id,
            verb="ping",
            args={},
            timeout=5,
            expires_at=expires_at,
            **extra,
        )
        (link or self.link).frame_received(conn, frame, False)

    def cancel(self, conn, command_id="c1", link=None, **extra) -> None:
        """A ``cancel`` frame from the backend."""
        frame = protocol.encode("cancel", command_id=command_id, agent_id="gw-1", **extra)
        (link or self.link).frame_received(conn, frame, False)


class LinkCommandTests(LinkTestCase):
    def test_ack_run_and_report(self):
        """A command is acknowledged, run once, and its result sent after it is journalled."""
        conn = self.connect()
        self.command(conn)
        self.assertEqual([f["command_id"] for f in conn.of_type("ack")], ["c1"])
        self.catalog.executions[0].outcome.callback(succeeded())
        [result] = conn.of_type("result")
        self.assertEqual((result["status"], result["stdout"]), ("succeeded", "ok"))
        self.assertEqual(self.link.journal.get("c1").state, "finished")

    def test_redelivery_while_running_is_not_run_again(self):
        """A redelivered command that is still running only gets another ack."""
        conn = self.connect()
        self.command(conn)
        self.command(conn)
        self.assertEqual(len(self.catalog.started), 1)
        self.assertEqual(len(conn.of_type("ack")), 2)

    def test_redelivery_after_finish_answers_from_journal(self):
        """A redelivered finished command is answered with the recorded result."""
        conn = self.connect()
        self.command(conn)
        self.catalog.executions[0].outcome.callback(succeeded("first"))
        self.command(conn)
        self.assertEqual(len(self.catalog.started), 1)
        self.assertEqual([r["stdout"] for r in conn.of_type("result")], ["first", "first"])

    def test_redelivery_across_restart(self):
        """After an agent restart the journal still answers a redelivery, without running it."""
        conn = self.connect()
        self.command(conn)
        self.catalog.executions[0].outcome.callback(succeeded("before restart"))
        self.link.journal.close()
        link = self.new_link()
        conn = self.connect(link)
        self.command(conn, link=link)
        self.assertEqual(self.catalog.started, [])
        self.assertIn("before restart", [r["stdout"] for r in conn.of_type("result")])

    def test_running_at_crash_reported_lost(self):
        """A command running when the agent died is replayed as lost after the next welcome."""
        conn = self.connect()
        self.command(conn)
        self.link.journal.close()  # the process dies: no result was ever written
        link = self.new_link()
        self.assertEqual([e.command_id for e in self.recovered], ["c1"])
        conn = self.connect(link)
        [result] = conn.of_type("result")
        self.assertEqual((result["status"], result["error"]["code"]), ("lost", "AGENT_RESTARTED"))

    def test_results_spooled_while_disconnected_then_replayed_in_order(self):
        """Results finished while the link is down are sent in order after the next welcome."""
        conn = self.connect()
        self.command(conn, "c1")
        self.command(conn, "c2")
        self.link.connection_closed(conn, 1006, "gone")
        self.catalog.executions[1].outcome.callback(succeeded("second"))
        self.catalog.executions[0].outcome.callback(succeeded("first"))
        self.assertEqual(conn.of_type("result"), [])
        conn = self.connect()
        self.assertEqual([r["stdout"] for r in conn.of_type("result")], ["second", "first"])

    def test_result_ack_stops_replay(self):
        """Once the backend acknowledged a result it is not replayed again."""
        conn = self.connect()
        self.command(conn)
        self.catalog.executions[0].outcome.callback(succeeded())
        self.link.frame_received(conn, protocol.encode("result_ack", command_id="c1"), False)
        conn = self.connect()
        self.assertEqual(conn.of_type("result"), [])

    def test_expired_command_not_run(self):
        """A command arriving after its deadline is reported expired and never runs."""
        conn = self.connect()
        self.command(conn, expires_at=self.clock.seconds() - 1)
        self.assertEqual(self.catalog.started, [])
        [result] = conn.of_type("result")
        self.assertEqual(result["status"], "expired")
        self.assertEqual(conn.of_type("ack"), [])

    def test_redacted_redelivery_never_runs(self):
        """A redelivery without its secrets runs nothing when the journal does not know it."""
        conn = self.connect()
        self.command(conn, redacted=True)
        self.assertEqual(self.catalog.started, [])
        [result] = conn.of_type("result")
        self.assertEqual(
            (result["status"], result["error"]["code"]), ("rejected", "SECRETS_UNAVAILABLE")
        )

    def test_replaced_waits_reconnect_max(self):
        """Being replaced by another connection makes the next reconnect wait reconnect_max."""
        conn = self.connect()
        self.link.connection_closed(conn, protocol.CLOSE_REPLACED, "replaced")
        self.assertGreaterEqual(self.link.policy(0), self.link.reconnect_max)

    def test_retry_after_hint_honoured(self):
        """A retry-after hint in the close reason delays the next reconnect accordingly."""
        conn = self.connect()
        self.link.connection_closed(
            conn, protocol.CLOSE_SHUTDOWN, protocol.retry_after_reason("shutdown", 42)
        )
        self.assertGreaterEqual(self.link.policy(0), 42)

    def test_output_streamed_in_numbered_chunks_before_result(self):
        """Live output is batched (by time) into numbered chunks, all sent before the result."""
        conn = self.connect()
        self.command(conn)
        emit = self.catalog.outputs[0]
        emit("stdout", "one\n")
        emit("stdout", "two\n")
        self.assertEqual(conn.of_type("output"), [])
        self.clock.advance(0.25)
        emit("stderr", "warn\n")
        self.catalog.executions[0].outcome.callback(succeeded())
        chunks = [(f["seq"], f["stream"], f["data"]) for f in conn.of_type("output")]
        self.assertEqual(chunks, [(0, "stdout", "one\ntwo\n"), (1, "stderr", "warn\n")])
        self.assertEqual(conn.sent[-1].type, "result")

    def test_output_spooled_while_disconnected(self):
        """Output produced while the link is down is sent after the next welcome."""
        conn = self.connect()
        self.command(conn)
        self.link.connection_closed(conn, 1006, "gone")
        self.catalog.outputs[0]("stdout", "while away\n")
        self.clock.advance(1)
        conn = self.connect()
        self.assertEqual([f["data"] for f in conn.of_type("output")], ["while away\n"])

    def test_cancel_running(self):
        """A cancel frame cancels the running execution."""
        conn = self.connect()
        self.command(conn)
        self.cancel(conn, "c1")
        self.assertTrue(self.catalog.executions[0].cancelled)

    def test_cancel_finished_answers_from_journal(self):
        """A cancel for a finished command is answered with its recorded result."""
        conn = self.connect()
        self.command(conn)
        self.catalog.executions[0].outcome.callback(succeeded("done"))
        self.cancel(conn, "c1")
        self.assertEqual([r["stdout"] for r in conn.of_type("result")], ["done", "done"])

    def test_cancel_for_unknown_command_does_not_pre_cancel(self):
        """A cancel naming a command the agent never received changes nothing: a later
        command with that id runs (the backend always sends a command before its cancel)."""
        conn = self.connect()
        self.cancel(conn, "c9")
        self.assertEqual(conn.of_type("result"), [])
        [error] = conn.of_type("error")
        self.assertEqual((error["code"], error["command_id"]), ("UNKNOWN_COMMAND", "c9"))
        self.assertIsNone(self.link.journal.get("c9"))
        self.command(conn, "c9")
        self.assertEqual(len(self.catalog.started), 1)
        self.assertEqual([a["command_id"] for a in conn.of_type("ack")], ["c9"])

    def test_telemetry_after_welcome(self):
        """Telemetry is reported right after the welcome, then every telemetry_interval."""
        conn = self.connect()
        [first] = conn.of_type("telemetry")
        self.assertIn("health", first["metrics"])
        self.assertEqual(first["metrics"]["verbs"], {"running": 0, "queued": 0})
        self.clock.advance(self.link.telemetry_interval)
        self.assertEqual(len(conn.of_type("telemetry")), 2)

    def test_refusal_hint_honoured_before_open(self):
        """A refusal at the upgrade (the connection never opened) still sets the retry delay."""
        reason = "connection was closed uncleanly (503 - busy; retry-after=3.0)"
        self.link.connection_closed(FakeConnection(), 1006, reason)
        self.assertGreaterEqual(self.link.policy(0), 3.0)
