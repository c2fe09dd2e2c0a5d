"""The shipped etc/nginx/viworks.conf, checked by the real nginx and carrying real traffic.

nginx (Debian's, with libnginx-mod-stream, installed by ``make tools``) reads the shipped
file itself with only its paths, ports and host name substituted (``shipped_config``): the
stream module by absolute path (a private ``-p`` prefix breaks the packaged relative
``load_module``), the test's PKI, loopback ports, ``localhost`` for
``agents.backend.example``. Each substituted string must still be in the file, so a test
never silently checks something else. nginx runs in the test's directory and is stopped at
cleanup.

- ``nginx -t`` accepts the file as a system nginx reads it (module from modules-enabled);
- pass-through (mode 1): agents reach the backend's own mTLS listener through the stream
  block, and the API answers through the HTTPS server behind it;
- termination (mode 2): nginx verifies the agent's certificate and forwards it in
  X-SSL-Client-Cert to the backend's plain ``proxied_ws_bind`` listener, which believes it
  only from ``trusted_proxies``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tomllib
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from tests.processes import Api
from tests.stack import Stack, eventually, free_port, stays, write
from viworks.cli.admin import store_token

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "etc", "nginx", "viworks.conf")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
)
SKIP = None if NGINX else "nginx is not installed (`make tools` installs it from Debian)"
NO_STREAM = "the stream module is missing: apt-get install libnginx-mod-stream (`make tools`)"

# The two lines of the map that pick the mode (the file's header: "To switch").
PASS_THROUGH_LINE = "        agents.backend.example  127.0.0.1:8081;\n"
TERMINATION_LINE = "        # agents.backend.example  127.0.0.1:8444;\n"


def shipped_config(replacements: list[tuple[str, str]]) -> str:
    """The shipped file with each ``(old, new)`` applied (every ``old`` must be there)."""
    with open(SHIPPED) as f:
        text = f.read()
    for old, new in replacements:
        if old not in text:
            raise AssertionError(f"etc/nginx/viworks.conf no longer contains {old!r}")
        text = text.replace(old, new)
    return text


def pki_paths(pki: str) -> list[tuple[str, str]]:
    return [("/etc/viworks/pki/", pki + "/")]


def run_nginx_t(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NGINX, "-t", *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


class NginxConfigTests(unittest.TestCase):
    skip = SKIP

    def test_system_nginx_accepts_the_shipped_file(self):
        """`nginx -t -c viworks.conf` with nginx's own prefix (the stream module loaded by
        the packaged modules-enabled include) accepts the file: only PKI and pid paths
        are substituted."""
        if not os.path.exists(STREAM_MODULE):
            self.fail(NO_STREAM)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pki = Stack(self).pki["ours"]
        conf = write(
            os.path.join(directory, "viworks.conf"),
            shipped_config([*pki_paths(pki), ("/run/nginx-viworks.pid", f"{directory}/nginx.pid")]),
        )
        run = run_nginx_t(["-e", os.path.join(directory, "error.log"), "-c", conf])
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("test is successful", run.stderr)

    def test_ports_leave_the_gateway_and_backend_defaults_free(self):
        """nginx listens on none of the default ports of the gateway's local API and the
        backend's listeners, so one host can run all three with the shipped files."""
        listens = set(re.findall(r"^\s*listen\s+(?:\S+:)?(\d+)", open(SHIPPED).read(), re.M))
        with open(os.path.join(REPO, "etc", "agent.toml"), "rb") as f:
            gateway = tomllib.load(f)["agent"]["bind_address"]
        with open(os.path.join(REPO, "etc", "backend.toml"), "rb") as f:
            backend = tomllib.load(f)["backend"]
        taken = {gateway, backend["http_bind"], backend["ws_bind"], "127.0.0.1:8082"}
        self.assertEqual(listens & {address.rsplit(":", 1)[1] for address in taken}, set())
        self.assertIn("443", listens)


