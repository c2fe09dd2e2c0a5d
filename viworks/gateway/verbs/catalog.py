"""The catalog: the verbs this gateway offers, and how one execution goes.

:meth:`VerbCatalog.start` validates the arguments against the verb's schema, refuses
what must not run (unknown verb, ``exec_enable = false`` for a ``changes_state`` verb,
a missing tool, a full queue), waits for a slot (:mod:`.admission`), runs the verb
(in-process ``call`` or subprocess through the runner) and maps what happened onto a
:class:`~viworks.gateway.verbs.model.VerbOutcome`, scrubbed of secrets
(:mod:`.redaction`). Every verb that gets past validation counts against the limits,
in-process ones included; ``catalog.running`` and ``catalog.queued`` are the current
counts, for telemetry. A verb's timeout counts from its start, not from when it was
queued.

Cancellation mirrors the runner: :meth:`VerbCatalog.start` returns a
:class:`VerbExecution`; ``execution.cancel()`` kills the process group and
``execution.outcome`` fires, once the process is gone, with status
``"cancelled"`` (keeping any output). :meth:`VerbCatalog.execute` returns
``start(...).outcome``; calling ``.cancel()`` on that Deferred also kills the
process but, by Twisted's rules, fails it at once with ``CancelledError``
(unless the cancellation completes at once, as for an execution still waiting
in the queue: the Deferred then fires with the ``"cancelled"`` outcome).
Cancelling a waiting execution removes it from the queue: it never starts.

Streaming: ``start(..., on_output=cb)`` calls ``cb(stream, text)`` (``stream``
``"stdout"`` or ``"stderr"``) while a subprocess verb runs, in order per
stream, with text already capped and scrubbed of secrets. The pieces of one
stream concatenate to exactly the outcome's ``stdout``/``stderr``. In-process
verbs produce no output.

The verbs themselves come from :mod:`viworks.gateway.verbs.builtin` (the families every
gateway ships) and :mod:`viworks.gateway.verbs.declared` (``[verbs.NAME]``), composed
by :mod:`viworks.gateway.catalog`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from viworks import schema
from viworks.gateway.runner import OutputCallback, ProcessRunner
from viworks.gateway.verbs.admission import Admission
from viworks.gateway.verbs.model import (
    Verb,
    VerbError,
    VerbOutcome,
    error_outcome,
    missing_tool,
    run_outcome,
)
from viworks.gateway.verbs.redaction import ScrubbedStream, SecretRedactor, scrub
from viworks.logs import Logger

__all__ = ["EXEC_DISABLED_MESSAGE", "VerbCatalog", "VerbExecution"]

log = Logger()

EXEC_DISABLED_MESSAGE = "exec is disabled on this gateway (exec_enable = false)"


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
        self._runner = runner
        self._verbs = dict(verbs)
        self._exec_enable = exec_enable
        self._slots = Admission(max_concurrency, queue_limit)

    @property
    def exec_enable(self) -> bool:
        """False when state-changing verbs are refused."""
        return self._exec_enable

    @property
    def max_concurrency(self) -> int | None:
        """Executions allowed to run at once (None: no limit)."""
        return self._slots.max_concurrency

    @property
    def queue_limit(self) -> int | None:
        """Executions allowed to wait for a slot (None: no limit)."""
        return self._slots.queue_limit

    @property
    def running(self) -> int:
        """Executions running now (holding a slot)."""
        return self._slots.running

    @property
    def queued(self) -> int:
        """Executions waiting for a slot."""
        return self._slots.queued

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
            d.callback(error_outcome("rejected", "UNKNOWN_VERB", "unknown verb"))
        elif verb.changes_state and not self._exec_enable:
            log.info("verb {verb} refused: exec is disabled", verb=name)
            d = Deferred()
            d.callback(error_outcome("rejected", "EXEC_DISABLED", EXEC_DISABLED_MESSAGE))
        else:
            d = Deferred.fromCoroutine(
                self._execute(verb, args, timeout, execution, on_output, quiet)
            )
        outer: Deferred[VerbOutcome] = Deferred(lambda _d: execution.cancel())

        def deliver(value: VerbOutcome | Failure) -> None:
            if isinstance(value, Failure):
                log.failure("verb {verb} crashed", value, verb=name)
                message = "the agent failed to run the verb"
                value = error_outcome("failed", "INTERNAL_ERROR", message)
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
            return error_outcome("rejected", e.code, str(e))
        missing = verb.missing_tool()
        if missing is not None:
            log.emit(
                LogLevel.debug if quiet else LogLevel.info,
                "verb {verb} not run: {reason}",
                verb=verb.name,
                reason=missing.message,
            )
            return error_outcome("failed", missing.code, missing.message)

        secrets = [v for k, v in args.items() if verb.params[k]["type"] == "secret" and v]
        if not self._slots.take(verb):
            if self._slots.full:
                log.info(
                    "verb {verb} rejected: queue full ({queued} waiting)",
                    verb=verb.name,
                    queued=self._slots.queued,
                )
                return error_outcome(
                    "rejected",
                    "QUEUE_FULL",
                    f"the gateway is busy ({self._slots.queued} commands already waiting)",
                )
            admitted = self._slots.wait(verb)
            ex._cancel_step = admitted.cancel
            try:
                await admitted
            except CancelledError:
                return error_outcome("cancelled", "CANCELLED", "cancelled before it started")
        try:
            if ex.cancelled:
                return error_outcome("cancelled", "CANCELLED", "cancelled before it started")
            if verb.call is not None:
                outcome = await self._run_call(verb, args, effective, ex)
            else:
                outcome = await self._run_process(verb, args, effective, ex, secrets, on_output)
        finally:
            self._slots.release(verb)
        outcome = scrub(outcome, secrets)
        log.emit(
            LogLevel.debug if quiet else LogLevel.info,
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
                return error_outcome("timed_out", "TIMEOUT", f"did not finish within {timeout}s")
            return error_outcome("cancelled", "CANCELLED", "cancelled")
        except VerbError as e:
            return error_outcome("failed", e.code, e.message, result=e.result)
        except Exception:
            # Log the traceback locally; the backend gets no internals.
            log.failure("verb {verb} raised", verb=verb.name)
            return error_outcome("failed", "INTERNAL_ERROR", "the verb raised an unexpected error")
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
            return error_outcome("failed", e.code, e.message)
        except schema.ArgsError as e:
            return error_outcome("rejected", e.code, str(e))
        streams: dict[str, ScrubbedStream] = {}
        forward: OutputCallback | None = None
        if on_output is not None:
            emit = _guarded(on_output, verb.name)
            if secrets:
                redactor = SecretRedactor(secrets)
                streams = {s: ScrubbedStream(redactor, s, emit) for s in ("stdout", "stderr")}

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
            return error_outcome("failed", "SPAWN_FAILED", "the command could not be started")
        ex._cancel_step = handle.cancel
        run = await handle.result
        if streams:  # the process is gone: release what was held back
            streams["stdout"].finish(run.stdout_truncated)
            streams["stderr"].finish(run.stderr_truncated)
        if run.cancelled:
            return error_outcome("cancelled", "CANCELLED", "cancelled", run=run)
        if run.timed_out and run.timeout_reason == "no_output":
            message = f"produced no output for {verb.no_output_timeout}s"
            return error_outcome("timed_out", "NO_OUTPUT_TIMEOUT", message, run=run)
        if run.timed_out:
            message = f"did not finish within {timeout}s"
            return error_outcome("timed_out", "TIMEOUT", message, run=run)
        if run.exit_code != 0:
            if run.exit_code is None:
                message = f"killed by signal {run.signal}"
            else:
                message = f"exited with code {run.exit_code}"
            return error_outcome("failed", "EXIT_NONZERO", message, run=run)
        if verb.parse is None:
            return run_outcome("succeeded", run)
        try:
            result = verb.parse(args, run)
        except VerbError as e:
            return error_outcome("failed", e.code, e.message, run=run)
        except Exception:
            log.failure("verb {verb} output could not be parsed", verb=verb.name)
            return error_outcome("failed", "PARSE_ERROR", "unexpected output", run=run)
        return run_outcome("succeeded", run, result=result)


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


def _guarded(on_output: OutputCallback, verb: str) -> OutputCallback:
    """``on_output`` with its exceptions logged instead of breaking the run."""

    def emit(stream: str, text: str) -> None:
        try:
            on_output(stream, text)
        except Exception:
            log.failure("on_output callback failed for verb {verb}", verb=verb)

    return emit
