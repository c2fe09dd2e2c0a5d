"""User sessions: terminate_session and get_session_status.

A user session is the per-session container(s) (labels ``viw.session=<id>`` and
``viw.user=<name>``, see :mod:`.container_engine`) plus the user's SoftEther VPN
session(s) on ``[vpn] hub``. Both verbs are in-process ``call``s that drive the container
engine (:class:`~.container_engine.Engine`) and ``vpncmd`` (see
:mod:`.vpncmd`: hub password on stdin, ``/CSV`` output) through the agent's
runner, one tool process per step.

``terminate_session``:

1. ``ps`` of the viworks containers labelled ``viw.session=<id>``;
2. for each: ``stop`` (if running), then ``rm``;
3. the user: the ``viw.user`` label of those containers or, when none of them has one,
   the ``username`` of the bootstrap bundles (``<state_dir>/bootstrap/*.json``) issued for
   that session id;
4. ``SessionList`` on the hub, then ``SessionDisconnect <session name>`` for each of that
   user's VPN sessions (the ``User Name`` column; SoftEther user names are compared
   without regard to case, as the hub does).

A failing step is recorded in ``errors`` and the others still run. The verb succeeds
only if nothing failed; with something done and something failed it fails with
``PARTIAL``; when nothing could be done at all it fails with the first step's own code.
A failed outcome carries no ``result`` (:class:`~viworks.gateway.verbs.model.VerbError` has
only a code and a message), so the message itself says what was done and what failed.
Nothing to act on at all (no container, no VPN session of a known user) is
``NOT_FOUND``. It shares the ``"containers"`` serialization key with
``spawn_container``/``stop_container``.

``get_session_status`` is read-only: ``ps`` filtered on ``viw.user=<name>`` and
``SessionList``. Either failing fails the verb.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet.defer import Deferred

from viworks.config.agent import ContainersSection, VPNSection
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.builtin import vpncmd
from viworks.gateway.verbs.builtin.container_engine import (
    LABEL_SESSION,
    LABEL_USER,
    ContainerInfo,
    Engine,
)
from viworks.gateway.verbs.model import Verb, VerbError
from viworks.logs import Logger

__all__ = ["SESSION_HEADER", "parse_sessions", "verbs"]

log = Logger()

#: A user name as the panel/VPN/container verbs accept it (no leading ``-``).
USERNAME_PATTERN = "[A-Za-z0-9_][A-Za-z0-9_-]*"
_USERNAME = re.compile(USERNAME_PATTERN)
USERNAME_SPEC: dict[str, Any] = {
    "type": "string",
    "pattern": USERNAME_PATTERN,
    "min_length": 3,
    "max_length": 64,
    "description": "the user whose session to report",
}
SESSION_SPEC: dict[str, Any] = {
    "type": "string",
    "pattern": "[A-Za-z0-9_-]{1,64}",
    "min_length": 1,
    "max_length": 64,
    "description": "the session to terminate (the containers' viw.session label)",
}
#: First column of vpncmd's ``SessionList`` CSV table.
SESSION_HEADER = "Session Name"
#: SoftEther session names, e.g. ``SID-ALICE-1``; anything else is not passed to vpncmd.
_SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")

VPN_STEP_TIMEOUT = 20.0


def _int(text: str) -> int | None:
    try:
        return int(text.replace(",", ""))
    except ValueError:
        return None


def parse_sessions(output: str) -> list[dict[str, Any]]:
    """The rows of ``SessionList /CSV`` as dicts (``UNEXPECTED_OUTPUT`` without a table).

    Real vpncmd 5.01 output (hub admin mode)::

        Session Name,VLAN ID,Location,User Name,Source Host Name,TCP Connections,...
        SID-ALICE-1,-,Local Session,alice,localhost,8 / 8,"168,032","2,754"
        SID-SECURENAT-3,-,SecureNAT Session,SecureNAT,Virtual Host,None,"167,910","2,752"
    """
    sessions = []
    for row in vpncmd.parse_csv_table(output, SESSION_HEADER):
        vlan = row.get("VLAN ID", "")
        sessions.append(
            {
                "session_name": row.get(SESSION_HEADER, ""),
                "username": row.get("User Name", ""),
                "location": row.get("Location", ""),
                "source_host": row.get("Source Host Name", ""),
                "vlan_id": None if vlan in ("", "-") else vlan,
                "tcp_connections": row.get("TCP Connections", ""),
                "transfer_bytes": _int(row.get("Transfer Bytes", "")),
                "transfer_packets": _int(row.get("Transfer Packets", "")),
            }
        )
    return sessions


def _same_user(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


def _bootstrap_users(state_dir: str | None, session_id: str) -> list[str]:
    """User names of the bootstrap bundles issued for ``session_id`` (unreadable skipped)."""
    if not state_dir:
        return []
    directory = os.path.join(state_dir, "bootstrap")
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    users: list[str] = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                bundle = json.load(f).get("bundle") or {}
        except (OSError, ValueError, AttributeError):
            continue
        user = bundle.get("username") if isinstance(bundle, dict) else None
        if (
            bundle.get("session_id") == session_id
            and isinstance(user, str)
            and _USERNAME.fullmatch(user)
            and user not in users
        ):
            users.append(user)
    return users


def _summary(result: dict[str, Any]) -> str:
    """What terminate_session did and what failed, for a failed outcome's message."""
    stopped = ", ".join(c["name"] or c["container_id"][:12] for c in result["containers_stopped"])
    vpn = ", ".join(s["session_name"] for s in result["vpn_sessions_disconnected"])
    errors = "; ".join(f"{e['step']}: {e['code']}: {e['message']}" for e in result["errors"])
    return (
        f"containers stopped: {stopped or 'none'}; VPN sessions disconnected: {vpn or 'none'};"
        f" errors: {errors}"
    )


