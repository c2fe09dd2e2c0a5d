"""Real processes for tests: twistd plugins, the CLI, and the backend's HTTP API.

The HTTP helpers and ``wait_for`` block; tests running on the reactor call them
through ``deferToThread`` (see ``Twistd`` and ``Api.call``) so that whatever
the test process serves meanwhile (a fault proxy, simulated agents) keeps going.
Every wait is bounded.
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
from typing import Any

from twisted.internet.threads import deferToThread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
WAIT = 30.0


def wait_for(predicate: Any, timeout: float = WAIT, step: float = 0.1) -> Any:
    """Block until ``predicate()`` is truthy (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not reached within {timeout} s")


def twistd(plugin: str, config: str, logfile: str) -> list[str]:
    """The argv of a foreground twistd running ``plugin`` (``logfile`` "-" is stdout)."""
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
        f"--logfile={logfile}", plugin, "--config", config,
    ]  # fmt: skip


def viworks(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the ``viworks`` CLI and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "viworks.cli", *args],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
    )


def create_token(backend_toml: str, name: str = "tests", role: str = "operator") -> str:
    """A new API token, made with the CLI against the backend's database."""
    created = viworks("token", "create", "--config", backend_toml, "--name", name, "--role", role)
    if created.returncode != 0:
        raise AssertionError(f"viworks token create failed: {created.stderr}")
    return created.stdout.strip().splitlines()[-1]


class Twistd:
    """One twistd plugin process of a test: start, SIGKILL, SIGTERM, start again.

    Its log (twistd's, on stdout and stderr) is appended to one file across
    restarts, so a test can read what happened since any point (``log_mark``).
    The process is stopped at the test's cleanup.
    """

    def __init__(self, testcase: Any, plugin: str, config: str, log: str) -> None:
        self.plugin = plugin
        self.config = config
        self.log = log
        self.process: subprocess.Popen | None = None
        testcase.addCleanup(lambda: deferToThread(self.stop))

    def start(self) -> Twistd:
        if self.running:
            raise AssertionError(f"{self.plugin} is already running")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                twistd(self.plugin, self.config, "-"),
                env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> int:
        """SIGKILL (kill -9): no shutdown code runs. Returns the exit status."""
        return self._signal(signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM and wait (bounded; SIGKILL after ``WAIT``). Returns the exit status."""
        return self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        return self.process.returncode

    def log_mark(self) -> int:
        """The log's current length: pass it to ``log_text`` to read what came after."""
        return os.path.getsize(self.log) if os.path.exists(self.log) else 0

    def log_text(self, since: int = 0) -> str:
        if not os.path.exists(self.log):
            return ""
        with open(self.log, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")


class Api:
    """The backend's HTTP API at ``base`` with a bearer token (blocking calls)."""

    def __init__(self, base: str, token: str | None = None, context: Any = None) -> None:
        self.base = base
        self.token = token
        self.context = context  # an ssl.SSLContext for https:// (None: the default)

    def get(self, path: str) -> tuple[int | None, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None):
        return self.request("POST", path, body, headers)

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None):
        """``(status, JSON body)``; ``(None, None)`` when the backend cannot be reached."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        except OSError:
            return None, None

    def call(self, method: str, path: str, body: Any = None, headers: dict | None = None):
        """``request`` in a thread: a Deferred, for tests running on the reactor."""
        return deferToThread(self.request, method, path, body, headers)
