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

from viworks.backend.api import BackendAPI
from viworks.backend.ledger import CommandLedger
from viworks.backend.registry import SessionRegistry
from viworks.backend.sessions import AgentSessionFactory
from viworks.backend.store import open_store
from viworks.config import BackendConfig, load_backend_config, parse_bind
from viworks.logs import Logger, set_log_level
from viworks.net import DrainingSite, listen_service
from viworks.service import build_or_exit
from viworks.tls import peer_agent_id, server_context_factory


class Options(usage.Options):
    optParameters = [
        ["config", "c", "/etc/viworks/backend.toml", "The backend's configuration file (TOML)."]
    ]


class BackendService(MultiService):
    """Opens the store before the listeners start; stops in an orderly way.

    On stop: no new connections or requests, API waiters are answered, requests
    in flight finish (bounded), agents are told to reconnect after spread-out
    delays, then the store is closed.
    """

    log = Logger()

    def __init__(
        self,
        store: Any,
        registry: SessionRegistry,
        ledger: CommandLedger,
        sessions: AgentSessionFactory,
        site: DrainingSite,
        clock: Any,
    ) -> None:
        super().__init__()
        self.store = store
        self.registry = registry
        self.ledger = ledger
        self.sessions = sessions
        self.site = site
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
        await self.ledger.start()

    def _failed(self, failure: Any) -> None:
        self.log.failure("backend could not start", failure)
        self.ready.errback(failure)
        if hasattr(self.clock, "stop"):
            self.clock.stop()

    async def _close(self, grace: float = 10.0) -> None:
        await MultiService.stopService(self)
        self.ledger.stop()
        await self._until(lambda: self.site.in_flight == 0, grace)
        for session in self.registry:
            session.close_going_away(self.sessions.retry_hint())
        # Give the close handshakes a moment, then cut what is left.
        await self._until(lambda: not len(self.registry), 3.0)
        for session in self.registry:
            session.abort()
        await self.store.close()

    async def _until(self, predicate: Any, timeout: float, step: float = 0.05) -> None:
        for _ in range(int(timeout / step)):
            if predicate():
                return
            await deferLater(self.clock, step, lambda: None)

    def stopService(self) -> Deferred:
        return Deferred.fromCoroutine(self._close())


def build_backend(config: BackendConfig, reactor: Any) -> BackendService:
    """The whole backend for ``config``; used by twistd, the .tac and ``viworks dev``."""
    set_log_level(config.backend.log_level)
    store = open_store(config.backend.database, reactor=reactor)
    registry = SessionRegistry()
    ledger = CommandLedger(
        store,
        registry,
        reactor,
        default_timeout=config.backend.default_command_timeout,
        default_ttl=config.backend.default_ttl,
        lost_grace=config.backend.lost_grace,
    )
    sessions = AgentSessionFactory(
        registry=registry,
        store=store,
        ledger=ledger,
        clock=reactor,
        identify=peer_agent_id,
        ws_path=config.backend.ws_path,
        heartbeat_interval=config.backend.heartbeat_interval,
        max_message_size=config.backend.max_message_size,
        handshake_rate=config.backend.handshake_rate,
        handshake_burst=config.backend.handshake_burst,
    )
    site = DrainingSite(BackendAPI(store, registry, ledger, reactor).resource())
    top = BackendService(store, registry, ledger, sessions, site, reactor)
    tls = server_context_factory(config.tls.cert, config.tls.key, config.tls.client_ca)
    ws_host, ws_port = parse_bind(config.backend.ws_bind)
    listen_service(reactor, ws_host, ws_port, sessions, tls).setServiceParent(top)
    http_host, http_port = parse_bind(config.backend.http_bind)
    listen_service(reactor, http_host, http_port, site).setServiceParent(top)
    return top


def makeService(options: Any, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    return build_or_exit(load_backend_config, build_backend, options, reactor)
