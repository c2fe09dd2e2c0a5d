"""End to end: both twistd plugins as real processes on loopback, driven by the CLI and HTTP.

Blocking on purpose: these tests only start processes and talk to them over
loopback, with every wait bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from twisted.trial import unittest

from tests.processes import ENV, ROOT, WAIT, Api, Twistd, create_token, twistd, viworks, wait_for
from tests.stack import Stack


class EndToEndTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.stack = Stack(self)
        self.backend_toml = self.stack.backend_config().path
        self.agent_toml = self.stack.agent_config().path
        self.api = f"http://127.0.0.1:{self.stack.http_port}"

    def test_verb_through_api_and_cli(self):
        """Backend and gateway processes link up; verbs run through the HTTP API and the CLI."""
        token = create_token(self.backend_toml, "e2e")
        api = Api(self.api, token)

        log = self.stack.dir + "/b.log"
        backend = Twistd(self, "viworks-backend", self.backend_toml, log).start()
        wait_for(lambda: api.get("/health")[0] == 200)
        gateway = Twistd(self, "viworks-gateway", self.agent_toml, self.stack.dir + "/g.log")
        gateway.start()

        def online():
            code, body = api.get("/api/v1/agents/gw-1")
            return code == 200 and body["status"] == "online"

        wait_for(online)
        env = {"VIWORKS_URL": self.api, "VIWORKS_TOKEN": token}
        run = viworks(
            "run", "gw-1", "create_panel_user", "username=alice", "password=correct-horse",
            "--json", **env,
        )  # fmt: skip
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        command = json.loads(run.stdout)
        self.assertEqual(command["status"], "succeeded")
        self.assertEqual(command["args"]["password"], "***")
        with open(os.path.join(self.stack.dir, "gw-1", "panel.htpasswd")) as f:
            self.assertRegex(f.read(), r"^alice:\$2y\$")

        missing = viworks("run", "gw-1", "delete_panel_user", "username=nobody", **env)
        self.assertEqual(missing.returncode, 1, missing.stdout + missing.stderr)
        self.assertIn("NOT_FOUND", missing.stdout)

        unknown = viworks("run", "gw-1", "launch_missiles", **env)
        self.assertEqual(unknown.returncode, 3)
        self.assertIn("UNKNOWN_VERB", unknown.stderr)

        agents = viworks("agents", "--json", **env)
        self.assertEqual(json.loads(agents.stdout)["agents"][0]["agent_id"], "gw-1")

        code, listed = api.get("/api/v1/commands?agent_id=gw-1")
        self.assertEqual(code, 200)
        self.assertNotIn("correct-horse", json.dumps(listed))
        # twistd re-raises the stopping signal after a clean shutdown.
        self.assertIn(backend.stop(), (0, -signal.SIGTERM))
        gateway.stop()
        with open(log, "rb") as f:
            log = f.read()
        self.assertIn(b"Main loop terminated", log)
        self.assertNotIn(b"Traceback", log)
        self.assertNotIn(b"correct-horse", log)
        self.assertNoSecretOnDisk(b"correct-horse")

    def assertNoSecretOnDisk(self, secret: bytes) -> None:
        """No file the stack wrote (store, WAL, journal, logs, configs) holds ``secret``."""
        for folder, _dirs, files in os.walk(self.stack.dir):
            for name in files:
                with open(os.path.join(folder, name), "rb") as f:
                    self.assertNotIn(secret, f.read(), os.path.join(folder, name))

    def test_bad_config_is_one_line(self):
        """A broken config stops twistd with one line naming file and key, no traceback."""
        with open(self.backend_toml, "a") as f:
            f.write("\n[backend_extra]\nx = 1\n")
        for plugin, config in (
            ("viworks-backend", self.backend_toml),
            ("viworks-gateway", os.path.join(self.stack.dir, "missing.toml")),
        ):
            result = subprocess.run(
                twistd(plugin, config, self.stack.dir + "/x.log"),
                env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=WAIT,
            )  # fmt: skip
            self.assertNotEqual(result.returncode, 0)
            self.assertNotIn("Traceback", result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn(os.path.basename(config), result.stderr)
