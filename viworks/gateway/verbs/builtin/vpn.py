"""VPN users: a SoftEther hub user (through ``vpncmd``) plus its fwknop SPA stanza.

``create_vpn_user`` runs, one vpncmd process per step (see :mod:`.vpncmd`
for how the passwords reach it on stdin):

1. ``UserCreate NAME /GROUP:none /REALNAME:none /NOTE:none``
2. ``UserPolicySet NAME /NAME:Access /VALUE:yes``
3. ``UserPasswordSet NAME`` (the password and its confirmation on stdin)

It then writes the user's stanza in fwknopd's ``access.conf`` atomically (see
:mod:`.fwknop`). When ``[fwknop] fwknopd`` exists, fwknopd first checks the
new file. If a step after ``UserCreate`` fails, the hub user is deleted again, so a
failed create leaves neither a hub user nor a stanza. A user that already exists on the
hub is refused (``ALREADY_EXISTS``) and left untouched.

``delete_vpn_user`` deletes the hub user and then the stanza. It is ``NOT_FOUND`` only if
neither existed. ``list_vpn_users`` parses ``UserList`` and says which users have a stanza.

The two state-changing verbs share ``serialize="vpn_users"``, so the access file is never
rewritten concurrently by this agent. Secrets (password, SPA keys, hub password) go only
to vpncmd's stdin and into the 0600 access file. They are never in argv, the
environment, log events, error messages or results.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred

from viworks.config.agent import FwknopSection, VPNSection
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.builtin import fwknop, vpncmd
from viworks.gateway.verbs.model import Verb, VerbError
from viworks.logs import Logger

__all__ = ["verbs"]

log = Logger()

USERNAME_SPEC: dict[str, Any] = {
    "type": "string",
    # No leading "-": a name must never look like a command-line option.
    "pattern": "[A-Za-z0-9_][A-Za-z0-9_-]*",
    "min_length": 3,
    "max_length": 64,
    "description": "VPN user name (the hub user and the fwknop stanza)",
}
PASSWORD_SPEC: dict[str, Any] = {
    "type": "secret",
    # vpncmd's password prompt keeps only printable ASCII and drops other bytes.
    "pattern": vpncmd.PROMPT_SAFE,
    "min_length": 8,
    "max_length": 128,
    "description": "VPN password (printable ASCII)",
}
#: Standard base64 of 16 to 128 bytes (fwknop --key-gen gives 32 and 64 bytes).
_BASE64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
SPA_KEY_SPEC: dict[str, Any] = {
    "type": "secret",
    "pattern": _BASE64,
    "min_length": 24,
    "max_length": 172,
    "description": "fwknop encryption key, base64 (KEY_BASE64), 16-128 bytes",
}
SPA_HMAC_KEY_SPEC: dict[str, Any] = {
    **SPA_KEY_SPEC,
    "description": "fwknop HMAC key, base64 (HMAC_KEY_BASE64), 16-128 bytes; not the spa_key",
}
CREATE_PARAMS: dict[str, Any] = {
    "username": USERNAME_SPEC,
    "password": PASSWORD_SPEC,
    "source_ip": {
        "type": "ip",
        "description": "the address the user's SPA packets come from (IPv4: fwknopd 2.6)",
    },
    "spa_key": SPA_KEY_SPEC,
    "spa_hmac_key": SPA_HMAC_KEY_SPEC,
    "timeout": {
        "type": "integer",
        "min": 60,
        "max": 86400,
        "description": "seconds fwknopd keeps the ports open after a valid SPA packet",
    },
}

STEP_TIMEOUT = 20.0
_HAS_STANZA = re.compile(r"^[ \t]*SOURCE[ \t]", re.MULTILINE)


def verbs(vpn: VPNSection, fw: FwknopSection, runner: ProcessRunner) -> list[Verb]:
    """create_vpn_user, delete_vpn_user and list_vpn_users for ``vpn.hub``."""
    if not os.path.isabs(vpn.vpncmd):
        raise ValueError("[vpn] vpncmd must be an absolute path")
    if not os.path.isabs(fw.access_file):
        raise ValueError("[fwknop] access_file must be an absolute path")
    open_ports = fwknop.check_open_ports(fw.open_ports)

    async def hub(
        name: str, args: list[str], hub_password: str | None, answers: tuple[str, ...] = ()
    ) -> int:
        """Run one hub command; return its SoftEther code, raise on anything but 0/29/66."""
        invocation = vpncmd.command(vpn, name, args, hub_password=hub_password, answers=answers)
        result = await vpncmd.run(runner, invocation, timeout=STEP_TIMEOUT)
        code = vpncmd.error_code(result)
        if code == 0 or code in (vpncmd.ERR_OBJECT_NOT_FOUND, vpncmd.ERR_USER_ALREADY_EXISTS):
            return code
        raise vpncmd.error_for(result, name)

    async def write_access(update: Any) -> bool:
        """Apply ``update(text) -> (new_text, changed)`` to the access file atomically."""
        try:
            text = fwknop.read(fw.access_file)
            new_text, changed = update(text)
            if not changed:
                return False
            tmp = fwknop.stage(fw.access_file, new_text)
        except fwknop.AccessFileError as e:
            raise VerbError("ACCESS_FILE_ERROR", str(e)) from None
        try:
            # fwknopd refuses a file without any stanza ("Could not find valid SOURCE
            # stanza"); after the last user is deleted that is the wanted state, so such a
            # file is installed without asking fwknopd.
            if os.path.exists(fw.fwknopd) and _HAS_STANZA.search(new_text):
                await validate(tmp)
            fwknop.commit(tmp, fw.access_file)
        except fwknop.AccessFileError as e:
            raise VerbError("ACCESS_FILE_ERROR", str(e)) from None
        finally:
            fwknop.discard(tmp)
        return True

    async def validate(tmp: str) -> None:
        argv = fwknop.validate_argv(fw.fwknopd, tmp)
        result = await runner.run(argv, timeout=STEP_TIMEOUT)
        if result.exit_code != 0:
            # fwknopd's fatal lines start with "[*]"; they name settings, never keys.
            reasons = [
                line.strip()
                for line in (result.stderr + result.stdout).splitlines()
                if line.startswith("[*]")
            ]
            detail = "; ".join(reasons)[:300] or f"exit code {result.exit_code}"
            raise VerbError("FWKNOP_REJECTED", f"fwknopd refused the new access file: {detail}")

    async def create(args: dict[str, Any]) -> dict[str, Any]:
        name = args["username"]
        if ipaddress.ip_address(args["source_ip"]).version != 4:
            raise VerbError(
                "UNSUPPORTED_ADDRESS",
                "source_ip: fwknopd 2.6 accepts only IPv4 sources (an IPv6 SOURCE makes it"
                " refuse the whole access file)",
            )
        for key in ("spa_key", "spa_hmac_key"):
            try:
                base64.b64decode(args[key], validate=True)
            except binascii.Error:
                raise VerbError("INVALID_ARGS", f"{key}: must be base64") from None
        if args["spa_key"] == args["spa_hmac_key"]:
            raise VerbError("INVALID_ARGS", "spa_hmac_key: must differ from spa_key")
        stanza_text = fwknop.render_stanza(
            fwknop.Stanza(
                username=name,
                source=args["source_ip"],
                open_ports=open_ports,
                key_base64=args["spa_key"],
                hmac_key_base64=args["spa_hmac_key"],
                timeout=args["timeout"],
            )
        )
        try:  # refuse a broken access file before touching the hub
            fwknop.managed_stanzas(fwknop.read(fw.access_file))
        except fwknop.AccessFileError as e:
            raise VerbError("ACCESS_FILE_ERROR", str(e)) from None
        hub_password = vpncmd.read_hub_password(vpn)

        code = await hub(
            "UserCreate", [name, "/GROUP:none", "/REALNAME:none", "/NOTE:none"], hub_password
        )
        if code == vpncmd.ERR_USER_ALREADY_EXISTS:
            raise VerbError("ALREADY_EXISTS", "the user already exists on the hub")
        if code != 0:
            raise VerbError("VPNCMD_ERROR", f"UserCreate failed with SoftEther error {code}")
        try:
            await must(hub("UserPolicySet", [name, "/NAME:Access", "/VALUE:yes"], hub_password))
            password = args["password"]
            await must(hub("UserPasswordSet", [name], hub_password, (password, password)))
            await write_access(lambda text: (fwknop.set_stanza(text, stanza_text, name), True))
        except VerbError as e:
            raise await rolled_back(name, hub_password, e) from None
        log.info("VPN user {username} created", username=name)
        return {
            "username": name,
            "created": True,
            "hub": vpn.hub,
            "source_ip": args["source_ip"],
            "open_ports": open_ports,
            "timeout": args["timeout"],
        }

    async def must(step: Coroutine[Any, Any, int]) -> None:
        code = await step
        if code != 0:
            raise VerbError("NOT_FOUND", "the user disappeared from the hub while being set up")

    async def rolled_back(name: str, hub_password: str | None, error: VerbError) -> VerbError:
        """Delete the half-created hub user; return the error to raise."""
        log.info(
            "create_vpn_user {username} failed ({code}); removing the hub user",
            username=name,
            code=error.code,
        )
        try:
            await hub("UserDelete", [name], hub_password)
        except VerbError as rollback:
            log.warn(
                "rollback of VPN user {username} failed: {code}",
                username=name,
                code=rollback.code,
            )
            return VerbError(
                error.code,
                f"{error.message}; removing the hub user again also failed"
                f" ({rollback.code}): it may still exist",
            )
        return VerbError(error.code, f"{error.message} (the hub user was removed again)")

    async def delete(args: dict[str, Any]) -> dict[str, Any]:
        name = args["username"]
        hub_password = vpncmd.read_hub_password(vpn)
        code = await hub("UserDelete", [name], hub_password)
        if code not in (0, vpncmd.ERR_OBJECT_NOT_FOUND):
            raise VerbError("VPNCMD_ERROR", f"UserDelete failed with SoftEther error {code}")
        hub_deleted = code == 0
        stanza_removed = await write_access(lambda text: fwknop.remove_stanza(text, name))
        if not hub_deleted and not stanza_removed:
            raise VerbError("NOT_FOUND", "no such VPN user (neither on the hub nor in fwknop)")
        log.info("VPN user {username} deleted", username=name)
        return {"username": name, "hub_user_deleted": hub_deleted, "stanza_removed": stanza_removed}

    async def list_users(args: dict[str, Any]) -> dict[str, Any]:
        hub_password = vpncmd.read_hub_password(vpn)
        invocation = vpncmd.command(vpn, "UserList", [], hub_password=hub_password)
        result = await vpncmd.run(runner, invocation, timeout=STEP_TIMEOUT)
        if vpncmd.error_code(result) != 0:
            raise vpncmd.error_for(result, "UserList")
        rows = vpncmd.parse_csv_table(result.stdout, "User Name")
        try:
            stanzas = fwknop.managed_stanzas(fwknop.read(fw.access_file))
        except fwknop.AccessFileError as e:
            raise VerbError("ACCESS_FILE_ERROR", str(e)) from None
        users = [_user(row, stanzas.get(row.get("User Name", ""))) for row in rows]
        listed = {u["username"] for u in users}
        return {
            "hub": vpn.hub,
            "users": users,
            # Stanzas whose hub user is gone (e.g. deleted outside viworks).
            "orphan_stanzas": sorted(set(stanzas) - listed),
        }

    def call(fn: Any) -> Any:
        return lambda args: Deferred.fromCoroutine(fn(args))

    return [
        Verb(
            name="create_vpn_user",
            params=CREATE_PARAMS,
            description="Create a VPN hub user (Access allowed, password) and its fwknop SPA"
            " stanza; the hub user is removed again if any later step fails.",
            changes_state=True,
            timeout=90.0,
            call=call(create),
            serialize="vpn_users",
            tools=(vpn.vpncmd,),
        ),
        Verb(
            name="delete_vpn_user",
            params={"username": USERNAME_SPEC},
            description="Delete a VPN hub user and its fwknop SPA stanza.",
            changes_state=True,
            timeout=60.0,
            call=call(delete),
            serialize="vpn_users",
            tools=(vpn.vpncmd,),
        ),
        Verb(
            name="list_vpn_users",
            params={},
            description="The hub's users (from vpncmd UserList) and whether each has an SPA"
            " stanza.",
            changes_state=False,
            timeout=30.0,
            call=call(list_users),
            tools=(vpn.vpncmd,),
        ),
    ]


def _int(text: str) -> int | None:
    try:
        return int(text.replace(",", ""))
    except ValueError:
        return None


def _user(row: dict[str, str], stanza: dict[str, str] | None) -> dict[str, Any]:
    def text(key: str) -> str | None:
        value = row.get(key, "")
        return None if value in ("", "-", "(None)") else value

    return {
        "username": row.get("User Name", ""),
        "full_name": text("Full Name"),
        "group": text("Group Name"),
        "description": text("Description"),
        "auth_method": text("Auth Method"),
        "num_logins": _int(row.get("Num Logins", "")),
        # vpncmd prints the server's local time, e.g. "2024-05-01 (Wed) 12:00:00".
        "last_login": text("Last Login"),
        "expiration": text("Expiration Date"),
        "transfer_bytes": _int(row.get("Transfer Bytes", "")),
        "transfer_packets": _int(row.get("Transfer Packets", "")),
        "spa": None
        if stanza is None
        else {
            "source_ip": stanza.get("SOURCE"),
            "open_ports": stanza.get("OPEN_PORTS"),
            "timeout": _int(stanza.get("FW_ACCESS_TIMEOUT", "")),
        },
    }
