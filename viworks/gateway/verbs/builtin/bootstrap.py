"""Short-lived connection bundles: generate_bootstrap, get_bootstrap, revoke_bootstrap.

A bundle tells a user's client where to connect: the SPA (fwknop) server, port and
the ports it opens, and the VPN server, port and hub, with an expiry. It never
holds a password or key (those were given to ``create_vpn_user`` and are secrets).

Each bundle is one JSON file ``<state_dir>/bootstrap/<bootstrap_id>.json`` (directory
0700, file 0600, written atomically: temporary file, fsync, rename)::

    {"bundle": {...}, "expires": <epoch seconds>, "revoked": false, "revoked_at": null}

``get_bootstrap`` refuses revoked bundles (``REVOKED``) and expired ones (``EXPIRED``).
Files are pruned lazily: every call of these verbs deletes the bundles that expired more
than :data:`PRUNE_AFTER` seconds ago (until then ``get_bootstrap`` still says
``EXPIRED`` rather than ``NOT_FOUND``). All three verbs are in-process.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from viworks.config.agent import BootstrapSection, FwknopSection, VPNSection
from viworks.files import ensure_private_dir
from viworks.gateway.verbs.builtin.panel import USERNAME_SPEC
from viworks.gateway.verbs.model import Verb, VerbError
from viworks.logs import Logger
from viworks.timeutil import rfc3339

__all__ = ["BOOTSTRAP_ID_PATTERN", "MIN_TTL", "PRUNE_AFTER", "BootstrapStore", "verbs"]

log = Logger()

#: ``secrets.token_urlsafe(16)``: 128 random bits in 22 URL-safe characters.
BOOTSTRAP_ID_PATTERN = "[A-Za-z0-9_-]{22}"
MIN_TTL = 60
#: Seconds an expired bundle is kept (answering EXPIRED) before it is deleted.
PRUNE_AFTER = 3600.0

SESSION_ID_SPEC: dict[str, Any] = {
    "type": "string",
    "pattern": "[A-Za-z0-9_-]{1,64}",
    "description": "the user's session id",
}
BOOTSTRAP_ID_SPEC: dict[str, Any] = {
    "type": "string",
    "pattern": BOOTSTRAP_ID_PATTERN,
    "description": "id returned by generate_bootstrap",
}


class BootstrapStore:
    """The bundle files under ``directory``; ``now()`` gives epoch seconds."""

    def __init__(self, directory: str, now: Callable[[], float]) -> None:
        self.directory = directory
        self._now = now

    def path(self, bootstrap_id: str) -> str:
        # The id was validated against BOOTSTRAP_ID_PATTERN: no "/" and no "..".
        return os.path.join(self.directory, f"{bootstrap_id}.json")

    def _ensure_dir(self) -> None:
        try:
            ensure_private_dir(self.directory)
        except OSError as e:
            raise VerbError(
                "STATE_DIR_ERROR", f"cannot create bootstrap dir: {e.strerror}"
            ) from None

    def write(self, bootstrap_id: str, record: dict[str, Any]) -> None:
        """Write ``record`` atomically with mode 0600."""
        self._ensure_dir()
        data = json.dumps(record, sort_keys=True).encode("utf-8")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.directory)
        except OSError as e:
            raise VerbError("STATE_DIR_ERROR", f"cannot write bundle: {e.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(bootstrap_id))
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise VerbError("STATE_DIR_ERROR", f"cannot write bundle: {e.strerror}") from None
            raise

    def read(self, bootstrap_id: str) -> dict[str, Any]:
        """The stored record; ``NOT_FOUND`` if there is none."""
        try:
            with open(self.path(bootstrap_id), encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            raise VerbError("NOT_FOUND", "bootstrap bundle not found") from None
        except (OSError, ValueError):
            log.failure("bootstrap bundle {id} is unreadable", id=bootstrap_id)
            raise VerbError("STATE_DIR_ERROR", "bootstrap bundle is unreadable") from None
        if not isinstance(record, dict) or not isinstance(record.get("bundle"), dict):
            raise VerbError("STATE_DIR_ERROR", "bootstrap bundle is unreadable")
        return record

    def prune(self) -> int:
        """Delete bundles expired more than PRUNE_AFTER seconds ago; return how many."""
        now = self._now()
        removed = 0
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        except OSError:
            log.failure("cannot list {dir}", dir=self.directory)
            return 0
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    expires = float(json.load(f)["expires"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable or being written: leave it alone
            if expires + PRUNE_AFTER <= now:
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError:
                    log.failure("cannot delete expired bundle {path}", path=path)
        return removed


def verbs(
    bootstrap: BootstrapSection,
    vpn: VPNSection,
    fwknop: FwknopSection,
    state_dir: str,
    clock: IReactorTime | None = None,
    hostname: Callable[[], str] = socket.gethostname,
) -> list[Verb]:
    """generate_bootstrap, get_bootstrap and revoke_bootstrap over ``state_dir/bootstrap``.

    ``clock`` (default: the wall clock) and ``hostname`` are injectable for tests.
    """
    if not os.path.isabs(state_dir):
        raise ValueError("state_dir must be an absolute path")
    max_ttl = int(bootstrap.max_ttl)
    if max_ttl < MIN_TTL:
        raise ValueError(f"[bootstrap] max_ttl must be at least {MIN_TTL} seconds")

    def now() -> float:
        return clock.seconds() if clock is not None else time.time()

    store = BootstrapStore(os.path.join(state_dir, "bootstrap"), now)

    def generate(args: dict[str, Any]) -> dict[str, Any]:
        store.prune()
        bootstrap_id = secrets.token_urlsafe(16)
        expires = now() + args["ttl_seconds"]
        server = bootstrap.public_host or hostname()
        bundle = {
            "bootstrap_id": bootstrap_id,
            "username": args["username"],
            "session_id": args["session_id"],
            "expires_at": rfc3339(expires),
            "spa": {"server": server, "port": bootstrap.spa_port, "open_ports": fwknop.open_ports},
            "vpn": {"server": server, "port": bootstrap.vpn_port, "hub": vpn.hub},
        }
        store.write(
            bootstrap_id,
            {"bundle": bundle, "expires": expires, "revoked": False, "revoked_at": None},
        )
        log.info(
            "bootstrap {id} generated for {user} (ttl {ttl}s)",
            id=bootstrap_id,
            user=args["username"],
            ttl=args["ttl_seconds"],
        )
        return bundle

    def get(args: dict[str, Any]) -> dict[str, Any]:
        store.prune()
        record = store.read(args["bootstrap_id"])
        if record.get("revoked"):
            raise VerbError("REVOKED", "bootstrap bundle was revoked")
        if float(record["expires"]) <= now():
            raise VerbError("EXPIRED", "bootstrap bundle has expired")
        return record["bundle"]

    def revoke(args: dict[str, Any]) -> dict[str, Any]:
        store.prune()
        bootstrap_id = args["bootstrap_id"]
        record = store.read(bootstrap_id)
        already = bool(record.get("revoked"))
        if not already:
            record["revoked"] = True
            record["revoked_at"] = rfc3339(now())
            store.write(bootstrap_id, record)
            log.info("bootstrap {id} revoked", id=bootstrap_id)
        return {"bootstrap_id": bootstrap_id, "revoked": True, "already_revoked": already}

    return [
        Verb(
            name="generate_bootstrap",
            params={
                "username": USERNAME_SPEC,
                "session_id": SESSION_ID_SPEC,
                "ttl_seconds": {
                    "type": "integer",
                    "min": MIN_TTL,
                    "max": max_ttl,
                    "description": "lifetime of the bundle in seconds",
                },
            },
            description="A short-lived connection bundle (SPA and VPN settings, expiry).",
            changes_state=True,
            timeout=10.0,
            call=generate,
            serialize="bootstrap",
        ),
        Verb(
            name="get_bootstrap",
            params={"bootstrap_id": BOOTSTRAP_ID_SPEC},
            description="A bundle made by generate_bootstrap, unless revoked or expired.",
            timeout=10.0,
            call=get,
            serialize="bootstrap",
        ),
        Verb(
            name="revoke_bootstrap",
            params={"bootstrap_id": BOOTSTRAP_ID_SPEC},
            description="Revoke a bundle: get_bootstrap refuses it from then on.",
            changes_state=True,
            timeout=10.0,
            call=revoke,
            serialize="bootstrap",
        ),
    ]
