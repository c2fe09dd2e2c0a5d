"""Agents' host-metrics reports (``agent_telemetry``), bounded per agent in rows and bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.enterprise.adbapi import Transaction

from viworks.backend.model import TelemetryReport
from viworks.backend.store.columns import JSON, REAL, Column, Table, encode_json
from viworks.backend.store.engine import SQLEngine

TELEMETRY = Table("agent_telemetry", TelemetryReport, [Column("at", REAL), Column("data", JSON)])


class TelemetryStore(SQLEngine):
    """The store's telemetry: each agent's newest reports."""

    async def record_telemetry(
        self,
        agent_id: str,
        at: float,
        data: Mapping[str, Any],
        keep: int = 2880,
        max_bytes: int | None = None,
    ) -> None:
        """Store one telemetry report and keep only the agent's newest ``keep`` rows,
        and of those no more than ``max_bytes`` of stored JSON (None: no byte limit;
        the newest report is always kept).

        "Newest" is insertion order, not ``at``. ``keep`` must be >= 1.
        """
        for name, value in (("keep", keep), ("max_bytes", 1 if max_bytes is None else max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if not isinstance(data, Mapping):
            raise ValueError(f"telemetry data must be a mapping, not {type(data).__name__}")
        encoded = encode_json(dict(data))
        await self._run(self._record_telemetry_txn, agent_id, float(at), encoded, keep, max_bytes)

    def _record_telemetry_txn(
        self,
        txn: Transaction,
        agent_id: str,
        at: float,
        data: str,
        keep: int,
        max_bytes: int | None,
    ) -> None:
        # bytes_before: the bytes of all the agent's reports before this one (deleted
        # ones too), so the reports beyond the byte budget are found through the index.
        self._execute(
            txn,
            "SELECT bytes_before + bytes FROM agent_telemetry WHERE agent_id = ?"
            " ORDER BY seq DESC LIMIT 1",
            (agent_id,),
        )
        row = txn.fetchone()
        before = row[0] if row is not None else 0
        size = len(data)  # ASCII: encode_json escapes everything else
        self._execute(
            txn,
            "INSERT INTO agent_telemetry (agent_id, at, data, bytes, bytes_before)"
            " VALUES (?, ?, ?, ?, ?)",
            (agent_id, at, data, size, before),
        )
        if max_bytes is not None:
            # Everything older than the oldest report that still fits the budget (the
            # newest alone when it does not fit).
            self._execute(
                txn,
                "DELETE FROM agent_telemetry WHERE agent_id = ? AND seq < COALESCE("
                " (SELECT seq FROM agent_telemetry WHERE agent_id = ? AND bytes_before >= ?"
                " ORDER BY seq LIMIT 1),"
                " (SELECT MAX(seq) FROM agent_telemetry WHERE agent_id = ?))",
                (agent_id, agent_id, before + size - max_bytes, agent_id),
            )
        # The keep-th newest seq, found and deleted below through the
        # (agent_id, seq) index; NULL (nothing deleted) while fewer are stored.
        self._execute(
            txn,
            "DELETE FROM agent_telemetry WHERE agent_id = ? AND seq < ("
            " SELECT seq FROM agent_telemetry WHERE agent_id = ?"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (agent_id, agent_id, keep - 1),
        )

    async def latest_telemetry(self, agent_id: str) -> TelemetryReport | None:
        """The agent's newest report, or None."""
        reports = await self.telemetry_history(agent_id, limit=1)
        return reports[0] if reports else None

    async def telemetry_history(
        self, agent_id: str, limit: int = 100, since: float | None = None
    ) -> list[TelemetryReport]:
        """Up to ``limit`` of the agent's reports, newest first.

        ``since`` keeps only reports with ``at`` strictly after it.
        """
        sql = f"SELECT {TELEMETRY.select} FROM agent_telemetry WHERE agent_id = ?"
        params: list[Any] = [agent_id]
        if since is not None:
            sql += " AND at > ?"
            params.append(float(since))
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(int(limit))
        return TELEMETRY.load_all(await self._run_long(self._select_txn, sql, params))
