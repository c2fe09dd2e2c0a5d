"""The panel's users: an htpasswd file (bcrypt) managed through the real htpasswd tool.

Passwords reach htpasswd on stdin (``-i``), never in argv; create and delete are
serialized because htpasswd does not lock the file. list_panel_users reads the file
itself and returns names only.
"""

from __future__ import annotations

import os
from typing import Any

from viworks.config.agent import PanelSection
from viworks.gateway.runner import RunResult
from viworks.gateway.verbs.model import Invocation, Verb, VerbError

USERNAME_SPEC: dict[str, Any] = {
    "type": "string",
    # No leading "-": a name must never look like a command-line option.
    "pattern": "[A-Za-z0-9_][A-Za-z0-9_-]*",
    "min_length": 3,
    "max_length": 64,
    "description": "panel user name",
}
PASSWORD_SPEC: dict[str, Any] = {
    "type": "secret",
    # htpasswd -i reads one line: control characters would corrupt it.
    "pattern": "[^\\x00-\\x1f\\x7f]+",
    "min_length": 8,
    "max_length": 128,
    "description": "new password (bcrypt uses the first 72 bytes)",
}


def read_user_names(users_file: str) -> list[str]:
    """The user names in an htpasswd file (``name:hash`` lines), in file order.

    A missing file holds no users. Blank lines and ``#`` comments are skipped.
    """
    try:
        with open(users_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise VerbError("USERS_FILE_ERROR", f"cannot read users file: {e.strerror}") from None
    names: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, _hash = line.partition(":")
        if sep and name and name not in names:
            names.append(name)
    return names


def verbs(panel: PanelSection) -> list[Verb]:
    """create_panel_user, delete_panel_user and list_panel_users over ``panel.users_file``."""
    panel_users_file, htpasswd = panel.users_file, panel.htpasswd
    if not os.path.isabs(panel_users_file):
        raise ValueError("panel_users_file must be an absolute path")

    def build_create(args: dict[str, Any]) -> Invocation:
        # Create the file ourselves with restrictive permissions instead of
        # letting htpasswd -c create it with the umask's.
        try:
            fd = os.open(panel_users_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            pass
        except OSError as e:
            raise VerbError("USERS_FILE_ERROR", f"cannot create users file: {e.strerror}") from None
        else:
            os.fchmod(fd, 0o640)  # the umask may have removed bits
            os.close(fd)
        return Invocation(
            argv=[htpasswd, "-i", "-B", panel_users_file, args["username"]],
            stdin=args["password"].encode("utf-8"),
        )

    def parse_create(args: dict[str, Any], run: RunResult) -> dict[str, Any]:
        out = run.stdout + run.stderr
        if "Adding password for user" in out:
            return {"username": args["username"], "created": True}
        if "Updating password for user" in out:
            return {"username": args["username"], "created": False}
        raise VerbError("UNEXPECTED_OUTPUT", "htpasswd did not confirm the change")

    def build_delete(args: dict[str, Any]) -> Invocation:
        if not os.path.exists(panel_users_file):
            raise VerbError("NOT_FOUND", "panel user not found")
        return Invocation(argv=[htpasswd, "-D", panel_users_file, args["username"]])

    def list_users(_args: dict[str, Any]) -> dict[str, Any]:
        return {"users": read_user_names(panel_users_file)}

    def parse_delete(args: dict[str, Any], run: RunResult) -> dict[str, Any]:
        # htpasswd exits 0 and prints "User X not found" for a missing user.
        if "not found" in run.stdout + run.stderr:
            raise VerbError("NOT_FOUND", "panel user not found")
        return {"username": args["username"], "deleted": True}

    return [
        Verb(
            name="create_panel_user",
            params={"username": USERNAME_SPEC, "password": PASSWORD_SPEC},
            description="Create a panel user or set the password of an existing one.",
            changes_state=True,
            timeout=30.0,
            build=build_create,
            parse=parse_create,
            serialize="panel_users",
            tools=(htpasswd,),
        ),
        Verb(
            name="delete_panel_user",
            params={"username": USERNAME_SPEC},
            description="Delete a panel user.",
            changes_state=True,
            timeout=30.0,
            build=build_delete,
            parse=parse_delete,
            serialize="panel_users",
            tools=(htpasswd,),
        ),
        Verb(
            name="list_panel_users",
            params={},
            description="The panel user names (never their password hashes).",
            timeout=10.0,
            call=list_users,
        ),
    ]
