"""Tests for viworks.gateway.verbs and its catalog (real htpasswd and real children)."""

from __future__ import annotations

import json
import os
import random
import stat
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.gateway.spawn import RecordingSpawner
from viworks.config import AgentConfig, load_agent_config
from viworks.config.agent import PanelSection
from viworks.gateway.catalog import builtin_families, builtin_verbs, catalog_from_config
from viworks.gateway.runner import DEFAULT_ENV, ProcessRunner
from viworks.gateway.verbs.builtin import BUILTIN_VERBS, FAMILIES
from viworks.gateway.verbs.builtin import host as host_verbs
from viworks.gateway.verbs.builtin import panel as panel_verbs
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.model import TOOL_NOT_FOUND, Invocation, Verb, VerbError, VerbOutcome
from viworks.gateway.verbs.redaction import ScrubbedStream, SecretRedactor

HTPASSWD = "/usr/bin/htpasswd"
PY = sys.executable
PASSWORD = "correct horse battery"
ALICE = {"username": "alice", "password": PASSWORD}


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
        # The families grow; these are the verbs this test relies on.
        self.assertLessEqual(
            {"create_panel_user", "delete_panel_user", "ping", "system_health"}, set(described)
        )
        self.assertEqual(list(described), sorted(described))
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
        """builtin.FAMILIES names exactly the verbs each family builds, so BUILTIN_VERBS
        (what the config loader checks [verbs.NAME] tables against) is every built-in."""
        families = builtin_families(self.load(), self.runner)
        self.assertEqual(
            {family: tuple(verb.name for verb in verbs) for family, verbs in families.items()},
            dict(FAMILIES),
        )
        self.assertEqual(set(builtin_verbs(self.load(), self.runner)), BUILTIN_VERBS)

    async def test_declared_verb_program_missing(self) -> None:
        """A declared verb whose program (argv[0]) is not installed fails with
        TOOL_NOT_FOUND naming it, and nothing is spawned."""
        program = os.path.join(self.tmp, "rotate")
        catalog = self.fake(f"[verbs.rotate]\nargv = {json.dumps([program, '--now'])}\n")
        outcome = await catalog.execute("rotate", {})
        self.assertError(outcome, "failed", TOOL_NOT_FOUND)
        self.assertIn(program, outcome.error["message"])
        self.assertEqual(catalog.missing_tools()[program], ["rotate"])
        self.assertEqual(self.spawner.calls, [])

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
            list(described), sorted((BUILTIN_VERBS - {"delete_panel_user"}) | {"rotate_logs"})
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


def fake_runner(spawner: RecordingSpawner) -> ProcessRunner:
    return ProcessRunner(Clock(), spawner, killpg=lambda pid, sig: None)


def fake_verb(name: str, **kw: Any) -> Verb:
    """A subprocess verb for the RecordingSpawner: it runs until the test finishes it."""
    return Verb(name, {}, build=lambda _args: Invocation(["/bin/true", name]), **kw)


