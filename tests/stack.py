"""A real backend and real gateways in this process, on loopback, for integration tests.

Certificates are made once per test run (key generation is the slow part); every
test gets its own directory, database, ports and configs.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from viworks import pki
from viworks.backend.tap import build_backend
from viworks.config import load_agent_config, load_backend_config
from viworks.gateway.tap import build_gateway

AGENTS = ("gw-1", "gw-2")
_pki: dict[str, str] = {}


def shared_pki() -> dict[str, str]:
    """Our CA with a backend and agent certificates, plus a foreign CA with an agent of its own."""
    if not _pki:
        base = tempfile.mkdtemp(prefix="viworks-pki-")
        atexit.register(shutil.rmtree, base, True)
        ours, theirs = os.path.join(base, "ours"), os.path.join(base, "theirs")
        for directory in (ours, theirs):
            pki.init_ca(directory)
            pki.issue_server(directory, "localhost", ["127.0.0.1"])
            for agent_id in AGENTS:
                pki.issue_agent(directory, agent_id)
            # signing.key / signing.pub: see Stack.signing_backend and signing_agent.
            pki.make_signing_key(directory)
        _pki.update(ours=ours, theirs=theirs)
    return _pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


class Stack:
    """Configs and services for one test; everything started is stopped at cleanup."""

    def __init__(self, testcase: Any) -> None:
        self.testcase = testcase
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        self.http_port = free_port()
        self.ws_port = free_port()
        self.backend = None
        self.pki = shared_pki()

    def backend_config(self, *, extra: str = "", **backend: Any):
        """The backend's config; ``extra`` is appended as is (e.g. ``signing_backend()``)."""
        ours = self.pki["ours"]
        values = {
            "http_bind": f"127.0.0.1:{self.http_port}",
            "ws_bind": f"127.0.0.1:{self.ws_port}",
            "database": os.path.join(self.dir, "backend.db"),
            "heartbeat_interval": 5,
            **backend,
        }
        path = write(
            os.path.join(self.dir, "backend.toml"),
            f"[backend]\n{_table(values)}\n[tls]\n"
            f'cert = "{ours}/server.crt"\nkey = "{ours}/server.key"\nclient_ca = "{ours}/ca.crt"\n'
            + extra,
        )
        return load_backend_config(path)

    def signing_backend(self, pki_name: str = "ours") -> str:
        """A backend ``[signing]`` section with that PKI's signing key (for ``extra``)."""
        return f'[signing]\nkey = "{self.pki[pki_name]}/signing.key"\n'

    def signing_agent(self, *pki_names: str, clock_window: float = 60) -> str:
        """An agent ``[signing]`` section trusting those PKIs' keys (default ours; ``extra``)."""
        keys = [f"{self.pki[name]}/signing.pub" for name in pki_names or ("ours",)]
        return f"[signing]\npublic_keys = {_toml(keys)}\nclock_window = {clock_window}\n"

    def agent_config(
        self,
        agent_id: str = "gw-1",
        cert_of: str = "gw-1",
        ca: str = "ours",
        pins: tuple[str, ...] = (),
        host: str = "localhost",
        trust: str = "ours",
        *,
        port: int | None = None,
        name: str | None = None,
        marks: str | None = None,
        extra: str = "",
        **outbound: Any,
    ):
        """An agent config in ``<dir>/<name or agent_id>/``.

        ``port`` points the agent at another backend port (a fault proxy);
        ``marks`` declares the ``mark`` verb appending to that file (``mark_verb``);
        ``extra`` is appended as is (more ``[verbs.NAME]`` tables);
        ``outbound`` overrides ``[outbound]`` keys (heartbeat_interval, reconnect_*).
        """
        certs = self.pki[ca]
        agent_dir = os.path.join(self.dir, name or agent_id)
        os.makedirs(agent_dir, exist_ok=True)
        outbound = {
            "backend_url": f"wss://{host}:{port or self.ws_port}/ws/agent",
            "agent_id": agent_id,
            "heartbeat_interval": 5,
            "reconnect_initial": 0.1,
            "reconnect_max": 0.5,
            **outbound,
        }
        path = write(
            os.path.join(agent_dir, "agent.toml"),
            f'[agent]\nbind_address = "127.0.0.1:{free_port()}"\nsite = "test"\n'
            f'state_dir = "{agent_dir}/state"\n'
            f"[outbound]\n{_table(outbound)}"
            f'[tls]\ncert = "{certs}/agents/{cert_of}.crt"\nkey = "{certs}/agents/{cert_of}.key"\n'
            f'ca = "{self.pki[trust]}/ca.crt"\nbackend_spki_pins = {_toml(list(pins))}\n'
            f'[panel]\nusers_file = "{agent_dir}/panel.htpasswd"\n'
            + ("" if marks is None else mark_verb(marks))
            + extra,
        )
        return load_agent_config(path)

    async def start_backend(self, **backend: Any):
        self.backend = build_backend(self.backend_config(**backend), reactor)
        self.backend.startService()
        await self.backend.ready
        self.testcase.addCleanup(self.stop_backend)
        return self.backend

    async def stop_backend(self) -> None:
        if self.backend is not None and self.backend.running:
            await self.backend.stopService()

    def start_gateway(self, **agent: Any):
        gateway = build_gateway(self.agent_config(**agent), reactor)
        gateway.startService()
        self.testcase.addCleanup(lambda: gateway.running and gateway.stopService())
        return gateway


