# ruff: noqa: E501
"""Real processes started by the harness: the backend, a gateway, the echo baseline.

Each is a child on loopback, in a throw-away directory, stopped (SIGTERM, then SIGKILL
after a bound) when the harness is done with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, free_port

ENV = {**os.environ, "PYTHONPATH": ROOT}
STOP_WAIT = 20.0

BACKEND_TOML = """\
[backend]
http_bind = "127.0.0.1:{http_port}"
ws_bind = "127.0.0.1:{ws_port}"
ws_path = "/ws/agent"
database = "{db}"
log_level = "{log_level}"
heartbeat_interval = {heartbeat}
handshake_rate = {rate}
handshake_burst = {burst}

[tls]
cert = "{pki}/server.crt"
key = "{pki}/server.key"
client_ca = "{pki}/ca.crt"
"""

# The API's per-token rate limit (when the product has one) would cap the load generator.
API_TOML = """
[api]
rate_limit_per_token = 1000000.0
rate_limit_burst = 1000000
"""


def _has_api_rate_limit() -> bool:
    try:
        from viworks.config.backend import ApiSection
    except ImportError:
        return False
    return "rate_limit_per_token" in getattr(ApiSection, "__dataclass_fields__", {})


AGENT_TOML = """\
[agent]
bind_address = "127.0.0.1:{api_port}"
site = "bench"
state_dir = "{state}"

[outbound]
backend_url = "wss://localhost:{ws_port}/ws/agent"
agent_id = "{agent_id}"

[tls]
cert = "{pki}/agents/{agent_id}.crt"
key = "{pki}/agents/{agent_id}.key"
ca = "{pki}/ca.crt"

[panel]
users_file = "{state}/panel.htpasswd"
"""


def twistd_argv(plugin: str, config: str) -> list[str]:
    """twistd in the foreground."""
    start = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    return [*start, "-n", "--pidfile=", "--logfile=-", plugin, "--config", config]


class Child:
    """A child process with its output appended to ``log``."""

    def __init__(self, argv: list[str], log: str, cwd: str = ROOT) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                argv, env={**os.environ, "PYTHONPATH": ROOT}, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_WAIT)
        return self.process.returncode


def wait_log(child: Child, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in child.log_text():
            return
        if not child.alive:
            raise RuntimeError(f"process exited:\n{child.log_text()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{needle!r} not seen within {timeout} s:\n{child.log_text()[-3000:]}")


class Backend:
    """``twistd viworks-backend`` on loopback with SQLite in ``directory``."""

    def __init__(
        self, directory: str, pki_dir: str, heartbeat: float, rate: float, burst: int,
        log_level: str = "info",
    ) -> None:  # fmt: skip
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.http_port = free_port()
        self.ws_port = free_port()
        self.config = os.path.join(directory, "backend.toml")
        with open(self.config, "w") as f:
            f.write(
                BACKEND_TOML.format(
                    http_port=self.http_port,
                    ws_port=self.ws_port,
                    db=os.path.join(directory, "backend.db"),
                    log_level=log_level,
                    heartbeat=heartbeat,
                    rate=rate,
                    burst=burst,
                    pki=pki_dir,
                )  # fmt: skip
                + (API_TOML if _has_api_rate_limit() else "")
            )
        created = subprocess.run(
            [sys.executable, "-m", "viworks.cli", "token", "create", "--config", self.config,
             "--name", "bench"],
            env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"token create failed: {created.stderr}")
        self.token = created.stdout.strip().splitlines()[-1]
        self.child: Child | None = None

    def start(self) -> Backend:
        self.child = Child(
            twistd_argv("viworks-backend", self.config),
            os.path.join(self.directory, "backend.log"),
        )
        wait_for_port(self.http_port, 30.0, self.child)
        wait_for_port(self.ws_port, 30.0, self.child)
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


class Gateway:
    """One real ``twistd viworks-gateway``."""

    def __init__(self, directory: str, pki_dir: str, ws_port: int, agent_id: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.api_port = free_port()
        self.config = os.path.join(directory, "agent.toml")
        state = os.path.join(directory, "state")
        with open(self.config, "w") as f:
            f.write(
                AGENT_TOML.format(
                    api_port=self.api_port,
                    state=state,
                    ws_port=ws_port,
                    agent_id=agent_id,
                    pki=pki_dir,
                )  # fmt: skip
            )
        self.child = Child(
            twistd_argv("viworks-gateway", self.config), os.path.join(directory, "gateway.log")
        )

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self) -> None:
        self.child.stop()


class EchoServer:
    """The baseline process (``bench.echo``)."""

    def __init__(self, directory: str, pki_dir: str, heartbeat: float, backlog: int) -> None:
        self.ws_port = free_port()
        self.http_port = free_port()
        self.child = Child(
            [sys.executable, "-m", "bench.echo", pki_dir, str(self.ws_port), str(self.http_port),
             str(heartbeat), str(backlog)],
            os.path.join(directory, "echo.log"),
        )  # fmt: skip
        wait_log(self.child, "ready", 30.0)

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self) -> None:
        self.child.stop()


def wait_for_port(port: int, timeout: float, child: Child) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive:
            raise RuntimeError(f"process exited:\n{child.log_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening within {timeout} s:\n{child.log_text()[-3000:]}")


def stop_all(children: list[Any]) -> None:
    for child in children:
        try:
            child.stop()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            print(f"bench: could not stop {child}: {e}", file=sys.stderr)
