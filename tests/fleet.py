"""Many simulated agents in the test process, for storm tests against a real backend.

Each ``Fleet`` member is the product's own ``BackendLink`` (its reconnect policy,
retry-after handling, heartbeats and journal) with its own agent certificate,
issued at test time, and a one-verb catalogue (an in-process ``ping``). Only the
process is shared: every agent has its own mutual-TLS WebSocket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from viworks import pki
from viworks.gateway.journal import Journal
from viworks.gateway.link import BackendLink
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.model import Verb
from viworks.tls import client_tls_options


def ping_catalog(reactor: Any) -> VerbCatalog:
    """The product's catalogue with one in-process verb, ``ping``."""
    ping = Verb(
        name="ping",
        params={},
        description="Answer at once.",
        timeout=5.0,
        call=lambda _args: {"pong": True},
    )
    return VerbCatalog(ProcessRunner(reactor), {"ping": ping})


@dataclass
class Event:
    """A connection of one agent opened (``code`` None) or ended, as its link saw it."""

    at: float
    kind: str  # "open" or "close"
    code: int | None = None
    reason: str | None = None


class Fleet:
    """``size`` agents named ``<prefix>-NNN``, all pointed at ``wss://localhost:<port>``.

    ``ca_dir`` is a ``viworks pki`` CA directory the backend trusts; the agents'
    certificates are issued into it (once; an existing one is reused). ``catalog``:
    the verbs they all offer (default ``ping_catalog``).
    """

    def __init__(
        self,
        reactor: Any,
        directory: str,
        ca_dir: str,
        port: int,
        size: int,
        prefix: str = "fleet",
        catalog: VerbCatalog | None = None,
        **link_options: Any,
    ) -> None:
        self.reactor = reactor
        self.ids = [f"{prefix}-{i:03d}" for i in range(size)]
        self.events: dict[str, list[Event]] = {agent_id: [] for agent_id in self.ids}
        catalog = catalog or ping_catalog(reactor)
        os.makedirs(directory, exist_ok=True)
        self.links = [
            self._link(agent_id, directory, ca_dir, port, catalog, link_options)
            for agent_id in self.ids
        ]

    def _link(
        self, agent_id: str, directory: str, ca_dir: str, port: int, catalog: Any, options: dict
    ) -> BackendLink:
        cert = os.path.join(ca_dir, "agents", f"{agent_id}.crt")
        key = os.path.join(ca_dir, "agents", f"{agent_id}.key")
        if not os.path.exists(cert):
            pki.issue_agent(ca_dir, agent_id)
        link = BackendLink(
            reactor=self.reactor,
            backend_url=f"wss://localhost:{port}/ws/agent",
            agent_id=agent_id,
            site="fleet",
            hostname=agent_id,
            catalog=catalog,
            journal=Journal(os.path.join(directory, f"{agent_id}.db"), clock=self.reactor),
            tls_options=client_tls_options("localhost", cert, key, os.path.join(ca_dir, "ca.crt")),
            **options,
        )
        # Record every connection event, also of connections refused before onOpen.
        events = self.events[agent_id]
        opened, closed = link.connection_opened, link.connection_closed

        def on_open(proto: Any) -> None:
            events.append(Event(self.reactor.seconds(), "open"))
            opened(proto)

        def on_close(proto: Any, code: int | None, reason: Any) -> None:
            events.append(Event(self.reactor.seconds(), "close", code, reason))
            closed(proto, code, reason)

        link.connection_opened = on_open  # type: ignore[method-assign]
        link.connection_closed = on_close  # type: ignore[method-assign]
        return link

    def start(self) -> None:
        for link in self.links:
            link.startService()

    def stop(self) -> Deferred:
        return gatherResults(
            [link.stopService() for link in self.links if link.running], consumeErrors=True
        )

    @property
    def connected(self) -> int:
        """How many agents are welcomed right now."""
        return sum(1 for link in self.links if link.connected)
