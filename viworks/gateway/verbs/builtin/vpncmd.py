"""Driving SoftEther's ``vpncmd``: building invocations and reading its output.

Shared by every verb family that manages the VPN hub (users, sessions).

**Invocations.** One vpncmd process per hub command, in Virtual Hub Admin Mode and CSV
output mode::

    vpncmd <server> /SERVER /HUB:<hub> /CSV /CMD <Command> <args...>

``/CMD`` runs a single command and exits with that command's SoftEther error code (0 on
success), so every step of a multi-step verb is checked before the next one runs (a
``/IN`` batch file would go on after a failed command).

**Secrets only on stdin.** Neither the hub administrator password nor a user's password
is ever put in argv (``/PASSWORD:`` would be visible in ``ps``). vpncmd reads both from
its password prompts, which read stdin character by character even without a terminal
(checked against vpncmd 5.01 build 9674 from Debian). The stdin written is, in order:

1. the hub administrator password and a newline, if one is configured. vpncmd first
   tries an empty password and prompts only when the server denies it;
2. the answers to the command's own prompts (``UserPasswordSet``: the password and its
   confirmation), one per line;
3. a Ctrl+D character (``\\x04``). vpncmd takes it as "cancel" at any prompt. A wrong
   hub password therefore ends the run at once with ``ERR_ACCESS_DENIED``: it does not
   read the next line as another admin password attempt. Without it, vpncmd keeps
   re-prompting at end of input and only the verb timeout would stop it.

If the server accepted the empty password even though one is configured (a server with no
administrator password), every answer shifts by one line. For ``UserPasswordSet`` the
password and its confirmation then differ, so the command fails and is cancelled: it
never sets the wrong password. The one exception is when they are equal, and then the
password that gets set is still the right one.

The password prompt keeps only printable ASCII (0x20-0x7e) and silently drops other
bytes. Any secret sent this way must be restricted to printable ASCII.

**Output.** With ``/CSV`` a listing command prints its table as CSV after the prompt
echo (``Password: *****``). :func:`parse_csv_table` finds the header row and returns one
dict per row. A failed command prints ``Error occurred. (Error code: N)`` and a message,
and exits with ``N``. :func:`error_for` maps that to a :class:`VerbError`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail

from viworks.config.agent import VPNSection
from viworks.gateway.runner import ProcessRunner, RunResult
from viworks.gateway.verbs.model import Invocation, VerbError, missing_tool

__all__ = [
    "CANCEL",
    "ERR_ACCESS_DENIED",
    "ERR_CONNECT_FAILED",
    "ERR_HUB_NOT_FOUND",
    "ERR_OBJECT_NOT_FOUND",
    "ERR_USER_ALREADY_EXISTS",
    "PROMPT_SAFE",
    "command",
    "error_code",
    "error_for",
    "parse_csv_table",
    "read_hub_password",
    "run",
]

#: Ctrl+D: cancels whatever vpncmd prompt reads it.
CANCEL = "\x04"

# SoftEther error codes (src/Cedar/Cedar.h), as seen from vpncmd's exit status.
ERR_CONNECT_FAILED = 1
ERR_HUB_NOT_FOUND = 8
ERR_AUTH_FAILED = 9
ERR_ACCESS_DENIED = 12
ERR_OBJECT_NOT_FOUND = 29
ERR_USER_ALREADY_EXISTS = 66

#: What vpncmd's password prompt keeps: printable ASCII. Use it as a ``pattern``.
PROMPT_SAFE = "[\\x20-\\x7e]+"
_PROMPT_SAFE = re.compile(PROMPT_SAFE)

_ERROR = re.compile(r"^Error occurred\. \(Error code: (\d+)\)\s*$", re.MULTILINE)

#: Our error codes for the SoftEther ones a caller is expected to meet.
_CODES = {
    ERR_CONNECT_FAILED: ("VPN_UNREACHABLE", "cannot connect to the VPN server"),
    ERR_HUB_NOT_FOUND: ("HUB_NOT_FOUND", "the virtual hub does not exist"),
    ERR_AUTH_FAILED: ("HUB_AUTH_FAILED", "hub administrator authentication failed"),
    ERR_ACCESS_DENIED: ("HUB_AUTH_FAILED", "hub administrator authentication failed"),
    ERR_OBJECT_NOT_FOUND: ("NOT_FOUND", "not found on the hub"),
    ERR_USER_ALREADY_EXISTS: ("ALREADY_EXISTS", "the user already exists on the hub"),
}


def read_hub_password(vpn: VPNSection) -> str | None:
    """The hub administrator password from ``vpn.hub_password_file``, or None if unset.

    The file holds the password on its first line. The line ending is not part of it.
    Raises :class:`VerbError` (``HUB_PASSWORD_ERROR``) if the file cannot be read or the
    password could not go through vpncmd's prompt (see the module docstring). The
    message never includes the file's content.
    """
    if not vpn.hub_password_file:
        return None
    try:
        with open(vpn.hub_password_file, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8"
        raise VerbError("HUB_PASSWORD_ERROR", f"cannot read hub_password_file: {reason}") from None
    password = line.rstrip("\r\n")
    if not password:
        return None
    if not _PROMPT_SAFE.fullmatch(password):
        raise VerbError(
            "HUB_PASSWORD_ERROR",
            "the hub password must be printable ASCII (vpncmd's prompt drops other bytes)",
        )
    return password


def command(
    vpn: VPNSection,
    name: str,
    args: Sequence[str] = (),
    *,
    hub_password: str | None,
    answers: Sequence[str] = (),
) -> Invocation:
    """The invocation running hub command ``name`` with ``args`` (no secrets in them).

    ``answers`` are the command's own prompt answers (e.g. a user password twice). Like
    ``hub_password``, they are sent on stdin only, followed by :data:`CANCEL`.
    """
    if not os.path.isabs(vpn.vpncmd):
        raise ValueError("vpncmd must be an absolute path")
    for arg in (name, *args):
        # Values come from validated parameters; never let one read as a vpncmd switch of
        # the whole program, nor break the single-command line vpncmd rebuilds from argv.
        if "\n" in arg or "\r" in arg or '"' in arg:
            raise ValueError(f"unsafe vpncmd argument {arg!r}")
    argv = [vpn.vpncmd, vpn.server, "/SERVER", f"/HUB:{vpn.hub}", "/CSV", "/CMD", name, *args]
    lines = [] if hub_password is None else [hub_password]
    lines.extend(answers)
    stdin = "".join(f"{line}\n" for line in lines) + CANCEL
    return Invocation(argv=argv, stdin=stdin.encode("ascii"))


def run(
    runner: ProcessRunner, invocation: Invocation, *, timeout: float = 30.0
) -> Deferred[RunResult]:
    """Run one vpncmd invocation (cancelling the Deferred kills it).

    Fails with ``TOOL_NOT_FOUND`` when vpncmd is not installed (the exit code of
    a failed exec would read as a SoftEther error).
    """
    missing = missing_tool(invocation.argv[0])
    if missing is not None:
        return fail(missing)
    return runner.run(invocation.argv, stdin=invocation.stdin, timeout=timeout, output_cap=1 << 20)


def error_code(result: RunResult) -> int | None:
    """SoftEther's error code for a finished run: 0 on success, None if it did not exit."""
    if result.timed_out or result.cancelled or result.exit_code is None:
        return None
    return result.exit_code


