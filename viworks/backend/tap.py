"""``twistd viworks-backend``: options, and the one place the backend is put together.

``build_backend`` builds every collaborator from the configuration and passes it in;
nothing in the backend makes a collaborator of its own. The service tree:

BackendService (opens the store, then starts its children)
 |- the agents' mutual-TLS WebSocket listener (ws_bind)
 |- the agents' listener behind nginx (proxied_ws_bind, when set)
 `- the operators' HTTP API listener (http_bind)

Tests build the same parts with ``build_command_path`` and ``build_api``
(``tests/backend/helpers.py``).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.python.failure import Failure

from viworks import signing
from viworks.backend.api import BackendAPI
from viworks.backend.audit import AuditLog
from viworks.backend.authfailures import AuthFailures
from viworks.backend.commandevents import CommandStatuses, OutcomeAudit
from viworks.backend.deadlines import Deadlines
from viworks.backend.dispatcher import Dispatcher
from viworks.backend.events import EventHub
from viworks.backend.health import StoreHealth
from viworks.backend.identity import ProxiedIdentity, tls_identity
from viworks.backend.inflight import InFlightCommands
from viworks.backend.jobs import JobRunner
from viworks.backend.ledger import CommandLedger
from viworks.backend.metrics import Metrics
from viworks.backend.registry import SessionRegistry
from viworks.backend.revocation import RevocationWatcher
from viworks.backend.secrecy import SecretParams
from viworks.backend.sessions import AgentSessionFactory
from viworks.backend.store import Store, open_store
from viworks.backend.waiters import CommandWaiters
from viworks.config import BackendConfig, load_backend_config
from viworks.config.backend import ApiSection, BackendSection
from viworks.console.files import ConsoleFiles
from viworks.logs import Logger, set_log_level
from viworks.net import DrainingSite, ListenError, listen_service
from viworks.netaddr import parse_bind
from viworks.ratelimit import TokenBucket
from viworks.reload import Reloader, install_sighup
from viworks.runtime import release_large_buffers, tune_gc
from viworks.service import build_or_exit
from viworks.tls import ReloadableTLS, server_context_factory

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Options(usage.Options):
    optParameters = [
        ["config", "c", "/etc/viworks/backend.toml", "The backend's configuration file (TOML)."]
    ]


@attrs.frozen
class CommandPath:
    """The rooms a command goes through, wired (``build_command_path``): the ledger
    creates it, the dispatcher sends it, the deadlines expire or lose it, the jobs fan
    it out; every status change travels as a ``command.status`` event on the hub, which
    the waiters, the outcome audit, the jobs and the ledger's memory follow."""

    secrets: SecretParams
    inflight: InFlightCommands
    statuses: CommandStatuses
    deadlines: Deadlines
    dispatcher: Dispatcher
    ledger: CommandLedger
    outcomes: OutcomeAudit
    waiters: CommandWaiters
    jobs: JobRunner

    async def start(self) -> None:
        """Learn what agents announced, keep deadlines, continue the jobs (the store is open)."""
        await self.ledger.start()
        await self.deadlines.start()
        await self.jobs.start()

    def stop(self) -> None:
        """Start nothing more and answer the waiters now; results still arriving are
        recorded (and audited) until the store closes."""
        self.jobs.stop()
        self.deadlines.stop()
        self.waiters.stop()


