"""Commands on the backend's database: ``token``, ``pki revoke`` and ``audit``.

Each runs one coroutine against the store (``viworks.cli.database``) and writes what it
changes to the audit log as ``cli:<login name>``. The backend's modules are imported by
the commands that need them (see ``viworks.cli.database``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from viworks.backend.model import OPERATOR
from viworks.cli.database import backend_config, cli_actor, run_async, store_call, with_store
from viworks.cli.errors import EXIT_API, EXIT_FAILED, EXIT_OK, CLIError
from viworks.cli.terminal import print_json, table

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from viworks.backend.auditchain import ChainBroken, Head
    from viworks.backend.model import AgentCertificate, AuditRecord, Token
    from viworks.backend.store import Store
    from viworks.config import BackendConfig

# -- tokens ---------------------------------------------------------------------------


async def store_token(
    database: str,
    name: str,
    reactor: IReactorTime,
    *,
    role: str = OPERATOR,
    verbs: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    expires_in: float | None = None,
) -> str:
    """Create a token in the backend's store and return the secret (stored hashed).

    The creation is written to the audit log (without the secret).
    """
    from viworks.backend.tokens import create_token

    async def create(store: Store) -> str:
        return await create_token(
            store,
            name,
            cli_actor(),
            reactor.seconds(),
            role=role,
            verbs=verbs,
            sites=sites,
            expires_in=expires_in,
        )

    return await with_store(database, reactor, create)


def cmd_token(args: argparse.Namespace) -> int:
    config = backend_config(args.config)
    if args.token_command == "list":
        return _token_list(config, args.json)
    if args.token_command == "revoke":
        return _token_revoke(config, args.name)
    return _token_create(config, args)


def _token_create(config: BackendConfig, args: argparse.Namespace) -> int:
    from viworks.backend.authz import parse_list
    from viworks.backend.store import DuplicateToken

    if args.expires_in is not None and not args.expires_in > 0:
        raise CLIError("--expires-in must be a number of seconds > 0")
    try:
        token = run_async(
            lambda reactor: store_token(
                config.backend.database,
                args.name,
                reactor,
                role=args.role,
                verbs=parse_list(args.verbs),
                sites=parse_list(args.sites),
                expires_in=args.expires_in,
            )
        )
    except DuplicateToken:
        raise CLIError(f"a token named {args.name!r} already exists") from None
    except Exception as e:
        raise CLIError(
            f"could not store the token in {config.backend.database}: {e}", EXIT_API
        ) from None
    print(f"token {args.name!r} ({args.role}) created; it is shown only once:", file=sys.stderr)
    print(token)
    return EXIT_OK


def _token_list(config: BackendConfig, as_json: bool) -> int:
    from viworks.backend.tokens import token_json

    async def fetch(store: Store) -> list[Token]:
        return await store.list_tokens()

    now = time.time()
    tokens = [token_json(token, now) for token in store_call(config, fetch)]
    if as_json:
        print_json({"tokens": tokens})
        return EXIT_OK
    rows = [
        [
            t["name"],
            t["role"],
            t["state"],
            ",".join(t["verbs"]) if t["verbs"] is not None else "*",
            ",".join(t["sites"]) if t["sites"] is not None else "*",
            t["expires_at"] or "-",
            t["created_at"] or "-",
        ]
        for t in tokens
    ]
    print(table(rows, ["NAME", "ROLE", "STATE", "VERBS", "SITES", "EXPIRES", "CREATED"]))
    return EXIT_OK


def _token_revoke(config: BackendConfig, name: str) -> int:
    from viworks.backend.tokens import revoke_token

    async def revoke(store: Store) -> bool:
        return await revoke_token(store, name, cli_actor(), time.time())

    if not store_call(config, revoke):
        raise CLIError(f"no active token named {name!r} (unknown or already revoked)")
    print(f"token {name!r} revoked")
    return EXIT_OK


# -- certificate revocation --------------------------------------------------------------


def cmd_pki_revoke(args: argparse.Namespace) -> int:
    """Revoke every certificate an agent id connected with, or one ``--serial``."""
    from viworks.backend.revocation import parse_serial

    if (args.agent_id is None) == (args.serial is None):
        raise CLIError("give an AGENT_ID or --serial HEX (one of them)")
    config = backend_config(args.config)
    if args.serial is not None:
        try:
            serial = parse_serial(args.serial)
        except ValueError as e:
            raise CLIError(str(e)) from None
        return _revoke_serial(config, serial, args.reason)
    return _revoke_agent(config, args.agent_id, args.reason)


def _revoke_agent(config: BackendConfig, agent_id: str, reason: str | None) -> int:
    from viworks.backend.revocation import revoke_agent_certificates
    from viworks.timeutil import rfc3339

    async def revoke(store: Store) -> list[tuple[AgentCertificate, bool]]:
        return await revoke_agent_certificates(store, agent_id, cli_actor(), time.time(), reason)

    done = store_call(config, revoke)
    if not done:
        raise CLIError(
            f"no certificate is known for agent {agent_id!r}: it has never connected"
            " to this backend (nothing to revoke; a known serial: --serial HEX)"
        )
    for cert, revoked in done:
        seen = (
            f" (seen {rfc3339(cert.first_seen)} to {rfc3339(cert.last_seen)})"
            if cert.first_seen is not None
            else ""
        )
        state = "revoked" if revoked else "was already revoked"
        print(f"certificate {cert.serial} of agent {agent_id!r}{seen} {state}")
    if any(revoked for _, revoked in done):
        print(
            f"a running backend drops sessions using them within seconds. Re-enrol the agent"
            f" with: viworks pki agent DIR {agent_id}"
        )
    return EXIT_OK


def _revoke_serial(config: BackendConfig, serial: str, reason: str | None) -> int:
    from viworks.backend.revocation import revoke_serial

    async def revoke(store: Store) -> tuple[str, bool]:
        return await revoke_serial(store, serial, cli_actor(), time.time(), reason)

    agent_id, done = store_call(config, revoke)
    whose = f"of agent {agent_id!r}" if agent_id else "(never seen by this backend)"
    if not done:
        print(f"certificate {serial} {whose} was already revoked")
        return EXIT_OK
    print(
        f"certificate {serial} {whose} revoked; a running backend drops a session using it"
        " within seconds"
    )
    return EXIT_OK


# -- audit log ---------------------------------------------------------------------------


async def _audit_rows(store: Store) -> AsyncIterator[AuditRecord]:
    """Every audit record in seq order, a page at a time."""
    after = 0
    while True:
        rows = await store.audit_records(after_seq=after, limit=1000)
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq


def cmd_audit(args: argparse.Namespace) -> int:
    from viworks.backend.auditchain import head_text, parse_head

    config = backend_config(args.config)
    if args.audit_command == "verify":
        try:
            expected = None if args.expect_head is None else parse_head(args.expect_head)
        except ValueError as e:
            raise CLIError(f"--expect-head: {e}") from None
        return _audit_verify(config, expected)
    if args.audit_command == "head":
        print(head_text(store_call(config, lambda store: store.audit_head())))
        return EXIT_OK
    return _audit_export(config, args.output)


def _audit_verify(config: BackendConfig, expected: Head | None = None) -> int:
    from viworks.backend.auditchain import ChainBroken, ChainVerifier, anchor_mismatch

    async def verify(store: Store) -> tuple[int, ChainBroken | None]:
        # Every record's hash -> seq, to tell a reordering from a removal.
        seen: dict[str, int] = {}
        verifier = ChainVerifier(seen.get)
        rows = [row async for row in _audit_rows(store)]
        seen.update({row.hash: row.seq for row in rows})
        try:
            for row in rows:
                verifier.feed(row)
        except ChainBroken as e:
            return verifier.count, e
        return verifier.count, None

    async def verify_against(store: Store) -> tuple[int, ChainBroken | None, str | None]:
        count, broken = await verify(store)
        if expected is None:
            return count, broken, None
        # The anchored record's hash is enough: verify has checked the chain up to it.
        rows = await store.audit_records(after_seq=expected[0] - 1, limit=1)
        found = (rows[0].seq, rows[0].hash) if rows else None
        return count, broken, anchor_mismatch(expected, found, await store.audit_head())

    count, broken, mismatch = store_call(config, verify_against)
    if broken is not None:
        print(f"audit log BROKEN at record {broken.seq}: {broken.message}")
        print(f"({count} records before it verified)", file=sys.stderr)
    if mismatch is not None:
        print(mismatch)
    if broken is not None or mismatch is not None:
        return EXIT_FAILED
    suffix = "" if expected is None else f"; record {expected[0]} is the expected one"
    print(f"audit log intact: {count} records{suffix}")
    return EXIT_OK


def _audit_export(config: BackendConfig, output: str | None) -> int:
    from viworks.backend.audit import export_record

    async def export(store: Store) -> list[AuditRecord]:
        return [row async for row in _audit_rows(store)]

    rows = store_call(config, export)
    out = sys.stdout if output in (None, "-") else open(output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for row in rows:
            line = json.dumps(export_record(row), sort_keys=True, separators=(",", ":"))
            out.write(line + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if out is not sys.stdout:
        print(f"{len(rows)} audit records written to {output}", file=sys.stderr)
    return EXIT_OK
