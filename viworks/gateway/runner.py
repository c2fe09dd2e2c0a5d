"""Run one allowlisted subprocess with bounded time and output.

Modelled on buildbot-worker's ``runprocess.py``: a dedicated
``ProcessProtocol`` that decodes output incrementally, caps it, and kills the
whole process group with SIGTERM then SIGKILL on timeout or cancellation.

Cancellation design: :meth:`ProcessRunner.start` returns a
:class:`RunningProcess` handle. ``handle.cancel()`` kills the process group
and ``handle.result`` later fires, once the process is really gone, with a
:class:`RunResult` whose ``cancelled`` is true (never a ``CancelledError``).
:meth:`ProcessRunner.run` is ``start(...).result`` for callers that do not
need the handle; calling ``.cancel()`` on that Deferred (or on
``handle.result``, e.g. through ``addTimeout``) also kills the group, but by
Twisted's rules the Deferred then fails at once with ``CancelledError``.

Time limits: ``timeout`` bounds the whole run; ``no_output_timeout`` (optional)
bounds how long the child may stay silent (no byte on stdout or stderr). Either
one kills the group the same way; ``RunResult.timeout_reason`` says which
(``"max_time"`` or ``"no_output"``).

Streaming: ``on_output(stream, text)`` (``stream`` is ``"stdout"`` or
``"stderr"``) is called with each piece of decoded text as it arrives, already
capped (nothing past ``output_cap`` is ever passed) and in order per stream;
the concatenation of the pieces of one stream is exactly the final
``RunResult.stdout``/``stderr``.

Process groups: ``ProcessRunner(groups=...)`` tells a :class:`GroupObserver`
(``procgroups.ProcessGroups``) about every group as it starts and ends, so
that groups a crashed gateway left behind can be ended at its next start.

Run-as user: ``ProcessRunner(run_as="name")`` runs every child with that
user's uid, gid and supplementary groups (Twisted's ``spawnProcess`` ``uid``/
``gid``, which also calls ``initgroups``) and ``HOME``/``USER``/``LOGNAME``
from its passwd entry. It needs the agent to run as root (or already as that
user); otherwise the constructor raises :class:`RunAsError`, a
:class:`~viworks.config.ConfigError`, so the agent refuses to start.
"""

from __future__ import annotations

import codecs
import os
import pwd
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from viworks.config import ConfigError
from viworks.logs import Logger

__all__ = [
    "DEFAULT_ENV",
    "SETSID",
    "GroupObserver",
    "OutputCallback",
    "ProcessRunner",
    "RunAsError",
    "RunResult",
    "RunningProcess",
]

log = Logger()

SETSID = "/usr/bin/setsid"
#: Seconds to wait, after the direct child exits, for its output pipes to
#: close before killing whatever else in its group still holds them.
LEFTOVER_LINGER = 1.0
DEFAULT_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

#: ``spawner(protocol, executable, args, env=..., path=...)``, like
#: ``IReactorProcess.spawnProcess``.
Spawner = Callable[..., IProcessTransport]

#: ``on_output(stream, text)`` with ``stream`` ``"stdout"`` or ``"stderr"``.
OutputCallback = Callable[[str, str], object]

TimeoutReason = Literal["max_time", "no_output"]


class GroupObserver(Protocol):
    """Hears of every process group the runner starts and of its end."""

    def started(self, pgid: int) -> None: ...

    def ended(self, pgid: int) -> None: ...


class RunAsError(ConfigError):
    """The configured run-as user cannot be used (unknown, or the agent is not root)."""

    def __init__(self, message: str) -> None:
        # The runner does not know the file's path; str() names the key only.
        super().__init__("", message, section="agent", key="run_as_user")

    def __str__(self) -> str:
        return f"[agent] run_as_user: {self.message}"


@dataclass(frozen=True)
class RunResult:
    """What happened to one subprocess.

    ``exit_code`` is ``None`` when the process died from ``signal``.
    ``started_at``/``finished_at`` come from the runner's reactor clock.
    ``timeout_reason`` is set when ``timed_out``: ``"max_time"`` (the run took
    longer than ``timeout``) or ``"no_output"`` (silent for ``no_output_timeout``).
    """

    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    cancelled: bool
    started_at: float
    finished_at: float
    timeout_reason: TimeoutReason | None = None


