"""Revoked agent certificates (``revoked_certificates``), polled by every backend."""

from __future__ import annotations

from viworks.backend.model import Revocation
from viworks.backend.store.columns import INT, REAL, Column, Table
from viworks.backend.store.engine import SQLEngine

REVOCATIONS = Table(
    "revoked_certificates",
    Revocation,
    [
        Column("seq", INT),
        Column("serial"),
        Column("agent_id"),
        Column("revoked_at", REAL),
        Column("reason"),
    ],
)


class RevocationStore(SQLEngine):
    """The store's certificate revocations."""

    async def revoke_certificate(
        self, serial: str, agent_id: str, now: float, reason: str | None = None
    ) -> bool:
        """Record the certificate ``serial`` (hex) of ``agent_id`` as revoked.

        Returns False (nothing written) when that serial was already revoked.
        """
        return (
            await self._run(
                self._update_count_txn,
                "INSERT INTO revoked_certificates (serial, agent_id, revoked_at, reason)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
                (serial, agent_id, now, reason),
            )
            > 0
        )

    async def revocations_since(self, after_seq: int = 0) -> list[Revocation]:
        """Revocations after ``after_seq``, in seq order (a poller passes the last seq it saw)."""
        rows = await self._run_long(
            self._select_txn,
            f"SELECT {REVOCATIONS.select} FROM revoked_certificates WHERE seq > ? ORDER BY seq",
            (int(after_seq),),
        )
        return REVOCATIONS.load_all(rows)

    async def is_certificate_revoked(self, serial: str) -> bool:
        rows = await self._run(
            self._select_txn, "SELECT 1 FROM revoked_certificates WHERE serial = ?", (serial,)
        )
        return bool(rows)