def build_command_path(
    settings: BackendSection,
    *,
    store: Store,
    registry: SessionRegistry,
    clock: IReactorTime,
    hub: EventHub,
    metrics: Metrics,
    audit_log: AuditLog,
    signing_key: Ed25519PrivateKey | None,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> CommandPath:
    """The command path over ``store``, with ``[backend]`` ``settings``."""
    # Every store call the command path makes is timed (viworks_store_seconds).
    timed = metrics.timed_store(store)
    secrets = SecretParams()
    inflight = InFlightCommands()
    statuses = CommandStatuses(timed, hub, clock)
    deadlines = Deadlines(
        timed,
        statuses,
        clock,
        lost_grace=settings.lost_grace,
        startup_grace=settings.startup_grace,
    )
    dispatcher = Dispatcher(
        store=timed,
        registry=registry,
        clock=clock,
        inflight=inflight,
        statuses=statuses,
        deadlines=deadlines,
        metrics=metrics,
        secrets=secrets,
        signing_key=signing_key,
    )
    # The order of subscription is the order in which a change is heard: the ledger's
    # memory, the audit, the waiters (whose answers audit the request), then the jobs.
    ledger = CommandLedger(
        store=timed,
        registry=registry,
        clock=clock,
        hub=hub,
        statuses=statuses,
        inflight=inflight,
        dispatcher=dispatcher,
        deadlines=deadlines,
        metrics=metrics,
        secrets=secrets,
        default_timeout=settings.default_command_timeout,
        default_ttl=settings.default_ttl,
        max_output_bytes=settings.max_output_bytes,
        new_id=new_id,
    )
    outcomes = OutcomeAudit(hub, audit_log)
    waiters = CommandWaiters(hub, timed, clock)
    jobs = JobRunner(
        store=store,
        ledger=ledger,
        registry=registry,
        hub=hub,
        secrets=secrets,
        clock=clock,
        default_timeout=settings.default_command_timeout,
        default_ttl=settings.default_ttl,
        new_id=new_id,
    )
    return CommandPath(
        secrets, inflight, statuses, deadlines, dispatcher, ledger, outcomes, waiters, jobs
    )


def build_api(
    config: ApiSection,
    *,
    store: Store,
    registry: SessionRegistry,
    clock: IReactorTime,
    hub: EventHub,
    metrics: Metrics,
    audit_log: AuditLog,
    commands: CommandPath,
    trusted_proxies: Iterable[IPNetwork],
) -> BackendAPI:
    """The operators' HTTP API with ``[api]`` ``config``; ``trusted_proxies`` may name
    the client in X-Forwarded-For."""
    auth_failures = AuthFailures(
        audit_log,
        clock,
        rate=config.auth_failure_rate,
        burst=config.auth_failure_burst,
        max_sources=config.auth_failure_sources,
        interval=config.auth_failure_audit_interval,
    )
    return BackendAPI(
        store,
        registry,
        commands.ledger,
        clock,
        hub=hub,
        waiters=commands.waiters,
        jobs=commands.jobs,
        metrics=metrics,
        audit_log=audit_log,
        auth_failures=auth_failures,
        store_health=StoreHealth(store, clock),
        console=ConsoleFiles() if config.console else None,
        rate_limit_per_token=config.rate_limit_per_token,
        rate_limit_burst=config.rate_limit_burst,
        metrics_token=config.metrics_token,
        trusted_proxies=trusted_proxies,
        sse_buffer_bytes=config.sse_buffer_bytes,
        session_ttl=config.session_ttl,
    )


@attrs.frozen
class BackendParts:
    """Everything ``build_backend`` made that outlives the build."""

    store: Store
    registry: SessionRegistry
    hub: EventHub
    metrics: Metrics
    audit: AuditLog
    commands: CommandPath
    sessions: AgentSessionFactory
    # The listener behind nginx ([backend] proxied_ws_bind), when there is one.
    proxied_sessions: AgentSessionFactory | None
    api: BackendAPI
    revocations: RevocationWatcher
    # Swapped on SIGHUP (reloader): new handshakes use the new material.
    tls: ReloadableTLS
    reloader: Reloader
    site: DrainingSite


class BackendService(MultiService):
    """Opens the store before the listeners start; stops in an orderly way.

    On start: the store opens, the audit log is anchored, every agent is offline, the
    command path starts (deadlines, jobs), revoked certificates are loaded; then the
    listeners. On stop: no new connections or requests, API waiters are answered,
    requests in flight finish (bounded), agents are told to reconnect after
    spread-out delays, then the store is closed.
    """

    log = Logger()

    def __init__(self, parts: BackendParts, clock: IReactorTime) -> None:
        super().__init__()
        self.parts = parts
        self.clock = clock
        self.ready: Deferred[None] = Deferred()

    def startService(self) -> None:
        # Listeners must not accept anything before the store is usable.
        self.running = 1
        d = Deferred.fromCoroutine(self._open())
        d.addCallback(lambda _: MultiService.startService(self))
        d.addCallbacks(self.ready.callback, self._failed)

    async def _open(self) -> None:
        parts = self.parts
        await parts.store.open()
        # Records removed from the end of the audit log from now on are noticed.
        await parts.audit.anchor()
        # No session survives a restart: every agent is offline until it says HELLO.
        await parts.store.mark_all_agents_offline(self.clock.seconds())
        await parts.commands.start()
        # Revoked certificates are refused from the first handshake on.
        await parts.revocations.start()

    def _failed(self, failure: Failure) -> None:
        if failure.check(ListenError):
            self.log.critical("backend could not start: {error}", error=failure.value)
        else:
            self.log.failure("backend could not start", failure)
        self.ready.errback(failure)
        if IReactorCore.providedBy(self.clock):
            cast(IReactorCore, self.clock).stop()

    async def _close(self, grace: float = 10.0) -> None:
        parts = self.parts
        await MultiService.stopService(self)
        parts.commands.stop()
        parts.api.stop_streams()  # open GET /api/v1/events streams end now
        parts.revocations.stop()
        await self._until(lambda: parts.site.in_flight == 0, grace)
        for session in parts.registry:
            session.close_going_away(parts.sessions.retry_hint())
        # Give the close handshakes a moment, then cut what is left.
        await self._until(lambda: not len(parts.registry), 3.0)
        for session in parts.registry:
            session.abort()
        # Audit records still being written go in before the store closes, with the
        # failed authentications counted since the last aggregate record.
        await parts.api.auth_failures.stop()
        await parts.audit.flush()
        await parts.store.close()

    async def _until(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.05
    ) -> None:
        for _ in range(int(timeout / step)):
            if predicate():
                return
            await deferLater(self.clock, step, lambda: None)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._close())


