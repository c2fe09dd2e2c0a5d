"""``twistd viworks-backend``: options and the service tree.

BackendService (opens the store, then starts its children)
 |- the agents' mutual-TLS WebSocket listener (ws_bind)
 `- the operators' HTTP API listener (http_bind)
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python import usage

from viworks import signing
from viworks.backend.api import BackendAPI
from viworks.backend.audit import AuditLog
from viworks.backend.authfailures import AuthFailures
from viworks.backend.events import EventHub
from viworks.backend.identity import ProxiedIdentity, tls_identity
from viworks.backend.jobs import JobRunner
from viworks.backend.ledger import CommandLedger
from viworks.backend.registry import SessionRegistry
from viworks.backend.revocation import RevocationWatcher
from viworks.backend.sessions import AgentSessionFactory
from viworks.backend.store import Store, open_store
from viworks.config import BackendConfig, load_backend_config
from viworks.logs import Logger, set_log_level
from viworks.net import DrainingSite, ListenError, listen_service
from viworks.netaddr import parse_bind
from viworks.reload import Reloader, install_sighup
from viworks.runtime import release_large_buffers, tune_gc
from viworks.service import build_or_exit
from viworks.tls import ReloadableTLS, server_context_factory


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
    #: Fan-out jobs, reloaded after the ledger starts (set by build_backend).
    jobs: JobRunner | None = None

    def __init__(
        self,
        store: Store,
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
        # Records removed from the end of the audit log from now on are noticed.
        await self.ledger.audit.anchor()
        # No session survives a restart: every agent is offline until it says HELLO.
        await self.store.mark_all_agents_offline(self.clock.seconds())
        await self.ledger.start()
        if self.jobs is not None:
            await self.jobs.start()
        # Revoked certificates are refused from the first handshake on.
        revocations = getattr(self, "revocations", None)
        if revocations is not None:
            await revocations.start()

    def _failed(self, failure: Any) -> None:
        if failure.check(ListenError):
            self.log.critical("backend could not start: {error}", error=failure.value)
        else:
            self.log.failure("backend could not start", failure)
        self.ready.errback(failure)
        if hasattr(self.clock, "stop"):
            self.clock.stop()

    async def _close(self, grace: float = 10.0) -> None:
        await MultiService.stopService(self)
        if self.jobs is not None:
            self.jobs.stop()
        self.ledger.stop()
        api = getattr(self, "api", None)
        if api is not None:
            api.stop_streams()  # open GET /api/v1/events streams end now
        revocations = getattr(self, "revocations", None)
        if revocations is not None:
            revocations.stop()
        await self._until(lambda: self.site.in_flight == 0, grace)
        for session in self.registry:
            session.close_going_away(self.sessions.retry_hint())
        # Give the close handshakes a moment, then cut what is left.
        await self._until(lambda: not len(self.registry), 3.0)
        for session in self.registry:
            session.abort()
        # Audit records still being written go in before the store closes, with the
        # failed authentications counted since the last aggregate record.
        if api is not None:
            await api.auth_failures.stop()
        await self.ledger.audit.flush()
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
    # One audit log for the ledger, the sessions and the API.
    audit_log = AuditLog(store, reactor)
    ledger = CommandLedger(
        store,
        registry,
        reactor,
        default_timeout=config.backend.default_command_timeout,
        default_ttl=config.backend.default_ttl,
        lost_grace=config.backend.lost_grace,
        startup_grace=config.backend.startup_grace,
        signing_key=signing_key(config),
        audit=audit_log,
        hub=EventHub(history_bytes=config.backend.event_history_bytes),
        max_output_bytes=config.backend.max_output_bytes,
    )
    # Shared by the mutual-TLS listener and the one behind nginx (proxied_ws_bind).
    session_options = dict(
        registry=registry,
        store=store,
        ledger=ledger,
        clock=reactor,
        ws_path=config.backend.ws_path,
        heartbeat_interval=config.backend.heartbeat_interval,
        max_message_size=config.backend.max_message_size,
        handshake_rate=config.backend.handshake_rate,
        handshake_burst=config.backend.handshake_burst,
        agent_frame_rate=config.backend.agent_frame_rate,
        telemetry_history_bytes=config.backend.telemetry_history_bytes,
        telemetry_min_interval=config.backend.telemetry_min_interval,
        audit_log=audit_log,
    )
    sessions = AgentSessionFactory(identify=tls_identity, **session_options)
    jobs = JobRunner(store, ledger, registry, reactor)
    api = BackendAPI(
        store,
        registry,
        ledger,
        reactor,
        jobs=jobs,
        rate_limit_per_token=config.api.rate_limit_per_token,
        rate_limit_burst=config.api.rate_limit_burst,
        audit_log=audit_log,
        metrics_token=config.api.metrics_token,
        auth_failures=AuthFailures(
            audit_log,
            reactor,
            rate=config.api.auth_failure_rate,
            burst=config.api.auth_failure_burst,
            max_sources=config.api.auth_failure_sources,
            interval=config.api.auth_failure_audit_interval,
        ),
        trusted_proxies=_networks(config),
        sse_buffer_bytes=config.api.sse_buffer_bytes,
        console=config.api.console,
        session_ttl=config.api.session_ttl,
    )
    # A JSON API: Twisted's parse of form bodies (an email-module Content-Type parse
    # on every POST, measurable under load: docs/benchmarks.md) has nothing to find.
    site = DrainingSite(api.resource(), parsePOSTFormSubmission=False)
    top = BackendService(store, registry, ledger, sessions, site, reactor)
    top.jobs = jobs
    top.api = api
    # Polls revoked_certificates; the proxied listener's factory joins below.
    top.revocations = RevocationWatcher(store, [sessions], reactor)
    # Swapped on SIGHUP (top.reloader): new handshakes use the new material.
    tls = ReloadableTLS(lambda: _server_tls(config))
    top.tls = tls
    ws_host, ws_port = parse_bind(config.backend.ws_bind)
    listen_service(
        reactor, ws_host, ws_port, sessions, tls, key="[backend] ws_bind"
    ).setServiceParent(top)
    proxied_identity = None
    if config.backend.proxied_ws_bind:
        # Plain TCP: nginx terminated TLS and verified the client certificate. Only
        # trusted_proxies may vouch for an agent (see docs/security.md).
        proxied_identity = ProxiedIdentity(config.backend.trusted_proxies, config.tls.client_ca)
        if not config.backend.trusted_proxies:
            BackendService.log.warn(
                "proxied_ws_bind is set but trusted_proxies is empty: every connection "
                "to {bind} will be refused",
                bind=config.backend.proxied_ws_bind,
            )
        proxied = AgentSessionFactory(identify=proxied_identity, **session_options)
        proxied.admission = sessions.admission  # one admission budget for both listeners
        top.revocations.factories.append(proxied)
        top.proxied_sessions = proxied
        px_host, px_port = parse_bind(config.backend.proxied_ws_bind)
        listen_service(
            reactor, px_host, px_port, proxied, key="[backend] proxied_ws_bind"
        ).setServiceParent(top)
    top.reloader = _backend_reloader(config, tls, proxied_identity)
    top.reloader.add("command signing key", lambda new: ledger.set_signing_key(signing_key(new)))
    top.reloader.add(
        "API trusted proxies", lambda new: setattr(api, "trusted_proxies", _networks(new))
    )
    http_host, http_port = parse_bind(config.backend.http_bind)
    listen_service(reactor, http_host, http_port, site, key="[backend] http_bind").setServiceParent(
        top
    )
    return top


def _networks(config: BackendConfig) -> list[Any]:
    """``[backend] trusted_proxies`` as ``ipaddress`` networks."""
    return [ipaddress.ip_network(p, strict=False) for p in config.backend.trusted_proxies]


def signing_key(config: BackendConfig) -> Any:
    """The Ed25519 key of ``[signing]``, or None when the section is left out."""
    if config.signing is None:
        BackendService.log.warn(
            "command signing is off: backend.toml has no [signing] section; agents with"
            " [signing] will refuse every command (INVALID_SIGNATURE)"
        )
        return None
    return signing.load_private_key(config.signing.key)


def _server_tls(config: BackendConfig) -> Any:
    return server_context_factory(config.tls.cert, config.tls.key, config.tls.client_ca)


def _backend_reloader(
    config: BackendConfig, tls: ReloadableTLS, proxied: ProxiedIdentity | None
) -> Reloader:
    """What SIGHUP reloads: log level, TLS material, the proxied listener's trust.

    Listen addresses, the database and the like need a restart. More material
    (signing keys) registers with ``top.reloader.add``.
    """
    reloader = Reloader(lambda: load_backend_config(config.path))
    reloader.add("log level", lambda new: set_log_level(new.backend.log_level))
    reloader.add(
        "TLS certificate, key and client CA", lambda new: tls.reload(lambda: _server_tls(new))
    )
    if proxied is not None:
        reloader.add(
            "trusted proxies",
            lambda new: proxied.reload(new.backend.trusted_proxies, new.tls.client_ca),
        )
    return reloader


def makeService(options: Any, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    service = build_or_exit(load_backend_config, build_backend, options, reactor)
    install_sighup(reactor, service.reloader)
    tune_gc()
    release_large_buffers()
    return service
