"""What the store raises (``StoreClosed``, for calls after ``close``, is the batch runner's)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for store errors."""


class DuplicateToken(StoreError):
    """A token with this name (or this hash) already exists."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer viworks than this one."""


class IdempotencyConflict(StoreError):
    """An idempotency key was already used for a different request.

    ``command_id`` is the command the key was first used for.
    """

    def __init__(self, command_id: str) -> None:
        super().__init__(f"idempotency key already used for command {command_id}")
        self.command_id = command_id
