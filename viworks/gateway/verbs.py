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
process but, by Twisted's rules, fails it at once with ``CancelledError``
(unless the cancellation completes at once, as for an execution still waiting
in the queue: the Deferred then fires with the ``"cancelled"`` outcome).

Secrets (``"secret"`` parameters) never reach argv, logs, error messages or
the outcome: they travel on stdin, and any echo of one in the captured output
is replaced by ``"***"`` (as is a trailing piece of one cut off by the output
cap).

Limits: at most ``max_concurrency`` executions run at once (``None``: no
limit), at most ``Verb.concurrency`` of one verb, and one at a time per
``Verb.serialize`` key. An execution that cannot run yet waits in a FIFO queue
of at most ``queue_limit`` entries (``None``: unbounded); beyond it the command
is ``rejected`` with ``QUEUE_FULL`` and nothing runs. When a slot frees, the
first waiting execution whose limits allow it starts (one blocked by its own
verb's limit or lock does not hold up the others). Cancelling a waiting
execution removes it from the queue: it never starts. Every verb that gets
past validation counts, in-process ones included. ``catalog.running`` and
``catalog.queued`` are the current counts, for telemetry. A verb's timeout
counts from its start, not from when it was queued.

Streaming: ``start(..., on_output=cb)`` calls ``cb(stream, text)`` (``stream``
``"stdout"`` or ``"stderr"``) while a subprocess verb runs, in order per
stream, with text already capped and scrubbed of secrets. To catch a secret
split across two chunks, the last ``len(longest secret) - 1`` characters are
held back until more output arrives or the process ends (only when the verb
has secret arguments). The pieces of one stream concatenate to exactly the
outcome's ``stdout``/``stderr``. In-process verbs produce no output.

:func:`declared_verb` turns an operator's ``[verbs.NAME]`` declaration (argv and
stdin templates over a parameter schema) into a :class:`Verb`. With
``exec_enable = false`` the catalog refuses every verb whose ``changes_state``
is true (``EXEC_DISABLED``). The built-in verb families live in their own
modules and are composed by :mod:`viworks.gateway.catalog`.
"""

from __future__ import annotations

import copy
import os
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from viworks import schema
from viworks.config import VerbConfig, parse_template
from viworks.gateway.runner import OutputCallback, ProcessRunner, RunResult
from viworks.logs import Logger

__all__ = [
    "TOOL_NOT_FOUND",
    "Invocation",
    "Verb",
    "VerbCatalog",
    "VerbError",
    "VerbExecution",
    "VerbOutcome",
    "declared_verb",
    "missing_tool",
]

log = Logger()

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


class _Waiter:
    """An execution waiting for a slot; ``admitted`` fires once it holds one."""

    __slots__ = ("admitted", "verb")

    def __init__(self, verb: Verb, admitted: Deferred[None]) -> None:
        self.verb = verb
        self.admitted = admitted


class VerbCatalog:
    """The verbs this gateway offers, keyed by name.

    With ``exec_enable=False`` every verb whose ``changes_state`` is true is
    rejected with ``EXEC_DISABLED`` before its arguments are even looked at;
    read-only verbs still run. ``max_concurrency`` and ``queue_limit`` (``None``:
    unlimited) bound what runs and waits; see the module docstring.
    """

    def __init__(
        self,
        runner: ProcessRunner,
        verbs: Mapping[str, Verb],
        *,
        exec_enable: bool = True,
        max_concurrency: int | None = None,
        queue_limit: int | None = None,
    ) -> None:
        for key, verb in verbs.items():
            if key != verb.name:
                raise ValueError(f"verb registered as {key!r} is named {verb.name!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if queue_limit is not None and queue_limit < 0:
            raise ValueError("queue_limit must not be negative")
        self._runner = runner
        self._verbs = dict(verbs)
        self._exec_enable = exec_enable
        self._max_concurrency = max_concurrency
        self._queue_limit = queue_limit
        self._running = 0
        self._running_per_verb: dict[str, int] = {}
        self._busy_keys: set[str] = set()
        self._waiting: deque[_Waiter] = deque()

    @property
    def exec_enable(self) -> bool:
        """False when state-changing verbs are refused."""
        return self._exec_enable

    @property
    def max_concurrency(self) -> int | None:
        """Executions allowed to run at once (None: no limit)."""
        return self._max_concurrency

    @property
    def queue_limit(self) -> int | None:
        """Executions allowed to wait for a slot (None: no limit)."""
        return self._queue_limit

    @property
    def running(self) -> int:
        """Executions running now (holding a slot)."""
        return self._running

    @property
    def queued(self) -> int:
        """Executions waiting for a slot."""
        return len(self._waiting)

    def get(self, name: str) -> Verb | None:
        """The verb called ``name``, or None."""
        return self._verbs.get(name)

    def names(self) -> list[str]:
        return sorted(self._verbs)

    def missing_tools(self) -> dict[str, list[str]]:
        """Each tool that is missing here, with the verbs that cannot run without it."""
        missing: dict[str, list[str]] = {}
        for name, verb in sorted(self._verbs.items()):
            for tool in verb.tools:
                if missing_tool(tool) is not None:
                    missing.setdefault(tool, []).append(name)
        return dict(sorted(missing.items()))

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
        self,
        name: str,
        args: object,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        *,
        quiet: bool = False,
    ) -> Deferred[VerbOutcome]:
        """``start(name, args, timeout, on_output, quiet=quiet).outcome``."""
        return self.start(name, args, timeout, on_output, quiet=quiet).outcome

    def start(
        self,
        name: str,
        args: object,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        *,
        quiet: bool = False,
    ) -> VerbExecution:
        """Validate and start (or queue) a verb; never raises.

        Unknown verbs and invalid arguments give a ``"rejected"`` outcome and
        nothing runs; so does a full queue (``QUEUE_FULL``). A verb whose tool
        is missing fails with its ``missing_tool_code`` and nothing runs.
        ``timeout`` may only shorten the verb's own maximum. ``on_output(stream,
        text)`` receives a subprocess verb's output as it arrives (module
        docstring). ``quiet`` logs the outcome at debug level (periodic runs
        such as telemetry, which report changes themselves).
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
            d = Deferred.fromCoroutine(
                self._execute(verb, args, timeout, execution, on_output, quiet)
            )
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
        self,
        verb: Verb,
        raw_args: object,
        timeout: float | None,
        ex: VerbExecution,
        on_output: OutputCallback | None,
        quiet: bool = False,
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
        missing = verb.missing_tool()
        if missing is not None:
            log.emit(
                LogLevel.debug if quiet else LogLevel.info,
                "verb {verb} not run: {reason}",
                verb=verb.name,
                reason=missing.message,
            )
            return _error("failed", missing.code, missing.message)

        secrets = [v for k, v in args.items() if verb.params[k]["type"] == "secret" and v]
        if self._can_run(verb):
            self._take(verb)
        elif self._queue_limit is not None and len(self._waiting) >= self._queue_limit:
            log.info(
                "verb {verb} rejected: queue full ({queued} waiting)",
                verb=verb.name,
                queued=len(self._waiting),
            )
            return _error(
                "rejected",
                "QUEUE_FULL",
                f"the gateway is busy ({len(self._waiting)} commands already waiting)",
            )
        else:
            admitted = self._enqueue(verb)
            ex._cancel_step = admitted.cancel
            try:
                await admitted
            except CancelledError:
                return _error("cancelled", "CANCELLED", "cancelled before it started")
        try:
            if ex.cancelled:
                return _error("cancelled", "CANCELLED", "cancelled before it started")
            if verb.call is not None:
                outcome = await self._run_call(verb, args, effective, ex)
            else:
                outcome = await self._run_process(verb, args, effective, ex, secrets, on_output)
        finally:
            self._release(verb)
        outcome = _scrub(outcome, secrets)
        log.emit(
            LogLevel.debug if quiet else LogLevel.info,
            "verb {verb} finished {status} exit_code={exit_code}",
            verb=verb.name,
            status=outcome.status,
            exit_code=outcome.exit_code,
        )
        return outcome

    # -- scheduling: slots for the global, per-verb and serialize limits --

    def _can_run(self, verb: Verb) -> bool:
        if self._max_concurrency is not None and self._running >= self._max_concurrency:
            return False
        if (
            verb.concurrency is not None
            and self._running_per_verb.get(verb.name, 0) >= verb.concurrency
        ):
            return False
        return verb.serialize is None or verb.serialize not in self._busy_keys

    def _take(self, verb: Verb) -> None:
        self._running += 1
        self._running_per_verb[verb.name] = self._running_per_verb.get(verb.name, 0) + 1
        if verb.serialize is not None:
            self._busy_keys.add(verb.serialize)

    def _release(self, verb: Verb) -> None:
        self._running -= 1
        left = self._running_per_verb[verb.name] - 1
        if left:
            self._running_per_verb[verb.name] = left
        else:
            del self._running_per_verb[verb.name]
        if verb.serialize is not None:
            self._busy_keys.discard(verb.serialize)
        self._pump()

    def _enqueue(self, verb: Verb) -> Deferred[None]:
        def forget(_d: Deferred[None]) -> None:
            self._waiting.remove(waiter)  # cancelled while waiting: it never starts

        waiter = _Waiter(verb, Deferred(forget))
        self._waiting.append(waiter)
        log.debug(
            "verb {verb} queued ({queued} waiting)", verb=verb.name, queued=len(self._waiting)
        )
        return waiter.admitted

    def _pump(self) -> None:
        """Admit, in FIFO order, every waiting execution whose limits now allow it."""
        admitted: list[_Waiter] = []
        still: deque[_Waiter] = deque()
        for waiter in self._waiting:
            if self._can_run(waiter.verb):
                self._take(waiter.verb)
                admitted.append(waiter)
            else:
                still.append(waiter)
        self._waiting = still
        # Fire only once the queue is consistent: an admitted execution may
        # finish synchronously and pump again.
        for waiter in admitted:
            waiter.admitted.callback(None)

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
            return _error("failed", e.code, e.message, result=e.result)
        except Exception:
            # Log the traceback locally; the backend gets no internals.
            log.failure("verb {verb} raised", verb=verb.name)
            return _error("failed", "INTERNAL_ERROR", "the verb raised an unexpected error")
        return VerbOutcome(status="succeeded", result=result)

    async def _run_process(
        self,
        verb: Verb,
        args: dict[str, Any],
        timeout: float,
        ex: VerbExecution,
        secrets: Sequence[str] = (),
        on_output: OutputCallback | None = None,
    ) -> VerbOutcome:
        assert verb.build is not None
        try:
            invocation = verb.build(args)
        except VerbError as e:
            return _error("failed", e.code, e.message)
        except schema.ArgsError as e:
            return _error("rejected", e.code, str(e))
        streams: dict[str, _ScrubbedStream] = {}
        forward: OutputCallback | None = None
        if on_output is not None:
            emit = _guarded(on_output, verb.name)
            if secrets:
                redactor = _Redactor(secrets)
                streams = {s: _ScrubbedStream(redactor, s, emit) for s in ("stdout", "stderr")}

                def forward(stream: str, text: str) -> None:
                    streams[stream].feed(text)
            else:
                forward = emit
        try:
            handle = self._runner.start(
                invocation.argv,
                stdin=invocation.stdin,
                timeout=timeout,
                output_cap=verb.output_cap,
                kill_grace=verb.kill_grace,
                no_output_timeout=verb.no_output_timeout,
                on_output=forward,
            )
        except Exception:
            log.failure("verb {verb} could not be spawned", verb=verb.name)
            return _error("failed", "SPAWN_FAILED", "the command could not be started")
        ex._cancel_step = handle.cancel
        run = await handle.result
        if streams:  # the process is gone: release what was held back
            streams["stdout"].finish(run.stdout_truncated)
            streams["stderr"].finish(run.stderr_truncated)
        output = {
            "exit_code": run.exit_code,
            "stdout": run.stdout,
            "stderr": run.stderr,
            "stdout_truncated": run.stdout_truncated,
            "stderr_truncated": run.stderr_truncated,
        }
        if run.cancelled:
            return _error("cancelled", "CANCELLED", "cancelled", **output)
        if run.timed_out and run.timeout_reason == "no_output":
            message = f"produced no output for {verb.no_output_timeout}s"
            return _error("timed_out", "NO_OUTPUT_TIMEOUT", message, **output)
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


