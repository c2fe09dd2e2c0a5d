"""API tokens (``tokens``: hashes only) and the web console's sessions (``console_sessions``)."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.enterprise.adbapi import Transaction

from viworks.backend.model import OPERATOR, TOKEN_ROLES, ConsoleSession, Token
from viworks.backend.store.columns import JSON, REAL, Column, Table
from viworks.backend.store.engine import Row, SQLEngine
from viworks.backend.store.errors import DuplicateToken

# The token hash is written once (create_token) and only ever compared, never read back.
TOKENS = Table(
    "tokens",
    Token,
    [
        Column("name"),
        Column("created_at", REAL),
        Column("role"),
        Column("verbs", JSON),
        Column("sites", JSON),
        Column("expires_at", REAL),
        Column("revoked_at", REAL, internal=True),
    ],
)
_SESSION_TOKENS = Table("tokens", Token, TOKENS.columns, alias="t")


def _console_session(row: Row) -> ConsoleSession:
    """A ``SELECT s.expires_at, <token columns>`` row."""
    return ConsoleSession(token=_SESSION_TOKENS.load(row[1:]), expires_at=float(row[0]))


class TokenStore(SQLEngine):
    """The store's API tokens and console sessions."""

    async def create_token(
        self,
        name: str,
        token_hash: str,
        now: float,
        *,
        role: str = OPERATOR,
        verbs: Sequence[str] | None = None,
        sites: Sequence[str] | None = None,
        expires_at: float | None = None,
    ) -> Token:
        """Store a token hash under ``name``; raise DuplicateToken if taken.

        ``role`` is viewer, operator (the default, as for tokens made before
        roles) or admin; ``verbs``/``sites`` (None: any) limit what an
        operator may run; ``expires_at`` (None: never) ends its validity.
        """
        if role not in TOKEN_ROLES:
            raise ValueError(f"unknown role {role!r} (want one of {', '.join(TOKEN_ROLES)})")
        token = Token(
            name=name,
            created_at=now,
            role=role,
            verbs=None if verbs is None else list(verbs),
            sites=None if sites is None else list(sites),
            expires_at=expires_at,
            revoked_at=None,
        )
        values = {**TOKENS.dump_value(token), "token_hash": token_hash}
        try:
            row = await self._run(self._insert_returning, "tokens", values, TOKENS.select)
        except self._integrity_error() as e:
            raise DuplicateToken(f"token name {name!r} or its hash is already in use") from e
        return TOKENS.load(row)

    async def token_name_for_hash(self, token_hash: str) -> str | None:
        """Return the name of the token with this hash, or None (even if expired or revoked)."""
        token = await self.token_for_hash(token_hash)
        return token.name if token else None

    async def token_for_hash(self, token_hash: str) -> Token | None:
        """The token with this hash, or None. Validity is the caller's to judge."""
        rows = await self._run(
            self._select_txn,
            f"SELECT {TOKENS.select} FROM tokens WHERE token_hash = ?",
            (token_hash,),
        )
        return TOKENS.load(rows[0]) if rows else None

    async def list_tokens(self) -> list[Token]:
        """Every token by name (hashes are never listed)."""
        rows = await self._run_long(
            self._select_txn, f"SELECT {TOKENS.select} FROM tokens ORDER BY name", ()
        )
        return TOKENS.load_all(rows)

    async def revoke_token(self, name: str, now: float) -> bool:
        """Revoke the token ``name`` (once: the first revocation time stays) and end
        its console sessions.

        Returns False when no token has this name or it was already revoked.
        """
        return await self._run(self._revoke_token_txn, name, now)

    def _revoke_token_txn(self, txn: Transaction, name: str, now: float) -> bool:
        revoked = self._update_count_txn(
            txn,
            "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
            (now, name),
        )
        self._execute(txn, "DELETE FROM console_sessions WHERE token_name = ?", (name,))
        return revoked > 0

    # -- web console sessions -------------------------------------------------

    async def create_console_session(
        self, session_hash: str, token_name: str, now: float, expires_at: float
    ) -> None:
        """Store a console session (the hash of its id) for ``token_name`` until
        ``expires_at``; sessions that have expired are deleted on the way."""
        await self._run(self._create_session_txn, session_hash, token_name, now, expires_at)

    def _create_session_txn(
        self, txn: Transaction, session_hash: str, token_name: str, now: float, expires_at: float
    ) -> None:
        self._execute(txn, "DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
        self._execute(
            txn,
            "INSERT INTO console_sessions (session_hash, token_name, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (session_hash, token_name, now, expires_at),
        )

    async def console_session(self, session_hash: str) -> ConsoleSession | None:
        """The session with this hash and its token, or None. Validity (expiry, the
        token's revocation) is the caller's to judge."""
        rows = await self._run(
            self._select_txn,
            f"SELECT s.expires_at, {_SESSION_TOKENS.select}"
            " FROM console_sessions s JOIN tokens t ON t.name = s.token_name"
            " WHERE s.session_hash = ?",
            (session_hash,),
        )
        return _console_session(rows[0]) if rows else None

    async def delete_console_session(self, session_hash: str) -> bool:
        """End a console session; False when there was none."""
        return (
            await self._run(
                self._update_count_txn,
                "DELETE FROM console_sessions WHERE session_hash = ?",
                (session_hash,),
            )
            > 0
        )