def build_backend(config: BackendConfig, reactor: Any) -> BackendService:
    """The whole backend for ``config``; used by twistd, the .tac and ``viworks dev``.

    ``reactor``: time, TCP and TLS listening, threads (the store).
    """
    settings = config.backend
    set_log_level(settings.log_level)
    store = open_store(settings.database, reactor=reactor)
    registry = SessionRegistry()
    hub = EventHub(history_bytes=settings.event_history_bytes)
    metrics = Metrics()
    # One audit log for the command path, the sessions and the API.
    audit_log = AuditLog(store, reactor)
    commands = build_command_path(
        settings,
        store=store,
        registry=registry,
        clock=reactor,
        hub=hub,
        metrics=metrics,
        audit_log=audit_log,
        signing_key=signing_key(config),
    )
    # One admission budget for both agent listeners.
    admission = TokenBucket(settings.handshake_rate, settings.handshake_burst, reactor)

    def agent_sessions(identify: Callable[[Any, Any], str | None]) -> AgentSessionFactory:
        return AgentSessionFactory(
            registry=registry,
            store=store,
            ledger=commands.ledger,
            dispatcher=commands.dispatcher,
            hub=hub,
            secrets=commands.secrets,
            metrics=metrics,
            audit_log=audit_log,
            admission=admission,
            clock=reactor,
            identify=identify,
            ws_path=settings.ws_path,
            heartbeat_interval=settings.heartbeat_interval,
            max_message_size=settings.max_message_size,
            agent_frame_rate=settings.agent_frame_rate,
            telemetry_history_bytes=settings.telemetry_history_bytes,
            telemetry_min_interval=settings.telemetry_min_interval,
        )

    sessions = agent_sessions(tls_identity)
    proxied_identity = proxied = None
    if settings.proxied_ws_bind:
        # Plain TCP: nginx terminated TLS and verified the client certificate. Only
        # trusted_proxies may vouch for an agent (see docs/security.md).
        proxied_identity = ProxiedIdentity(settings.trusted_proxies, config.tls.client_ca)
        if not settings.trusted_proxies:
            BackendService.log.warn(
                "proxied_ws_bind is set but trusted_proxies is empty: every connection "
                "to {bind} will be refused",
                bind=settings.proxied_ws_bind,
            )
        proxied = agent_sessions(proxied_identity)
    api = build_api(
        config.api,
        store=store,
        registry=registry,
        clock=reactor,
        hub=hub,
        metrics=metrics,
        audit_log=audit_log,
        commands=commands,
        trusted_proxies=_networks(config),
    )
    # A JSON API: Twisted's parse of form bodies (an email-module Content-Type parse
    # on every POST, measurable under load: docs/benchmarks.md) has nothing to find.
    site = DrainingSite(api.resource(), parsePOSTFormSubmission=False)
    tls = ReloadableTLS(lambda: _server_tls(config))
    reloader = _backend_reloader(config, tls, proxied_identity)
    reloader.add(
        "command signing key",
        lambda new: commands.dispatcher.set_signing_key(signing_key(new)),
    )
    reloader.add("API trusted proxies", lambda new: setattr(api, "trusted_proxies", _networks(new)))
    factories = [sessions] if proxied is None else [sessions, proxied]
    parts = BackendParts(
        store=store,
        registry=registry,
        hub=hub,
        metrics=metrics,
        audit=audit_log,
        commands=commands,
        sessions=sessions,
        proxied_sessions=proxied,
        api=api,
        # Polls revoked_certificates for every agent listener.
        revocations=RevocationWatcher(store, factories, reactor),
        tls=tls,
        reloader=reloader,
        site=site,
    )
    top = BackendService(parts, reactor)
    listen_service(
        reactor, *parse_bind(settings.ws_bind), sessions, tls, key="[backend] ws_bind"
    ).setServiceParent(top)
    if proxied is not None:
        listen_service(
            reactor,
            *parse_bind(settings.proxied_ws_bind),
            proxied,
            key="[backend] proxied_ws_bind",
        ).setServiceParent(top)
    listen_service(
        reactor, *parse_bind(settings.http_bind), site, key="[backend] http_bind"
    ).setServiceParent(top)
    return top


def _networks(config: BackendConfig) -> list[IPNetwork]:
    """``[backend] trusted_proxies`` as ``ipaddress`` networks."""
    return [ipaddress.ip_network(p, strict=False) for p in config.backend.trusted_proxies]


def signing_key(config: BackendConfig) -> Ed25519PrivateKey | None:
    """The Ed25519 key of ``[signing]``, or None when the section is left out."""
    if config.signing is None:
        BackendService.log.warn(
            "command signing is off: backend.toml has no [signing] section; agents with"
            " [signing] will refuse every command (INVALID_SIGNATURE)"
        )
        return None
    return signing.load_private_key(config.signing.key)


def _server_tls(config: BackendConfig) -> CertificateOptions:
    return server_context_factory(config.tls.cert, config.tls.key, config.tls.client_ca)


def _backend_reloader(
    config: BackendConfig, tls: ReloadableTLS, proxied: ProxiedIdentity | None
) -> Reloader:
    """What SIGHUP reloads: log level, TLS material, the proxied listener's trust.

    Listen addresses, the database and the like need a restart. More material
    (the signing key, the API's trusted proxies) is added by ``build_backend``.
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
    install_sighup(reactor, service.parts.reloader)
    tune_gc()
    release_large_buffers()
    return service
