"""Strictly validated TOML configuration for the backend and the gateway agent.

- ``spec``: the engine (key specs, strict loading, ``ConfigError`` in one line);
- ``checks``: key checks both services share (numbers, paths, files, addresses);
- ``agent``: ``agent.toml``, one dataclass per section; ``verbs``: its ``[verbs.NAME]``;
- ``backend``: ``backend.toml``.

Adding a key is adding one field to its section's dataclass (docs/contributing.md).
The names below are what the services and the CLI load; sections are imported from
their module.
"""

from viworks.config.agent import AgentConfig, load_agent_config
from viworks.config.backend import BackendConfig, load_backend_config
from viworks.config.spec import ConfigError

__all__ = [
    "AgentConfig",
    "BackendConfig",
    "ConfigError",
    "load_agent_config",
    "load_backend_config",
]
