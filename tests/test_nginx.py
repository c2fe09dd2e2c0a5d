"""Agents behind a real nginx that terminates TLS (etc/nginx/viworks.conf, mode 2).

nginx (Debian's, installed by ``make tools``) runs from a generated configuration in
the test's directory on loopback ports and is stopped at cleanup. It verifies the
agent's client certificate and forwards it in X-SSL-Client-Cert to the backend's
plain ``proxied_ws_bind`` listener, which believes it only from ``trusted_proxies``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from tests.stack import Stack, eventually, free_port, stays, write

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
)
SKIP = None if NGINX else "nginx is not installed (`make tools` installs it from Debian)"

# The termination server of etc/nginx/viworks.conf, on test ports and paths.
NGINX_CONF = """
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate     {pki}/server.crt;
        ssl_certificate_key {pki}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {pki}/ca.crt;
        ssl_verify_client on;
        ssl_verify_depth 1;
        location = /ws/agent {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
        }}
        location / {{ return 404; }}
    }}
}}
"""


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


class NginxTerminationTests(unittest.TestCase):
    timeout = 60
    skip = SKIP

    def setUp(self):
        self.stack = Stack(self)
        self.proxied_port = free_port()
        self.nginx_port = free_port()

    async def start(self, trusted=("127.0.0.1",)):
        await self.stack.start_backend(
            proxied_ws_bind=f"127.0.0.1:{self.proxied_port}", trusted_proxies=list(trusted)
        )
        self.start_nginx()
        await eventually(lambda: _listening(self.nginx_port))

    def start_nginx(self) -> None:
        directory = os.path.join(self.stack.dir, "nginx")
        os.makedirs(directory)
        conf = write(
            os.path.join(directory, "nginx.conf"),
            NGINX_CONF.format(
                dir=directory,
                port=self.nginx_port,
                backend=self.proxied_port,
                pki=self.stack.pki["ours"],
            ),
        )
        self.nginx_log = os.path.join(directory, "error.log")
        process = subprocess.Popen(
            [NGINX, "-e", self.nginx_log, "-c", conf, "-p", directory, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(_stop, process)
        if process.poll() is not None:
            self.fail(f"nginx exited at once: {process.stderr.read().decode()}")

    def online(self, agent_id="gw-1") -> bool:
        return self.stack.backend.registry.get(agent_id) is not None

    async def test_agent_through_nginx_runs_a_verb(self):
        """An agent reaches the backend through nginx's mutual TLS and runs a verb."""
        await self.start()
        self.stack.start_gateway(port=self.nginx_port)
        await eventually(self.online)
        session = self.stack.backend.registry.get("gw-1")
        self.assertIs(session.factory, self.stack.backend.proxied_sessions)
        ledger = self.stack.backend.ledger
        command, _ = await ledger.submit("gw-1", "ping", {}, None)
        finished = await ledger.wait(command["command_id"], 20)
        self.assertEqual(finished["status"], "succeeded")

    async def test_foreign_certificate_refused_by_nginx(self):
        """nginx refuses a certificate from another CA: the agent never gets a session."""
        await self.start()
        self.stack.start_gateway(ca="theirs", port=self.nginx_port)
        await stays(lambda: len(self.stack.backend.registry) == 0)

    async def test_forged_header_from_untrusted_address_refused(self):
        """Verified-certificate headers sent from outside trusted_proxies are refused (403).

        The same request from the trusted address is accepted (101), so the address
        alone makes the difference.
        """
        await self.start(trusted=("127.0.0.1",))
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
        self.assertEqual(len(self.stack.backend.registry), 0)

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
