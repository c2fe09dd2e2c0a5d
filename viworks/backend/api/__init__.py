"""The operators' JSON HTTP API (Klein): routes are thin, they parse, call and answer.

One Klein app (``routing.ROUTES``) takes every route; each route module declares its
group's routes on it with the least role each needs (``routing``), and ``BackendAPI``
(``server``) gives them their collaborators:

- ``status``: health, metrics, the OpenAPI description
- ``agents``: agents, their verbs, telemetry and certificates; the fleet summary
- ``commands``: commands and their output; ``jobs``: jobs; ``events``: live events
- ``console``: the web console's files and login sessions
- ``tokens``, ``audit``: API tokens; the audit log

and the plumbing: ``routing`` (declarations, the wrapper that authenticates, answers and
audits), ``gate`` (credentials, CSRF, rate limits, roles), ``errors`` (the code→status
table), ``reply`` (JSON answers), ``parse`` (reading requests), ``views`` (JSON views of
domain values), ``sse`` (event streams with flow control).
"""

from viworks.backend.api.server import BackendAPI

__all__ = ["BackendAPI"]