class _CappedText:
    """Accumulate at most ``cap`` bytes of a stream, decoded as UTF-8."""

    def __init__(self, cap: int) -> None:
        self._remaining = cap
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self.truncated = False

    def feed(self, data: bytes) -> str:
        """Keep what fits under the cap; return the text it decoded to (maybe "")."""
        if len(data) > self._remaining:
            # Drop the excess but keep reading, so the child never blocks on
            # a full pipe; memory stays bounded by the cap.
            data = data[: self._remaining]
            self.truncated = True
        if not data:
            return ""
        self._remaining -= len(data)
        text = self._decoder.decode(data)
        if text:
            self._parts.append(text)
        return text

    def finish(self) -> str:
        """Flush the decoder (an incomplete character becomes U+FFFD); return that text."""
        text = self._decoder.decode(b"", final=True)
        if text:
            self._parts.append(text)
        return text

    @property
    def text(self) -> str:
        return "".join(self._parts)


class _RunProtocol(ProcessProtocol):
    def __init__(self, handle: RunningProcess, output_cap: int) -> None:
        self._handle = handle
        self.stdout = _CappedText(output_cap)
        self.stderr = _CappedText(output_cap)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self._handle._output("stdout", self.stdout.feed(data))
        elif childFD == 2:
            self._handle._output("stderr", self.stderr.feed(data))

    def processExited(self, reason: Failure) -> None:
        self._handle._leader_exited()

    def processEnded(self, reason: Failure) -> None:
        self._handle._ended(reason)


