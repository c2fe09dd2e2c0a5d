"""Which verb parameters are secret, whatever one agent says.

Each agent announces its verbs' parameter types in its HELLO, and a compromised
agent could announce a secret (``create_panel_user.password``) as a plain
``string`` to have operators' values for it stored, logged and shown in clear.
So an agent's word can only add secrecy: a parameter is secret for every agent
when the canonical schema of a built-in verb marks it secret, or when any
announcement this backend has accepted marks it secret (since the process
started, and at start-up the last announcement of every agent in the store).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from viworks.logs import Logger
from viworks.redaction import redact_args

__all__ = ["BUILTIN_SECRET_PARAMS", "MAX_LEARNED", "SecretParams"]

#: The secret parameters of the gateway's built-in verbs, as its own definitions declare
#: them (``viworks.gateway.catalog.builtin_verbs``; a test keeps the two equal). The
#: backend needs no gateway configuration to know them.
BUILTIN_SECRET_PARAMS: Mapping[str, frozenset[str]] = {
    "create_panel_user": frozenset({"password"}),
    "create_vpn_user": frozenset({"password", "spa_key", "spa_hmac_key"}),
}

#: (verb, parameter) pairs learned from announcements beyond the built-in ones. Each
#: announcement is bounded (viworks.schema.MAX_VERBS, MAX_PARAMS) but a hostile agent
#: could reconnect with new names forever; past this many, new pairs are not learned
#: (each agent's own schema still protects its own commands).
MAX_LEARNED = 65536


class SecretParams:
    """The union of every secret marking seen: canonical, then announced by any agent."""

    log = Logger()

    def __init__(self) -> None:
        self._secret: dict[str, set[str]] = {
            verb: set(names) for verb, names in BUILTIN_SECRET_PARAMS.items()
        }
        self._learned = 0
        self._full_warned = False

    def learn(self, verbs: Mapping[str, Any]) -> None:
        """Remember the secret parameters of an announcement (a validated ``hello.verbs``)."""
        for verb, description in verbs.items():
            for name in _declared_secret(description.get("params", {})):
                known = self._secret.setdefault(verb, set())
                if name in known:
                    continue
                if self._learned >= MAX_LEARNED:
                    self._warn_full()
                    return
                known.add(name)
                self._learned += 1

    def of(self, verb: str, params: Mapping[str, Any]) -> frozenset[str]:
        """The parameters of ``verb`` that are secret, ``params`` being one agent's schema."""
        return frozenset(_declared_secret(params)) | self._secret.get(verb, frozenset())

    def redact(self, verb: str, params: Mapping[str, Any], args: Mapping[str, Any]) -> dict:
        """``args`` safe to store, log and show: a value secret by any account is ``***``
        (and so is the value of a key ``params`` does not know: ``redaction.redact_args``)."""
        return redact_args(params, args, self._secret.get(verb, ()))

    def _warn_full(self) -> None:
        if not self._full_warned:
            self._full_warned = True
            self.log.warn(
                "{limit} secret parameters learned from agents' announcements: no more are"
                " learned until a restart (each agent's own schema still redacts its commands)",
                limit=MAX_LEARNED,
            )


def _declared_secret(params: Any) -> list[str]:
    if not isinstance(params, Mapping):
        return []
    return [
        name
        for name, spec in params.items()
        if isinstance(spec, Mapping) and spec.get("type") == "secret"
    ]
