"""``viworks dev``: a backend and one gateway on loopback, with a throw-away PKI and SQLite."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from viworks import pki
from viworks.config import load_agent_config, load_backend_config
from viworks.files import ensure_private_dir
from viworks.net import ListenError, check_listeners

if TYPE_CHECKING:
    from viworks.backend.store import Store

DEV_AGENT = "dev-agent-1"

BACKEND_TOML = """\
# Written by `viworks dev`: a local backend on loopback.
[backend]
http_bind = "127.0.0.1:{http_port}"
ws_bind = "127.0.0.1:{ws_port}"
ws_path = "/ws/agent"
database = "backend.db"
log_level = "info"
heartbeat_interval = 10

[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"

[signing]
key = "pki/signing.key"
"""

AGENT_TOML = """\
# Written by `viworks dev`: a local gateway agent on loopback.
[agent]
bind_address = "127.0.0.1:{api_port}"
site = "dev"
state_dir = "agent-state"

[outbound]
backend_url = "wss://localhost:{ws_port}/ws/agent"
agent_id = "{agent_id}"
heartbeat_interval = 10
reconnect_initial = 0.5
reconnect_max = 5

[tls]
cert = "pki/agents/{agent_id}.crt"
key = "pki/agents/{agent_id}.key"
ca = "pki/ca.crt"
backend_spki_pins = ["{pin}"]

[signing]
public_keys = ["pki/signing.pub"]
clock_window = 60

[panel]
users_file = "panel.htpasswd"
"""


def prepare(directory: str, http_port: int, ws_port: int, api_port: int) -> tuple[str, str]:
    """Create (once) the PKI and (every time) the two configs; return their paths."""
    ensure_private_dir(directory)
    pki_dir = os.path.join(directory, "pki")
    if not os.path.exists(os.path.join(pki_dir, "ca.key")):
        ensure_private_dir(pki_dir)
        pki.init_ca(pki_dir, common_name="ViWorkS dev CA")
        pki.issue_server(pki_dir, "localhost", ["127.0.0.1", "::1"])
        pki.issue_agent(pki_dir, DEV_AGENT)
    # Also for dev directories made before commands were signed.
    if not os.path.exists(os.path.join(pki_dir, "signing.key")):
        pki.make_signing_key(pki_dir)
    values = {
        "http_port": http_port,
        "ws_port": ws_port,
        "api_port": api_port,
        "agent_id": DEV_AGENT,
        "pin": pki.spki_pin(os.path.join(pki_dir, "server.crt")),
    }
    paths = []
    for name, template in (("backend.toml", BACKEND_TOML), ("agent.toml", AGENT_TOML)):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(template.format(**values))
        paths.append(path)
    return paths[0], paths[1]


async def dev_token(store: Store, directory: str, clock: IReactorTime, actor: str) -> str:
    """Reuse the token saved in DIR/token while it is active in the store; else make one
    (an operator token, audited as created by ``actor``)."""
    from viworks.backend.tokens import create_token, hash_token, token_state

    path = os.path.join(directory, "token")
    now = clock.seconds()
    if os.path.exists(path):
        with open(path) as f:
            token = f.read().strip()
        known = await store.token_for_hash(hash_token(token))
        if known is not None and token_state(known, now) == "active":
            return token
    token = await create_token(store, f"dev-{int(now)}", actor, now)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def run_dev(directory: str, http_port: int, ws_port: int, api_port: int, actor: str) -> int:
    """Run the stack until Ctrl-C or SIGTERM; the exit status (2: a port is taken).

    ``actor`` is who runs it, for the audit log (the CLI's ``cli:<login name>``)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from viworks.backend.tap import build_backend
    from viworks.gateway.tap import build_gateway
    from viworks.runtime import tune_gc

    directory = os.path.abspath(directory)
    backend_path, agent_path = prepare(directory, http_port, ws_port, api_port)
    backend = build_backend(load_backend_config(backend_path), reactor)
    gateway = build_gateway(load_agent_config(agent_path), reactor)
    try:
        # Before any output, so that a taken port is the one line printed.
        check_listeners(backend, backend_path)
        check_listeners(gateway, agent_path)
    except ListenError as e:
        _say(f"{e}; choose free ports with --http-port, --ws-port and --agent-port")
        return 2
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stdout), [LogLevelFilterPredicate(LogLevel.info)]
            )
        ],
        redirectStandardIO=False,
    )
    tune_gc()
    status = 0

    def failed(message: str, code: int) -> None:
        nonlocal status
        _say(message)
        status = code

    async def announce(_: object) -> None:
        token = await dev_token(backend.parts.store, directory, reactor, actor)
        try:
            gateway.startService()
        except ListenError as e:  # taken since the check above
            failed(str(e), 2)
            reactor.stop()
            return
        print(banner(directory, http_port, api_port, token, gateway.link.catalog), flush=True)

    async def stop() -> None:
        # The backend first: it closes each agent's link in an orderly way (with a
        # retry hint), as a backend stopped with SIGTERM does; then the gateway.
        if backend.running:
            await backend.stopService()
        if gateway.running:
            await gateway.stopService()

    backend.ready.addCallback(lambda r: Deferred.fromCoroutine(announce(r)))
    # The backend stops the reactor itself when it cannot start.
    backend.ready.addErrback(lambda f: failed(f"the backend could not start: {f.value}", 1))
    reactor.callWhenRunning(backend.startService)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(stop()))
    reactor.run()
    return status


class ToolReport(Protocol):
    """What the banner asks the gateway's verb catalog."""

    def missing_tools(self) -> dict[str, list[str]]: ...


def banner(directory: str, http_port: int, api_port: int, token: str, catalog: ToolReport) -> str:
    """What ``viworks dev`` prints once the stack is up, with the verbs that cannot run here."""
    url = f"http://127.0.0.1:{http_port}"
    text = (
        f"\nViWorkS dev stack is up (files in {directory})\n"
        f"  API:   {url}   (health: {url}/health)\n"
        f"  console: {url}/ui/   (log in with the token)\n"
        f"  token: {token}\n"
        f"  agent: {DEV_AGENT}, local API http://127.0.0.1:{api_port}/api/v1/health\n\n"
        f"Try:\n"
        f"  export VIWORKS_URL={url} VIWORKS_TOKEN={token}\n"
        f"  .venv/bin/viworks agents\n"
        f"  .venv/bin/viworks run {DEV_AGENT} system_health\n"
        f"  .venv/bin/viworks run {DEV_AGENT} create_panel_user username=alice "
        f"password=correct-horse\n\n"
    )
    missing = catalog.missing_tools()
    if missing:
        text += (
            "Unavailable here: a tool they need is not installed, so these verbs fail at once"
            " (TOOL_NOT_FOUND; ENGINE_NOT_FOUND for containers):\n"
            + "".join(f"  {tool}: {', '.join(verbs)}\n" for tool, verbs in missing.items())
            + "  `make tools` (as root) installs htpasswd, vpncmd and fwknopd from Debian"
            " packages;\n  the container verbs need docker or podman ([containers] in"
            " agent.toml).\n\n"
        )
    return text + "Ctrl-C stops it.\n"


def _say(message: str) -> None:
    print(f"viworks dev: {message}", file=sys.stderr, flush=True)
