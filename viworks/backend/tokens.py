"""API tokens: how they are made, stored (hashed) and shown. Shared by the CLI and the API."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from typing import Any

from viworks.backend import audit
from viworks.backend.model import OPERATOR, Token
from viworks.backend.store import Store
from viworks.timeutil import rfc3339

# Names show up in audit records and URLs (DELETE /api/v1/tokens/{name}).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}")


def new_token() -> str:
    """A new secret: 256 random bits, URL-safe, recognisable by its ``vw_`` prefix."""
    return "vw_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are stored as SHA-256 hex digests only (they are random, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_state(token: Token, now: float) -> str:
    """``active``, ``expired`` or ``revoked``."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def token_json(token: Token, now: float) -> dict[str, Any]:
    """A token as listed (``viworks token list --json``, ``GET /api/v1/tokens``): never
    its secret or hash."""
    return {
        "name": token.name,
        "role": token.role,
        "verbs": token.verbs,
        "sites": token.sites,
        "state": token_state(token, now),
        "created_at": rfc3339(token.created_at),
        "expires_at": rfc3339(token.expires_at),
        "revoked_at": rfc3339(token.revoked_at),
    }


async def create_token(
    store: Store,
    name: str,
    actor: str,
    now: float,
    *,
    role: str = OPERATOR,
    verbs: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    expires_in: float | None = None,
) -> str:
    """Store a new token under ``name`` and return its secret (stored hashed only).

    The creation is written to the audit log as ``token.create`` by ``actor``
    (without the secret). ``DuplicateToken`` when the name is taken.
    """
    token = new_token()
    expires_at = None if expires_in is None else now + expires_in
    verbs = None if verbs is None else list(verbs)
    sites = None if sites is None else list(sites)
    await store.create_token(
        name,
        hash_token(token),
        now,
        role=role,
        verbs=verbs,
        sites=sites,
        expires_at=expires_at,
    )
    await store.append_audit(
        now,
        actor,
        "token.create",
        f"token:{name}",
        audit.OK,
        {"role": role, "verbs": verbs, "sites": sites, "expires_at": expires_at},
    )
    return token


async def revoke_token(store: Store, name: str, actor: str, now: float) -> bool:
    """Revoke ``name`` (and end its console sessions); audited as ``token.revoke``.
    False when no active token has that name."""
    done = await store.revoke_token(name, now)
    await store.append_audit(
        now, actor, "token.revoke", f"token:{name}", audit.OK if done else audit.REFUSED
    )
    return done
