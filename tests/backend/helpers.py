"""Shared fixtures for backend tests: a real SQLite store, a fake live session, and the
backend's parts wired as ``build_backend`` wires them (``wire``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from tests.stack import eventually
from viworks import protocol
from viworks.backend.api import BackendAPI
from viworks.backend.audit import AuditLog
from viworks.backend.events import EventHub
from viworks.backend.jobs import JobRunner
from viworks.backend.ledger import CommandLedger
from viworks.backend.metrics import Metrics
from viworks.backend.model import Agent
from viworks.backend.registry import SessionRegistry
from viworks.backend.sessions import AgentSessionFactory
from viworks.backend.store import SQLStore, Store, open_store
from viworks.backend.tap import CommandPath, build_api, build_command_path
from viworks.backend.waiters import CommandWaiters
from viworks.config.backend import ApiSection, BackendSection
from viworks.config.spec import Ctx, load_section
from viworks.ratelimit import TokenBucket

VERBS = {
    "ping": {"params": {}, "description": "liveness", "changes_state": False},
    "create_panel_user": {
        "params": {
            "username": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]+$",
                "min_length": 3,
                "max_length": 64,
            },
            "password": {"type": "secret", "min_length": 8, "max_length": 128},
        },
        "description": "add a panel user",
        "changes_state": True,
    },
}


class FakeSession:
    """Stands in for a welcomed agent session: records the frames the backend sends."""

    peer = "tcp:192.0.2.1:40000"
    cert_serial = None

    def __init__(self, agent_id: str, session_id: str = "s1") -> None:
        self.agent_id = agent_id
        self.session_id = session_id
        self.agent_protocol = protocol.HELLO_PROTOCOL
        self.sent: list[protocol.Frame] = []
        self.replaced = False
        self.revoked = False
        self.complaints: list[str] = []

    def send_frame(self, payload: bytes) -> None:
        self.sent.append(protocol.decode(payload))

    def close_replaced(self) -> None:
        self.replaced = True

    def close_going_away(self, retry_after: float) -> None:
        pass

    def abort(self) -> None:
        pass

    def close_revoked(self) -> None:
        self.revoked = True

    def complain(self, log_format: str, **fields: object) -> None:
        self.complaints.append(log_format.format(**fields))

    def commands(self) -> list[protocol.Frame]:
        return [f for f in self.sent if f.type == "command"]


async def sqlite_store(testcase: Any) -> SQLStore:
    """An open SQLite store in the test's temp dir, closed at cleanup."""
    store = open_store(testcase.mktemp() + ".db", reactor=reactor)
    await store.open()
    testcase.addCleanup(store.close)
    return store


async def add_agent(store: Store, agent_id: str = "gw-1", verbs: dict = VERBS) -> Agent:
    return await store.upsert_agent_online(
        agent_id,
        version="0.1.0",
        site="test",
        hostname="host-" + agent_id,
        protocol=1,
        verbs=verbs,
        peer="tcp:127.0.0.1:5000",
        session_id="s1",
        labels={},
        now=1000.0,
    )


def result_fields(command_id: str, **overrides: Any) -> dict[str, Any]:
    """The fields of a valid ``result`` frame."""
    return {
        "command_id": command_id,
        "status": "succeeded",
        "exit_code": 0,
        "result": {"ok": True},
        "stdout": "out",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "error": None,
        "started_at": None,
        "finished_at": None,
        **overrides,
    }


async def settled(http: Any, d: Deferred) -> Any:
    """What ``d`` fires with, flushing the in-memory HTTP exchange (``StubTreq``) until
    it does: the store answers on a later reactor turn or from a thread."""
    done: list = []
    d.addBoth(done.append)
    await eventually(lambda: http.flush() or done)
    if isinstance(done[0], Failure):
        done[0].raiseException()
    return done[0]


async def json_call(
    http: Any, method: str, path: str, body: Any = None, headers: Any = None, raw: Any = None
) -> tuple[Any, Any]:
    """``(response, decoded JSON body)`` of one API request through ``StubTreq``."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    d = http.request(method, "http://api" + path, data=data, headers=headers or {})
    d.addCallback(lambda r: r.content().addCallback(lambda c: (r, c)))
    response, content = await settled(http, d)
    return response, json.loads(content)


def config_section(cls: type, **keys: Any) -> Any:
    """A section of backend.toml with these keys (TOML values), defaults for the rest."""
    return load_section("(test)", cls.__name__, cls, (), keys, Ctx("/", check_files=False))


@attrs.frozen
class Backend:
    """A backend's parts over one store, wired as ``build_backend`` wires them (its own
    builders: ``build_command_path``, ``build_api``), without listeners."""

    store: Store
    clock: IReactorTime
    registry: SessionRegistry
    hub: EventHub
    metrics: Metrics
    audit: AuditLog
    commands: CommandPath

    @property
    def ledger(self) -> CommandLedger:
        return self.commands.ledger

    @property
    def waiters(self) -> CommandWaiters:
        return self.commands.waiters

    @property
    def jobs(self) -> JobRunner:
        return self.commands.jobs

    def api(self, trusted_proxies: tuple[Any, ...] = (), **api_keys: Any) -> BackendAPI:
        """The HTTP API; ``api_keys`` are ``[api]`` keys (``rate_limit_per_token=...``)."""
        return build_api(
            config_section(ApiSection, **api_keys),
            store=self.store,
            registry=self.registry,
            clock=self.clock,
            hub=self.hub,
            metrics=self.metrics,
            audit_log=self.audit,
            commands=self.commands,
            trusted_proxies=trusted_proxies,
        )

    def sessions(
        self, identify: Callable[[Any, Any], str | None], **options: Any
    ) -> AgentSessionFactory:
        """An agent listener's factory (``options``: its settings, e.g. ``ws_path``)."""
        return AgentSessionFactory(
            registry=self.registry,
            store=self.store,
            ledger=self.commands.ledger,
            dispatcher=self.commands.dispatcher,
            hub=self.hub,
            secrets=self.commands.secrets,
            metrics=self.metrics,
            audit_log=self.audit,
            admission=TokenBucket(200.0, 200.0, self.clock),
            clock=self.clock,
            identify=identify,
            **options,
        )


def wire(
    testcase: Any,
    store: Store,
    clock: IReactorTime,
    *,
    registry: SessionRegistry | None = None,
    hub: EventHub | None = None,
    signing_key: Any = None,
    new_id: Callable[[], str] | None = None,
    **backend_keys: Any,
) -> Backend:
    """A backend's parts over ``store``; ``backend_keys`` are ``[backend]`` keys
    (``lost_grace=3``; ``startup_grace`` is 0 unless given). A new call with the same
    store and registry is a restarted backend. The command path stops at cleanup."""
    backend_keys.setdefault("startup_grace", 0.0)
    registry = SessionRegistry() if registry is None else registry
    hub = EventHub() if hub is None else hub
    metrics = Metrics()
    audit_log = AuditLog(store, clock)
    commands = build_command_path(
        config_section(BackendSection, **backend_keys),
        store=store,
        registry=registry,
        clock=clock,
        hub=hub,
        metrics=metrics,
        audit_log=audit_log,
        signing_key=signing_key,
        **({} if new_id is None else {"new_id": new_id}),
    )
    testcase.addCleanup(commands.stop)
    return Backend(store, clock, registry, hub, metrics, audit_log, commands)
