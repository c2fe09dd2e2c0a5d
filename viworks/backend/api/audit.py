"""Routes: the hash-chained audit log, searched, exported and verified
(viworks/backend/audit.py keeps it)."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

from viworks.backend.api.errors import ApiError
from viworks.backend.api.parse import number, query
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import ROUTES, Call
from viworks.backend.audit import ChainStatus, export_record
from viworks.backend.authz import VIEWER
from viworks.backend.model import AuditRecord
from viworks.backend.store import Store
from viworks.timeutil import rfc3339


class AuditRoutes:
    store: Store
    chain: ChainStatus

    @ROUTES.route("GET", "/api/v1/audit", role=VIEWER)
    async def audit_records(self, call: Call) -> Json:
        """Audit records newest first, filtered; ``next_before`` pages to older ones."""
        limit = int(number(call.request, "limit", 1, 1000) or 100)
        before = number(call.request, "before", 1, 2**62)
        rows = await self.store.audit_search(
            **_filters(call.request),
            before_seq=None if before is None else int(before),
            limit=limit + 1,
        )
        return Json(
            {
                "records": [_record_json(row) for row in rows[:limit]],
                "next_before": rows[limit - 1].seq if len(rows) > limit else None,
            }
        )

    @ROUTES.route("GET", "/api/v1/audit/verify", role=VIEWER)
    async def audit_verify(self, call: Call) -> Json:
        """How far the hash chain is verified (``?full=1`` re-reads it all)."""
        status = await self.chain.check(full=query(call.request, "full") in ("1", "true"))
        return Json({**status, "checked_at": rfc3339(status["checked_at"])})

    @ROUTES.route("GET", "/api/v1/audit/export", role=VIEWER)
    async def audit_export(self, call: Call) -> bytes:
        """The filtered records as JSON lines, oldest first (``viworks audit export``'s format)."""
        request = call.request
        filters = _filters(request)
        request.setHeader(b"content-type", b"application/x-ndjson")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-disposition", b'attachment; filename="viworks-audit.jsonl"')
        after = 0
        while rows := await self.store.audit_search(
            **filters, after_seq=after, newest_first=False, limit=1000
        ):
            request.write(
                b"".join(
                    json.dumps(export_record(r), sort_keys=True, separators=(",", ":")).encode(
                        "utf-8"
                    )
                    + b"\n"
                    for r in rows
                )
            )
            after = rows[-1].seq
        return b""


def _record_json(row: AuditRecord) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "at": rfc3339(row.at),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "detail": None if row.detail is None else json.loads(row.detail),
        "hash": row.hash,
        "prev_hash": row.prev_hash,
    }


def _filters(request: IRequest) -> dict[str, Any]:
    """``?actor=&action=&agent=&outcome=&since=&until=`` (times in epoch seconds)."""
    filters: dict[str, Any] = {
        "actor": query(request, "actor"),
        "action": query(request, "action"),
        "agent_id": query(request, "agent"),
        "outcome": query(request, "outcome"),
        "since": number(request, "since", 0, 1e11),
        "until": number(request, "until", 0, 1e11),
    }
    for name, value in filters.items():
        if isinstance(value, str) and (not value or len(value) > 200):
            raise ApiError("BAD_REQUEST", f"{name}: 1-200 characters", name)
    return filters
