"""The gateway's allowlist of verbs and how each one is executed.

A :class:`Verb` is either an in-process callable (``call``) or a subprocess
(``build`` turns validated arguments into an :class:`Invocation`; ``parse``
turns a successful :class:`~viworks.gateway.runner.RunResult` into a JSON-able
result). :class:`VerbCatalog` validates arguments, runs the verb and maps
what happened onto a :class:`VerbOutcome`.

Cancellation mirrors the runner: :meth:`VerbCatalog.start` returns a
:class:`VerbExecution`; ``execution.cancel()`` kills the process group and
``execution.outcome`` fires, once the process is gone, with status
``"cancelled"`` (keeping any output). :meth:`VerbCatalog.execute` returns
``start(...).outcome``; calling ``.cancel()`` on that Deferred also kills the
process but, by Twisted's rules, fails it at once with ``CancelledError``.

Secrets (``"secret"`` parameters) never reach argv, logs, error messages or
the outcome: they travel on stdin, and any echo of one in the captured output
is replaced by ``"***"``.

:func:`declared_verb` turns an operator's ``[verbs.NAME]`` declaration (argv and
stdin templates over a parameter schema) into a :class:`Verb`. With
``exec_enable = false`` the catalog refuses every verb whose ``changes_state``
is true (``EXEC_DISABLED``). The built-in verb families live in their own
modules and are composed by :mod:`viworks.gateway.catalog`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, maybeDeferred
from twisted.python.failure import Failure

from viworks import schema
from viworks.config import VerbConfig, parse_template
from viworks.gateway.runner import ProcessRunner, RunResult
from viworks.logs import Logger

__all__ = [
    "Invocation",
    "Verb",
    "VerbCatalog",
    "VerbError",
    "VerbExecution",
    "VerbOutcome",
    "declared_verb",
]

log = Logger()

Status = Literal["succeeded", "failed", "timed_out", "rejected", "cancelled"]


class VerbError(Exception):
    """Raised by a verb's ``call``/``build``/``parse`` to fail with ``code``.

    ``message`` is sent to the backend: it must not contain secrets.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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
    :class:`VerbError`. ``timeout`` is the maximum run time; verbs with the
    same ``serialize`` key never run concurrently (e.g. writers of one file).
    ``changes_state`` verbs are refused when the catalog has exec disabled.
    ``concurrency`` (maximum simultaneous runs) is recorded but not enforced yet.
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

    def __post_init__(self) -> None:
        if (self.call is None) == (self.build is None):
            raise ValueError(f"verb {self.name!r}: set exactly one of call and build")
        if self.timeout <= 0:
            raise ValueError(f"verb {self.name!r}: timeout must be positive")
        schema.validate_schema(self.params)


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


def _error(status: Status, code: str, message: str, **kw: Any) -> VerbOutcome:
    return VerbOutcome(status=status, error={"code": code, "message": message}, **kw)


@dataclass
class VerbExecution:
    """Handle on one execution: ``outcome`` Deferred and :meth:`cancel`."""

    outcome: Deferred[VerbOutcome] = field(init=False)
    cancelled: bool = field(default=False, init=False)
    _cancel_step: Callable[[], object] | None = field(default=None, init=False, repr=False)

    def cancel(self) -> None:
        """Stop the execution; ``outcome`` then fires with ``"cancelled"``."""
        if self.cancelled or self.outcome.called:
            return
        self.cancelled = True
        if self._cancel_step is not None:
            self._cancel_step()


EXEC_DISABLED_MESSAGE = "exec is disabled on this gateway (exec_enable = false)"


