"""SIGHUP reload (``service.reloader.reload()``, what the signal handler runs) over real links.

The backend's server certificate is rotated on disk while an agent is connected:
new connections see the new key, the open link stays up, and agents pinning
[current, next] keep working across the rotation. Bad files are refused and the
old material kept. The gateway reloads its certificate and its pins the same way.
"""

from __future__ import annotations

import os
import shutil
import signal

from twisted.logger import LogLevel
from twisted.trial import unittest

from tests.stack import Stack, eventually, stays, write
from viworks import logs, pki
from viworks.config import load_backend_config
from viworks.reload import Reloader, install_sighup
from viworks.tls import peer_spki_pin


class RotatingStack(Stack):
    """A Stack whose backend serves certificate files of its own, to rotate them."""

    def __init__(self, testcase):
        super().__init__(testcase)
        ours = self.pki["ours"]
        self.live = os.path.join(self.dir, "live")
        os.makedirs(self.live)
        for name in ("server.crt", "server.key"):
            shutil.copy(os.path.join(ours, name), os.path.join(self.live, name))
        # A copy of the CA to issue the next server key (and agent keys) with.
        self.ca = os.path.join(self.dir, "ca")
        os.makedirs(self.ca)
        for name in ("ca.crt", "ca.key"):
            shutil.copy(os.path.join(ours, name), os.path.join(self.ca, name))
        self.next_cert, self.next_key = pki.issue_server(self.ca, "localhost", ["127.0.0.1"])
        self.current_pin = pki.spki_pin(os.path.join(ours, "server.crt"))
        self.next_pin = pki.spki_pin(self.next_cert)

    def backend_config(self, **backend):
        config = super().backend_config(**backend)
        ours = self.pki["ours"]
        with open(config.path) as f:
            text = f.read()
        text = text.replace(f"{ours}/server.crt", f"{self.live}/server.crt")
        text = text.replace(f"{ours}/server.key", f"{self.live}/server.key")
        write(config.path, text)
        return load_backend_config(config.path)

    def rotate_backend(self) -> None:
        """Install the next certificate and key, as an operator would (atomic renames)."""
        for source, name in ((self.next_key, "server.key"), (self.next_cert, "server.crt")):
            replace_file(os.path.join(self.live, name), read(source))


def replace_file(path: str, text: str) -> None:
    write(path + ".new", text)
    os.replace(path + ".new", path)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def edit(path: str, old: str, new: str) -> None:
    with open(path) as f:
        text = f.read()
    assert old in text, (old, path)
    replace_file(path, text.replace(old, new))


class BackendReloadTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.stack = RotatingStack(self)

    def session(self, agent_id="gw-1"):
        return self.stack.backend.parts.registry.get(agent_id)

    async def test_rotation_with_pins_current_and_next(self):
        """After a reload new connections get the next key; the open link stays up."""
        stack = self.stack
        backend = await stack.start_backend()
        first = stack.start_gateway(pins=(stack.current_pin, stack.next_pin))
        await eventually(lambda: self.session() is not None and first.link.connected)
        before = self.session()
        self.assertEqual(peer_spki_pin(first.link._current.transport), stack.current_pin)

        stack.rotate_backend()
        self.assertEqual(backend.parts.reloader.reload(), [])

        # An agent that pins only the old key is now refused...
        old = stack.start_gateway(
            agent_id="gw-2", cert_of="gw-2", name="old", pins=(stack.current_pin,)
        )
        await stays(lambda: self.session("gw-2") is None, duration=1.0)
        await old.stopService()
        # ...one that pins only the next key gets in: new connections see the new certificate.
        stack.start_gateway(agent_id="gw-2", cert_of="gw-2", name="new", pins=(stack.next_pin,))
        await eventually(lambda: self.session("gw-2") is not None)
        # The link open before the reload was not touched.
        self.assertIs(self.session(), before)
        self.assertTrue(first.link.connected)
        self.assertEqual(peer_spki_pin(first.link._current.transport), stack.current_pin)

        # When it reconnects, [current, next] accepts the next key.
        before.abort()
        await eventually(lambda: self.session() not in (None, before) and first.link.connected)
        self.assertEqual(peer_spki_pin(first.link._current.transport), stack.next_pin)
        command, _ = await backend.parts.commands.ledger.submit("gw-1", "ping", {}, None)
        finished = await backend.parts.commands.waiters.wait(command.command_id, 20)
        self.assertEqual(finished.status, "succeeded")

    async def test_bad_files_keep_the_old_material(self):
        """A broken key, certificate or config on reload is reported; nothing changes."""
        stack = self.stack
        backend = await stack.start_backend()
        key = os.path.join(stack.live, "server.key")
        good_key = read(key)
        # A key that does not match the certificate (the next one), then garbage.
        replace_file(key, read(stack.next_key))
        self.assertEqual(backend.parts.reloader.reload(), ["TLS certificate, key and client CA"])
        replace_file(key, "not a key\n")
        self.assertEqual(backend.parts.reloader.reload(), ["TLS certificate, key and client CA"])
        # A configuration that no longer parses changes nothing either.
        config = backend.parts.reloader.load_config().path
        good = read(config)
        replace_file(config, good + "\n[backend\n")
        self.assertEqual(backend.parts.reloader.reload(), ["configuration"])
        replace_file(config, good)
        # The listener still serves the current certificate.
        gateway = stack.start_gateway(pins=(stack.current_pin,))
        await eventually(lambda: self.session() is not None and gateway.link.connected)
        # Fixing the files and reloading works again.
        replace_file(key, good_key)
        self.assertEqual(backend.parts.reloader.reload(), [])

    async def test_log_level(self):
        """The log level follows the file on reload."""
        self.addCleanup(logs.set_log_level, "info")
        backend = await self.stack.start_backend(log_level="info")
        edit(backend.parts.reloader.load_config().path, 'log_level = "info"', 'log_level = "debug"')
        self.assertEqual(backend.parts.reloader.reload(), [])
        self.assertEqual(logs._levels.logLevelForNamespace("viworks"), LogLevel.debug)


class GatewayReloadTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.stack = RotatingStack(self)

    async def test_pins_and_certificate_for_the_next_connection(self):
        """The agent picks up new pins and a new client certificate at its next connect."""
        stack = self.stack
        backend = await stack.start_backend()
        # The agent's certificate and key, in files of its own.
        agent_dir = os.path.join(stack.dir, "agent-pki")
        os.makedirs(agent_dir)
        for ext in ("crt", "key"):
            shutil.copy(
                os.path.join(stack.pki["ours"], "agents", f"gw-1.{ext}"),
                os.path.join(agent_dir, f"gw-1.{ext}"),
            )
        gateway = stack.start_gateway(pins=(stack.current_pin,))
        path = os.path.join(stack.dir, "gw-1", "agent.toml")
        await eventually(lambda: gateway.link.connected)
        ours = stack.pki["ours"]
        edit(path, f"{ours}/agents/gw-1.", f"{agent_dir}/gw-1.")

        # The backend rotates; this agent pins only the old key: its next connect would fail.
        stack.rotate_backend()
        self.assertEqual(backend.parts.reloader.reload(), [])
        # The operator gives it [current, next] and a fresh certificate, then SIGHUP.
        edit(path, f'["{stack.current_pin}"]', f'["{stack.current_pin}", "{stack.next_pin}"]')
        crt, key = pki.issue_agent(stack.ca, "gw-1")
        for source, name in ((key, "gw-1.key"), (crt, "gw-1.crt")):
            replace_file(os.path.join(agent_dir, name), read(source))
        before = backend.parts.registry.get("gw-1")
        self.assertEqual(gateway.reloader.reload(), [])
        self.assertTrue(gateway.link.connected)
        self.assertIs(backend.parts.registry.get("gw-1"), before)

        before.abort()
        await eventually(lambda: backend.parts.registry.get("gw-1") not in (None, before))
        session = backend.parts.registry.get("gw-1")
        self.assertEqual(peer_spki_pin(session.connection.transport), pki.spki_pin(crt))

    async def test_bad_agent_files_keep_the_old_material(self):
        stack = self.stack
        await stack.start_backend()
        gateway = stack.start_gateway()
        path = os.path.join(stack.dir, "gw-1", "agent.toml")
        edit(path, f"{stack.pki['ours']}/agents/gw-1.key", "/nonexistent/gw-1.key")
        self.assertEqual(gateway.reloader.reload(), ["configuration"])
        await eventually(lambda: gateway.link.connected)


class ReloaderTests(unittest.TestCase):
    def test_one_failure_does_not_stop_the_others(self):
        applied = []
        reloader = Reloader(lambda: "config")
        reloader.add("first", lambda c: applied.append(("first", c)))
        reloader.add("broken", lambda c: 1 / 0)
        reloader.add("last", lambda c: applied.append(("last", c)))
        self.assertEqual(reloader.reload(), ["broken"])
        self.assertEqual(applied, [("first", "config"), ("last", "config")])

    def test_unloadable_config_applies_nothing(self):
        applied = []

        def load():
            raise ValueError("bad file")

        reloader = Reloader(load)
        reloader.add("anything", applied.append)
        self.assertEqual(reloader.reload(), ["configuration"])
        self.assertEqual(applied, [])

    def test_sighup_handler(self):
        """install_sighup installs, once the reactor started, a handler that reloads."""
        calls = []

        class FakeReactor:
            def addSystemEventTrigger(self, phase, event, f):  # noqa: N802
                calls.append((phase, event))
                self.install = f

            def callFromThread(self, f):  # noqa: N802
                calls.append("reload scheduled")
                f()

        reloaded = []
        reloader = Reloader(lambda: "config")
        reloader.add("probe", reloaded.append)
        fake = FakeReactor()
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        install_sighup(fake, reloader)
        self.assertEqual(calls, [("after", "startup")])
        fake.install()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(calls[1:], ["reload scheduled"])
        self.assertEqual(reloaded, ["config"])