class NginxTestCase(unittest.TestCase):
    """A backend of the test's own and nginx running the shipped file in front of it."""

    timeout = 60
    skip = SKIP
    termination = False

    def setUp(self):
        if not os.path.exists(STREAM_MODULE):
            self.fail(NO_STREAM)
        self.stack = Stack(self)
        self.front_port = free_port()  # the stream server (443 in the shipped file)
        self.api_port = free_port()  # the HTTPS API server (127.0.0.1:8445)
        self.agents_port = free_port()  # the termination server (127.0.0.1:8444)
        self.proxied_port = free_port()  # the backend's proxied_ws_bind (8082)

    async def start(self, **backend):
        if self.termination:
            backend.setdefault("proxied_ws_bind", f"127.0.0.1:{self.proxied_port}")
            backend.setdefault("trusted_proxies", ["127.0.0.1"])
        await self.stack.start_backend(**backend)
        self.start_nginx()
        await eventually(lambda: _listening(self.front_port))

    def config(self, directory: str) -> str:
        mode = [
            (PASS_THROUGH_LINE, "        # " + PASS_THROUGH_LINE.lstrip()),
            (TERMINATION_LINE, TERMINATION_LINE.replace("# ", "", 1)),
        ]
        temp = "".join(
            f"    {name}_temp_path {directory}/{name};\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return shipped_config(
            [
                *(mode if self.termination else []),
                ("include /etc/nginx/modules-enabled/*.conf;", f"load_module {STREAM_MODULE};"),
                ("/run/nginx-viworks.pid", f"{directory}/nginx.pid"),
                ("worker_processes auto;", "worker_processes 1;"),
                ("listen 443;", f"listen 127.0.0.1:{self.front_port};"),
                ("listen [::]:443;", ""),  # tests stay on IPv4 loopback
                ("127.0.0.1:8080", f"127.0.0.1:{self.stack.http_port}"),
                ("127.0.0.1:8081", f"127.0.0.1:{self.stack.ws_port}"),
                ("127.0.0.1:8082", f"127.0.0.1:{self.proxied_port}"),
                ("127.0.0.1:8444", f"127.0.0.1:{self.agents_port}"),
                ("127.0.0.1:8445", f"127.0.0.1:{self.api_port}"),
                ("agents.backend.example", "localhost"),  # the test PKI's server name
                ("\nhttp {\n", f"\nhttp {{\n    access_log off;\n{temp}"),
                *pki_paths(self.stack.pki["ours"]),
            ]
        )

    def start_nginx(self) -> None:
        directory = os.path.join(self.stack.dir, "nginx")
        os.makedirs(directory)
        conf = write(os.path.join(directory, "viworks.conf"), self.config(directory))
        self.nginx_log = os.path.join(directory, "error.log")
        args = ["-e", self.nginx_log, "-c", conf, "-p", directory]
        checked = run_nginx_t(args)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        process = subprocess.Popen(
            [NGINX, *args, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(_stop, process)
        if process.poll() is not None:
            self.fail(f"nginx exited at once: {process.stderr.read().decode()}")

    def session(self, agent_id="gw-1"):
        return self.stack.backend.parts.registry.get(agent_id)

    async def agent_runs_ping(self) -> None:
        commands = self.stack.backend.parts.commands
        command, _ = await commands.ledger.submit("gw-1", "ping", {}, None)
        finished = await commands.waiters.wait(command.command_id, 20)
        self.assertEqual(finished.status, "succeeded")


class NginxPassThroughTests(NginxTestCase):
    async def test_agent_and_api_through_the_shipped_file(self):
        """Mode 1: an agent pinning the backend's key reaches the backend's own mTLS
        listener through the stream block and runs a verb; the API answers over HTTPS
        through the same port (no SNI: the map's default), bearer token passed on."""
        from viworks import pki

        await self.start()
        pin = pki.spki_pin(os.path.join(self.stack.pki["ours"], "server.crt"))
        self.stack.start_gateway(port=self.front_port, pins=(pin,))
        await eventually(lambda: self.session() is not None)
        self.assertIs(
            self.session().connection.factory, self.stack.backend.parts.sessions
        )  # its mTLS listener
        await self.agent_runs_ping()

        database = os.path.join(self.stack.dir, "backend.db")
        token = await store_token(database, "nginx", reactor)
        context = ssl.create_default_context(cafile=os.path.join(self.stack.pki["ours"], "ca.crt"))
        api = Api(f"https://127.0.0.1:{self.front_port}", token, context)
        status, body = await api.call("GET", "/api/v1/agents")
        self.assertEqual(status, 200, body)
        self.assertEqual(
            [(a["agent_id"], a["status"]) for a in body["agents"]], [("gw-1", "online")]
        )
        status, body = await Api(api.base, None, context).call("GET", "/api/v1/agents")
        self.assertEqual(status, 401)


class NginxTerminationTests(NginxTestCase):
    termination = True

    async def test_agent_through_nginx_runs_a_verb(self):
        """Mode 2: the map sends agents to nginx's agents server, which does the mutual
        TLS and forwards to proxied_ws_bind; the agent runs a verb."""
        await self.start()
        self.stack.start_gateway(port=self.front_port)
        await eventually(lambda: self.session() is not None)
        self.assertIs(self.session().connection.factory, self.stack.backend.parts.proxied_sessions)
        await self.agent_runs_ping()

    async def test_foreign_certificate_refused_by_nginx(self):
        """nginx refuses a certificate from another CA: the agent never gets a session."""
        await self.start()
        self.stack.start_gateway(ca="theirs", port=self.front_port)
        await stays(lambda: len(self.stack.backend.parts.registry) == 0)

    async def test_forged_header_from_untrusted_address_refused(self):
        """Verified-certificate headers sent from outside trusted_proxies are refused (403).

        The same request from the trusted address is accepted (101), so the address
        alone makes the difference.
        """
        await self.start(trusted_proxies=["127.0.0.1"])
        with open(os.path.join(self.stack.pki["ours"], "agents", "gw-1.crt")) as f:
            forged = upgrade_request(
                {"X-SSL-Client-Cert": quote(f.read(), safe=""), "X-SSL-Client-Verify": "SUCCESS"}
            )
        untrusted = await self.raw(forged, source="127.0.0.2")
        await eventually(lambda: untrusted.status)
        self.assertIn(" 403 ", untrusted.status)
        trusted = await self.raw(forged, source="127.0.0.1")
        await eventually(lambda: trusted.status)
        self.assertIn(" 101 ", trusted.status)
        self.assertEqual(len(self.stack.backend.parts.registry), 0)

    async def test_headers_without_success_refused(self):
        """From the trusted proxy too, a verdict other than SUCCESS gives no session."""
        await self.start()
        with open(os.path.join(self.stack.pki["ours"], "agents", "gw-1.crt")) as f:
            request = upgrade_request(
                {"X-SSL-Client-Cert": quote(f.read(), safe=""), "X-SSL-Client-Verify": "NONE"}
            )
        proto = await self.raw(request, source="127.0.0.1")
        await eventually(lambda: proto.status)
        self.assertIn(" 403 ", proto.status)

    async def raw(self, request: bytes, source: str) -> RawUpgrade:
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.proxied_port, bindAddress=(source, 0)
        )
        proto = await connectProtocol(endpoint, RawUpgrade(request))
        self.addCleanup(lambda: proto.lost or proto.transport.abortConnection())
        return proto


def upgrade_request(headers: dict[str, str]) -> bytes:
    lines = [
        "GET /ws/agent HTTP/1.1",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawUpgrade(Protocol):
    """Sends one WebSocket upgrade request and keeps what comes back."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost = True

    @property
    def status(self) -> str:
        return self.received.split(b"\r\n", 1)[0].decode("latin-1")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # fast shutdown: proxied links are cut
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    process.stderr.close()
