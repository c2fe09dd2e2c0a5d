"""``twistd viworks-backend``: options and the service tree.

BackendService (opens the store, then starts its children)
 |- the agents' mutual-TLS WebSocket listener (ws_bind)
 `- the operators' HTTP API listener (http_bind)
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.web.server import Site

from viworks.backend.api import BackendAPI
from viworks.backend.ledger import CommandLedger
from viworks.backend.registry import SessionRegistry
from viworks.backend.sessions import AgentSessionFactory
from viworks.backend.store import open_store
from viworks.config import BackendConfig, load_backend_config, parse_bind
from viworks.logs import Logger, set_log_level
from viworks.net import listen_service
from viworks.service import build_or_exit
from viworks.tls import peer_agent_id, server_context_factory


class Options(usage.Options):
    optParameters = [
        ["config", "c", "/etc/viworks/backend.toml", "The backend's configuration file (TOML)."]
    ]


class BackendService(MultiService):
    """Opens the store before the listeners start and closes it after they stop."""

    log = Logger()

    def __init__(self, store: Any, registry: SessionRegistry, clock: Any) -> None:
        super().__init__()
        self.store = store
        self.registry = registry
        self.clock = clock
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        # Listeners must not accept anything before the store is usable.
        self.running = 1
        d = Deferred.fromCoroutine(self._open())
        d.addCallback(lambda _: MultiService.startService(self))
        d.addCallbacks(self.ready.callback, self._failed)

    async def _open(self) -> None:
        await self.store.open()
        # No session survives a restart: every agent is offline until it says HELLO.
        await self.store.mark_all_agents_offline(self.clock.seconds())

    def _failed(self, failure: Any) -> None:
        self.log.failure("backend could not start", failure)
        self.ready.errback(failure)
        if hasattr(self.clock, "stop"):
            self.clock.stop()

    async def _close(self) -> None:
        await MultiService.stopService(self)
        await self._close_sessions()
        await self.store.close()

    async def _close_sessions(self, grace: float = 3.0) -> None:
        # Stopping a listener leaves its connections open: say goodbye to each
        # agent, give the close handshakes a moment, then cut what is left.
        for session in self.registry:
            session.close_going_away()
        for _ in range(int(grace / 0.05)):
            if not len(self.registry):
                return
            await deferLater(self.clock, 0.05, lambda: None)
        for session in self.registry:
            session.abort()

    def stopService(self) -> Deferred:
        return Deferred.fromCoroutine(self._close())


def build_backend(config: BackendConfig, reactor: Any) -> BackendService:
    """The whole backend for ``config``; used by twistd, the .tac and ``viworks dev``."""
    set_log_level(config.backend.log_level)
    store = open_store(config.backend.database, reactor=reactor)
    registry = SessionRegistry()
    ledger = CommandLedger(
        store, registry, reactor, default_timeout=config.backend.default_command_timeout
    )
    top = BackendService(store, registry, reactor)
    top.ledger = ledger
    sessions = AgentSessionFactory(
        registry=registry,
        store=store,
        ledger=ledger,
        clock=reactor,
        identify=peer_agent_id,
        ws_path=config.backend.ws_path,
        heartbeat_interval=config.backend.heartbeat_interval,
        max_message_size=config.backend.max_message_size,
    )
    tls = server_context_factory(config.tls.cert, config.tls.key, config.tls.client_ca)
    ws_host, ws_port = parse_bind(config.backend.ws_bind)
    listen_service(reactor, ws_host, ws_port, sessions, tls).setServiceParent(top)
    api = BackendAPI(store, registry, ledger, reactor)
    http_host, http_port = parse_bind(config.backend.http_bind)
    listen_service(reactor, http_host, http_port, Site(api.resource())).setServiceParent(top)
    return top


def makeService(options: Any, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    return build_or_exit(load_backend_config, build_backend, options, reactor)
