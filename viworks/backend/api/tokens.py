"""Routes: API tokens, listed, made and revoked by admins (viworks/backend/tokens.py)."""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

from viworks.backend import tokens
from viworks.backend.api.errors import ApiError
from viworks.backend.api.parse import json_body, only_fields, string_list
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import ROUTES, Call
from viworks.backend.authz import ADMIN, OPERATOR, ROLES
from viworks.backend.store import DuplicateToken, Store

MAX_EXPIRES_IN = 10 * 365 * 86400


class TokenRoutes:
    store: Store
    clock: IReactorTime

    @ROUTES.route("GET", "/api/v1/tokens", role=ADMIN)
    async def list_tokens(self, call: Call) -> Json:
        now = self.clock.seconds()
        return Json({"tokens": [tokens.token_json(t, now) for t in await self.store.list_tokens()]})

    @ROUTES.route("POST", "/api/v1/tokens", role=ADMIN)
    async def create_token(self, call: Call) -> Json:
        """A new token; its secret is in this answer (``token``) and nowhere else, ever."""
        body = json_body(call.request)
        only_fields(body, ("name", "role", "verbs", "sites", "expires_in"))
        name, role = body.get("name"), body.get("role", OPERATOR)
        if not isinstance(name, str) or not tokens.NAME.fullmatch(name):
            raise ApiError(
                "BAD_REQUEST", "name: 1-100 of A-Z a-z 0-9 . _ @ : - (not first)", "name"
            )
        if role not in ROLES:
            raise ApiError("BAD_REQUEST", f"role must be one of {ROLES}", "role")
        verbs, sites = string_list(body, "verbs"), string_list(body, "sites")
        expires_in = body.get("expires_in")
        if expires_in is not None and (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, (int, float))
            or not 0 < expires_in <= MAX_EXPIRES_IN
        ):
            raise ApiError("BAD_REQUEST", "expires_in: seconds > 0", "expires_in")
        call.audit(name=name, role=role)
        now = self.clock.seconds()
        try:
            secret = await tokens.create_token(
                self.store,
                name,
                call.caller.name,
                now,
                role=role,
                verbs=verbs,
                sites=sites,
                expires_in=expires_in,
            )
        except DuplicateToken:
            raise ApiError("TOKEN_EXISTS", f"a token named {name!r} exists", "name") from None
        row = await self.store.token_for_hash(tokens.hash_token(secret))
        if row is None:  # only a concurrent removal of the row could do this
            raise RuntimeError(f"token {name!r} vanished after its creation")
        return Json({**tokens.token_json(row, now), "token": secret}, 201)

    @ROUTES.route("DELETE", "/api/v1/tokens/<name>", role=ADMIN)
    async def revoke_token(self, call: Call, name: str) -> Json:
        """Revoke a token (and end its console sessions) on every replica within 2 s."""
        call.audit(name=name)
        known = {t.name: t for t in await self.store.list_tokens()}
        if name not in known:
            raise ApiError("TOKEN_NOT_FOUND", f"no token named {name!r}")
        now = self.clock.seconds()
        if not await tokens.revoke_token(self.store, name, call.caller.name, now):
            raise ApiError("ALREADY_REVOKED", f"token {name!r} was already revoked")
        return Json(tokens.token_json(attrs.evolve(known[name], revoked_at=now), now))
