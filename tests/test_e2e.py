"""End to end: both twistd plugins as real processes on loopback, driven by the CLI and HTTP.

Blocking on purpose: these tests only start processes and talk to them over
loopback, with every wait bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from twisted.trial import unittest

from tests.stack import Stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
WAIT = 30.0


def wait_for(predicate, timeout=WAIT, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not reached within {timeout} s")


def twistd(plugin: str, config: str, logfile: str) -> list[str]:
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
        f"--logfile={logfile}", plugin, "--config", config,
    ]  # fmt: skip


def viworks(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "viworks.cli", *args],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
    )


class EndToEndTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.stack = Stack(self)
        self.backend_toml = self.stack.backend_config().path
        self.agent_toml = self.stack.agent_config().path
        self.api = f"http://127.0.0.1:{self.stack.http_port}"

    def spawn(self, argv: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(argv, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)  # fmt: skip
        self.addCleanup(self.stop, process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()

    def get(self, path: str, token: str | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.api + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except OSError:
            return None, None

    def test_verb_through_api_and_cli(self):
        """Backend and gateway processes link up; verbs run through the HTTP API and the CLI."""
        created = viworks("token", "create", "--config", self.backend_toml, "--name", "e2e")
        self.assertEqual(created.returncode, 0, created.stderr)
        token = created.stdout.strip().splitlines()[-1]

        log = self.stack.dir + "/b.log"
        backend = self.spawn(twistd("viworks-backend", self.backend_toml, log))
        wait_for(lambda: self.get("/health")[0] == 200)
        self.spawn(twistd("viworks-gateway", self.agent_toml, self.stack.dir + "/g.log"))

        def online():
            code, body = self.get("/api/v1/agents/gw-1", token)
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

        code, listed = self.get("/api/v1/commands?agent_id=gw-1", token)
        self.assertEqual(code, 200)
        self.assertNotIn("correct-horse", json.dumps(listed))
        self.stop(backend)
        # twistd re-raises the stopping signal after a clean shutdown.
        self.assertIn(backend.returncode, (0, -signal.SIGTERM))
        with open(log, "rb") as f:
            log = f.read()
        self.assertIn(b"Main loop terminated", log)
        self.assertNotIn(b"Traceback", log)
        self.assertNotIn(b"correct-horse", log)

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
