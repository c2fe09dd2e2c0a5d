"""Tests for viworks.gateway.verbs (real htpasswd and real children)."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import ProcessDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs import (
    Invocation,
    Verb,
    VerbCatalog,
    VerbError,
    VerbOutcome,
    default_catalog,
)

HTPASSWD = "/usr/bin/htpasswd"
PY = sys.executable
PASSWORD = "correct horse battery"
ALICE = {"username": "alice", "password": PASSWORD}


class Transport:
    def __init__(self) -> None:
        self.pid = 999999
        self.stdin = b""

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        pass


class RecordingSpawner:
    """Records every spawn; the test then finishes the fake process."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, list[str], Transport]] = []

    def __call__(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        transport = Transport()
        protocol.makeConnection(transport)
        self.calls.append((protocol, args, transport))
        return transport

    def finish(self, index: int = -1, stderr: bytes = b"") -> None:
        protocol = self.calls[index][0]
        if stderr:
            protocol.childDataReceived(2, stderr)
        protocol.processExited(Failure(ProcessDone(0)))
        protocol.processEnded(Failure(ProcessDone(0)))


class Base(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.users = os.path.join(self.tmp, "panel.htpasswd")
        self.runner = ProcessRunner(reactor)
        self.clock = Clock()
        self.catalog = default_catalog(
            self.runner, panel_users_file=self.users, htpasswd=HTPASSWD, clock=self.clock
        )
        self.spawner = RecordingSpawner()
        self.fake_catalog = default_catalog(
            ProcessRunner(Clock(), self.spawner, killpg=lambda pid, sig: None),
            panel_users_file=self.users,
        )

    def assertError(self, outcome: VerbOutcome, status: str, code: str) -> None:
        self.assertEqual(outcome.status, status, outcome)
        assert outcome.error is not None
        self.assertEqual(outcome.error["code"], code, outcome)

    async def verify_password(self, user: str, password: str) -> bool:
        result = await self.runner.run(
            [HTPASSWD, "-v", "-i", self.users, user], stdin=password.encode(), timeout=20
        )
        return result.exit_code == 0


class CatalogTests(Base):
    def test_describe(self) -> None:
        """describe() lists every verb with params, description, changes_state."""
        described = self.catalog.describe()
        self.assertEqual(
            list(described), ["create_panel_user", "delete_panel_user", "ping", "system_health"]
        )
        self.assertEqual(self.catalog.names(), list(described))
        self.assertEqual(set(described["ping"]), {"params", "description", "changes_state"})
        self.assertFalse(described["ping"]["changes_state"])
        self.assertTrue(described["create_panel_user"]["changes_state"])
        self.assertEqual(described["create_panel_user"]["params"]["password"]["type"], "secret")

    def test_ping(self) -> None:
        """ping answers pong with the agent's clock in RFC 3339 UTC."""
        self.clock.advance(86400.5)
        outcome = self.successResultOf(self.catalog.execute("ping", {}))
        self.assertEqual(outcome.status, "succeeded")
        self.assertEqual(outcome.result, {"pong": True, "agent_time": "1970-01-02T00:00:00.500Z"})
        self.assertIsNone(outcome.error)

    def test_system_health(self) -> None:
        """system_health returns the health snapshot in-process."""
        outcome = self.successResultOf(self.catalog.execute("system_health", {}))
        self.assertEqual(outcome.status, "succeeded")
        self.assertIn("memory", outcome.result)
        self.assertIn("disk", outcome.result)

    def test_unknown_verb(self) -> None:
        """An unknown verb is rejected with UNKNOWN_VERB and nothing runs."""
        outcome = self.successResultOf(self.fake_catalog.execute("rm_rf", {}))
        self.assertError(outcome, "rejected", "UNKNOWN_VERB")
        self.assertEqual(self.spawner.calls, [])

    def test_invalid_args(self) -> None:
        """Invalid arguments are rejected with INVALID_ARGS naming the field;
        nothing runs and no file is created."""
        for args, field in [
            ({"username": "a", "password": PASSWORD}, "username"),
            ({"username": "-Dalice", "password": PASSWORD}, "username"),
            ({"username": "alice"}, "password"),
            ({"username": "alice", "password": PASSWORD, "x": 1}, "x"),
            ({"username": "alice", "password": "pw\nline2x"}, "password"),
        ]:
            outcome = self.successResultOf(self.fake_catalog.execute("create_panel_user", args))
            self.assertError(outcome, "rejected", "INVALID_ARGS")
            assert outcome.error is not None
            self.assertIn(field, outcome.error["message"])
        self.assertEqual(self.spawner.calls, [])
        self.assertFalse(os.path.exists(self.users))

    def test_secret_not_in_rejection(self) -> None:
        """A rejected secret does not appear in the outcome."""
        outcome = self.successResultOf(
            self.fake_catalog.execute("create_panel_user", {"username": "al", "password": "sh0rt"})
        )
        self.assertNotIn("sh0rt", repr(outcome))

    def test_password_not_in_argv(self) -> None:
        """The password goes to htpasswd on stdin, never in argv."""
        execution = self.fake_catalog.start(
            "create_panel_user", {"username": "alice", "password": PASSWORD}
        )
        [(_proto, argv, transport)] = self.spawner.calls
        self.assertEqual(argv[1:], [HTPASSWD, "-i", "-B", self.users, "alice"])
        self.assertFalse(any(PASSWORD in a for a in argv))
        self.assertEqual(transport.stdin, PASSWORD.encode())
        self.spawner.finish(stderr=b"Adding password for user alice\n")
        outcome = self.successResultOf(execution.outcome)
        self.assertEqual(outcome.result, {"username": "alice", "created": True})

    def test_serialized_verbs(self) -> None:
        """Writers of the users file run one at a time."""
        first = self.fake_catalog.start("create_panel_user", ALICE)
        second = self.fake_catalog.start("delete_panel_user", {"username": "bob"})
        self.assertEqual(len(self.spawner.calls), 1)
        self.spawner.finish(0, stderr=b"Updating password for user alice\n")
        self.assertEqual(self.successResultOf(first.outcome).status, "succeeded")
        self.assertEqual(len(self.spawner.calls), 2)
        self.spawner.finish(1, stderr=b"Deleting password for user bob\n")
        self.assertEqual(self.successResultOf(second.outcome).result["deleted"], True)

    def test_cancel_while_queued(self) -> None:
        """Cancelling an execution still waiting for its turn runs nothing."""
        first = self.fake_catalog.start("create_panel_user", ALICE)
        second = self.fake_catalog.start("delete_panel_user", {"username": "bob"})
        second.cancel()
        self.assertError(self.successResultOf(second.outcome), "cancelled", "CANCELLED")
        self.spawner.finish(0, stderr=b"Adding password for user alice\n")
        self.successResultOf(first.outcome)
        self.assertEqual(len(self.spawner.calls), 1)

    def test_in_process_errors(self) -> None:
        """VerbError from a callable fails with its code; other exceptions
        fail with INTERNAL_ERROR and no details."""

        def boom(_args: dict[str, Any]) -> None:
            raise RuntimeError("internal detail")

        def nope(_args: dict[str, Any]) -> None:
            raise VerbError("NOPE", "not today")

        catalog = VerbCatalog(
            self.runner,
            {"boom": Verb("boom", {}, call=boom), "nope": Verb("nope", {}, call=nope)},
        )
        self.assertError(self.successResultOf(catalog.execute("nope", {})), "failed", "NOPE")
        outcome = self.successResultOf(catalog.execute("boom", {}))
        self.assertError(outcome, "failed", "INTERNAL_ERROR")
        self.assertNotIn("internal detail", repr(outcome))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_verb_definition_checked(self) -> None:
        """A verb needs exactly one way to run and a well-formed schema."""
        with self.assertRaises(ValueError):
            Verb("v", {})
        with self.assertRaises(ValueError):
            Verb("v", {"p": {"type": "nope"}}, call=lambda a: None)
        with self.assertRaises(ValueError):
            VerbCatalog(self.runner, {"a": Verb("b", {}, call=lambda a: None)})


def py_verb(code: str, **kw: Any) -> Verb:
    params = kw.pop("params", {})
    return Verb("py", params, build=lambda _args: Invocation([PY, "-c", code]), **kw)


class SubprocessOutcomeTests(Base):
    async def test_nonzero_exit(self) -> None:
        """A nonzero exit is failed/EXIT_NONZERO with output kept."""
        code = "import sys; print('bad', file=sys.stderr); sys.exit(3)"
        catalog = VerbCatalog(self.runner, {"py": py_verb(code)})
        outcome = await catalog.execute("py", {})
        self.assertError(outcome, "failed", "EXIT_NONZERO")
        self.assertEqual(outcome.exit_code, 3)
        self.assertEqual(outcome.stderr, "bad\n")

    async def test_requested_timeout(self) -> None:
        """A requested timeout shorter than the verb's maximum applies: timed_out/TIMEOUT."""
        catalog = VerbCatalog(
            self.runner, {"py": py_verb("import time; time.sleep(60)", timeout=60, kill_grace=1)}
        )
        outcome = await catalog.execute("py", {}, timeout=0.5)
        self.assertError(outcome, "timed_out", "TIMEOUT")
        assert outcome.error is not None
        self.assertIn("0.5", outcome.error["message"])

    async def test_verb_maximum_caps_timeout(self) -> None:
        """A requested timeout cannot exceed the verb's own maximum."""
        catalog = VerbCatalog(
            self.runner, {"py": py_verb("import time; time.sleep(60)", timeout=0.5, kill_grace=1)}
        )
        outcome = await catalog.execute("py", {}, timeout=1000)
        self.assertError(outcome, "timed_out", "TIMEOUT")

    def test_bad_timeout_rejected(self) -> None:
        """A non-positive requested timeout is rejected and nothing runs."""
        for bad in (0, -1, float("nan"), "5", True):
            outcome = self.successResultOf(self.fake_catalog.execute("ping", {}, timeout=bad))
            self.assertError(outcome, "rejected", "INVALID_ARGS")

    async def test_cancel(self) -> None:
        """execution.cancel() kills the process; outcome is cancelled/CANCELLED."""
        catalog = VerbCatalog(
            self.runner,
            {"py": py_verb("print('hi', flush=True); import time; time.sleep(60)", timeout=60)},
        )
        execution = catalog.start("py", {})
        self.runner.reactor.callLater(0.5, execution.cancel)
        outcome = await execution.outcome
        self.assertError(outcome, "cancelled", "CANCELLED")

    async def test_secret_scrubbed_from_output(self) -> None:
        """A secret echoed by the command is replaced by *** in the outcome."""
        params = {"pw": {"type": "secret"}}
        verb = Verb(
            "echo",
            params,
            build=lambda a: Invocation(
                [PY, "-c", "import sys; print(sys.stdin.read())"], stdin=a["pw"].encode()
            ),
        )
        catalog = VerbCatalog(self.runner, {"echo": verb})
        outcome = await catalog.execute("echo", {"pw": "s3cr3t-value"})
        self.assertEqual(outcome.stdout, "***\n")
        self.assertNotIn("s3cr3t-value", repr(outcome))


class PanelUserTests(Base):
    async def test_create_update_delete(self) -> None:
        """Real htpasswd: create (bcrypt, 0640 file), update, delete."""
        args = {"username": "alice", "password": PASSWORD}
        outcome = await self.catalog.execute("create_panel_user", args)
        self.assertEqual(outcome.status, "succeeded", outcome)
        self.assertEqual(outcome.result, {"username": "alice", "created": True})
        self.assertNotIn(PASSWORD, repr(outcome))
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o640)
        with open(self.users) as f:
            self.assertTrue(f.read().startswith("alice:$2y$"))
        self.assertTrue(await self.verify_password("alice", PASSWORD))

        args["password"] = "another passw0rd"
        outcome = await self.catalog.execute("create_panel_user", args)
        self.assertEqual(outcome.result, {"username": "alice", "created": False})
        self.assertTrue(await self.verify_password("alice", "another passw0rd"))
        self.assertFalse(await self.verify_password("alice", PASSWORD))
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o640)

        outcome = await self.catalog.execute("delete_panel_user", {"username": "alice"})
        self.assertEqual(outcome.status, "succeeded", outcome)
        self.assertEqual(outcome.result, {"username": "alice", "deleted": True})
        with open(self.users) as f:
            self.assertNotIn("alice", f.read())

    async def test_delete_missing_user(self) -> None:
        """Deleting a user that does not exist fails with NOT_FOUND."""
        await self.catalog.execute("create_panel_user", {"username": "bob", "password": PASSWORD})
        outcome = await self.catalog.execute("delete_panel_user", {"username": "alice"})
        self.assertError(outcome, "failed", "NOT_FOUND")
        with open(self.users) as f:
            self.assertIn("bob:", f.read())

    async def test_delete_without_users_file(self) -> None:
        """Deleting when the users file does not exist is NOT_FOUND; nothing runs."""
        outcome = await self.fake_catalog.execute("delete_panel_user", {"username": "alice"})
        self.assertError(outcome, "failed", "NOT_FOUND")
        self.assertEqual(self.spawner.calls, [])
        self.assertFalse(os.path.exists(self.users))
