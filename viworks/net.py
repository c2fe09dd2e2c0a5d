"""Listening endpoints for both services (IPv4 or IPv6, plain or TLS)."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

LISTEN_BACKLOG = 4096


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on the TCP socket under (possibly TLS-wrapped) ``transport``.

    Commands and results are small messages that must go out at once; with
    Nagle on, a reply waits for the peer's delayed ACK (tens of milliseconds).
    Autobahn's own tcpNoDelay does not reach the socket under TLS.
    """
    while transport is not None and not hasattr(transport, "setTcpNoDelay"):
        transport = getattr(transport, "transport", None)
    if transport is not None:
        transport.setTcpNoDelay(True)


class SkipPeerCertificateDetails:
    """Mixin for an Autobahn protocol (put it first): open without describing the peer.

    Autobahn's ``_onOpen`` fills ``transport_details`` with a description of the peer
    certificate (three fingerprints, every extension printed: 0.12 ms) and the TLS
    channel id, then calls ``onOpen``. viworks never reads them (identities and pins
    come from the certificate itself), and on the backend that was 6-11 % of its CPU
    in a connect storm. tests/backend/test_sessions.py pins the hook's name, so an
    Autobahn release that renames it fails a test instead of undoing this silently.
    """

    def _onOpen(self) -> None:
        self.onOpen()  # type: ignore[attr-defined]


def listen_service(
    reactor: Any,
    host: str,
    port: int,
    factory: IProtocolFactory,
    tls_options: Any = None,
) -> StreamServerEndpointService:
    """A service listening on ``host:port``; TLS when ``tls_options`` is given.

    TLS wraps the factory rather than using an ``ssl:`` endpoint because the
    endpoint string cannot express client-certificate verification.
    """
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    endpoint_class = TCP6ServerEndpoint if is_v6 else TCP4ServerEndpoint
    # A deep accept queue: after a backend restart thousands of agents connect
    # at once, and overflowing the default (50) costs each of them a TCP retry.
    endpoint = endpoint_class(reactor, port, backlog=LISTEN_BACKLOG, interface=host)
    if tls_options is not None:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    service = StreamServerEndpointService(endpoint, factory)
    # Fail the start-up loudly if the port is taken instead of logging and idling.
    service._raiseSynchronously = True
    return service


class ConnectionLimit(WrappingFactory):
    """Refuse (close at once) connections beyond ``limit`` open ones."""

    def __init__(self, wrapped: IProtocolFactory, limit: int) -> None:
        super().__init__(wrapped)
        self.limit = limit

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.limit:
            return None
        return super().buildProtocol(addr)


class DrainingSite(Site):
    """A ``Site`` that counts requests in flight, so that a stop can let them finish."""

    in_flight = 0

    def getResourceFor(self, request: Any) -> Any:
        self.in_flight += 1
        request.notifyFinish().addBoth(self._finished)
        return super().getResourceFor(request)

    def _finished(self, _: Any) -> None:
        self.in_flight -= 1
