"""The baseline server: a bare Autobahn mutual-TLS WebSocket echo and a bare twisted.web
HTTP endpoint, in one process, with the backend's own TLS options and WebSocket options.

    python -m bench.echo PKI_DIR WS_PORT HTTP_PORT HEARTBEAT BACKLOG

Prints ``ready`` on stdout once both ports listen. Nothing of viworks runs here except
``viworks.tls.server_context_factory`` (so the TLS set-up is byte for byte the backend's).
"""

from __future__ import annotations

import os
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from viworks.tls import server_context_factory


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class Bare(Resource):
    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"ok"}'

    def render_POST(self, request) -> bytes:
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"succeeded","result":{"pong":true}}'


def main() -> None:
    pki_dir, ws_port, http_port, heartbeat, backlog = sys.argv[1:6]
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = Echo
    factory.setProtocolOptions(
        maxMessagePayloadSize=1 << 20,
        maxFramePayloadSize=1 << 20,
        autoPingInterval=float(heartbeat),
        autoPingTimeout=float(heartbeat),
        openHandshakeTimeout=10,
        closeHandshakeTimeout=2,
        webStatus=False,
        failByDrop=False,
    )
    tls = server_context_factory(
        os.path.join(pki_dir, "server.crt"),
        os.path.join(pki_dir, "server.key"),
        os.path.join(pki_dir, "ca.crt"),
    )
    # Same endpoint class as viworks.net.listen_service; the backlog is the harness's choice.
    TCP4ServerEndpoint(reactor, int(ws_port), backlog=int(backlog), interface="127.0.0.1").listen(
        TLSMemoryBIOFactory(tls, False, factory)
    )
    TCP4ServerEndpoint(reactor, int(http_port), backlog=int(backlog), interface="127.0.0.1").listen(
        Site(Bare())
    )
    reactor.callWhenRunning(lambda: (sys.stdout.write("ready\n"), sys.stdout.flush()))
    reactor.run()


if __name__ == "__main__":
    main()
