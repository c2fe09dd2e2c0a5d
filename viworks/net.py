"""Listening endpoints for both services (IPv4 or IPv6, plain or TLS)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from viworks.netaddr import is_ipv6

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
    certificate (three fingerprints, every extension printed) and the TLS channel id,
    then calls ``onOpen``. viworks never reads them (identities and pins come from the
    certificate itself), and on the backend that was a sizeable part of its CPU in a
    connect storm (docs/benchmarks.md, "Figures behind the code").
    tests/backend/test_sessions.py pins the hook's name, so an Autobahn release that
    renames it fails a test instead of undoing this silently.
    """

    def _onOpen(self) -> None:
        self.onOpen()  # type: ignore[attr-defined]


class ListenError(Exception):
    """A listener that cannot bind its address; ``str()`` is one line naming it.

    ``path``, when set, is the configuration file that holds ``key``.
    """

    def __init__(self, host: str, port: int, key: str, reason: str, path: str = "") -> None:
        super().__init__(host, port, key, reason, path)
        self.host, self.port, self.key, self.reason, self.path = host, port, key, reason, path

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{self.key} in {self.path}" if self.path else self.key
        return f"cannot listen on {host}:{self.port} ({where}): {self.reason}"


class ListenService(StreamServerEndpointService):
    """A listener whose bind failure is a one-line ``ListenError``, checkable in advance.

    ``check()`` binds and releases the address at once, so that a service can
    refuse to start (with the address and the config ``key`` in the message)
    before twistd has set up logging and forked. The real bind still happens
    at start; a failure there (the port taken in between) raises ``ListenError``
    too. ``stopService`` is safe on a listener that never started (a sibling's
    failure can abort a ``MultiService`` start half way).
    """

    # Fail the start-up loudly if the port is taken instead of logging and idling.
    _raiseSynchronously = True

    def __init__(self, endpoint: Any, factory: IProtocolFactory, host: str, port: int, key: str):
        super().__init__(endpoint, factory)
        self.host, self.port, self.key = host, port, key

    def _error(self, reason: str) -> ListenError:
        return ListenError(self.host, self.port, self.key, reason)

    def check(self) -> None:
        family = socket.AF_INET6 if is_ipv6(self.host) else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # As Twisted's listening sockets do, so that both agree.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self.host, self.port))
        except OSError as e:
            raise self._error(e.strerror or str(e)) from None

    def privilegedStartService(self) -> None:
        if self._waitingForPort is not None:
            return  # already listening (twistd binds before startService)
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            socket_error = e.socketError
            raise self._error(
                getattr(socket_error, "strerror", None) or str(socket_error)
            ) from None

    def stopService(self) -> Deferred:
        if self._waitingForPort is None:
            self.running = False
            return succeed(None)
        return super().stopService()


def listeners(service: IService) -> Iterator[ListenService]:
    """Every ``ListenService`` in the tree under ``service``."""
    if isinstance(service, ListenService):
        yield service
    if isinstance(service, MultiService):
        for child in service:
            yield from listeners(child)


def check_listeners(service: IService, path: str = "") -> None:
    """Raise ``ListenError`` (naming ``path``) for the first address that cannot be bound."""
    for listener in listeners(service):
        try:
            listener.check()
        except ListenError as e:
            e.path = path
            raise


def _quiet(factory: Any) -> None:
    """No "Starting factory" / "Stopping factory" lines (the port logs its own start)."""
    while factory is not None:
        factory.noisy = False
        factory = getattr(factory, "wrappedFactory", None)


def listen_service(
    reactor: Any,
    host: str,
    port: int,
    factory: IProtocolFactory,
    tls_options: Any = None,
    *,
    key: str,
) -> ListenService:
    """A service listening on ``host:port`` (config ``key``); TLS when ``tls_options`` is given.

    TLS wraps the factory rather than using an ``ssl:`` endpoint because the
    endpoint string cannot express client-certificate verification.
    """
    endpoint_class = TCP6ServerEndpoint if is_ipv6(host) else TCP4ServerEndpoint
    # A deep accept queue: after a backend restart thousands of agents connect
    # at once, and overflowing the default (50) costs each of them a TCP retry.
    endpoint = endpoint_class(reactor, port, backlog=LISTEN_BACKLOG, interface=host)
    if tls_options is not None:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    _quiet(factory)
    return ListenService(endpoint, factory, host, port, key)


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