class RunningProcess:
    """Handle on one running child; see the module docstring.

    Attributes: ``pid`` (also the process group id), ``result`` (a Deferred
    firing with a :class:`RunResult` once the process has ended).
    """

    def __init__(
        self,
        reactor: Any,
        argv: Sequence[str],
        timeout: float,
        output_cap: int,
        kill_grace: float,
        killpg: Callable[[int, int], None],
        no_output_timeout: float | None = None,
        on_output: OutputCallback | None = None,
        groups: GroupObserver | None = None,
    ) -> None:
        self._reactor = reactor
        self._killpg = killpg
        self._groups = groups
        self._argv = list(argv)
        self._kill_grace = kill_grace
        self._timeout = timeout
        self._no_output_timeout = no_output_timeout
        self._on_output = on_output
        self._protocol = _RunProtocol(self, output_cap)
        self._transport: IProcessTransport | None = None
        self._timeout_call: IDelayedCall | None = None
        self._silence_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._linger_call: IDelayedCall | None = None
        self._killing = False
        self._done = False
        self.pid: int | None = None
        self.timed_out = False
        self.timeout_reason: TimeoutReason | None = None
        self.cancelled = False
        self.started_at = reactor.seconds()
        self._last_output = self.started_at
        self.result: Deferred[RunResult] = Deferred(lambda _d: self.cancel())

    @property
    def done(self) -> bool:
        """True once the process has ended (even if ``result`` was cancelled)."""
        return self._done

    def _spawned(self, transport: IProcessTransport, stdin: bytes | None) -> None:
        self._transport = transport
        # setsid exec's the command in place, so pid == pgid.
        self.pid = transport.pid
        log.debug("spawned {executable} pid={pid}", executable=self._argv[0], pid=self.pid)
        if self._groups is not None and self.pid is not None:
            self._groups.started(self.pid)
        if not self._done:
            self._timeout_call = self._reactor.callLater(self._timeout, self._on_timeout)
            if self._no_output_timeout is not None:
                self._last_output = self._reactor.seconds()
                self._silence_call = self._reactor.callLater(
                    self._no_output_timeout, self._on_silence
                )
            if stdin:
                transport.write(stdin)
            transport.closeStdin()

    def cancel(self) -> None:
        """Kill the process group; ``result`` then reports ``cancelled``."""
        if self._done or self._killing:
            return
        self.cancelled = True
        log.info("cancelling pid={pid}", pid=self.pid)
        self._start_kill()

    def _output(self, stream: str, text: str) -> None:
        # Any byte counts as output, even past the cap (the child is alive).
        if self._no_output_timeout is not None:
            self._last_output = self._reactor.seconds()
        if text and self._on_output is not None:
            try:
                self._on_output(stream, text)
            except Exception:
                log.failure("on_output callback failed for pid={pid}", pid=self.pid)

    def _on_silence(self) -> None:
        # Rescheduled from the last output rather than reset on every chunk:
        # one timer call per period, whatever the output rate.
        self._silence_call = None
        if self._done or self._killing:
            return
        assert self._no_output_timeout is not None
        due = self._last_output + self._no_output_timeout
        now = self._reactor.seconds()
        if now < due:
            self._silence_call = self._reactor.callLater(due - now, self._on_silence)
            return
        self.timed_out = True
        self.timeout_reason = "no_output"
        log.info(
            "pid={pid} produced no output for {timeout}s, killing its group",
            pid=self.pid,
            timeout=self._no_output_timeout,
        )
        self._start_kill()

    def _on_timeout(self) -> None:
        self._timeout_call = None
        if self._done or self._killing:
            return
        self.timed_out = True
        self.timeout_reason = "max_time"
        log.info(
            "pid={pid} timed out after {timeout}s, killing its group",
            pid=self.pid,
            timeout=self._timeout,
        )
        self._start_kill()

    def _leader_exited(self) -> None:
        # The output pipes normally close along with the child. If they are
        # still open shortly after, something it started holds them: verbs
        # must not leave processes behind, so kill the rest of the group (its
        # pgid stays reserved while the group has members).
        if not self._done and not self._killing:
            self._linger_call = self._reactor.callLater(LEFTOVER_LINGER, self._on_linger)

    def _on_linger(self) -> None:
        self._linger_call = None
        if not self._done and not self._killing:
            log.info("pid={pid} exited but left processes behind, killing them", pid=self.pid)
            self._start_kill()

    def _start_kill(self) -> None:
        self._killing = True
        self._signal_group(signal.SIGTERM)
        if not self._done:
            self._kill_call = self._reactor.callLater(self._kill_grace, self._on_kill_grace)

    def _on_kill_grace(self) -> None:
        self._kill_call = None
        if not self._done:
            log.info("pid={pid} survived SIGTERM, sending SIGKILL", pid=self.pid)
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        if self.pid is None or self._done:
            return
        try:
            self._killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group already exited
        except PermissionError:
            # Should not happen for our own children; fall back to the leader.
            try:
                if self._transport is not None:
                    self._transport.signalProcess("KILL" if sig == signal.SIGKILL else "TERM")
            except error.ProcessExitedAlready:
                pass

    def _ended(self, reason: Failure) -> None:
        if self._done:
            return
        self._done = True
        for call in (self._timeout_call, self._silence_call, self._kill_call, self._linger_call):
            if call is not None and call.active():
                call.cancel()
        self._timeout_call = self._silence_call = self._kill_call = self._linger_call = None
        if self._groups is not None and self.pid is not None:
            self._groups.ended(self.pid)
        # Flush the decoders (a dangling partial character) before reporting.
        self._output("stdout", self._protocol.stdout.finish())
        self._output("stderr", self._protocol.stderr.finish())

        exit_code: int | None = None
        sig: int | None = None
        value = reason.value
        if isinstance(value, error.ProcessTerminated):
            exit_code, sig = value.exitCode, value.signal
        elif isinstance(value, error.ProcessDone):
            exit_code = 0
        result = RunResult(
            exit_code=exit_code,
            signal=sig,
            stdout=self._protocol.stdout.text,
            stderr=self._protocol.stderr.text,
            stdout_truncated=self._protocol.stdout.truncated,
            stderr_truncated=self._protocol.stderr.truncated,
            timed_out=self.timed_out,
            cancelled=self.cancelled,
            started_at=self.started_at,
            finished_at=self._reactor.seconds(),
            timeout_reason=self.timeout_reason,
        )
        log.debug(
            "pid={pid} ended exit_code={exit_code} signal={signal}",
            pid=self.pid,
            exit_code=exit_code,
            signal=sig,
        )
        if not self.result.called:  # it may have been cancelled directly
            self.result.callback(result)


