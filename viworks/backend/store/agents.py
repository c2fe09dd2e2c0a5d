"""Agents (``agents``) and the certificates each one connected with (``agent_certificates``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.enterprise.adbapi import Transaction

from viworks.backend.model import Agent, AgentCertificate, AgentSummary
from viworks.backend.store.columns import (
    INT,
    JSON,
    REAL,
    Column,
    Table,
    batches,
    encode_json,
    marks,
)
from viworks.backend.store.engine import SQLEngine

AGENTS = Table(
    "agents",
    Agent,
    [
        Column("agent_id"),
        Column("status"),
        Column("version"),
        Column("site"),
        Column("hostname"),
        Column("protocol", INT),
        Column("verbs", JSON),
        Column("connected_at", REAL),
        Column("last_seen", REAL),
        Column("peer"),
        Column("session_id"),
        Column("labels", JSON),
        Column("epoch", INT),
        Column("cert_serial"),
        Column("signing"),
        Column("cert_not_after", REAL),
    ],
)
AGENT_SUMMARIES = AGENTS.view(AgentSummary)

AGENT_CERTIFICATES = Table(
    "agent_certificates",
    AgentCertificate,
    [
        Column("agent_id"),
        Column("serial"),
        Column("first_seen", REAL),
        Column("last_seen", REAL),
    ],
)


class AgentStore(SQLEngine):
    """The store's agents: who is connected under which session, and with which certificate."""

    async def upsert_agent_online(
        self,
        agent_id: str,
        *,
        version: str | None,
        site: str | None,
        hostname: str | None,
        protocol: int | None,
        verbs: Mapping[str, Any],
        peer: str | None,
        session_id: str,
        labels: Mapping[str, Any] | None,
        now: float,
        cert_serial: str | None = None,
        signing: str = "off",
        cert_not_after: float | None = None,
    ) -> Agent:
        """Record a (re)connected agent as online under ``session_id``.

        Each call increments the agent's ``epoch`` (1 after the first
        connection), a fencing counter for the session; the returned agent
        carries the new value. ``cert_serial`` is the (hex) serial of the
        certificate it connected with (what ``viworks pki revoke`` revokes) and
        ``cert_not_after`` (epoch seconds) the end of that certificate's validity;
        ``signing`` is what its HELLO said: ``"on"`` if it verifies command
        signatures, else ``"off"``.
        """
        params = (
            agent_id,
            version,
            site,
            hostname,
            protocol,
            encode_json(dict(verbs)),
            now,
            now,
            peer,
            session_id,
            encode_json(dict(labels or {})),
            cert_serial,
            signing,
            cert_not_after,
        )
        return await self._run(self._upsert_agent_txn, params)

    def _upsert_agent_txn(self, txn: Transaction, params: tuple[Any, ...]) -> Agent:
        self._execute(
            txn,
            f"""
            INSERT INTO agents (agent_id, status, version, site, hostname,
                protocol, verbs, connected_at, last_seen, peer, session_id,
                labels, cert_serial, signing, cert_not_after, epoch)
            VALUES (?, 'online', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
            ON CONFLICT (agent_id) DO UPDATE SET
                status = excluded.status,
                version = excluded.version,
                site = excluded.site,
                hostname = excluded.hostname,
                protocol = excluded.protocol,
                verbs = excluded.verbs,
                connected_at = excluded.connected_at,
                last_seen = excluded.last_seen,
                peer = excluded.peer,
                session_id = excluded.session_id,
                labels = excluded.labels,
                cert_serial = excluded.cert_serial,
                signing = excluded.signing,
                cert_not_after = excluded.cert_not_after,
                epoch = agents.epoch + 1
            RETURNING {AGENTS.select}
            """,
            params,
        )
        return AGENTS.load(txn.fetchone())

    async def touch_agent(self, agent_id: str, now: float) -> bool:
        """Update ``last_seen``; return False if the agent is unknown."""
        return (
            await self._run(
                self._update_count_txn,
                "UPDATE agents SET last_seen = ? WHERE agent_id = ?",
                (now, agent_id),
            )
            > 0
        )

    async def mark_agent_offline(self, agent_id: str, session_id: str, now: float) -> bool:
        """Mark the agent offline if ``session_id`` is its current online session.

        Returns True only when this call changed the agent to offline; a late
        close of an older session (the agent has reconnected since) or a
        second close of the same session is a no-op returning False.
        """
        return (
            await self._run(
                self._update_count_txn,
                "UPDATE agents SET status = 'offline', last_seen = ?"
                " WHERE agent_id = ? AND session_id = ? AND status = 'online'",
                (now, agent_id, session_id),
            )
            > 0
        )

    async def mark_all_agents_offline(self, now: float) -> int:
        """Mark every agent offline (backend start); return how many were online.

        ``last_seen`` is left alone: nobody saw these agents at ``now``, the
        previous backend process simply died with their sessions. ``now`` is
        accepted for symmetry with the other agent methods.
        """
        del now
        return await self._run(
            self._update_count_txn,
            "UPDATE agents SET status = 'offline' WHERE status = 'online'",
            (),
        )

    async def get_agent(self, agent_id: str) -> Agent | None:
        """Return the agent, or None."""
        rows = await self._run(
            self._select_txn, f"SELECT {AGENTS.select} FROM agents WHERE agent_id = ?", (agent_id,)
        )
        return AGENTS.load(rows[0]) if rows else None

    async def list_agents(self) -> list[Agent]:
        """Return all agents ordered by ``agent_id``."""
        rows = await self._run_long(
            self._select_txn, f"SELECT {AGENTS.select} FROM agents ORDER BY agent_id", ()
        )
        return AGENTS.load_all(rows)

    async def agent_keys(self) -> list[AgentSummary]:
        """Every agent's summary, ordered by id: enough to filter, count and page a fleet
        without decoding each agent's verb schemas."""
        rows = await self._run_long(
            self._select_txn,
            f"SELECT {AGENT_SUMMARIES.select} FROM agents ORDER BY agent_id",
            (),
        )
        return AGENT_SUMMARIES.load_all(rows)

    async def agents_by_id(self, agent_ids: Sequence[str]) -> list[Agent]:
        """The agents with these ids (unknown ids left out), ordered by id."""
        return await self._run_long(self._agents_by_id_txn, list(agent_ids))

    def _agents_by_id_txn(self, txn: Transaction, agent_ids: list[str]) -> list[Agent]:
        agents: list[Agent] = []
        for batch in batches(agent_ids):
            rows = self._select_txn(
                txn,
                f"SELECT {AGENTS.select} FROM agents WHERE agent_id IN ({marks(len(batch))})",
                batch,
            )
            agents.extend(AGENTS.load_all(rows))
        return sorted(agents, key=lambda agent: agent.agent_id)

    # -- the certificates each agent connected with ----------------------------------------

    async def record_certificate(self, agent_id: str, serial: str, now: float) -> None:
        """Note that ``agent_id`` connected with the certificate ``serial`` (hex) at ``now``.

        Every handshake calls this (not only the HELLO that wins), so that
        :meth:`agent_certificates` knows a second certificate that took a session over.
        """
        await self._run(
            self._update_count_txn,
            "INSERT INTO agent_certificates (agent_id, serial, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (agent_id, serial)"
            " DO UPDATE SET last_seen = excluded.last_seen",
            (agent_id, serial, now, now),
        )

    async def agent_certificates(
        self, agent_id: str | None = None, serial: str | None = None
    ) -> list[AgentCertificate]:
        """The certificates seen, first seen first: every one of ``agent_id``, or the
        agent(s) seen with ``serial`` (at least one given)."""
        where, params = [], []
        for column, value in (("agent_id", agent_id), ("serial", serial)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if not where:
            raise ValueError("give an agent_id or a serial")
        rows = await self._run(
            self._select_txn,
            f"SELECT {AGENT_CERTIFICATES.select} FROM agent_certificates"
            f" WHERE {' AND '.join(where)} ORDER BY first_seen, serial",
            params,
        )
        return AGENT_CERTIFICATES.load_all(rows)
