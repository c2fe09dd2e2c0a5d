"""The verbs every gateway ships, one module per family.

A family module has a ``verbs(...)`` function that builds its verbs from the config
sections it needs (``viworks.config.agent``); ``viworks.gateway.catalog`` calls each
one. The helpers that drive a tool for several families sit beside them:
``container_engine`` (docker/podman), ``vpncmd`` (SoftEther) and ``fwknop``
(``access.conf`` stanzas).

``FAMILIES`` names every built-in verb, by family, without importing the families: the
config loader reads ``BUILTIN_VERBS`` to decide what a ``[verbs.NAME]`` table may set,
and the families import the config. A test checks that each family builds exactly the
verbs listed here. Adding a verb: docs/contributing.md.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BUILTIN_VERBS", "FAMILIES"]

#: family module (in this package) -> the verbs its ``verbs()`` builds.
FAMILIES: Mapping[str, tuple[str, ...]] = {
    "host": ("ping", "system_health", "service_status", "tail_logs"),
    "panel": ("create_panel_user", "delete_panel_user", "list_panel_users"),
    "vpn": ("create_vpn_user", "delete_vpn_user", "list_vpn_users"),
    "containers": ("spawn_container", "stop_container", "list_containers"),
    "sessions": ("terminate_session", "get_session_status"),
    "bootstrap": ("generate_bootstrap", "get_bootstrap", "revoke_bootstrap"),
}

#: Every built-in verb's name.
BUILTIN_VERBS = frozenset(name for names in FAMILIES.values() for name in names)