class VerbCatalog:
    """The verbs this gateway offers, keyed by name.

    With ``exec_enable=False`` every verb whose ``changes_state`` is true is
    rejected with ``EXEC_DISABLED`` before its arguments are even looked at;
    read-only verbs still run.
    """

    def __init__(
        self, runner: ProcessRunner, verbs: Mapping[str, Verb], *, exec_enable: bool = True
    ) -> None:
        for key, verb in verbs.items():
            if key != verb.name:
                raise ValueError(f"verb registered as {key!r} is named {verb.name!r}")
        self._runner = runner
        self._verbs = dict(verbs)
        self._locks: dict[str, DeferredLock] = {}
        self._exec_enable = exec_enable

    @property
    def exec_enable(self) -> bool:
        """False when state-changing verbs are refused."""
        return self._exec_enable

    def get(self, name: str) -> Verb | None:
        """The verb called ``name``, or None."""
        return self._verbs.get(name)

    def names(self) -> list[str]:
        return sorted(self._verbs)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Public description of every verb, for the agent HELLO."""
        return {
            name: {
                "params": verb.params,
                "description": verb.description,
                "changes_state": verb.changes_state,
            }
            for name, verb in sorted(self._verbs.items())
        }

    def execute(
        self, name: str, args: object, timeout: float | None = None
    ) -> Deferred[VerbOutcome]:
        """``start(name, args, timeout).outcome``."""
        return self.start(name, args, timeout).outcome

    def start(self, name: str, args: object, timeout: float | None = None) -> VerbExecution:
        """Validate and start a verb; never raises.

        Unknown verbs and invalid arguments give a ``"rejected"`` outcome and
        nothing runs. ``timeout`` may only shorten the verb's own maximum.
        """
        execution = VerbExecution()
        verb = self._verbs.get(name)
        if verb is None:
            d: Deferred[VerbOutcome] = Deferred()
            d.callback(_error("rejected", "UNKNOWN_VERB", "unknown verb"))
        elif verb.changes_state and not self._exec_enable:
            log.info("verb {verb} refused: exec is disabled", verb=name)
            d = Deferred()
            d.callback(_error("rejected", "EXEC_DISABLED", EXEC_DISABLED_MESSAGE))
        else:
            d = Deferred.fromCoroutine(self._execute(verb, args, timeout, execution))
        outer: Deferred[VerbOutcome] = Deferred(lambda _d: execution.cancel())

        def deliver(value: VerbOutcome | Failure) -> None:
            if isinstance(value, Failure):
                log.failure("verb {verb} crashed", value, verb=name)
                value = _error("failed", "INTERNAL_ERROR", "the agent failed to run the verb")
            if not outer.called:  # a direct cancel of ``outer`` already failed it
                outer.callback(value)

        d.addBoth(deliver)
        execution.outcome = outer
        return execution

    async def _execute(
        self, verb: Verb, raw_args: object, timeout: float | None, ex: VerbExecution
    ) -> VerbOutcome:
        try:
            args = schema.validate_args(verb.params, raw_args)
            effective = _effective_timeout(verb, timeout)
        except schema.ArgsError as e:
            log.info(
                "verb {verb} rejected: {field} {reason}",
                verb=verb.name,
                field=e.field,
                reason=e.message,
            )
            return _error("rejected", e.code, str(e))

        secrets = [v for k, v in args.items() if verb.params[k]["type"] == "secret" and v]
        lock = None
        if verb.serialize is not None:
            lock = self._locks.setdefault(verb.serialize, DeferredLock())
            acquiring = lock.acquire()
            ex._cancel_step = acquiring.cancel
            try:
                await acquiring
            except CancelledError:
                return _error("cancelled", "CANCELLED", "cancelled before it started")
        try:
            if ex.cancelled:
                return _error("cancelled", "CANCELLED", "cancelled before it started")
            if verb.call is not None:
                outcome = await self._run_call(verb, args, effective, ex)
            else:
                outcome = await self._run_process(verb, args, effective, ex)
        finally:
            if lock is not None:
                lock.release()
        outcome = _scrub(outcome, secrets)
        log.info(
            "verb {verb} finished {status} exit_code={exit_code}",
            verb=verb.name,
            status=outcome.status,
            exit_code=outcome.exit_code,
        )
        return outcome

    async def _run_call(
        self, verb: Verb, args: dict[str, Any], timeout: float, ex: VerbExecution
    ) -> VerbOutcome:
        assert verb.call is not None
        d = maybeDeferred(verb.call, args)
        timed_out = False

        def on_timeout(result: object, _timeout: float) -> object:
            nonlocal timed_out
            timed_out = True
            return result

        d.addTimeout(timeout, self._runner.reactor, onTimeoutCancel=on_timeout)
        ex._cancel_step = d.cancel
        try:
            result = await d
        except CancelledError:
            if timed_out:
                return _error("timed_out", "TIMEOUT", f"did not finish within {timeout}s")
            return _error("cancelled", "CANCELLED", "cancelled")
        except VerbError as e:
            return _error("failed", e.code, e.message)
        except Exception:
            # Log the traceback locally; the backend gets no internals.
            log.failure("verb {verb} raised", verb=verb.name)
            return _error("failed", "INTERNAL_ERROR", "the verb raised an unexpected error")
        return VerbOutcome(status="succeeded", result=result)

    async def _run_process(
        self, verb: Verb, args: dict[str, Any], timeout: float, ex: VerbExecution
    ) -> VerbOutcome:
        assert verb.build is not None
        try:
            invocation = verb.build(args)
        except VerbError as e:
            return _error("failed", e.code, e.message)
        except schema.ArgsError as e:
            return _error("rejected", e.code, str(e))
        try:
            handle = self._runner.start(
                invocation.argv,
                stdin=invocation.stdin,
                timeout=timeout,
                output_cap=verb.output_cap,
                kill_grace=verb.kill_grace,
            )
        except Exception:
            log.failure("verb {verb} could not be spawned", verb=verb.name)
            return _error("failed", "SPAWN_FAILED", "the command could not be started")
        ex._cancel_step = handle.cancel
        run = await handle.result
        output = {
            "exit_code": run.exit_code,
            "stdout": run.stdout,
            "stderr": run.stderr,
            "stdout_truncated": run.stdout_truncated,
            "stderr_truncated": run.stderr_truncated,
        }
        if run.cancelled:
            return _error("cancelled", "CANCELLED", "cancelled", **output)
        if run.timed_out:
            return _error("timed_out", "TIMEOUT", f"did not finish within {timeout}s", **output)
        if run.exit_code != 0:
            if run.exit_code is None:
                message = f"killed by signal {run.signal}"
            else:
                message = f"exited with code {run.exit_code}"
            return _error("failed", "EXIT_NONZERO", message, **output)
        if verb.parse is None:
            return VerbOutcome(status="succeeded", **output)
        try:
            result = verb.parse(args, run)
        except VerbError as e:
            return _error("failed", e.code, e.message, **output)
        except Exception:
            log.failure("verb {verb} output could not be parsed", verb=verb.name)
            return _error("failed", "PARSE_ERROR", "unexpected output", **output)
        return VerbOutcome(status="succeeded", result=result, **output)


def _effective_timeout(verb: Verb, requested: float | None) -> float:
    if requested is None:
        return verb.timeout
    if (
        isinstance(requested, bool)
        or not isinstance(requested, (int, float))
        or not requested > 0
        or requested == float("inf")
    ):
        raise schema.ArgsError("timeout", "must be a positive number of seconds")
    return min(float(requested), verb.timeout)


def _scrub(outcome: VerbOutcome, secrets: list[str]) -> VerbOutcome:
    # Defence in depth: a tool that echoes its input must not leak a secret.
    if not secrets:
        return outcome

    def clean(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, schema.REDACTED)
        return text

    error = outcome.error
    if error is not None:
        error = {k: clean(v) for k, v in error.items()}
    return VerbOutcome(
        status=outcome.status,
        exit_code=outcome.exit_code,
        result=outcome.result,
        stdout=clean(outcome.stdout),
        stderr=clean(outcome.stderr),
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        error=error,
    )


def declared_verb(name: str, vc: VerbConfig) -> Verb:
    """A :class:`Verb` for an operator's ``[verbs.NAME]`` declaration (already validated).

    Each argv element is rendered on its own from its template, so a value never splits
    into several arguments and no shell is involved. A string value that would start an
    argv element must not start with ``-`` (it would be read as an option). The stdin
    template (the only place secrets may appear) is written to the process and stdin is
    then closed. The result is ``None``; stdout and stderr are in the outcome.
    """
    if vc.argv is None:
        raise ValueError(f"verb {name!r}: a declared verb needs argv")
    params = copy.deepcopy(vc.params)
    argv_templates = [parse_template(item) for item in vc.argv]
    stdin_template = parse_template(vc.stdin) if vc.stdin is not None else None

    def build(args: dict[str, Any]) -> Invocation:
        argv = [_render(t, args, params, guard_options=True) for t in argv_templates]
        stdin = None
        if stdin_template is not None:
            stdin = _render(stdin_template, args, params).encode("utf-8")
        return Invocation(argv=argv, stdin=stdin)

    return Verb(
        name=name,
        params=params,
        description=vc.description,
        changes_state=vc.changes_state,
        timeout=vc.timeout if vc.timeout is not None else Verb.timeout,
        output_cap=vc.output_cap if vc.output_cap is not None else Verb.output_cap,
        concurrency=vc.concurrency,
        build=build,
    )


def _render(
    template: tuple[tuple[str, str | None], ...],
    args: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    guard_options: bool = False,
) -> str:
    out: list[str] = []
    for literal, name in template:
        out.append(literal)
        if name is None:
            continue
        if name not in args:  # the config loader forbids optional params without a default
            raise schema.ArgsError(name, "missing required parameter")
        text = _as_text(args[name])
        starts_element = not "".join(out)
        kind = params[name]["type"]
        if guard_options and starts_element and kind == "string" and text.startswith("-"):
            raise schema.ArgsError(name, "must not start with '-' (it would be read as an option)")
        out.append(text)
    return "".join(out)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)
