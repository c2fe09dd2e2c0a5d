"""What a gateway reports about its host every ``telemetry_interval``."""

from __future__ import annotations

from typing import Any

from viworks.gateway import health
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.logs import Logger

#: The verbs whose results telemetry includes, and how each becomes a metric.
_SOURCES = {
    "service_status": ("services", lambda result: result["units"]),
    "list_containers": ("containers", lambda result: {"count": len(result["containers"])}),
}


class TelemetryCollector:
    """Host metrics from /proc, plus service states and containers when those verbs exist.

    The service and container figures come from the same verbs an operator runs
    (``service_status``, ``list_containers``), so they use the same tools and
    limits. They run every round, quietly: a verb that fails (its tool is not
    installed, systemd is not running) is logged once, at warning level, and then
    only when its error changes or it works again.
    """

    log = Logger()

    def __init__(self, catalog: VerbCatalog) -> None:
        self.catalog = catalog
        # verb -> the error code it last failed with (absent: it worked last time).
        self._failing: dict[str, str] = {}

    async def collect(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "health": health.system_health(),
            "verbs": {"running": self.catalog.running, "queued": self.catalog.queued},
        }
        names = set(self.catalog.names())
        for verb, (key, metric) in _SOURCES.items():
            if verb not in names:
                continue
            outcome = await self.catalog.execute(verb, {}, quiet=True)
            if outcome.status == "succeeded":
                metrics[key] = metric(outcome.result)
            self._note(verb, outcome)
        return metrics

    def _note(self, verb: str, outcome: Any) -> None:
        error = outcome.error or {}
        code = error.get("code", outcome.status) if outcome.status != "succeeded" else None
        before = self._failing.get(verb)
        if code is None:
            if before is not None:
                del self._failing[verb]
                self.log.info("telemetry: {verb} works again", verb=verb)
            return
        self._failing[verb] = code
        if code == before:
            self.log.debug("telemetry: {verb} still fails with {code}", verb=verb, code=code)
            return
        self.log.warn(
            "telemetry: {verb} failed ({code}: {reason}); its figures are left out, and this"
            " is logged again only when it changes",
            verb=verb,
            code=code,
            reason=error.get("message", ""),
        )
