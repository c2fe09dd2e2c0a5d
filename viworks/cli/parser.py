"""The ``viworks`` command line: every command, argument and help text, and ``main``.

Each command's function (``func``) lives in the module of its kind: the PKI's files
(``pki``), the backend's database (``admin``), the API (``fleet``, ``run``, ``jobs``),
``completion`` and ``dev``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeAlias

from viworks import __version__
from viworks.backend.model import OPERATOR, TOKEN_ROLES
from viworks.cli.admin import cmd_audit, cmd_pki_revoke, cmd_token
from viworks.cli.completion import cmd_completion
from viworks.cli.dev import cmd_dev
from viworks.cli.errors import EXIT_INTERRUPTED, EXIT_USAGE, CLIError
from viworks.cli.fleet import cmd_agents, cmd_commands, cmd_telemetry, cmd_verbs
from viworks.cli.jobs import cmd_job
from viworks.cli.pki import cmd_pki
from viworks.cli.run import cmd_run
from viworks.pki import PKIError

Command = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _config_option(x: argparse.ArgumentParser) -> None:
    x.add_argument("--config", required=True, help="the backend's configuration file")


def _api_options(x: argparse.ArgumentParser) -> None:
    x.add_argument("--url", help="the API URL (default $VIWORKS_URL or http://127.0.0.1:8080)")
    x.add_argument("--token", help="the API token (default $VIWORKS_TOKEN)")
    x.add_argument("--json", action="store_true", help="print the API's JSON")


def _add_pki(sub: Subparsers) -> None:
    p = sub.add_parser("pki", help="certificates for the backend and the agents")
    psub = p.add_subparsers(dest="pki_command", required=True)
    x = psub.add_parser("init", help="create a CA in DIR (ca.crt, ca.key)")
    x.add_argument("dir")
    x = psub.add_parser("server", help="issue the backend's certificate (server.crt, server.key)")
    x.add_argument("dir")
    x.add_argument("name", help="the DNS name agents use to reach the backend")
    x.add_argument("--ip", action="append", help="an IP address SAN (repeatable)")
    x = psub.add_parser("agent", help="issue an agent certificate (agents/AGENT_ID.crt, .key)")
    x.add_argument("dir")
    x.add_argument("agent_id")
    x = psub.add_parser(
        "signing-key", help="create the command-signing key (signing.key, signing.pub)"
    )
    x.add_argument("dir")
    x = psub.add_parser("pin", help="print a certificate's SPKI pin (sha256/<base64>)")
    x.add_argument("cert")
    x = psub.add_parser(
        "revoke",
        help="revoke every certificate an agent id has connected with, or one --serial",
    )
    _config_option(x)
    x.add_argument("--reason", help="why (kept in the store and the audit log)")
    x.add_argument(
        "--serial", help="revoke only this certificate (hex serial, e.g. from openssl x509 -serial)"
    )
    x.add_argument("agent_id", nargs="?", help="revoke every certificate this agent id used")
    x.set_defaults(func=cmd_pki_revoke)
    p.set_defaults(func=cmd_pki)


def _add_token(sub: Subparsers) -> None:
    p = sub.add_parser("token", help="API tokens (roles: viewer, operator, admin)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    x = tsub.add_parser("create", help="create a token; prints it once, on the last line")
    _config_option(x)
    x.add_argument("--name", required=True)
    x.add_argument(
        "--role",
        choices=TOKEN_ROLES,
        default=OPERATOR,
        help="viewer: read; operator (default): also run verbs and cancel; admin: everything",
    )
    x.add_argument("--verbs", help="operator: only these verbs (comma-separated)")
    x.add_argument("--sites", help="operator: only agents of these sites (comma-separated)")
    x.add_argument("--expires-in", type=float, metavar="SECONDS", help="valid this long")
    x = tsub.add_parser("list", help="list tokens (names, roles, limits; never secrets)")
    _config_option(x)
    x.add_argument("--json", action="store_true", help="print JSON")
    x = tsub.add_parser("revoke", help="revoke a token (at once, for every backend)")
    _config_option(x)
    x.add_argument("name")
    p.set_defaults(func=cmd_token)


def _add_audit(sub: Subparsers) -> None:
    p = sub.add_parser("audit", help="the tamper-evident audit log")
    asub = p.add_subparsers(dest="audit_command", required=True)
    x = asub.add_parser("verify", help="check the hash chain: exit 0 intact, 1 broken")
    _config_option(x)
    x.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="a head printed by 'audit head' earlier: exit 1 unless the log still holds"
        " that record with that hash (finds records removed from the end)",
    )
    x = asub.add_parser("head", help="print the last record as SEQ:HASH, to keep elsewhere")
    _config_option(x)
    x = asub.add_parser("export", help="write the records as JSON lines")
    _config_option(x)
    x.add_argument("--output", help="the file to write (default: stdout)")
    p.set_defaults(func=cmd_audit)


def _add_dev(sub: Subparsers) -> None:
    p = sub.add_parser("dev", help="run a local backend and gateway with a throw-away PKI")
    p.add_argument("--dir", default=".dev", help="where the PKI, configs and data go")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--ws-port", type=int, default=8081)
    p.add_argument("--agent-port", type=int, default=8443)
    p.set_defaults(func=cmd_dev)


def _add_fleet(sub: Subparsers) -> None:
    p = sub.add_parser("agents", help="list the agents (or what a selector matches)")
    p.add_argument("--selector", help="only agents matching, e.g. site=prod,role=edge|core")
    p.add_argument("--watch", action="store_true", help="redraw every --interval s (Ctrl-C quits)")
    p.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    _api_options(p)
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser(
        "verbs", help="an agent's verbs and their parameters (type, required, default, limits)"
    )
    p.add_argument("agent", help="the agent's id")
    p.add_argument("verb", nargs="?", help="only this verb")
    _api_options(p)
    p.set_defaults(func=cmd_verbs)


def _add_run(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="run a verb on an agent, streaming its output",
        epilog="The verbs an agent offers and their parameters: viworks verbs AGENT",
    )
    p.add_argument("agent", help="the agent's id (viworks agents)")
    p.add_argument("verb", help="the verb to run (viworks verbs AGENT)")
    p.add_argument(
        "args",
        nargs="*",
        metavar="key=value",
        help="the verb's arguments, typed by its schema (count=3 is an integer for an"
        " integer parameter); key:=JSON passes a JSON value as is",
    )
    p.add_argument("--timeout", type=float, help="the verb's execution timeout in seconds")
    p.add_argument(
        "--wait", type=float, default=60.0, help="seconds to follow it (default 60; inf: no limit)"
    )
    _api_options(p)
    p.set_defaults(func=cmd_run)


def _add_job(sub: Subparsers) -> None:
    p = sub.add_parser("job", help="one verb on every agent a selector matches, safely")
    jsub = p.add_subparsers(dest="job_command", required=True)
    x = jsub.add_parser("start", help="start a job and show its progress")
    x.add_argument("verb")
    x.add_argument("args", nargs="*", metavar="key=value")
    x.add_argument("--selector", required=True, help="the target agents, e.g. site=prod")
    x.add_argument("--concurrency", default="1", help="agents at a time: N or N%% (default 1)")
    x.add_argument(
        "--max-errors", help="stop starting agents after N (or N%%) failures (default 1)"
    )
    x.add_argument("--canary", type=int, help="run on N agents first, then pause")
    x.add_argument(
        "--canary-auto",
        action="store_true",
        help="after the canary, continue by itself if every canary agent succeeded",
    )
    x.add_argument("--ttl", type=float, help="seconds offline targets may wait (then expired)")
    x.add_argument("--timeout", type=float, help="each command's execution timeout in seconds")
    x.add_argument(
        "--detach",
        action="store_true",
        help="print the job id and return at once (exit 4: the job goes on)",
    )
    _api_options(x)
    for action, text in (
        ("show", "a job's status, counts and commands"),
        ("pause", "start no new agents until resumed"),
        ("resume", "continue a paused job"),
        ("cancel", "cancel the job: start nothing more"),
    ):
        x = jsub.add_parser(action, help=text)
        x.add_argument("job_id")
        _api_options(x)
    p.set_defaults(func=cmd_job)


def _add_history(sub: Subparsers) -> None:
    p = sub.add_parser("commands", help="list recent commands, newest first")
    p.add_argument("--agent", help="only this agent's")
    p.add_argument("--status", help="only commands in this status")
    p.add_argument("--limit", type=int, help="at most N (default 100)")
    _api_options(p)
    p.set_defaults(func=cmd_commands)

    p = sub.add_parser("telemetry", help="an agent's latest telemetry")
    p.add_argument("agent")
    _api_options(p)
    p.set_defaults(func=cmd_telemetry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viworks", description="ViWorkS control plane")
    parser.add_argument("--version", action="version", version=f"viworks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # In this order: `viworks --help` lists the commands so.
    _add_pki(sub)
    _add_token(sub)
    _add_audit(sub)
    _add_dev(sub)
    _add_fleet(sub)
    _add_run(sub)
    _add_job(sub)
    _add_history(sub)

    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh"])

    def completion(args: argparse.Namespace) -> int:
        return cmd_completion(args, parser)

    p.set_defaults(func=completion)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script ``viworks``: run the command; its exit code (docs/cli.md)."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except (CLIError, PKIError) as e:
        print(f"viworks: {e}", file=sys.stderr)
        return e.code if isinstance(e, CLIError) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
