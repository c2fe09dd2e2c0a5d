"""Verbs about the host itself: ping, system_health, service_status and tail_logs.

``ping`` and ``system_health`` are in-process (no subprocess). ``service_status``
runs ``systemctl is-active UNIT...`` for the ``[services] units`` and ``tail_logs``
runs ``journalctl`` for one unit of the ``[logs] units`` allowlist. Both are
in-process calls that drive the tool through the :class:`ProcessRunner`, because
those tools report ordinary answers with a nonzero exit code (``is-active`` exits 3
when no unit is active; ``journalctl`` exits 1 when a unit has no entries), which
a plain subprocess verb would turn into ``EXIT_NONZERO``.

The ``parse_*`` functions are pure (text in, data out) so they can be tested
with output recorded from the real tools.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from twisted.internet.interfaces import IReactorTime

from viworks.config.agent import LogsSection, ServicesSection
from viworks.gateway import health
from viworks.gateway.runner import ProcessRunner, RunResult
from viworks.gateway.verbs.model import Verb, VerbError
from viworks.timeutil import rfc3339

__all__ = [
    "CURSOR_PATTERN",
    "parse_is_active",
    "parse_journal_json",
    "verbs",
]

#: A journal cursor as ``journalctl --show-cursor`` prints it (``s=...;i=...;b=...``).
CURSOR_PATTERN = "[A-Za-z0-9=;_-]{1,512}"
#: ``systemctl is-active`` prints one state word per unit (active, inactive, failed...).
_STATE = re.compile(r"[a-z][a-z-]*")
_CURSOR_LINE = "-- cursor: "
#: Bytes of journalctl output kept: 1000 JSON entries are usually well below this.
JOURNAL_OUTPUT_CAP = 4 * 1024 * 1024
SERVICE_STATUS_TIMEOUT = 15.0
TAIL_LOGS_TIMEOUT = 30.0
#: The runner's own limit. The verb's timeout (which ``[verbs.NAME] timeout`` may
#: change) is enforced by the catalog, whose cancellation kills the process group.
_BACKSTOP_TIMEOUT = 3600.0


def parse_is_active(units: tuple[str, ...] | list[str], stdout: str) -> dict[str, str]:
    """Map each unit to the state ``systemctl is-active UNIT...`` printed for it.

    systemctl prints exactly one line per unit, in the order given. Raises
    ``ValueError`` when the output does not have that shape.
    """
    lines = stdout.splitlines()
    if len(lines) != len(units):
        raise ValueError(f"expected {len(units)} state lines, got {len(lines)}")
    states: dict[str, str] = {}
    for unit, line in zip(units, lines, strict=True):
        state = line.strip()
        if not _STATE.fullmatch(state):
            raise ValueError("unexpected state line")
        states[unit] = state
    return states


def _message_text(value: Any) -> str:
    """A journal field from ``-o json``: a string, null (too large), a byte array
    (not valid UTF-8 or has control characters), or a list of those (repeated field)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in value):
            return bytes(value).decode("utf-8", errors="replace")
        return "\n".join(_message_text(v) for v in value)
    raise ValueError("unexpected MESSAGE value")


def _priority(value: Any) -> int | None:
    if isinstance(value, list):  # a repeated field: keep the first value
        value = value[0] if value else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def parse_journal_json(
    stdout: str, *, truncated: bool = False, since_cursor: str | None = None
) -> dict[str, Any]:
    """Parse ``journalctl -o json --show-cursor`` output.

    Each entry line is a JSON object with ``__CURSOR``, ``__REALTIME_TIMESTAMP``
    (microseconds since the epoch, as a string), ``MESSAGE`` and ``PRIORITY``;
    ``--show-cursor`` adds a final ``-- cursor: ...`` line. Returns ``entries``
    (``time`` RFC 3339, ``message``, ``priority``), ``next_cursor`` (the cursor
    of the last entry, else ``since_cursor``) and ``truncated``. When the output
    was cut at the cap, the partial last line is dropped and ``next_cursor``
    points at the last complete entry, so the caller can page on from there.
    Raises ``ValueError`` on anything else.
    """
    lines = stdout.split("\n")
    if truncated:
        lines = lines[:-1]  # whatever follows the last newline is incomplete
    entries: list[dict[str, Any]] = []
    next_cursor = since_cursor
    for line in lines:
        if not line.strip():
            continue
        if line.startswith(_CURSOR_LINE):
            next_cursor = line[len(_CURSOR_LINE) :].strip()
            continue
        if line.startswith("-- "):  # "-- No entries --" and similar notes
            continue
        entry = json.loads(line)
        if not isinstance(entry, dict):
            raise ValueError("journal entry is not an object")
        cursor = entry.get("__CURSOR")
        if not isinstance(cursor, str):
            raise ValueError("journal entry without a cursor")
        realtime = entry.get("__REALTIME_TIMESTAMP")
        entries.append(
            {
                "time": rfc3339(int(realtime) / 1e6) if isinstance(realtime, str) else None,
                "message": _message_text(entry.get("MESSAGE")),
                "priority": _priority(entry.get("PRIORITY")),
            }
        )
        next_cursor = cursor
    if next_cursor is not None and not re.fullmatch(CURSOR_PATTERN, next_cursor):
        raise ValueError("unexpected cursor")
    return {"entries": entries, "next_cursor": next_cursor, "truncated": truncated}


