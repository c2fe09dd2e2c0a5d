"""The CLI's exit codes (a contract: docs/cli.md) and its one-line error."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
#: The command ran and did not succeed (failed, timed_out, rejected, ...); ``job start``:
#: the job was stopped or cancelled, or one of its commands did not succeed.
EXIT_FAILED: Final = 1
#: A usage or configuration error.
EXIT_USAGE: Final = 2
#: The API (or the backend's database) could not be reached or refused the request.
EXIT_API: Final = 3
#: Still unfinished: ``run`` when --wait ran out, ``job start`` when detached.
EXIT_PENDING: Final = 4
#: Ended by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED: Final = 130


class CLIError(Exception):
    """A problem to report in one line, with the exit code to use.

    ``http`` is the HTTP status when the API refused the request (not worth retrying).
    """

    def __init__(self, message: str, code: int = EXIT_USAGE, *, http: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http = http