class LimitTests(unittest.TestCase):
    """Global and per-verb concurrency limits, the bounded queue, cancellation."""

    def setUp(self) -> None:
        self.spawner = RecordingSpawner()

    def catalog(self, *verbs: Verb, **kw: Any) -> VerbCatalog:
        return VerbCatalog(fake_runner(self.spawner), {v.name: v for v in verbs}, **kw)

    def spawned(self) -> list[str]:
        """The verb names spawned so far, in order."""
        return [args[-1] for _proto, args, _t in self.spawner.calls]

    def assertError(self, outcome: VerbOutcome, status: str, code: str) -> None:
        self.assertEqual(outcome.status, status, outcome)
        assert outcome.error is not None
        self.assertEqual(outcome.error["code"], code, outcome)

    def test_global_limit_and_queue_full(self) -> None:
        """With max_concurrency=2 and queue_limit=2, two run, two wait, and the fifth is
        rejected with QUEUE_FULL at once without running; waiting ones start in order
        as slots free."""
        catalog = self.catalog(
            fake_verb("a"), fake_verb("b"), fake_verb("c"), max_concurrency=2, queue_limit=2
        )
        runs = [catalog.start(name, {}) for name in ("a", "b", "c", "a", "b")]
        self.assertEqual(self.spawned(), ["a", "b"])
        self.assertEqual((catalog.running, catalog.queued), (2, 2))
        self.assertError(self.successResultOf(runs[4].outcome), "rejected", "QUEUE_FULL")
        for run in runs[:4]:
            self.assertNoResult(run.outcome)
        self.spawner.finish(1)
        self.assertEqual(self.successResultOf(runs[1].outcome).status, "succeeded")
        self.assertEqual(self.spawned(), ["a", "b", "c"])
        self.assertEqual((catalog.running, catalog.queued), (2, 1))
        # A slot is free in the queue again: a new command waits instead of being refused.
        late = catalog.start("c", {})
        self.assertNoResult(late.outcome)
        self.assertEqual(catalog.queued, 2)
        for index in (0, 2, 3, 4):
            self.spawner.finish(index)
        self.assertEqual(self.spawned(), ["a", "b", "c", "a", "c"])
        for run in (runs[0], runs[2], runs[3], late):
            self.assertEqual(self.successResultOf(run.outcome).status, "succeeded")
        self.assertEqual((catalog.running, catalog.queued), (0, 0))

    def test_queue_limit_zero(self) -> None:
        """queue_limit=0: nothing waits; beyond max_concurrency a command is QUEUE_FULL."""
        catalog = self.catalog(fake_verb("a"), max_concurrency=1, queue_limit=0)
        first = catalog.start("a", {})
        outcome = self.successResultOf(catalog.execute("a", {}))
        self.assertError(outcome, "rejected", "QUEUE_FULL")
        self.assertEqual(len(self.spawner.calls), 1)
        self.spawner.finish(0)
        self.successResultOf(first.outcome)
        self.assertEqual(catalog.running, 0)

    def test_rejections_take_no_slot(self) -> None:
        """Unknown verbs, invalid arguments and EXEC_DISABLED are answered at once
        even when every slot and the queue are taken."""
        verb = Verb(
            "v",
            {"n": {"type": "integer"}},
            build=lambda _args: Invocation(["/bin/true", "v"]),
        )
        catalog = self.catalog(verb, max_concurrency=1, queue_limit=0)
        catalog.start("v", {"n": 1})
        self.assertError(self.successResultOf(catalog.execute("x", {})), "rejected", "UNKNOWN_VERB")
        self.assertError(
            self.successResultOf(catalog.execute("v", {"n": "x"})), "rejected", "INVALID_ARGS"
        )
        self.assertEqual((catalog.running, catalog.queued), (1, 0))

    def test_per_verb_limit(self) -> None:
        """A verb's own concurrency limit queues its extra runs without holding up
        other verbs behind them."""
        catalog = self.catalog(
            fake_verb("slow", concurrency=1), fake_verb("other"), max_concurrency=3
        )
        s1 = catalog.start("slow", {})
        s2 = catalog.start("slow", {})
        o1 = catalog.start("other", {})
        self.assertEqual(self.spawned(), ["slow", "other"])
        self.assertEqual((catalog.running, catalog.queued), (2, 1))
        self.spawner.finish(1)
        self.successResultOf(o1.outcome)
        self.assertEqual(self.spawned(), ["slow", "other"])  # still one slow at a time
        self.spawner.finish(0)
        self.successResultOf(s1.outcome)
        self.assertEqual(self.spawned(), ["slow", "other", "slow"])
        self.spawner.finish(2)
        self.successResultOf(s2.outcome)

    def test_serialize_does_not_waste_slots(self) -> None:
        """Executions waiting on a serialize key hold no slot: with max_concurrency=2,
        a second writer waits for the first while an unrelated verb takes the slot."""
        catalog = self.catalog(
            fake_verb("w1", serialize="file"),
            fake_verb("w2", serialize="file"),
            fake_verb("r"),
            max_concurrency=2,
        )
        w1 = catalog.start("w1", {})
        w2 = catalog.start("w2", {})
        r = catalog.start("r", {})
        self.assertEqual(self.spawned(), ["w1", "r"])
        self.spawner.finish(0)
        self.successResultOf(w1.outcome)
        self.assertEqual(self.spawned(), ["w1", "r", "w2"])
        for index in (1, 2):
            self.spawner.finish(index)
        self.successResultOf(w2.outcome)
        self.successResultOf(r.outcome)

    def test_cancel_queued(self) -> None:
        """Cancelling a queued execution removes it from the queue: its outcome is
        cancelled/CANCELLED at once and it never starts, even when a slot frees."""
        catalog = self.catalog(fake_verb("a"), max_concurrency=1)
        first = catalog.start("a", {})
        second = catalog.start("a", {})
        third = catalog.start("a", {})
        self.assertEqual(catalog.queued, 2)
        second.cancel()
        outcome = self.successResultOf(second.outcome)
        self.assertError(outcome, "cancelled", "CANCELLED")
        self.assertEqual(catalog.queued, 1)
        self.spawner.finish(0)
        self.successResultOf(first.outcome)
        self.assertEqual(len(self.spawner.calls), 2)  # the third ran, the second never did
        self.spawner.finish(1)
        self.assertEqual(self.successResultOf(third.outcome).status, "succeeded")
        self.assertEqual((catalog.running, catalog.queued), (0, 0))

    def test_cancel_queued_deferred(self) -> None:
        """Cancelling the queued outcome Deferred itself also dequeues it; since that
        completes at once, the Deferred fires with the cancelled outcome."""
        catalog = self.catalog(fake_verb("a"), max_concurrency=1)
        catalog.start("a", {})
        d = catalog.execute("a", {})
        d.cancel()
        self.assertError(self.successResultOf(d), "cancelled", "CANCELLED")
        self.assertEqual(catalog.queued, 0)
        self.spawner.finish(0)
        self.assertEqual(len(self.spawner.calls), 1)

    def test_in_process_verbs_admitted_together(self) -> None:
        """Queued in-process verbs that finish synchronously as they are admitted
        all run when the slot frees (re-entrant admission), and the counters end at 0."""
        clock = Clock()
        catalog = VerbCatalog(
            fake_runner(self.spawner),
            {"a": fake_verb("a"), **{v.name: v for v in host_verbs.verbs(clock)}},
            max_concurrency=1,
        )
        first = catalog.start("a", {})
        pings = [catalog.execute("ping", {}) for _ in range(3)]
        self.assertEqual(catalog.queued, 3)
        for d in pings:
            self.assertNoResult(d)
        self.spawner.finish(0)
        self.successResultOf(first.outcome)
        for d in pings:
            self.assertEqual(self.successResultOf(d).status, "succeeded")
        self.assertEqual((catalog.running, catalog.queued), (0, 0))

    def test_bad_limits(self) -> None:
        """max_concurrency below 1, a negative queue_limit or verb concurrency are refused."""
        with self.assertRaises(ValueError):
            self.catalog(fake_verb("a"), max_concurrency=0)
        with self.assertRaises(ValueError):
            self.catalog(fake_verb("a"), queue_limit=-1)
        with self.assertRaises(ValueError):
            fake_verb("a", concurrency=0)
        with self.assertRaises(ValueError):
            fake_verb("a", no_output_timeout=0)