class _Redactor:
    """Replaces secrets in text, all at once or as a stream.

    Matching is leftmost-first, longest secret first at a given position. The
    decision at a position depends only on the ``longest`` characters from
    there, so a stream can emit everything but its last ``longest - 1``
    characters and get exactly what the whole text would give.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.secrets = ordered
        self.longest = len(ordered[0]) if ordered else 0
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def _scan(self, text: str, safe: int) -> tuple[list[str], int]:
        """Redact the matches starting before ``safe``; return the pieces and where they end."""
        out: list[str] = []
        pos = 0
        if self._pattern is not None:
            while (m := self._pattern.search(text, pos)) is not None and m.start() < safe:
                out += (text[pos : m.start()], schema.REDACTED)
                pos = m.end()
        return out, pos

    def partial(self, text: str) -> tuple[str, str]:
        """For a stream: ``(clean text to emit, raw text to hold back)``."""
        safe = len(text) - self.longest + 1
        out, pos = self._scan(text, safe)
        cut = max(pos, safe)
        out.append(text[pos:cut])
        return "".join(out), text[cut:]

    def final(self, text: str, truncated: bool = False) -> str:
        """Clean ``text`` to its end. When the output was cut by the cap, a trailing
        beginning of a secret (what the cap left of it) is redacted too."""
        out, pos = self._scan(text, len(text))
        tail = text[pos:]
        if truncated:
            for k in range(min(len(tail), self.longest - 1), 0, -1):
                if any(len(s) > k and s.startswith(tail[-k:]) for s in self.secrets):
                    tail = tail[:-k] + schema.REDACTED
                    break
        out.append(tail)
        return "".join(out)


class _ScrubbedStream:
    """One output stream on its way to ``on_output``, with secrets redacted."""

    def __init__(self, redactor: _Redactor, stream: str, emit: OutputCallback) -> None:
        self._redactor = redactor
        self._stream = stream
        self._emit = emit
        self._held = ""

    def feed(self, text: str) -> None:
        clean, self._held = self._redactor.partial(self._held + text)
        if clean:
            self._emit(self._stream, clean)

    def finish(self, truncated: bool) -> None:
        clean = self._redactor.final(self._held, truncated)
        self._held = ""
        if clean:
            self._emit(self._stream, clean)


def _guarded(on_output: OutputCallback, verb: str) -> OutputCallback:
    """``on_output`` with its exceptions logged instead of breaking the run."""

    def emit(stream: str, text: str) -> None:
        try:
            on_output(stream, text)
        except Exception:
            log.failure("on_output callback failed for verb {verb}", verb=verb)

    return emit


def _scrub(outcome: VerbOutcome, secrets: list[str]) -> VerbOutcome:
    # Defence in depth: a tool that echoes its input must not leak a secret.
    if not secrets:
        return outcome
    redactor = _Redactor(secrets)
    error = outcome.error
    if error is not None:
        error = {k: redactor.final(v) for k, v in error.items()}
    return VerbOutcome(
        status=outcome.status,
        exit_code=outcome.exit_code,
        result=outcome.result,
        stdout=redactor.final(outcome.stdout, outcome.stdout_truncated),
        stderr=redactor.final(outcome.stderr, outcome.stderr_truncated),
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

    # A program named literally (no placeholder) is checked before each run.
    program = argv_templates[0]
    tools = (program[0][0],) if len(program) == 1 else ()
    return Verb(
        name=name,
        params=params,
        description=vc.description,
        changes_state=vc.changes_state,
        tools=tools,
        timeout=vc.timeout if vc.timeout is not None else Verb.timeout,
        output_cap=vc.output_cap if vc.output_cap is not None else Verb.output_cap,
        concurrency=vc.concurrency,
        no_output_timeout=vc.no_output_timeout,
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