class ProcessRunner:
    """Spawn children in their own process group with a minimal environment.

    ``reactor`` defaults to the global reactor (imported lazily);
    ``spawner`` defaults to ``reactor.spawnProcess`` and exists so unit tests
    can record or fake spawns. ``setsid`` and ``killpg`` are injectable for
    the same reason. ``groups`` hears of every process group (module
    docstring). ``run_as`` (a user name) runs every child as that user;
    see the module docstring. ``geteuid`` is injectable for tests.
    """

    def __init__(
        self,
        reactor: Any = None,
        spawner: Spawner | None = None,
        *,
        setsid: str = SETSID,
        killpg: Callable[[int, int], None] = os.killpg,
        run_as: str | None = None,
        geteuid: Callable[[], int] = os.geteuid,
        groups: GroupObserver | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self._spawner: Spawner = spawner if spawner is not None else reactor.spawnProcess
        self._setsid = setsid
        self._killpg = killpg
        self._groups = groups
        self._run_as: pwd.struct_passwd | None = None
        self._switch_ids: dict[str, int] = {}
        if run_as:
            euid = geteuid()
            self._run_as = _lookup_run_as(run_as, euid)
            if self._run_as.pw_uid != euid:
                # spawnProcess switches gid, supplementary groups (initgroups)
                # and uid in the child before exec'ing setsid.
                self._switch_ids = {"uid": self._run_as.pw_uid, "gid": self._run_as.pw_gid}

    @property
    def reactor(self) -> Any:
        """The reactor used for timers (and spawning, by default)."""
        return self._reactor

    @property
    def run_as(self) -> str | None:
        """The user children run as, or None (the agent's own user)."""
        return self._run_as.pw_name if self._run_as is not None else None

    def start(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
        output_cap: int = 65536,
        kill_grace: float = 5.0,
        cwd: str | None = None,
        no_output_timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunningProcess:
        """Spawn ``argv`` (never through a shell) and return its handle.

        ``argv[0]`` must be an absolute path. ``env`` is passed exactly;
        ``None`` means :data:`DEFAULT_ENV` (the agent's own environment is
        never inherited); with a run-as user, ``HOME``, ``USER`` and
        ``LOGNAME`` are added from its passwd entry unless ``env`` sets them.
        ``stdin`` is written and then stdin is closed. ``no_output_timeout``
        (seconds, optional) kills a child that stays silent that long;
        ``on_output`` receives the output as it arrives (module docstring).
        Raises ``ValueError`` for bad arguments and whatever the spawner
        raises (e.g. ``OSError``) if the process cannot be started.
        """
        argv = list(argv)
        if not argv or not os.path.isabs(argv[0]):
            raise ValueError("argv[0] must be an absolute path")
        if not all(isinstance(a, str) for a in argv):
            raise ValueError("argv items must be strings")
        if timeout <= 0 or kill_grace < 0 or output_cap < 0:
            raise ValueError("timeout must be > 0, kill_grace and output_cap >= 0")
        if no_output_timeout is not None and not no_output_timeout > 0:
            raise ValueError("no_output_timeout must be > 0")
        child_env = dict(DEFAULT_ENV if env is None else env)
        if self._run_as is not None:
            user = self._run_as
            child_env.setdefault("HOME", user.pw_dir)
            child_env.setdefault("USER", user.pw_name)
            child_env.setdefault("LOGNAME", user.pw_name)
        handle = RunningProcess(
            self._reactor,
            argv,
            timeout,
            output_cap,
            kill_grace,
            self._killpg,
            no_output_timeout=no_output_timeout,
            on_output=on_output,
            groups=self._groups,
        )
        transport = self._spawner(
            handle._protocol,
            self._setsid,
            [self._setsid, *argv],
            env=child_env,
            path=cwd,
            **self._switch_ids,
        )
        handle._spawned(transport, stdin)
        return handle

    def run(self, argv: Sequence[str], **options: Any) -> Deferred[RunResult]:
        """``start(argv, **options).result``; a spawn error becomes a failed Deferred."""
        try:
            handle = self.start(argv, **options)
        except Exception:
            return fail()
        return handle.result


def _lookup_run_as(name: str, euid: int) -> pwd.struct_passwd:
    """The passwd entry of ``name``, checking the agent can switch to it."""
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise RunAsError(f"unknown user {name!r}") from None
    if euid != 0 and euid != user.pw_uid:
        raise RunAsError(
            f"running verbs as {name!r} needs the agent to run as root (it runs as uid {euid});"
            " start it as root or leave run_as_user empty"
        )
    if user.pw_uid == 0:
        log.warn("run_as_user {user!r} is root: verbs are not isolated", user=name)
    return user
