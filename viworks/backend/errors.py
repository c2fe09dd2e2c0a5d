"""What the backend's domain refuses, by machine code (no HTTP here).

The ledger, jobs, tokens and the rest raise ``DomainError`` with a code such as
``UNKNOWN_VERB`` or ``ALREADY_FINISHED``; the HTTP API maps each code to a status in
one table (and so does any other front end). ``field`` names the offending input.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request refused by the domain: ``code`` (machine), ``message`` (human), ``field``."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
