"""The gateway's local HTTP API (plain HTTP, loopback by default)."""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from viworks import __version__
from viworks.gateway.link import BackendLink
from viworks.timeutil import rfc3339


class GatewayAPI:
    """Health of the agent itself, for local monitoring."""

    app = Klein()

    def __init__(self, link: BackendLink, clock: IReactorTime) -> None:
        self.link = link
        self.clock = clock

    def resource(self) -> IResource:
        return self.app.resource()

    @app.route("/health", methods=["GET"])
    @app.route("/api/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """200 healthy; 503 unhealthy when new commands are refused (its journal is gone)."""
        request.setHeader(b"content-type", b"application/json")
        problem = self.link.journal_problem
        if problem is not None:
            request.setResponseCode(503)
        body = {
            "status": "healthy" if problem is None else "unhealthy",
            "timestamp": rfc3339(self.clock.seconds()),
            "version": __version__,
            "agent_id": self.link.agent_id,
            "backend": "connected" if self.link.connected else "disconnected",
            "session_id": self.link.session_id,
            "journal": "ok" if problem is None else "unavailable",
        }
        if problem is not None:
            body["journal_error"] = problem
        return json.dumps(body).encode("utf-8")