# Appends "start"/"stop" events to a shared file (O_APPEND: one line per write).
RECORDER = """\
import os, sys, time
path = sys.argv[1]
def event(kind):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{kind} {os.getpid()}\\n".encode())
    os.close(fd)
event("start")
time.sleep(0.3)
event("stop")
"""


class RealLimitTests(unittest.TestCase):
    async def test_never_more_than_n_running(self) -> None:
        """Real children recording their start and stop: with max_concurrency=2 and
        six commands, never more than two overlap, yet two do run side by side."""
        tmp = tempfile.mkdtemp()
        events = os.path.join(tmp, "events")
        verb = Verb(
            "rec", {}, build=lambda _args: Invocation([PY, "-c", RECORDER, events]), timeout=30
        )
        catalog = VerbCatalog(ProcessRunner(reactor), {"rec": verb}, max_concurrency=2)
        runs = [catalog.execute("rec", {}) for _ in range(6)]
        self.assertEqual((catalog.running, catalog.queued), (2, 4))
        for d in runs:
            self.assertEqual((await d).status, "succeeded")
        with open(events) as f:
            lines = f.read().split()
        kinds = lines[0::2]
        self.assertEqual(kinds.count("start"), 6)
        self.assertEqual(kinds.count("stop"), 6)
        current = peak = 0
        for kind in kinds:
            current += 1 if kind == "start" else -1
            peak = max(peak, current)
        self.assertEqual(peak, 2)
        self.assertEqual((catalog.running, catalog.queued), (0, 0))