def error_for(result: RunResult, what: str) -> VerbError:
    """A :class:`VerbError` describing why ``result`` (a failed run of ``what``) failed."""
    if result.timed_out:
        return VerbError("TIMEOUT", f"vpncmd {what} did not finish in time")
    if result.exit_code is None:
        return VerbError("VPNCMD_ERROR", f"vpncmd {what} was killed by signal {result.signal}")
    code = result.exit_code
    if code in _CODES:
        ours, message = _CODES[code]
        return VerbError(ours, f"{what}: {message}")
    detail = _error_text(result.stdout + "\n" + result.stderr)
    message = f"vpncmd {what} failed with SoftEther error {code}"
    if detail:
        message += f": {detail}"
    return VerbError("VPNCMD_ERROR", message)


def _error_text(output: str) -> str:
    """The message line vpncmd prints after ``Error occurred. (Error code: N)``."""
    m = _ERROR.search(output)
    if m is None:
        return ""
    for line in output[m.end() :].splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def parse_csv_table(output: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the CSV table whose header starts with ``first_column``.

    Lines before the header (the password prompt echo, blank lines) are skipped. Raises
    :class:`VerbError` (``UNEXPECTED_OUTPUT``) if there is no such header. An empty
    table (no rows) is valid: vpncmd prints only the header then.
    """
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.split(",", 1)[0] == first_column]
    if not starts:
        raise VerbError("UNEXPECTED_OUTPUT", f"vpncmd printed no {first_column!r} table")
    index = starts[0]
    rows = list(csv.reader(lines[index:]))
    header, body = rows[0], rows[1:]
    table: list[dict[str, Any]] = []
    for row in body:
        if not row:
            continue  # vpncmd may end with a blank line
        if len(row) != len(header):
            raise VerbError("UNEXPECTED_OUTPUT", "vpncmd printed a malformed CSV row")
        table.append(dict(zip(header, row, strict=True)))
    return table
