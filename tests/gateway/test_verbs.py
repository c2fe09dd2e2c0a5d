"""Tests for viworks.gateway.verbs (real htpasswd and real children)."""

from __future__ import annotations

import json
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

from viworks.config import BUILTIN_VERBS, AgentConfig, PanelSection, load_agent_config
from viworks.gateway import host_verbs, panel_verbs
from viworks.gateway.catalog import builtin_verbs, catalog_from_config
from viworks.gateway.runner import DEFAULT_ENV, ProcessRunner
from viworks.gateway.verbs import (
    Invocation,
    Verb,
    VerbCatalog,
    VerbError,
    VerbOutcome,
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
        self.kwargs: list[dict[str, Any]] = []

    def __call__(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        transport = Transport()
        protocol.makeConnection(transport)
        self.calls.append((protocol, args, transport))
        self.kwargs.append(kw)
        return transport

    def finish(self, index: int = -1, stderr: bytes = b"") -> None:
        protocol = self.calls[index][0]
        if stderr:
            protocol.childDataReceived(2, stderr)
        protocol.processExited(Failure(ProcessDone(0)))
        protocol.processEnded(Failure(ProcessDone(0)))


def panel_catalog(
    runner: ProcessRunner, users_file: str, htpasswd: str = HTPASSWD, clock: Any = None
) -> VerbCatalog:
    """The host and panel verb families over ``users_file``."""
    verbs = [
        *host_verbs.verbs(clock),
        *panel_verbs.verbs(PanelSection(users_file=users_file, htpasswd=htpasswd)),
    ]
    return VerbCatalog(runner, {v.name: v for v in verbs})


class Base(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.users = os.path.join(self.tmp, "panel.htpasswd")
        self.runner = ProcessRunner(reactor)
        self.clock = Clock()
        self.catalog = panel_catalog(self.runner, self.users, clock=self.clock)
        self.spawner = RecordingSpawner()
        self.fake_catalog = panel_catalog(
            ProcessRunner(Clock(), self.spawner, killpg=lambda pid, sig: None), self.users
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


# Prints what it was given: its arguments and its stdin, as JSON.
ECHO_SCRIPT = """\
import json, sys
print(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.read()}))
"""


class ConfigCatalogTests(Base):
    """catalog_from_config: overrides, disabled and declared verbs, exec_enable."""

    def setUp(self) -> None:
        super().setUp()
        self.echo = os.path.join(self.tmp, "echo.py")
        with open(self.echo, "w") as f:
            f.write(ECHO_SCRIPT)

    def load(self, extra: str = "", *, htpasswd: str = HTPASSWD) -> AgentConfig:
        text = (
            '[outbound]\nbackend_url = "wss://backend.example/ws/agent"\nagent_id = "a1"\n'
            '[tls]\ncert = "a.crt"\nkey = "a.key"\nca = "ca.crt"\n'
            f"[panel]\nusers_file = {json.dumps(self.users)}\nhtpasswd = {json.dumps(htpasswd)}\n"
            + extra
        )
        path = os.path.join(self.tmp, "agent.toml")
        with open(path, "w") as f:
            f.write(text)
        return load_agent_config(path, check_files=False)

    def real(self, extra: str = "", **kw: Any) -> VerbCatalog:
        return catalog_from_config(self.runner, self.load(extra, **kw), clock=self.clock)

    def fake(self, extra: str = "") -> VerbCatalog:
        runner = ProcessRunner(Clock(), self.spawner, killpg=lambda pid, sig: None)
        return catalog_from_config(runner, self.load(extra))

    def echo_verb(self, name: str, argv: list[str], rest: str = "") -> str:
        """A [verbs.NAME] table running the echo script with extra ``argv`` templates."""
        return f"[verbs.{name}]\nargv = {json.dumps([PY, self.echo, *argv])}\n{rest}"

    def test_builtin_names_match_config(self) -> None:
        """viworks.config.BUILTIN_VERBS names exactly the built-in verbs."""
        self.assertEqual(set(builtin_verbs(self.load(), self.runner)), BUILTIN_VERBS)

    async def test_declared_verb_runs(self) -> None:
        """A declared verb runs argv with placeholders substituted inside single elements
        (no shell), gets its stdin template, and succeeds with result None."""
        catalog = self.real(
            self.echo_verb(
                "greet",
                ["--name={name}", "{count}", "{{literal}}", "{where}"],
                'stdin = "hello {name}\\n"\n'
                'params.name = {type = "string", pattern = "[A-Za-z ;$]+"}\n'
                'params.count = {type = "integer", min = 0, default = 3}\n'
                'params.where = {type = "ip"}\n',
            )
        )
        outcome = await catalog.execute("greet", {"name": "bob; $HOME", "where": "::0001"})
        self.assertEqual(outcome.status, "succeeded", outcome)
        self.assertIsNone(outcome.result)
        self.assertEqual(
            json.loads(outcome.stdout),
            {
                "argv": ["--name=bob; $HOME", "3", "{literal}", "::1"],
                "stdin": "hello bob; $HOME\n",
            },
        )

    async def test_declared_verb_invalid_args(self) -> None:
        """Arguments of a declared verb are validated against its params; nothing runs."""
        catalog = self.fake(
            self.echo_verb("rotate_logs", ["{config}"])
            + 'params.config = {type = "string", pattern = "^/etc/logrotate\\\\.d/[a-z0-9_-]+$"}\n'
        )
        for args in ({"config": "/etc/passwd"}, {}, {"config": "/etc/logrotate.d/x", "y": 1}):
            outcome = await catalog.execute("rotate_logs", args)
            self.assertError(outcome, "rejected", "INVALID_ARGS")
        self.assertEqual(self.spawner.calls, [])
        catalog.start("rotate_logs", {"config": "/etc/logrotate.d/nginx"})
        [(_proto, argv, _transport)] = self.spawner.calls
        self.assertEqual(argv[1:], [PY, self.echo, "/etc/logrotate.d/nginx"])

    def test_secret_only_on_stdin(self) -> None:
        """A secret reaches the tool through stdin only: never argv nor the environment."""
        secret = "s3cret-pa55word"
        catalog = self.fake(
            self.echo_verb(
                "set_pw",
                ["--user", "{user}"],
                'stdin = "{password}\\n"\n'
                'params.user = {type = "string"}\nparams.password = {type = "secret"}\n',
            )
        )
        execution = catalog.start("set_pw", {"user": "alice", "password": secret})
        [(_proto, argv, transport)] = self.spawner.calls
        self.assertEqual(argv[1:], [PY, self.echo, "--user", "alice"])
        self.assertFalse(any(secret in a for a in argv))
        self.assertEqual(self.spawner.kwargs[0]["env"], dict(DEFAULT_ENV))
        self.assertEqual(transport.stdin, (secret + "\n").encode())
        self.spawner.finish()
        self.assertEqual(self.successResultOf(execution.outcome).status, "succeeded")

    async def test_secret_scrubbed_from_declared_output(self) -> None:
        """A declared verb echoing its stdin secret has it replaced by *** in the outcome."""
        catalog = self.real(
            self.echo_verb("set_pw", [], 'stdin = "{pw}"\nparams.pw = {type = "secret"}\n')
        )
        outcome = await catalog.execute("set_pw", {"pw": "s3cret-pa55word"})
        self.assertEqual(json.loads(outcome.stdout), {"argv": [], "stdin": "***"})
        self.assertNotIn("s3cret-pa55word", repr(outcome))

    async def test_option_injection_rejected(self) -> None:
        """A string value that would start an argv element cannot start with '-';
        inside an element (``--name={x}``) it may."""
        catalog = self.fake(
            self.echo_verb("v", ["{x}", "--name={y}"])
            + 'params.x = {type = "string"}\nparams.y = {type = "string"}\n'
        )
        outcome = await catalog.execute("v", {"x": "--delete", "y": "a"})
        self.assertError(outcome, "rejected", "INVALID_ARGS")
        assert outcome.error is not None
        self.assertIn("x", outcome.error["message"])
        self.assertEqual(self.spawner.calls, [])
        catalog.start("v", {"x": "a", "y": "-b"})
        self.assertEqual(self.spawner.calls[0][1][-2:], ["a", "--name=-b"])

    def test_describe_configured_verbs(self) -> None:
        """describe() (the HELLO) lists exactly the configured verbs: disabled built-ins and
        disabled declarations are gone, declared verbs appear with their schema."""
        catalog = self.fake(
            "[verbs.delete_panel_user]\nenabled = false\n"
            + self.echo_verb(
                "rotate_logs",
                ["{config}"],
                'description = "Rotate."\nparams.config = {type = "string"}\n',
            )
            + self.echo_verb("parked", [], "enabled = false\n")
        )
        described = catalog.describe()
        self.assertEqual(
            list(described), ["create_panel_user", "ping", "rotate_logs", "system_health"]
        )
        self.assertEqual(
            described["rotate_logs"],
            {
                "params": {"config": {"type": "string"}},
                "description": "Rotate.",
                "changes_state": True,
            },
        )
        outcome = self.successResultOf(catalog.execute("delete_panel_user", {"username": "bob"}))
        self.assertError(outcome, "rejected", "UNKNOWN_VERB")

    def test_exec_disabled(self) -> None:
        """exec_enable = false rejects state-changing verbs with EXEC_DISABLED before anything
        runs; ping, system_health and declared read-only verbs still run."""
        catalog = self.fake(
            "[agent]\nexec_enable = false\n"
            + self.echo_verb("rotate", [])
            + self.echo_verb("show", [], "changes_state = false\n")
        )
        self.assertFalse(catalog.exec_enable)
        for name, args in [
            ("create_panel_user", ALICE),
            ("delete_panel_user", {"username": "alice"}),
            ("rotate", {}),
            ("create_panel_user", {"bad": "args"}),
        ]:
            outcome = self.successResultOf(catalog.execute(name, args))
            self.assertError(outcome, "rejected", "EXEC_DISABLED")
            assert outcome.error is not None
            self.assertIn("exec is disabled on this gateway", outcome.error["message"])
        self.assertEqual(self.spawner.calls, [])
        self.assertFalse(os.path.exists(self.users))
        self.assertEqual(self.successResultOf(catalog.execute("ping", {})).status, "succeeded")
        health = self.successResultOf(catalog.execute("system_health", {}))
        self.assertEqual(health.status, "succeeded")
        execution = catalog.start("show", {})
        self.assertEqual(len(self.spawner.calls), 1)
        self.spawner.finish()
        self.assertEqual(self.successResultOf(execution.outcome).status, "succeeded")
        # describe() still advertises every configured verb.
        self.assertIn("create_panel_user", catalog.describe())

    def test_exec_enabled_by_default(self) -> None:
        """Without exec_enable in the file, state-changing verbs run."""
        catalog = self.fake()
        self.assertTrue(catalog.exec_enable)
        catalog.start("create_panel_user", ALICE)
        self.assertEqual(len(self.spawner.calls), 1)

    async def test_override_timeout_applied(self) -> None:
        """[verbs.create_panel_user] timeout replaces the built-in maximum: a hanging
        htpasswd is killed after it."""
        hang = os.path.join(self.tmp, "htpasswd")
        with open(hang, "w") as f:
            f.write(f"#!{PY}\nimport time\ntime.sleep(60)\n")
        os.chmod(hang, 0o755)
        catalog = self.real("[verbs.create_panel_user]\ntimeout = 0.5\n", htpasswd=hang)
        verb = catalog.get("create_panel_user")
        assert verb is not None
        self.assertEqual(verb.timeout, 0.5)
        outcome = await catalog.execute("create_panel_user", ALICE)
        self.assertError(outcome, "timed_out", "TIMEOUT")
        assert outcome.error is not None
        self.assertIn("0.5", outcome.error["message"])

    def test_overrides_and_declared_defaults(self) -> None:
        """Built-in overrides keep what is not set; declared verbs get the gateway defaults
        and record concurrency."""
        catalog = self.fake(
            "[verbs.ping]\noutput_cap = 2048\nconcurrency = 3\n"
            + self.echo_verb("v", [], "concurrency = 2\n")
            + self.echo_verb("w", [], "timeout = 7\noutput_cap = 4096\n")
        )
        ping, v, w = catalog.get("ping"), catalog.get("v"), catalog.get("w")
        assert ping is not None and v is not None and w is not None
        self.assertEqual((ping.timeout, ping.output_cap, ping.concurrency), (5.0, 2048, 3))
        self.assertFalse(ping.changes_state)
        self.assertEqual((v.timeout, v.output_cap, v.concurrency), (30.0, 65536, 2))
        self.assertEqual((w.timeout, w.output_cap), (7.0, 4096))
        create = catalog.get("create_panel_user")
        assert create is not None
        self.assertTrue(create.changes_state)
        self.assertEqual(create.serialize, "panel_users")
