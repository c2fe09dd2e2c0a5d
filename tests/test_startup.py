"""A new operator's first run: start-up errors are one line, `make run` installs nothing,
and `viworks dev` stops like a backend given SIGTERM.

Real processes (twistd, ``viworks dev``, make) on loopback, with bounded waits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.backend.helpers import sqlite_store
from tests.processes import ENV, ROOT, WAIT, twistd, wait_for
from tests.stack import Stack, free_port
from viworks.config import ConfigError
from viworks.dev import DEV_AGENT, banner, dev_token
from viworks.gateway.tap import build_gateway
from viworks.net import ListenError, listen_service


def occupy(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:``port`` for the rest of the test."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


class OneLineErrorTests(unittest.TestCase):
    """twistd (plugins and .tac files) refuses a bad start in one line with exit status 2."""

    timeout = 120

    def setUp(self) -> None:
        self.stack = Stack(self)

    def run_twistd(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        """Run twistd to its end; check it failed with exit 2 and one line; return it."""
        result = subprocess.run(
            argv, env={**ENV, **(env or {})}, cwd=ROOT, capture_output=True, text=True,
            timeout=WAIT,
        )  # fmt: skip
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        return lines[0]

    def test_busy_port(self) -> None:
        """A port in use: one line naming the address, the config key and the file."""
        backend = self.stack.backend_config().path
        agent = self.stack.agent_config()
        api_port = int(agent.agent.bind_address.rsplit(":", 1)[1])
        for port, plugin, config, key in (
            (self.stack.http_port, "viworks-backend", backend, "[backend] http_bind"),
            (self.stack.ws_port, "viworks-backend", backend, "[backend] ws_bind"),
            (api_port, "viworks-gateway", agent.path, "[agent] bind_address"),
        ):
            with occupy(port):
                line = self.run_twistd(twistd(plugin, config, self.stack.dir + "/x.log"))
            self.assertEqual(
                line,
                f"viworks: cannot listen on 127.0.0.1:{port} ({key} in {config}):"
                " Address already in use",
            )

    def test_busy_port_tac(self) -> None:
        """The .tac files give the same one line."""
        backend = self.stack.backend_config().path
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
            "--pidfile=", "--logfile=-", "-y", os.path.join(ROOT, "tac", "backend.tac"),
        ]  # fmt: skip
        with occupy(self.stack.http_port):
            line = self.run_twistd(argv, {"VIWORKS_CONFIG": backend})
        self.assertIn(f"cannot listen on 127.0.0.1:{self.stack.http_port}", line)

    def test_identity_mismatch(self) -> None:
        """agent_id other than the certificate's: one line naming the key and both ids."""
        agent = self.stack.agent_config(agent_id="gw-2", cert_of="gw-1").path
        line = self.run_twistd(twistd("viworks-gateway", agent, self.stack.dir + "/x.log"))
        self.assertTrue(line.startswith(f"viworks: configuration error: {agent}: "), line)
        self.assertIn("[outbound] agent_id: 'gw-2' is not the identity of [tls] cert", line)
        self.assertIn("it names 'gw-1'", line)
        self.assertIn("IDENTITY_MISMATCH", line)
        with self.assertRaises(ConfigError):
            build_gateway(self.stack.agent_config(agent_id="gw-2", cert_of="gw-1"), reactor)


class MissingToolWarningTests(unittest.TestCase):
    def test_gateway_start_names_missing_tools(self) -> None:
        """At start-up a gateway warns once per missing program, naming the verbs it blocks."""
        stack = Stack(self)
        engine = os.path.join(stack.dir, "no-docker")
        config = stack.agent_config(extra=f'[containers]\nengine_path = "{engine}"\n')
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        build_gateway(config, reactor).link.journal.close()
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn(
            f"{engine} is not installed (or not executable): list_containers, spawn_container,"
            " stop_container cannot run on this host",
            warnings,
        )


class ListenServiceTests(unittest.TestCase):
    """A listener's bind failure at start (a port taken after the check) is clean too."""

    def test_start_on_busy_port(self) -> None:
        """startService raises ListenError (one line), and stopping the tree still works."""
        port = free_port()
        self.addCleanup(occupy(port).close)
        top = MultiService()
        for key in ("[backend] http_bind", "[backend] ws_bind"):
            # The second listener never starts: the first one's failure stops the loop.
            listen_service(reactor, "127.0.0.1", port, Factory(), key=key).setServiceParent(top)
        with self.assertRaises(ListenError) as raised:
            top.startService()
        self.assertEqual(
            str(raised.exception),
            f"cannot listen on 127.0.0.1:{port} ([backend] http_bind): Address already in use",
        )
        # Was: AttributeError: 'NoneType' object has no attribute 'cancel'.
        self.successResultOf(top.stopService())

    def test_ipv6_address_in_brackets(self) -> None:
        """An IPv6 address is written in brackets."""
        error = ListenError("::1", 8080, "[backend] http_bind", "Address already in use")
        self.assertIn("cannot listen on [::1]:8080 (", str(error))


