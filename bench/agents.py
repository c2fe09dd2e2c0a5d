# ruff: noqa: E501
"""Simulated gateway agents: N of the product's own ``BackendLink`` in this process.

Ideas from ``tests/fleet.py``: each agent is a real ``BackendLink`` (reconnect policy,
HELLO, heartbeats, WebSocket pings, command/ack/result/result_ack, journal logic) with
its own agent certificate and its own mutual-TLS WebSocket. Two changes keep one process
able to simulate thousands of agents without measuring the load generator instead of the
backend:

* the journal is the product's ``Journal`` on an in-memory SQLite database (no file
  descriptors, no fsync per command); it records when each ``result_ack`` arrives, which
  is when the backend has stored the result;
* telemetry is collected once and the same report is sent by every agent (the frames the
  backend receives are real; the /proc reads are not repeated N times).

The catalogue has an in-process ``ping`` and a declared ``true`` verb (``/bin/true``
through the product's ``ProcessRunner``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall

from bench.common import client_tls
from viworks import protocol
from viworks.config.verbs import VerbConfig
from viworks.gateway import telemetry
from viworks.gateway.journal import Journal
from viworks.gateway.link import BackendLink
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.declared import declared_verb
from viworks.gateway.verbs.model import Verb

# Agents connecting at the same time at most (see Fleet.start).
IN_FLIGHT = 1000


def bench_catalog(reactor: Any) -> VerbCatalog:
    ping = Verb(
        name="ping",
        params={},
        description="Answer at once.",
        timeout=5.0,
        call=lambda _args: {"pong": True},
    )
    true = declared_verb(
        "true", verb_config(argv=("/bin/true",), changes_state=False, description="Run /bin/true.")
    )
    return VerbCatalog(ProcessRunner(reactor), {"ping": ping, "true": true})


def verb_config(**values: Any) -> VerbConfig:
    """A ``[verbs.NAME]`` table as the config loader would build it (defaults filled in)."""
    for f in dataclasses.fields(VerbConfig):
        spec = f.metadata.get("spec")
        if f.name not in values and spec is not None:
            values[f.name] = spec.default
    return VerbConfig(**values)


class MemoryJournal(Journal):
    """The product's journal on ``:memory:``; notes when each result_ack arrived.

    ``prepare()`` creates it (what a gateway does once, when its process starts) so
    that a storm times connecting, not building thousands of journals; ``open()``
    (at the link's start) then only recovers, as the product's does.
    """

    def __init__(self, clock: Any, acks: dict[str, float]) -> None:
        super().__init__(":memory:", clock=clock)
        self._acks = acks

    def prepare(self) -> None:
        if self._db is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
            self._migrate()

    def open(self) -> list:
        self.prepare()
        return self._recover()

    def ack(self, command_id: str) -> None:
        self._acks[command_id] = time.perf_counter()
        super().ack(command_id)


class BenchLink(BackendLink):
    """A ``BackendLink`` whose telemetry report is collected once for the whole fleet."""

    metrics: dict | None = None

    def _send_telemetry(self) -> Deferred:
        if self.metrics is not None:
            self._send(
                protocol.encode("telemetry", ts=self.reactor.seconds(), metrics=self.metrics)
            )
        return succeed(None)


def _prepare_tls(options: Any) -> None:
    """Build (and let Twisted cache) the TLS context behind ``optionsForClientTLS``'s
    options: at the first connection otherwise. Leaves them alone if Twisted's
    internals differ (the context is then built at the first connection)."""
    certificate_options = getattr(getattr(options, "_createConnection", None), "__self__", None)
    get_context = getattr(certificate_options, "getContext", None)
    if get_context is not None:
        get_context()


class Fleet:
    """``ids`` agents pointed at ``wss://localhost:<port>/ws/agent``."""

    def __init__(
        self, reactor: Any, pki_dir: str, port: int, ids: list[str], heartbeat: float
    ) -> None:
        self.reactor = reactor
        self.ids = ids
        self.acks: dict[str, float] = {}
        self.catalog = bench_catalog(reactor)
        self.links: list[BenchLink] = []
        for agent_id in ids:
            link = BenchLink(
                reactor=reactor,
                backend_url=f"wss://localhost:{port}/ws/agent",
                agent_id=agent_id,
                site="bench",
                hostname=agent_id,
                catalog=self.catalog,
                journal=MemoryJournal(reactor, self.acks),
                tls_options=client_tls(pki_dir, agent_id),
                heartbeat_interval=heartbeat,
                reconnect_initial=1.0,
                reconnect_max=10.0,
                telemetry_interval=3600.0,
            )
            self.links.append(link)

    async def prepare(self) -> None:
        """What each gateway does once when its process starts, before any storm: its
        journal, its TLS context (certificate, key and trust store loaded), and the
        telemetry report (collected once for the whole fleet)."""
        BenchLink.metrics = await telemetry.TelemetryCollector(self.catalog).collect()
        for link in self.links:
            link.journal.prepare()
            _prepare_tls(link.tls_options)

    def start(self, in_flight: int = IN_FLIGHT) -> None:
        """Start every agent, at most ``in_flight`` of them connecting at a time.

        This process does the client half of every TLS handshake on one core (a real
        fleet does them on thousands of machines): with all of 5,000 agents connecting
        at once, connections wait here until the backend's opening-handshake timeout
        (10 s) drops them, and their reconnects feed the storm. The cap keeps the backend
        offered as many handshakes as this process can complete; it does not change
        storms of up to ``in_flight`` agents.
        """
        waiting = list(reversed(self.links))
        connecting: list[BenchLink] = []

        def top_up() -> None:
            connecting[:] = [link for link in connecting if not link.connected]
            while waiting and len(connecting) < in_flight:
                link = waiting.pop()
                link.startService()
                connecting.append(link)
            if not waiting:
                loop.stop()

        loop = LoopingCall(top_up)
        loop.clock = self.reactor
        loop.start(0.01)

    def stop(self) -> Deferred:
        return DeferredList(
            [link.stopService() for link in self.links if link.running], consumeErrors=True
        )

    @property
    def connected(self) -> int:
        return sum(1 for link in self.links if link.connected)
