"""What a verb is, and what running one gives.

A :class:`Verb` is either an in-process callable (``call``) or a subprocess (``build``
turns validated arguments into an :class:`Invocation`; ``parse`` turns a successful
:class:`~viworks.gateway.runner.RunResult` into a JSON-able result). Running one ends in
a :class:`VerbOutcome`, the body of the ``result`` frame sent to the backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from viworks import schema
from viworks.gateway.runner import RunResult

__all__ = [
    "TOOL_NOT_FOUND",
    "Invocation",
    "Status",
    "Verb",
    "VerbError",
    "VerbOutcome",
    "error_outcome",
    "missing_tool",
    "run_outcome",
]

Status = Literal["succeeded", "failed", "timed_out", "rejected", "cancelled"]

#: The error code of a verb whose tool (an executable it needs) is not installed.
TOOL_NOT_FOUND = "TOOL_NOT_FOUND"


class VerbError(Exception):
    """Raised by a verb's ``call``/``build``/``parse`` to fail with ``code``.

    ``message`` is sent to the backend: it must not contain secrets. ``result``
    travels with the failure, for verbs that report what they did before failing.
    """

    def __init__(self, code: str, message: str, result: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.result = result


def missing_tool(path: str, code: str = TOOL_NOT_FOUND, what: str = "the tool") -> VerbError | None:
    """The error to answer when the executable ``path`` cannot run here, else None."""
    if os.access(path, os.X_OK) and not os.path.isdir(path):
        return None
    return VerbError(code, f"{what} {path} is missing or not executable on this gateway")


@dataclass(frozen=True)
class Invocation:
    """A subprocess to run: absolute ``argv`` and optional ``stdin`` bytes."""

    argv: list[str]
    stdin: bytes | None = None


@dataclass(frozen=True)
class Verb:
    """One allowlisted operation.

    Exactly one of ``call`` (in-process: ``call(args)`` returns a JSON-able
    result or a Deferred of one) and ``build`` (``build(args) -> Invocation``)
    must be set. ``parse(args, run_result)`` is applied to subprocess results
    that exited 0 (default: result ``None``). Any of them may raise
    :class:`VerbError`. ``timeout`` is the maximum run time;
    ``no_output_timeout`` (subprocess verbs, optional) kills a process silent
    that long (``NO_OUTPUT_TIMEOUT``). Verbs with the same ``serialize`` key
    never run concurrently (e.g. writers of one file); ``concurrency`` is the
    most runs of this verb at once (``None``: only the catalog's limit).
    ``changes_state`` verbs are refused when the catalog has exec disabled.
    ``tools`` are the absolute paths of the executables the verb cannot work
    without: while one is missing the verb fails at once with
    ``missing_tool_code`` and nothing runs.
    """

    name: str
    params: dict[str, Any]
    description: str = ""
    changes_state: bool = False
    timeout: float = 30.0
    output_cap: int = 65536
    kill_grace: float = 5.0
    call: Callable[[dict[str, Any]], Any] | None = None
    build: Callable[[dict[str, Any]], Invocation] | None = None
    parse: Callable[[dict[str, Any], RunResult], Any] | None = None
    serialize: str | None = None
    concurrency: int | None = None
    no_output_timeout: float | None = None
    tools: tuple[str, ...] = ()
    missing_tool_code: str = TOOL_NOT_FOUND

    def __post_init__(self) -> None:
        if (self.call is None) == (self.build is None):
            raise ValueError(f"verb {self.name!r}: set exactly one of call and build")
        if self.timeout <= 0:
            raise ValueError(f"verb {self.name!r}: timeout must be positive")
        if self.no_output_timeout is not None and not self.no_output_timeout > 0:
            raise ValueError(f"verb {self.name!r}: no_output_timeout must be positive")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"verb {self.name!r}: concurrency must be at least 1")
        if not all(os.path.isabs(tool) for tool in self.tools):
            raise ValueError(f"verb {self.name!r}: tools must be absolute paths")
        schema.validate_schema(self.params)

    def missing_tool(self) -> VerbError | None:
        """Why the verb cannot run on this host (its first missing tool), or None."""
        for tool in self.tools:
            error = missing_tool(tool, self.missing_tool_code)
            if error is not None:
                return error
        return None


@dataclass(frozen=True)
class VerbOutcome:
    """The result of one execution, ready to be sent to the backend."""

    status: Status
    exit_code: int | None = None
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_outcome(
    status: Status,
    run: RunResult | None,
    *,
    result: Any = None,
    error: dict[str, str] | None = None,
) -> VerbOutcome:
    """An outcome with what ``run`` captured (exit code, output), when a process ran."""
    if run is None:
        return VerbOutcome(status=status, result=result, error=error)
    return VerbOutcome(
        status=status,
        exit_code=run.exit_code,
        result=result,
        stdout=run.stdout,
        stderr=run.stderr,
        stdout_truncated=run.stdout_truncated,
        stderr_truncated=run.stderr_truncated,
        error=error,
    )


def error_outcome(
    status: Status, code: str, message: str, *, run: RunResult | None = None, result: Any = None
) -> VerbOutcome:
    """An outcome with ``error`` set (and what ``run`` captured, when a process ran)."""
    return run_outcome(status, run, result=result, error={"code": code, "message": message})
