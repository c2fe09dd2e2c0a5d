"""The catalog an agent serves, composed from its configuration.

Each family of built-in verbs (``viworks.gateway.verbs.builtin``) is built from the
config sections it needs; ``[verbs.NAME]`` tables then tune, disable or add verbs.
``viworks.gateway.verbs.builtin.FAMILIES`` must name exactly the verbs each family
builds (the config loader uses it to decide what a ``[verbs.NAME]`` table may set).
"""

from __future__ import annotations

import dataclasses

from twisted.internet.interfaces import IReactorTime

from viworks.config.agent import AgentConfig
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.builtin import bootstrap, containers, host, panel, sessions, vpn
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.declared import declared_verb
from viworks.gateway.verbs.model import Verb


def builtin_families(
    config: AgentConfig, runner: ProcessRunner, clock: IReactorTime | None = None
) -> dict[str, list[Verb]]:
    """Each family of built-in verbs (``FAMILIES``' keys), configured from ``config``.

    Families whose verbs take several steps (in-process ``call``s that run tools
    one after another) get the ``runner``.
    """
    state_dir = config.agent.state_dir
    return {
        "host": host.verbs(clock, runner=runner, services=config.services, logs=config.logs),
        "panel": panel.verbs(config.panel),
        "vpn": vpn.verbs(config.vpn, config.fwknop, runner),
        "containers": containers.verbs(config.containers, runner),
        "sessions": sessions.verbs(config.containers, config.vpn, runner, state_dir),
        "bootstrap": bootstrap.verbs(config.bootstrap, config.vpn, config.fwknop, state_dir, clock),
    }


def builtin_verbs(
    config: AgentConfig, runner: ProcessRunner, clock: IReactorTime | None = None
) -> dict[str, Verb]:
    """Every built-in verb, configured from ``config``, by name."""
    families = builtin_families(config, runner, clock)
    return {verb.name: verb for family in families.values() for verb in family}


def catalog_from_config(
    runner: ProcessRunner, config: AgentConfig, clock: IReactorTime | None = None
) -> VerbCatalog:
    """The catalog an agent serves: built-ins, ``[verbs.NAME]`` overrides and declarations.

    A built-in's ``timeout``/``output_cap``/``concurrency`` replace its own; ``enabled =
    false`` removes a verb (built-in or declared); any other name is a declared verb run from
    its argv/stdin templates. ``[agent] exec_enable`` is enforced by the catalog.
    """
    verbs = builtin_verbs(config, runner, clock)
    for name, vc in config.verbs.items():
        if not vc.enabled:
            verbs.pop(name, None)
        elif name in verbs:
            overrides = {
                key: getattr(vc, key)
                for key in ("timeout", "output_cap", "concurrency", "no_output_timeout")
                if getattr(vc, key) is not None
            }
            verbs[name] = dataclasses.replace(verbs[name], **overrides)
        else:
            verbs[name] = declared_verb(name, vc)
    return VerbCatalog(
        runner,
        verbs,
        exec_enable=config.agent.exec_enable,
        max_concurrency=config.agent.max_concurrency,
        queue_limit=config.agent.queue_limit,
    )