def _stderr_excerpt(run: RunResult) -> str:
    first = run.stderr.strip().splitlines()
    return first[0][:200] if first else ""


def _exit_text(run: RunResult) -> str:
    if run.timed_out:
        return "timed out"
    if run.cancelled:
        return "cancelled"
    if run.exit_code is None:
        return f"killed by signal {run.signal}"
    return f"exit code {run.exit_code}"


def verbs(
    clock: IReactorTime | None = None,
    *,
    runner: ProcessRunner | None = None,
    services: ServicesSection | None = None,
    logs: LogsSection | None = None,
) -> list[Verb]:
    """ping and system_health; service_status and tail_logs when ``runner`` and
    their config sections (``[services]``, ``[logs]``) are given."""

    def ping(_args: dict[str, Any]) -> dict[str, Any]:
        now = clock.seconds() if clock is not None else time.time()
        return {"pong": True, "agent_time": rfc3339(now)}

    family = [
        Verb(
            name="ping",
            params={},
            description="Check that the agent answers; returns its clock.",
            timeout=5.0,
            call=ping,
        ),
        Verb(
            name="system_health",
            params={},
            description="Load, memory, CPU, uptime, disk and network counters.",
            timeout=10.0,
            call=lambda _args: health.system_health(),
        ),
    ]
    if runner is not None and services is not None:
        family.append(_service_status(runner, services))
    if runner is not None and logs is not None:
        family.append(_tail_logs(runner, logs))
    return family


def _service_status(runner: ProcessRunner, services: ServicesSection) -> Verb:
    units = tuple(services.units)
    systemctl = services.systemctl

    async def service_status(_args: dict[str, Any]) -> dict[str, Any]:
        if not units:
            return {"units": {}}
        # Unit names were checked by the config loader: none starts with "-".
        run = await runner.run(
            [systemctl, "is-active", *units], timeout=_BACKSTOP_TIMEOUT, output_cap=65536
        )
        # is-active exits 0 when some unit is active and 3 when none is: both are answers.
        if run.exit_code is not None and not run.timed_out and not run.cancelled:
            try:
                return {"units": parse_is_active(units, run.stdout)}
            except ValueError:
                pass
        detail = _stderr_excerpt(run)
        raise VerbError(
            "SYSTEMCTL_FAILED",
            f"systemctl is-active gave no state per unit ({_exit_text(run)})"
            + (f": {detail}" if detail else ""),
        )

    return Verb(
        name="service_status",
        params={},
        description="systemctl is-active of the configured units ([services] units).",
        timeout=SERVICE_STATUS_TIMEOUT,
        call=service_status,
        # With no units nothing runs, so systemctl is not needed.
        tools=(systemctl,) if units else (),
    )


def _tail_logs(runner: ProcessRunner, logs: LogsSection) -> Verb:
    units = list(logs.units)
    journalctl = logs.journalctl
    params: dict[str, Any] = {
        "unit": (
            {"type": "enum", "values": units, "description": "a unit from [logs] units"}
            if units
            # An empty allowlist: the verb exists but accepts no unit at all (an empty
            # class matches nothing; RE2 has no lookahead for "(?!)").
            else {"type": "string", "pattern": "[^\\s\\S]", "description": "no unit is allowed"}
        ),
        "lines": {
            "type": "integer",
            "min": 1,
            "max": 1000,
            "default": 100,
            "description": "number of entries",
        },
        "since_cursor": {
            "type": "string",
            "pattern": CURSOR_PATTERN,
            "required": False,
            "description": "return the entries after this cursor (a previous next_cursor)",
        },
    }

    async def tail_logs(args: dict[str, Any]) -> dict[str, Any]:
        unit = args["unit"]
        since = args.get("since_cursor")
        argv = [journalctl, "-u", unit, "-n", str(args["lines"])]
        argv += ["--no-pager", "-o", "json", "--show-cursor"]
        if since is not None:
            # One element, so a cursor can never be read as an option.
            argv.append(f"--after-cursor={since}")
        run = await runner.run(argv, timeout=_BACKSTOP_TIMEOUT, output_cap=JOURNAL_OUTPUT_CAP)
        if run.exit_code == 1 and not run.stdout.strip() and not run.stderr.strip():
            # journalctl exits 1 silently when the unit has no entries at all.
            return {"unit": unit, "entries": [], "next_cursor": since, "truncated": False}
        if run.exit_code != 0:
            detail = _stderr_excerpt(run)
            code = (
                "INVALID_CURSOR" if since is not None and "cursor" in detail else "JOURNAL_FAILED"
            )
            raise VerbError(
                code, f"journalctl failed ({_exit_text(run)})" + (f": {detail}" if detail else "")
            )
        try:
            parsed = parse_journal_json(
                run.stdout, truncated=run.stdout_truncated, since_cursor=since
            )
        except ValueError:
            raise VerbError("PARSE_ERROR", "unexpected journalctl output") from None
        return {"unit": unit, **parsed}

    return Verb(
        name="tail_logs",
        params=params,
        description="The last entries of one allowlisted unit's journal, with the next cursor.",
        timeout=TAIL_LOGS_TIMEOUT,
        output_cap=JOURNAL_OUTPUT_CAP,
        call=tail_logs,
        tools=(journalctl,),
    )