class NoOutputTimeoutTests(unittest.TestCase):
    async def test_no_output_timeout_code(self) -> None:
        """A verb silent for its no_output_timeout is timed_out with NO_OUTPUT_TIMEOUT
        (not TIMEOUT), keeping the output it produced before going quiet."""
        catalog = VerbCatalog(
            ProcessRunner(reactor),
            {
                "py": py_verb(
                    "print('hello', flush=True); import time; time.sleep(60)",
                    timeout=60,
                    no_output_timeout=0.5,
                    kill_grace=1,
                )
            },
        )
        outcome = await catalog.execute("py", {})
        self.assertEqual(outcome.status, "timed_out")
        assert outcome.error is not None
        self.assertEqual(outcome.error["code"], "NO_OUTPUT_TIMEOUT")
        self.assertIn("no output", outcome.error["message"])
        self.assertEqual(outcome.stdout, "hello\n")


SECRET = "S3CRET-PASSWORD-XYZ"


def secret_verb(code: str, **kw: Any) -> Verb:
    """A python child that gets the secret on stdin and runs ``code``."""
    return Verb(
        "leak",
        {"pw": {"type": "secret"}},
        build=lambda a: Invocation([PY, "-c", code], stdin=a["pw"].encode()),
        **kw,
    )


class StreamingTests(unittest.TestCase):
    """on_output: ordered, capped, scrubbed chunks; the outcome still has everything."""

    def setUp(self) -> None:
        self.spawner = RecordingSpawner()
        self.seen: list[tuple[str, str]] = []

    def record(self, stream: str, text: str) -> None:
        self.seen.append((stream, text))

    def joined(self, stream: str) -> str:
        return "".join(t for s, t in self.seen if s == stream)

    def assertNoSecretPiece(self) -> None:
        """No chunk holds the secret or any 3 characters of it."""
        for _stream, text in self.seen:
            for i in range(len(SECRET) - 2):
                self.assertNotIn(SECRET[i : i + 3], text, self.seen)

    async def test_real_child_secret_split_across_chunks(self) -> None:
        """A real child echoes its secret split over two flushed writes, with a pause
        between, on both streams: the chunks arrive in order, never show the secret
        or a piece of it, and add up to the scrubbed outcome."""
        code = (
            "import sys, time\n"
            "pw = sys.stdin.read()\n"
            "for stream in (sys.stdout, sys.stderr):\n"
            "    stream.write('begin ' + pw[:7]); stream.flush(); time.sleep(0.3)\n"
            "    stream.write(pw[7:] + ' end\\n'); stream.flush(); time.sleep(0.3)\n"
            "    stream.write('tail\\n'); stream.flush()\n"
        )
        catalog = VerbCatalog(ProcessRunner(reactor), {"leak": secret_verb(code)})
        outcome = await catalog.execute("leak", {"pw": SECRET}, on_output=self.record)
        self.assertEqual(outcome.status, "succeeded", outcome)
        self.assertEqual(outcome.stdout, "begin *** end\ntail\n")
        self.assertEqual(outcome.stderr, "begin *** end\ntail\n")
        self.assertEqual(self.joined("stdout"), outcome.stdout)
        self.assertEqual(self.joined("stderr"), outcome.stderr)
        self.assertGreater(len(self.seen), 2)
        self.assertNoSecretPiece()

    def test_fake_chunks_held_back_then_released(self) -> None:
        """Chunk by chunk: text that could start a secret is held back until the next
        chunk decides it, everything else is passed on at once, the rest at the end."""
        catalog = VerbCatalog(fake_runner(self.spawner), {"leak": secret_verb("pass")})
        execution = catalog.start("leak", {"pw": SECRET}, on_output=self.record)
        protocol = self.spawner.calls[0][0]
        long_text = "x" * 40
        protocol.childDataReceived(1, long_text.encode())
        # All but the last len(SECRET) - 1 characters are out at once.
        self.assertEqual(self.joined("stdout"), "x" * (40 - len(SECRET) + 1))
        protocol.childDataReceived(1, ("ab" + SECRET[:5]).encode())
        protocol.childDataReceived(1, (SECRET[5:] + "cd").encode())
        protocol.childDataReceived(2, b"no secret here")
        self.assertNoSecretPiece()
        self.spawner.finish()
        outcome = self.successResultOf(execution.outcome)
        self.assertEqual(outcome.stdout, long_text + "ab***cd")
        self.assertEqual(self.joined("stdout"), outcome.stdout)
        self.assertEqual(self.joined("stderr"), "no secret here")
        self.assertNoSecretPiece()

    def test_without_secrets_nothing_is_held(self) -> None:
        """A verb without secret arguments streams each chunk as is, immediately."""
        catalog = VerbCatalog(fake_runner(self.spawner), {"v": fake_verb("v")})
        execution = catalog.start("v", {}, on_output=self.record)
        protocol = self.spawner.calls[0][0]
        protocol.childDataReceived(1, b"one ")
        protocol.childDataReceived(2, b"err")
        protocol.childDataReceived(1, b"two")
        self.assertEqual(self.seen, [("stdout", "one "), ("stderr", "err"), ("stdout", "two")])
        self.spawner.finish()
        self.assertEqual(self.successResultOf(execution.outcome).stdout, "one two")

    def test_cap_cuts_a_secret(self) -> None:
        """When the output cap cuts an echoed secret, what is left of it is redacted,
        in the stream and in the outcome alike; nothing past the cap is streamed."""
        catalog = VerbCatalog(
            fake_runner(self.spawner), {"leak": secret_verb("pass", output_cap=12)}
        )
        execution = catalog.start("leak", {"pw": SECRET}, on_output=self.record)
        protocol = self.spawner.calls[0][0]
        protocol.childDataReceived(1, ("pw=" + SECRET + " and more").encode())
        self.spawner.finish()
        outcome = self.successResultOf(execution.outcome)
        self.assertTrue(outcome.stdout_truncated)
        self.assertEqual(outcome.stdout, "pw=***")
        self.assertEqual(self.joined("stdout"), "pw=***")
        self.assertNoSecretPiece()

    def test_callback_error_does_not_break_the_verb(self) -> None:
        """An on_output that raises is logged; the verb still completes normally."""

        def broken(stream: str, text: str) -> None:
            raise RuntimeError("link bug")

        catalog = VerbCatalog(fake_runner(self.spawner), {"leak": secret_verb("pass")})
        execution = catalog.start("leak", {"pw": SECRET}, on_output=broken)
        self.spawner.calls[0][0].childDataReceived(1, b"hello")
        self.spawner.finish()
        self.assertEqual(self.successResultOf(execution.outcome).stdout, "hello")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stream_equals_whole_text_randomised(self) -> None:
        """For overlapping secrets and random chunkings, the streamed pieces always
        concatenate to the whole-text redaction, which contains no secret."""
        rng = random.Random(4)
        for _ in range(300):
            secrets = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 5)))]
            secrets.append("".join(rng.choice("abc") for _ in range(rng.randint(2, 6))))
            text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 40)))
            truncated = rng.random() < 0.3
            redactor = SecretRedactor(secrets)
            pieces: list[str] = []
            stream = ScrubbedStream(
                redactor, "stdout", lambda _s, t, pieces=pieces: pieces.append(t)
            )
            pos = 0
            while pos < len(text):
                step = rng.randint(1, 6)
                stream.feed(text[pos : pos + step])
                pos += step
            stream.finish(truncated)
            whole = redactor.final(text, truncated)
            self.assertEqual("".join(pieces), whole, (secrets, text))
            for secret in secrets:
                self.assertNotIn(secret, whole, (secrets, text))
