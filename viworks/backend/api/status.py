"""Routes: the backend's health, its Prometheus metrics and this API's OpenAPI description."""

from __future__ import annotations

import hmac

from twisted.internet.interfaces import IReactorTime

from viworks import __version__
from viworks.backend import openapi
from viworks.backend.api.errors import AuthenticationFailed
from viworks.backend.api.gate import Gate
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import PUBLIC, ROUTES, Call
from viworks.backend.authz import VIEWER
from viworks.backend.health import StoreHealth
from viworks.backend.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from viworks.backend.metrics import Metrics
from viworks.backend.registry import SessionRegistry
from viworks.timeutil import rfc3339


class StatusRoutes:
    clock: IReactorTime
    gate: Gate
    registry: SessionRegistry
    store_health: StoreHealth
    metrics: Metrics
    metrics_token: str

    @ROUTES.route("GET", "/health", role=PUBLIC)
    @ROUTES.route("GET", "/api/v1/health", role=PUBLIC)
    async def health(self, call: Call) -> Json:
        """200 healthy; 503 when the store does not take writes ("store": "read-only")
        or does not answer ("unavailable"). The store is probed at most once per TTL."""
        store = await self.store_health.state()
        healthy = store == StoreHealth.OK
        return Json(
            {
                "status": "healthy" if healthy else "unhealthy",
                "timestamp": rfc3339(self.clock.seconds()),
                "version": __version__,
                "agents_online": len(self.registry),
                "store": store,
            },
            200 if healthy else 503,
        )

    @ROUTES.route("GET", "/api/v1/openapi.json", role=VIEWER)
    async def openapi_description(self, call: Call) -> Json:
        """This API's OpenAPI 3.1 description (viworks/backend/openapi.yaml)."""
        return Json(openapi.description())

    @ROUTES.route("GET", "/metrics", role=PUBLIC)
    async def metrics_page(self, call: Call) -> bytes:
        """Prometheus text exposition; the route checks a bearer token itself, only if
        [api] metrics_token is set."""
        request = call.request
        if self.metrics_token:
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.metrics_token.encode()
            ):
                raise self.gate.refuse(
                    request, AuthenticationFailed("send Authorization: Bearer <metrics_token>")
                )
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.render()