class DevStackTests(unittest.TestCase):
    """`viworks dev` (what `make run` runs) as a real process."""

    timeout = 120

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.ports = [free_port(), free_port(), free_port()]

    def dev(self, **kw: Any) -> subprocess.Popen:
        http, ws, api = self.ports
        argv = [
            sys.executable, "-m", "viworks.cli", "dev", "--dir", self.dir,
            "--http-port", str(http), "--ws-port", str(ws), "--agent-port", str(api),
        ]  # fmt: skip
        process = subprocess.Popen(argv, env=ENV, cwd=ROOT, text=True, **kw)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    def test_busy_port_is_one_line(self) -> None:
        """A port in use: one line on stderr naming the address and the flags, exit 2."""
        with occupy(self.ports[1]):
            process = self.dev(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = process.communicate(timeout=WAIT)
        self.assertEqual(process.returncode, 2, out + err)
        self.assertEqual(out, "")
        [line] = err.strip().splitlines()
        self.assertIn(f"viworks dev: cannot listen on 127.0.0.1:{self.ports[1]}", line)
        self.assertIn("--ws-port", line)

    def test_sigint_closes_the_agents_in_order(self) -> None:
        """Ctrl-C: the backend closes the agent's link with 4003 and a retry hint, no 1006."""
        log = os.path.join(os.path.dirname(self.dir), "dev.log")
        with open(log, "w") as out:
            process = self.dev(stdout=out, stderr=subprocess.STDOUT)

        def text() -> str:
            with open(log) as f:
                return f.read()

        wait_for(lambda: "connected to backend" in text() or process.poll() is not None)
        self.assertIsNone(process.poll(), text())
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(WAIT), 0, text())
        output = text()
        self.assertIn("ViWorkS dev stack is up", output)
        self.assertIn(f"agent {DEV_AGENT} disconnected", output)
        self.assertIn("code 4003 (backend shutting down: shutdown; retry-after=", output)
        self.assertNotIn("1006", output)
        self.assertNotIn("Traceback", output)

    def test_banner_lists_unavailable_verbs(self) -> None:
        """The banner names each missing tool with its verbs, and how to get them, and
        where the web console is."""

        class Catalog:
            def missing_tools(self) -> dict[str, list[str]]:
                return {"/x/htpasswd": ["create_panel_user", "delete_panel_user"]}

        text = banner("/d", 1, 2, "token", Catalog())
        self.assertIn("  /x/htpasswd: create_panel_user, delete_panel_user\n", text)
        self.assertIn("`make tools`", text)
        self.assertIn("TOOL_NOT_FOUND", text)
        self.assertIn("  console: http://127.0.0.1:1/ui/", text)


class DevTokenTests(unittest.TestCase):
    async def test_made_once_audited_and_reused(self) -> None:
        """`viworks dev` makes its token through the backend's token module (an operator
        token, its creation audited as whoever runs it, the secret only in DIR/token,
        0600) and reuses it while it is active; a revoked or forgotten one is replaced."""
        store = await sqlite_store(self)
        directory = self.mktemp()
        os.makedirs(directory)
        clock = Clock()
        clock.advance(1000)
        token = await dev_token(store, directory, clock, "cli:alice")
        path = os.path.join(directory, "token")
        with open(path) as f:
            self.assertEqual(f.read(), token + "\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        [made] = await store.list_tokens()
        self.assertEqual((made.name, made.role), ("dev-1000", "operator"))
        [record] = await store.audit_records()
        self.assertEqual(
            (record.actor, record.action, record.target),
            ("cli:alice", "token.create", "token:dev-1000"),
        )
        self.assertNotIn(token, record.detail or "")
        clock.advance(1)
        self.assertEqual(await dev_token(store, directory, clock, "cli:alice"), token)
        self.assertEqual(len(await store.list_tokens()), 1)
        await store.revoke_token("dev-1000", clock.seconds())
        other = await dev_token(store, directory, clock, "cli:bob")
        self.assertNotEqual(other, token)
        self.assertEqual([t.name for t in await store.list_tokens()], ["dev-1000", "dev-1001"])
        clock.advance(1)
        other_store = await sqlite_store(self)  # a new database: the token is forgotten
        self.assertNotEqual(await dev_token(other_store, directory, clock, "cli:bob"), other)


class MakefileTests(unittest.TestCase):
    """`make run` starts the stack without installing packages; the tests still do."""

    def make_n(self, target: str) -> str:
        result = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_run_installs_nothing(self) -> None:
        """`make -n run` runs viworks dev and no installer; `make -n test` runs the installer."""
        if not os.path.exists(os.path.join(ROOT, ".venv", ".installed")):
            raise unittest.SkipTest("no .venv here: make would create it first")
        run = self.make_n("run")
        self.assertIn("viworks dev", run)
        self.assertNotIn("install-tools", run)
        self.assertNotIn("apt-get", run)
        self.assertIn(".ci/install-tools", self.make_n("test"))

    def test_installer_quiet_when_nothing_is_missing(self) -> None:
        """With every program present the installer does nothing (no apt, no root needed)."""
        result = subprocess.run(
            [os.path.join(ROOT, ".ci", "install-tools"), "sh:dash", "/bin/sh:dash"],
            capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))
