"""The store over SQL: the engine with every aggregate's tables.

Each aggregate's SQL lives in a module of its own (``agents``, ``commands``,
``jobs``, ``tokens``, ``revocations``, ``audit``, ``telemetry``), as a class
over :class:`~viworks.backend.store.engine.SQLEngine`; the engines
(``SQLiteStore``, ``PostgresStore``) derive from this one.
"""

from __future__ import annotations

from viworks.backend.store.agents import AgentStore
from viworks.backend.store.audit import AuditStore
from viworks.backend.store.commands import CommandStore
from viworks.backend.store.jobs import JobStore
from viworks.backend.store.revocations import RevocationStore
from viworks.backend.store.telemetry import TelemetryStore
from viworks.backend.store.tokens import TokenStore


class SQLStore(
    AgentStore,
    CommandStore,
    JobStore,
    TokenStore,
    RevocationStore,
    AuditStore,
    TelemetryStore,
):
    """Every table of the viworks store (see :class:`viworks.backend.store.Store`)."""
