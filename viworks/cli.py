"""The ``viworks`` command: PKI, tokens, the local dev stack and an API client.

Exit codes (scripts rely on them):
  0  success (for ``run``: the command succeeded)
  1  the command ran and did not succeed (failed, timed_out, rejected, ...)
  2  usage or configuration error
  3  the API could not be reached or refused the request
  4  ``run``: the command was still unfinished when the wait ran out
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from typing import Any

from viworks import __version__, pki

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_PENDING = 0, 1, 2, 3, 4
FINAL = {"succeeded", "failed", "timed_out", "rejected", "cancelled", "expired", "lost"}


class CLIError(Exception):
    """A problem to report in one line, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- PKI ------------------------------------------------------------------------------


def cmd_pki(args: argparse.Namespace) -> int:
    if args.pki_command == "init":
        pki.init_ca(args.dir)
        print(f"CA written: {os.path.join(args.dir, 'ca.crt')} (key: ca.key, 0600)")
    elif args.pki_command == "server":
        cert, key = pki.issue_server(args.dir, args.name, args.ip or [])
        print(f"server certificate: {cert}\nserver key: {key}\npin: {pki.spki_pin(cert)}")
    elif args.pki_command == "agent":
        cert, key = pki.issue_agent(args.dir, args.agent_id)
        print(f"agent certificate: {cert}\nagent key: {key}")
    else:
        print(pki.spki_pin(args.cert))
    return EXIT_OK


# -- tokens ---------------------------------------------------------------------------


def new_token() -> str:
    return "vw_" + secrets.token_urlsafe(32)


async def store_token(database: str, name: str, reactor: Any) -> str:
    """Create a token in the backend's store and return the secret (stored hashed)."""
    from viworks.backend.api import hash_token
    from viworks.backend.store import open_store

    store = open_store(database, reactor=reactor)
    await store.open()
    try:
        token = new_token()
        await store.create_token(name, hash_token(token), reactor.seconds())
        return token
    finally:
        await store.close()


def run_async(fn: Any) -> Any:
    """Run ``fn(reactor)`` (a coroutine function) to completion on the reactor; return its value."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def go() -> None:
        d = Deferred.fromCoroutine(fn(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def cmd_token(args: argparse.Namespace) -> int:
    from viworks.backend.store import DuplicateToken
    from viworks.config import ConfigError, load_backend_config

    try:
        config = load_backend_config(args.config)
    except ConfigError as e:
        raise CLIError(f"configuration error: {e}") from None
    try:
        token = run_async(lambda reactor: store_token(config.backend.database, args.name, reactor))
    except DuplicateToken:
        raise CLIError(f"a token named {args.name!r} already exists") from None
    except Exception as e:
        raise CLIError(
            f"could not store the token in {config.backend.database}: {e}", EXIT_API
        ) from None
    print(f"token {args.name!r} created; it is shown only once:", file=sys.stderr)
    print(token)
    return EXIT_OK


# -- the API client -------------------------------------------------------------------


class ApiClient:
    """A small synchronous JSON client for the backend's HTTP API."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: Any = None, timeout: float = 330) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "User-Agent": f"viworks-cli/{__version__}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise CLIError(_api_error_text(e), EXIT_API) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CLIError(f"cannot reach the API at {self.url}: {reason}", EXIT_API) from None


def _api_error_text(e: Any) -> str:
    try:
        error = json.loads(e.read())["error"]
        field = f" (field: {error['field']})" if error.get("field") else ""
        return f"API error {e.code} {error['code']}: {error['message']}{field}"
    except (ValueError, KeyError, TypeError):
        return f"API error {e.code}: {e.reason}"


def _client(args: argparse.Namespace) -> ApiClient:
    url = args.url or os.environ.get("VIWORKS_URL") or "http://127.0.0.1:8080"
    token = args.token or os.environ.get("VIWORKS_TOKEN")
    if not token:
        raise CLIError("no API token: pass --token or set VIWORKS_TOKEN")
    return ApiClient(url, token)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip()
        for line in lines
    )