def verbs(
    containers: ContainersSection,
    vpn: VPNSection,
    runner: ProcessRunner,
    state_dir: str | None = None,
) -> list[Verb]:
    """terminate_session and get_session_status over the engine and ``vpn.hub``.

    ``state_dir`` is the agent's state directory; its ``bootstrap`` bundles are used to
    find a session's user when no container names one (None: not used).
    """
    if not os.path.isabs(vpn.vpncmd):
        raise ValueError("[vpn] vpncmd must be an absolute path")
    engine = Engine(containers, runner)

    async def session_list(hub_password: str | None) -> list[dict[str, Any]]:
        invocation = vpncmd.command(vpn, "SessionList", [], hub_password=hub_password)
        result = await vpncmd.run(runner, invocation, timeout=VPN_STEP_TIMEOUT)
        if vpncmd.error_code(result) != 0:
            raise vpncmd.error_for(result, "SessionList")
        return parse_sessions(result.stdout)

    async def disconnect(name: str, hub_password: str | None) -> bool:
        """SessionDisconnect ``name``; False when the hub no longer has it."""
        invocation = vpncmd.command(vpn, "SessionDisconnect", [name], hub_password=hub_password)
        result = await vpncmd.run(runner, invocation, timeout=VPN_STEP_TIMEOUT)
        code = vpncmd.error_code(result)
        if code == vpncmd.ERR_OBJECT_NOT_FOUND:
            return False
        if code != 0:
            raise vpncmd.error_for(result, "SessionDisconnect")
        return True

    async def terminate(args: dict[str, Any]) -> dict[str, Any]:
        session_id = args["session_id"]
        result: dict[str, Any] = {
            "session_id": session_id,
            "usernames": [],
            "containers_stopped": [],
            "vpn_sessions_disconnected": [],
            "errors": [],
        }
        errors: list[dict[str, str]] = result["errors"]

        def failed(step: str, e: VerbError) -> None:
            errors.append({"step": step, "code": e.code, "message": e.message})

        found: list[ContainerInfo] = []
        try:
            found = await engine.list_managed(f"label={LABEL_SESSION}={session_id}")
        except VerbError as e:
            failed("ps", e)
        # Belt and braces: the engine filtered on the label already.
        found = [c for c in found if c.session == session_id]
        for c in sorted(found, key=lambda c: c.name):
            target = c.id or c.name
            try:
                if c.running:
                    await engine.stop(target)
                await engine.remove(target)
            except VerbError as e:
                failed(f"stop {c.name or c.id}", e)
                continue
            result["containers_stopped"].append(
                {
                    "container_id": c.id,
                    "name": c.name,
                    "username": c.user,
                    "was_running": c.running,
                }
            )

        users: list[str] = []
        for c in found:
            if c.user and c.user not in users:
                if _USERNAME.fullmatch(c.user) and len(c.user) <= 64:
                    users.append(c.user)
                else:
                    errors.append(
                        {
                            "step": f"user of {c.name or c.id}",
                            "code": "UNEXPECTED_LABEL",
                            "message": f"the container's {LABEL_USER} label is not a user name",
                        }
                    )
        if not users:
            users = _bootstrap_users(state_dir, session_id)
        result["usernames"] = users

        if users:
            hub_password: str | None = None
            try:
                hub_password = vpncmd.read_hub_password(vpn)
                sessions = await session_list(hub_password)
            except VerbError as e:
                failed("SessionList", e)
                sessions = []
            for s in sessions:
                name = s["session_name"]
                if not any(_same_user(s["username"], u) for u in users):
                    continue
                if not _SESSION_NAME.fullmatch(name):
                    errors.append(
                        {
                            "step": "SessionDisconnect",
                            "code": "UNEXPECTED_OUTPUT",
                            "message": "SessionList printed an unusable session name",
                        }
                    )
                    continue
                try:
                    if not await disconnect(name, hub_password):
                        continue  # ended on its own meanwhile
                except VerbError as e:
                    failed(f"SessionDisconnect {name}", e)
                    continue
                result["vpn_sessions_disconnected"].append(
                    {"session_name": name, "username": s["username"]}
                )

        done = result["containers_stopped"] or result["vpn_sessions_disconnected"]
        if errors:
            log.warn(
                "terminate_session {session_id}: {summary}",
                session_id=session_id,
                summary=_summary(result),
            )
            if done:
                raise VerbError(
                    "PARTIAL",
                    f"session {session_id} partly terminated: " + _summary(result),
                    result=result,
                )
            first = errors[0]
            raise VerbError(
                first["code"],
                f"session {session_id} not terminated: " + _summary(result),
                result=result,
            )
        if not done:
            raise VerbError(
                "NOT_FOUND",
                f"no container of session {session_id}"
                + (f" and no VPN session of {', '.join(users)}" if users else ""),
            )
        log.info(
            "session {session_id} terminated: {containers} containers, {vpn_sessions} VPN sessions",
            session_id=session_id,
            containers=len(result["containers_stopped"]),
            vpn_sessions=len(result["vpn_sessions_disconnected"]),
        )
        return result

    async def status(args: dict[str, Any]) -> dict[str, Any]:
        username = args["username"]
        found = await engine.list_managed(f"label={LABEL_USER}={username}")
        found = [c for c in found if c.user == username]
        hub_password = vpncmd.read_hub_password(vpn)
        sessions = [
            {k: v for k, v in s.items() if k != "username"}
            for s in await session_list(hub_password)
            if _same_user(s["username"], username)
        ]
        # The running container if any, else the newest one (RFC 3339 UTC sorts as text).
        chosen = max(
            found,
            key=lambda c: (c.running, c.created or "", c.name),
            default=None,
        )
        container = None
        started_at = None
        if chosen is not None:
            container = {
                "id": chosen.id,
                "name": chosen.name,
                "status": chosen.state,
                "status_text": chosen.status,
                "port": chosen.port,
            }
            if chosen.created and _RFC3339.fullmatch(chosen.created):
                started_at = chosen.created
        return {
            "username": username,
            "active": bool(sessions) or any(c.running for c in found),
            "session_id": chosen.session if chosen is not None else None,
            "container": container,
            "started_at": started_at,
            "containers": len(found),
            "vpn_sessions": sessions,
        }

    def call(fn: Any) -> Any:
        return lambda args: Deferred.fromCoroutine(fn(args))

    return [
        Verb(
            name="terminate_session",
            params={"session_id": SESSION_SPEC},
            description="Stop and remove a session's containers and disconnect its user's VPN"
            " sessions; reports what was done.",
            changes_state=True,
            timeout=180.0,
            call=call(terminate),
            serialize="containers",
        ),
        Verb(
            name="get_session_status",
            params={"username": USERNAME_SPEC},
            description="Whether a user has a running session container or VPN session: session"
            " id, container, start time and VPN sessions.",
            changes_state=False,
            timeout=60.0,
            call=call(status),
        ),
    ]
