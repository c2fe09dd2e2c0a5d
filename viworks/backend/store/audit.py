"""The hash-chained audit log (``audit_log``): appended under a lock, read in pages.

The chain itself (canonical form, hashes, verification) is
:mod:`viworks.backend.auditchain`.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.enterprise.adbapi import Transaction

from viworks.backend.auditchain import GENESIS, AuditTruncated, Head, chain_hash, encode_detail
from viworks.backend.model import AuditRecord
from viworks.backend.store.columns import INT, REAL, Column, Table, like_escape, marks
from viworks.backend.store.engine import SQLEngine

# detail stays the stored JSON text: the hash covers it.
AUDIT_LOG = Table(
    "audit_log",
    AuditRecord,
    [
        Column("seq", INT),
        Column("at", REAL),
        Column("actor"),
        Column("action"),
        Column("target"),
        Column("outcome"),
        Column("detail"),
        Column("prev_hash"),
        Column("hash"),
    ],
)


class AuditStore(SQLEngine):
    """The store's audit log."""

    async def append_audit(
        self,
        at: float,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        detail: Any = None,
        *,
        after: Head | None = None,
        resume: bool = False,
    ) -> AuditRecord:
        """Append a record to the hash-chained audit log; return it as stored.

        ``detail`` is redacted (``viworks.redaction.redact_detail``) and stored as canonical JSON.
        One transaction holding the chain's lock: it reads the last record's seq
        and hash and inserts the next one, so concurrent writers (threads or
        processes, either engine) never fork the chain.

        ``after`` is the (seq, hash) of the last record this writer knows; if the
        log no longer holds it, ``AuditTruncated`` is raised, or with ``resume``
        the record chains onto ``after`` itself when the log now ends before it
        (the writer's own chain goes on and the gap stays visible to verify).
        """
        content = {
            "at": float(at),
            "actor": str(actor),
            "action": str(action),
            "target": None if target is None else str(target),
            "outcome": str(outcome),
            "detail": encode_detail(detail),
        }
        return await self._run(self._append_audit_txn, content, after, resume)

    def _append_audit_txn(
        self,
        txn: Transaction,
        content: dict[str, Any],
        after: Head | None = None,
        resume: bool = False,
    ) -> AuditRecord:
        self._lock_audit(txn)
        head = self._audit_head_txn(txn)
        if after is not None and not self._audit_holds_txn(txn, after, head):
            if not resume:
                raise AuditTruncated(after, head)
            if head[0] < after[0]:
                head = after
        seq, prev_hash = head[0] + 1, head[1]
        record = AuditRecord(
            seq=seq,
            **content,
            prev_hash=prev_hash,
            hash=chain_hash(**content, prev_hash=prev_hash),
        )
        values = AUDIT_LOG.dump_value(record)
        self._execute(
            txn,
            f"INSERT INTO audit_log ({', '.join(values)}) VALUES ({marks(len(values))})",
            list(values.values()),
        )
        return record

    def _audit_head_txn(self, txn: Transaction) -> Head:
        self._execute(txn, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        last = txn.fetchone()
        return (last[0], last[1]) if last else (0, GENESIS)

    def _audit_holds_txn(self, txn: Transaction, record: Head, head: Head) -> bool:
        """Whether the log (ending at ``head``) still holds ``record`` (seq, hash)."""
        seq, record_hash = record
        if seq == 0 or (seq, record_hash) == head:
            return True  # (0, GENESIS): the empty log, a prefix of every log
        if seq >= head[0]:
            return False
        self._execute(txn, "SELECT hash FROM audit_log WHERE seq = ?", (seq,))
        found = txn.fetchone()
        return found is not None and found[0] == record_hash

    async def audit_head(self) -> Head:
        """The last record's (seq, hash); ``(0, GENESIS)`` for an empty log."""
        return await self._run(self._audit_head_txn)

    async def audit_records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Up to ``limit`` audit records with seq > ``after_seq``, in seq order."""
        rows = await self._run_long(
            self._select_txn,
            f"SELECT {AUDIT_LOG.select} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(after_seq), int(limit)),
        )
        return AUDIT_LOG.load_all(rows)

    async def audit_search(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        agent_id: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        newest_first: bool = True,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Audit records matching every filter given, up to ``limit``.

        ``action`` is exact, or a prefix when it ends with ``*`` (``api.*``);
        ``agent_id`` matches records about the agent (its connections, its commands'
        outcomes, API calls on its paths); ``since`` <= at < ``until``;
        ``before_seq``/``after_seq`` page through the results.
        """
        where: list[str] = []
        params: list[Any] = []
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if action is not None and action.endswith("*"):
            where.append("action LIKE ? ESCAPE '\\'")
            params.append(like_escape(action[:-1]) + "%")
        elif action is not None:
            where.append("action = ?")
            params.append(action)
        if agent_id is not None:
            path = "/api/v1/agents/" + agent_id
            where.append(
                "(target = ? OR target = ? OR target LIKE ? ESCAPE '\\'"
                " OR detail LIKE ? ESCAPE '\\')"
            )
            params += [
                "agent:" + agent_id,
                path,
                like_escape(path + "/") + "%",
                "%" + like_escape('"agent_id":' + json.dumps(agent_id)) + "%",
            ]
        for clause, value in (
            ("outcome = ?", outcome),
            ("at >= ?", since),
            ("at < ?", until),
            ("seq < ?", before_seq),
            ("seq > ?", after_seq),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = (
            f"SELECT {AUDIT_LOG.select} FROM audit_log"
            + (" WHERE " + " AND ".join(where) if where else "")
            + (" ORDER BY seq DESC" if newest_first else " ORDER BY seq")
            + " LIMIT ?"
        )
        rows = await self._run_long(self._select_txn, sql, [*params, int(limit)])
        return AUDIT_LOG.load_all(rows)

    async def audit_seq_of_hash(self, record_hash: str) -> int | None:
        """The seq of the audit record with this hash, or None."""
        rows = await self._run(
            self._select_txn,
            "SELECT seq FROM audit_log WHERE hash = ? ORDER BY seq",
            (record_hash,),
        )
        return int(rows[0][0]) if rows else None