def cmd_agents(args: argparse.Namespace) -> int:
    body = _client(args).request("GET", "/api/v1/agents")
    if args.json:
        print(json.dumps(body, indent=2))
        return EXIT_OK
    rows = [
        [a["agent_id"], a["status"], a["site"], a["version"], a["hostname"], a["last_seen"] or "-"]
        for a in body["agents"]
    ]
    print(_table(rows, ["AGENT", "STATUS", "SITE", "VERSION", "HOSTNAME", "LAST SEEN"]))
    return EXIT_OK


def coerce_args(pairs: list[str], params: dict) -> dict:
    """``key=value`` words -> args typed by the verb's schema (integers stay integers)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"arguments are key=value, got {pair!r}")
        kind = params.get(key, {}).get("type")
        try:
            if kind == "integer":
                args[key] = int(value)
            elif kind == "number":
                args[key] = float(value)
            elif kind == "boolean":
                args[key] = {"true": True, "false": False}[value.lower()]
            else:
                args[key] = value
        except (ValueError, KeyError):
            raise CLIError(f"{key} must be a {kind}, got {value!r}") from None
    return args


def cmd_run(args: argparse.Namespace) -> int:
    client = _client(args)
    verbs = client.request("GET", f"/api/v1/agents/{args.agent}/verbs")["verbs"]
    params = verbs.get(args.verb, {}).get("params", {})
    body: dict[str, Any] = {"verb": args.verb, "args": coerce_args(args.args, params)}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    command = client.request(
        "POST", f"/api/v1/agents/{args.agent}/commands?wait={args.wait:g}", body
    )
    if args.json:
        print(json.dumps(command, indent=2))
    else:
        _print_command(command)
    if command["status"] not in FINAL:
        return EXIT_PENDING
    return EXIT_OK if command["status"] == "succeeded" else EXIT_FAILED


def _print_command(command: dict) -> None:
    print(f"command {command['command_id']}: {command['verb']} on {command['agent_id']}")
    print(
        f"status: {command['status']}"
        + (f" (exit code {command['exit_code']})" if command["exit_code"] is not None else "")
    )
    if command.get("error"):
        print(f"error: {command['error']['code']}: {command['error']['message']}")
    if command.get("result") is not None:
        print("result:")
        print(json.dumps(command["result"], indent=2))
    for stream in ("stdout", "stderr"):
        if command.get(stream):
            marker = " (truncated)" if command.get(f"{stream}_truncated") else ""
            print(f"--- {stream}{marker}\n{command[stream].rstrip()}")


# -- the local stack ------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from viworks.dev import run_dev

    return run_dev(
        args.dir, http_port=args.http_port, ws_port=args.ws_port, api_port=args.agent_port
    )


# -- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viworks", description="ViWorkS control plane")
    parser.add_argument("--version", action="version", version=f"viworks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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
    x = psub.add_parser("pin", help="print a certificate's SPKI pin (sha256/<base64>)")
    x.add_argument("cert")
    p.set_defaults(func=cmd_pki)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True)
    x = tsub.add_parser("create", help="create a token; prints it once, on the last line")
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x.add_argument("--name", required=True)
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("dev", help="run a local backend and gateway with a throw-away PKI")
    p.add_argument("--dir", default=".dev", help="where the PKI, configs and data go")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--ws-port", type=int, default=8081)
    p.add_argument("--agent-port", type=int, default=8443)
    p.set_defaults(func=cmd_dev)

    def api_options(x: argparse.ArgumentParser) -> None:
        x.add_argument("--url", help="the API URL (default $VIWORKS_URL or http://127.0.0.1:8080)")
        x.add_argument("--token", help="the API token (default $VIWORKS_TOKEN)")
        x.add_argument("--json", action="store_true", help="print the API's JSON")

    p = sub.add_parser("agents", help="list the agents")
    api_options(p)
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser("run", help="run a verb on an agent and print the result")
    p.add_argument("agent")
    p.add_argument("verb")
    p.add_argument("args", nargs="*", metavar="key=value")
    p.add_argument("--timeout", type=float, help="the verb's execution timeout in seconds")
    p.add_argument("--wait", type=float, default=60.0, help="how long to wait for the result")
    api_options(p)
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, pki.PKIError) as e:
        print(f"viworks: {e}", file=sys.stderr)
        return getattr(e, "code", EXIT_USAGE)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