#: Appends its ``tag`` argument as one line to the marks file, then sleeps ``sleep`` seconds.
MARK_SCRIPT = (
    "import sys, time; f = open(sys.argv[1], 'a'); f.write(sys.argv[2] + '\\n'); f.flush(); "
    "time.sleep(float(sys.argv[3]))"
)


def mark_verb(marks: str) -> str:
    """A ``[verbs.mark]`` table: a declared verb that records each execution in ``marks``.

    Tests count the lines of ``marks`` to know how often a command really ran.
    """
    argv = [sys.executable, "-c", MARK_SCRIPT, marks, "{tag}", "{sleep}"]
    return (
        f"[verbs.mark]\nargv = {_toml(argv)}\ntimeout = 60\nchanges_state = true\n"
        'description = "Append a tag to the marks file, then sleep."\n'
        'params.tag = { type = "string", pattern = "^[a-z0-9-]+$" }\n'
        'params.sleep = { type = "number", min = 0, max = 30 }\n'
    )


def _table(values: dict[str, Any]) -> str:
    return "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


async def eventually(predicate: Any, timeout: float = 15.0, step: float = 0.05) -> None:
    """Wait on the real reactor until ``predicate()`` holds, bounded in time."""
    for _ in range(int(timeout / step)):
        if predicate():
            return
        await deferLater(reactor, step, lambda: None)
    raise AssertionError(f"condition not reached within {timeout} s")


async def stays(predicate: Any, duration: float = 1.5, step: float = 0.05) -> None:
    """Check that ``predicate()`` keeps holding for ``duration`` seconds."""
    for _ in range(int(duration / step)):
        if not predicate():
            raise AssertionError("condition stopped holding")
        await deferLater(reactor, step, lambda: None)


async def poll(fetch: Any, predicate: Any, timeout: float = 10.0, step: float = 0.01) -> Any:
    """Await ``fetch()`` until ``predicate`` holds for its value (bounded); return the value."""
    for _ in range(int(timeout / step)):
        value = await fetch()
        if predicate(value):
            return value
        await deferLater(reactor, step, lambda: None)
    raise AssertionError(f"condition not reached within {timeout} s; last value {value!r}")


#: Writes its pid and a sleeping grandchild's pid to a file, then prints ``count`` lines,
#: one every ``interval`` seconds.
TICK_SCRIPT = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "open(sys.argv[1], 'w').write(f'{__import__(\"os\").getpid()} {child.pid}'); "
    "[(print(f'tick {i}', flush=True), time.sleep(float(sys.argv[3]))) "
    "for i in range(int(sys.argv[2]))]; child.kill()"
)


def tick_verb(pids: str) -> str:
    """A ``[verbs.tick]`` table: prints lines slowly and leaves a grandchild running."""
    script = TICK_SCRIPT.replace("{", "{{").replace("}", "}}")  # literal braces in a template
    argv = [sys.executable, "-c", script, pids, "{count}", "{interval}"]
    return (
        f"[verbs.tick]\nargv = {_toml(argv)}\ntimeout = 60\nchanges_state = false\n"
        'params.count = { type = "integer", min = 1, max = 1000 }\n'
        'params.interval = { type = "number", min = 0, max = 5 }\n'
    )
