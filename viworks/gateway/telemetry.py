"""What a gateway reports about its host every ``telemetry_interval``."""

from __future__ import annotations

from typing import Any

from viworks.gateway import health


async def collect(catalog: Any) -> dict[str, Any]:
    """Host metrics from /proc, plus service states and containers when those verbs exist.

    The service and container figures come from the same verbs an operator runs
    (``service_status``, ``list_containers``), so they use the same tools and limits.
    """
    metrics: dict[str, Any] = {
        "health": health.system_health(),
        "verbs": {"running": catalog.running, "queued": catalog.queued},
    }
    names = set(catalog.names())
    if "service_status" in names:
        outcome = await catalog.execute("service_status", {})
        if outcome.status == "succeeded":
            metrics["services"] = outcome.result["units"]
    if "list_containers" in names:
        outcome = await catalog.execute("list_containers", {})
        if outcome.status == "succeeded":
            metrics["containers"] = {"count": len(outcome.result["containers"])}
    return metrics
