"""The API object: the route groups over their collaborators, as one Klein app."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from klein.resource import KleinResource
from twisted.internet.interfaces import IReactorTime

from viworks.backend.api.agents import AgentRoutes
from viworks.backend.api.audit import AuditRoutes
from viworks.backend.api.commands import CommandRoutes
from viworks.backend.api.console import SESSION_TTL, ConsoleRoutes
from viworks.backend.api.events import EventRoutes
from viworks.backend.api.gate import Gate, Network
from viworks.backend.api.jobs import JobRoutes
from viworks.backend.api.routing import ROUTES
from viworks.backend.api.sse import SSE_BUFFER_BYTES, Streams
from viworks.backend.api.status import StatusRoutes
from viworks.backend.api.tokens import TokenRoutes
from viworks.backend.audit import AuditLog, ChainStatus
from viworks.backend.authfailures import AuthFailures
from viworks.backend.events import EventHub
from viworks.backend.health import StoreHealth
from viworks.backend.jobs import JobRunner
from viworks.backend.ledger import CommandLedger
from viworks.backend.metrics import Metrics
from viworks.backend.registry import SessionRegistry
from viworks.backend.store import Store
from viworks.backend.waiters import CommandWaiters
from viworks.console.files import ConsoleFiles
from viworks.logs import Logger


class BackendAPI(
    StatusRoutes,
    AgentRoutes,
    CommandRoutes,
    JobRoutes,
    EventRoutes,
    ConsoleRoutes,
    TokenRoutes,
    AuditRoutes,
):
    """The HTTP API over the store, the live registry, the command path and the jobs.

    Every collaborator comes from the composition root (``build_api`` in
    viworks/backend/tap.py). The routes are declared, each with its role, in the route
    modules of this package (``ROUTES``).
    """

    routes = ROUTES
    app = ROUTES.app
    log = Logger()

    def __init__(
        self,
        store: Store,
        registry: SessionRegistry,
        ledger: CommandLedger,
        clock: IReactorTime,
        *,
        hub: EventHub,
        waiters: CommandWaiters,
        jobs: JobRunner,
        metrics: Metrics,
        audit_log: AuditLog,
        auth_failures: AuthFailures,
        store_health: StoreHealth,
        console: ConsoleFiles | None,
        metrics_token: str = "",
        rate_limit_per_token: float = 20.0,
        rate_limit_burst: int = 40,
        trusted_proxies: Iterable[Network] = (),
        sse_buffer_bytes: int = SSE_BUFFER_BYTES,
        session_ttl: float = SESSION_TTL,
    ) -> None:
        self.store = store
        self.registry = registry
        self.ledger = ledger
        self.clock = clock
        # Live events (GET /api/v1/events) and the waits of ?wait=N.
        self.hub = hub
        self.waiters = waiters
        # Fan-out jobs (started with the backend service; see viworks.backend.jobs).
        self.jobs = jobs
        # Every request that changes something (or tries to) is audited.
        self.audit = audit_log
        # Failed authentications: limited per source, audited in aggregate (authfailures).
        self.auth_failures = auth_failures
        self.gate = Gate(
            store,
            clock,
            auth_failures,
            rate=rate_limit_per_token,
            burst=rate_limit_burst,
            trusted_proxies=list(trusted_proxies),
        )
        # GET /metrics (shared with the command path and the sessions); a bearer token
        # is needed only when [api] metrics_token is set.
        self.metrics = metrics
        self.metrics_token = metrics_token
        self.streams = Streams(clock, metrics, sse_buffer_bytes)
        # /health probes whether the store takes writes (at most once per TTL).
        self.store_health = store_health
        self.chain = ChainStatus(store, clock)
        # GET /ui/: the web console ([api] console = false leaves it out: None).
        self.console = console
        self.session_ttl = session_ttl

    @property
    def trusted_proxies(self) -> Sequence[Network]:
        """Proxies whose X-Forwarded-For names the client ([backend] trusted_proxies;
        SIGHUP sets it anew)."""
        return self.gate.trusted_proxies

    @trusted_proxies.setter
    def trusted_proxies(self, networks: Iterable[Network]) -> None:
        self.gate.trusted_proxies = list(networks)

    def resource(self) -> KleinResource:
        return self.app.resource()

    def stop_streams(self) -> None:
        """End every open event stream (called when the backend stops)."""
        self.streams.stop()
