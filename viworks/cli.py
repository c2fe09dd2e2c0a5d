"""The ``viworks`` command: PKI, tokens, the local dev stack and an API client.

API commands: ``agents [--selector S] [--watch]``, ``verbs AGENT [VERB]``, ``run AGENT
VERB k=v ...`` (output streamed live), ``job start|show|pause|resume|cancel``,
``commands``, ``telemetry AGENT``;
human tables by default, ``--json`` prints the API's JSON. ``completion bash|zsh`` prints
a shell completion script generated from the argument parser.

Exit codes (scripts rely on them):
  0  success (``run``: the command succeeded; ``job start``: the job completed and every
     command succeeded; ``agents --watch``: ended with Ctrl-C)
  1  the command ran and did not succeed (failed, timed_out, rejected, ...); ``job
     start``: the job was stopped or cancelled, or a command did not succeed
  2  usage or configuration error
  3  the API could not be reached or refused the request
  4  still unfinished: ``run`` when --wait ran out (or on Ctrl-C), ``job start`` when
     detached from a job that goes on (``--detach``, or Ctrl-C and detach)
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from viworks import __version__, pki

if TYPE_CHECKING:  # the backend's modules are imported by the commands that need them
    from viworks.backend.model import AgentCertificate, AuditRecord, Token
    from viworks.backend.store import Store

_T = TypeVar("_T")

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
    elif args.pki_command == "signing-key":
        from viworks import signing

        key, pub = pki.make_signing_key(args.dir)
        key_id = signing.key_id(signing.load_public_key(pub))
        print(f"signing key: {key} (0600; backend.toml [signing] key)")
        print(f"public key: {pub} (agent.toml [signing] public_keys)\nkey id: {key_id}")
    else:
        print(pki.spki_pin(args.cert))
    return EXIT_OK


# -- tokens ---------------------------------------------------------------------------


async def store_token(
    database: str,
    name: str,
    reactor: Any,
    *,
    role: str = "operator",
    verbs: list[str] | None = None,
    sites: list[str] | None = None,
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


def cli_actor() -> str:
    """Who acts from the command line, for the audit log: ``cli:<login name>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (containers without a passwd entry)
        return f"cli:uid-{os.getuid()}"


async def with_store(database: str, reactor: Any, fn: Callable[[Store], Awaitable[_T]]) -> _T:
    """Open the backend's store (migrating it if needed), ``await fn(store)``, close it."""
    from viworks.backend.store import open_store

    store = open_store(database, reactor=reactor)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _backend_config(path: str) -> Any:
    from viworks.config import ConfigError, load_backend_config

    try:
        # The store is all these commands need: TLS files may live elsewhere.
        return load_backend_config(path, check_files=False)
    except ConfigError as e:
        raise CLIError(f"configuration error: {e}") from None


def _store_call(config: Any, fn: Callable[[Store], Awaitable[_T]]) -> _T:
    """``fn(store)`` against the configured database; store failures exit 3."""
    from viworks.backend.store import StoreError

    try:
        return run_async(lambda reactor: with_store(config.backend.database, reactor, fn))
    except (CLIError, StoreError):
        raise
    except Exception as e:
        raise CLIError(f"database {config.backend.database}: {e}", EXIT_API) from None


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

    config = _backend_config(args.config)
    if args.token_command == "list":
        return _token_list(config, args)
    if args.token_command == "revoke":
        return _token_revoke(config, args.name)
    from viworks.backend.authz import parse_list

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


def _token_list(config: Any, args: argparse.Namespace) -> int:
    from viworks.backend.tokens import token_json

    async def fetch(store: Store) -> list[Token]:
        return await store.list_tokens()

    now = time.time()
    tokens = [token_json(token, now) for token in _store_call(config, fetch)]
    if args.json:
        _print_json({"tokens": tokens})
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
    print(_table(rows, ["NAME", "ROLE", "STATE", "VERBS", "SITES", "EXPIRES", "CREATED"]))
    return EXIT_OK


def _token_revoke(config: Any, name: str) -> int:
    from viworks.backend.tokens import revoke_token

    async def revoke(store: Store) -> bool:
        return await revoke_token(store, name, cli_actor(), time.time())

    if not _store_call(config, revoke):
        raise CLIError(f"no active token named {name!r} (unknown or already revoked)")
    print(f"token {name!r} revoked")
    return EXIT_OK


# -- certificate revocation --------------------------------------------------------------


def cmd_pki_revoke(args: argparse.Namespace) -> int:
    """Revoke every certificate an agent id connected with, or one ``--serial``."""
    from viworks.backend.revocation import parse_serial

    if (args.agent_id is None) == (args.serial is None):
        raise CLIError("give an AGENT_ID or --serial HEX (one of them)")
    config = _backend_config(args.config)
    if args.serial is not None:
        try:
            serial = parse_serial(args.serial)
        except ValueError as e:
            raise CLIError(str(e)) from None
        return _revoke_serial(config, serial, args.reason)
    return _revoke_agent(config, args.agent_id, args.reason)


def _revoke_agent(config: Any, agent_id: str, reason: str | None) -> int:
    from viworks.backend.revocation import revoke_agent_certificates
    from viworks.timeutil import rfc3339

    async def revoke(store: Store) -> list[tuple[AgentCertificate, bool]]:
        return await revoke_agent_certificates(store, agent_id, cli_actor(), time.time(), reason)

    done = _store_call(config, revoke)
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


def _revoke_serial(config: Any, serial: str, reason: str | None) -> int:
    from viworks.backend.revocation import revoke_serial

    async def revoke(store: Store) -> tuple[str, bool]:
        return await revoke_serial(store, serial, cli_actor(), time.time(), reason)

    agent_id, done = _store_call(config, revoke)
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


def _audit_rows(store: Store) -> AsyncIterator[AuditRecord]:
    """Every audit record in seq order, a page at a time (async generator)."""

    async def pages() -> AsyncIterator[AuditRecord]:
        after = 0
        while True:
            rows = await store.audit_records(after_seq=after, limit=1000)
            if not rows:
                return
            for row in rows:
                yield row
            after = rows[-1].seq

    return pages()


def cmd_audit(args: argparse.Namespace) -> int:
    from viworks.backend.auditchain import head_text, parse_head

    config = _backend_config(args.config)
    if args.audit_command == "verify":
        try:
            expected = None if args.expect_head is None else parse_head(args.expect_head)
        except ValueError as e:
            raise CLIError(f"--expect-head: {e}") from None
        return _audit_verify(config, expected)
    if args.audit_command == "head":
        print(head_text(_store_call(config, lambda store: store.audit_head())))
        return EXIT_OK
    return _audit_export(config, args.output)


def _audit_verify(config: Any, expected: tuple[int, str] | None = None) -> int:
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

    count, broken, mismatch = _store_call(config, verify_against)
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


def _audit_export(config: Any, output: str | None) -> int:
    from viworks.backend.audit import export_record

    async def export(store: Store) -> list[AuditRecord]:
        return [row async for row in _audit_rows(store)]

    rows = _store_call(config, export)
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

    def stream(self, path: str, last_event_id: str | None = None, timeout: float = 60.0) -> Any:
        """Read a Server-Sent Events stream: yields ``SSE`` messages until the server ends it.

        ``timeout`` bounds each read; the backend sends a keep-alive every 15 s.
        HTTP errors raise ``CLIError`` with ``http`` set (not worth retrying).
        """
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "text/event-stream",
            "User-Agent": f"viworks-cli/{__version__}",
        }
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            error = CLIError(_api_error_text(e), EXIT_API)
            error.http = e.code
            raise error from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CLIError(f"cannot reach the API at {self.url}: {reason}", EXIT_API) from None
        with response:
            try:
                yield from parse_sse(response)
            except OSError as e:
                raise CLIError(f"the event stream from {self.url} broke: {e}", EXIT_API) from None


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


def _path(*parts: str, **query: Any) -> str:
    """An API path with each part URL-quoted and the query's non-None values encoded."""
    path = "/".join(urllib.parse.quote(str(p), safe="") for p in parts)
    pairs = {k: v for k, v in query.items() if v is not None}
    return "/api/v1/" + path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2), flush=True)


# -- Server-Sent Events ----------------------------------------------------------------


@dataclass
class SSE:
    """One Server-Sent Events message (``data`` parsed as JSON when it is JSON)."""

    event: str
    data: Any
    id: str | None = None


def parse_sse(lines: Any) -> Any:
    """SSE messages from an iterable of byte lines (comments and ``retry:`` skipped)."""
    event, data, event_id = "message", [], None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = text
                yield SSE(event, payload, event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


_END = object()


class EventFeed:
    """Reads an SSE stream in a daemon thread into a queue, resuming with Last-Event-ID.

    The stream is opened again after a broken connection (a few times, backing off);
    it is over when ``final_event`` arrives (or, without one, never). HTTP errors end it.
    """

    def __init__(
        self, client: ApiClient, path: str, final_event: str | None = None, retries: int = 5
    ) -> None:
        self.client = client
        self.path = path
        self.final_event = final_event
        self.retries = retries
        self.last_id: str | None = None
        self.error: CLIError | None = None
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="viworks-events", daemon=True).start()

    def _run(self) -> None:
        failures = 0
        while True:
            try:
                for message in self.client.stream(self.path, self.last_id):
                    failures = 0
                    if message.id is not None:
                        self.last_id = message.id
                    self.queue.put(message)
                    if message.event == self.final_event:
                        self.queue.put(_END)
                        return
            except CLIError as e:
                failures += 1
                if getattr(e, "http", None) is not None or failures > self.retries:
                    self.error = e
                    self.queue.put(_END)
                    return
            _sleep(min(0.5 * 2**failures, 5.0))

    def get(self, timeout: float) -> SSE | None:
        """The next message, or None after ``timeout`` s; raises the error that ended it."""
        try:
            item = self.queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is _END:
            self.queue.put(_END)  # stays over
            if self.error is not None:
                raise self.error
            raise EOFError
        return item


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def _ask(prompt: str) -> str:
    return input(prompt)


# -- agents, commands, telemetry --------------------------------------------------------


def _labels(labels: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "-"


def _agents_table(body: dict) -> str:
    rows = [
        [
            a["agent_id"],
            a["status"],
            a.get("site") or "-",
            _labels(a.get("labels")),
            a.get("version") or "-",
            a.get("hostname") or "-",
            a.get("last_seen") or "-",
        ]
        for a in body["agents"]
    ]
    headers = ["AGENT", "STATUS", "SITE", "LABELS", "VERSION", "HOSTNAME", "LAST SEEN"]
    return _table(rows, headers)


def cmd_agents(args: argparse.Namespace) -> int:
    client = _client(args)
    path = _path("agents", selector=args.selector)
    if not args.watch:
        body = client.request("GET", path)
        if args.json:
            _print_json(body)
        else:
            print(_agents_table(body))
        return EXIT_OK
    tty = sys.stdout.isatty()
    try:
        while True:
            body = client.request("GET", path)
            if args.json:
                print(json.dumps(body, separators=(",", ":")), flush=True)  # one line a refresh
            else:
                online = sum(a["status"] == "online" for a in body["agents"])
                head = f"{time.strftime('%H:%M:%S')}  {online}/{len(body['agents'])} online"
                head += f"  (selector {args.selector})" if args.selector else ""
                clear = "\033[H\033[2J" if tty else ""
                print(f"{clear}{head}  - Ctrl-C to quit\n{_agents_table(body)}\n", flush=True)
            _sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_commands(args: argparse.Namespace) -> int:
    body = _client(args).request(
        "GET", _path("commands", agent_id=args.agent, status=args.status, limit=args.limit)
    )
    if args.json:
        _print_json(body)
        return EXIT_OK
    rows = [
        [
            c["command_id"],
            c["agent_id"],
            c["verb"],
            c["status"],
            str(code) if (code := process_exit(c)) is not None else "-",
            c.get("created_at") or "-",
            (c.get("error") or {}).get("code") or "-",
        ]
        for c in body["commands"]
    ]
    print(_table(rows, ["COMMAND", "AGENT", "VERB", "STATUS", "EXIT", "CREATED", "ERROR"]))
    return EXIT_OK


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for key in sorted(value):
            out += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, item in enumerate(value):
            out += _flatten(item, f"{prefix}[{i}]")
        return out
    return [(prefix, value)]


def cmd_telemetry(args: argparse.Namespace) -> int:
    body = _client(args).request("GET", _path("agents", args.agent, "telemetry"))
    if args.json:
        _print_json(body)
        return EXIT_OK
    print(f"agent {body['agent_id']}, reported at {body.get('at') or '-'}")
    rows = [
        [key, v if isinstance(v, str) else json.dumps(v)]
        for key, v in _flatten(body.get("metrics"))
    ]
    print(_table(rows, ["METRIC", "VALUE"]))
    return EXIT_OK


# -- verbs: what an agent offers, with each parameter's schema ----------------------------


def _bounds(low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}"
    return f">= {low}" if low is not None else f"<= {high}"


def param_constraints(spec: dict) -> str:
    """A parameter's limits in words: lengths, pattern, range, values; secrets marked."""
    parts = []
    if "min_length" in spec or "max_length" in spec:
        parts.append("length " + _bounds(spec.get("min_length"), spec.get("max_length")))
    if "pattern" in spec:
        parts.append(f"pattern {spec['pattern']}")
    if "min" in spec or "max" in spec:
        parts.append(_bounds(spec.get("min"), spec.get("max")))
    if spec.get("type") == "enum":
        parts.append("one of " + ", ".join(json.dumps(v) for v in spec.get("values") or []))
    if spec.get("type") == "ip":
        parts.append("an IPv4 or IPv6 address")
    if spec.get("type") == "secret":
        parts.append("SECRET: never stored, logged or shown")
    return "; ".join(parts) or "-"


def _verb_text(name: str, verb: dict) -> str:
    effect = "changes state" if verb.get("changes_state") else "read-only"
    lines = [f"{name} ({effect})" + (f": {verb['description']}" if verb.get("description") else "")]
    params = verb.get("params") or {}
    rows = [
        [
            param,
            spec.get("type", "?"),
            "yes" if spec.get("required", True) and "default" not in spec else "no",
            json.dumps(spec["default"]) if "default" in spec else "-",
            param_constraints(spec),
            spec.get("description") or "",
        ]
        for param, spec in sorted(params.items())
    ]
    headers = ["PARAM", "TYPE", "REQUIRED", "DEFAULT", "CONSTRAINTS", "DESCRIPTION"]
    table = _table(rows, headers) if rows else "(no parameters)"
    lines += ["  " + line for line in table.splitlines()]
    return "\n".join(lines)


def cmd_verbs(args: argparse.Namespace) -> int:
    body = _client(args).request("GET", _path("agents", args.agent, "verbs"))
    verbs = body.get("verbs") or {}
    if args.verb is not None:
        if args.verb not in verbs:
            offered = ", ".join(sorted(verbs)) or "none"
            raise CLIError(f"agent {args.agent!r} does not offer verb {args.verb!r} ({offered})")
        body = {**body, "verbs": {args.verb: verbs[args.verb]}}
        verbs = body["verbs"]
    if args.json:
        _print_json(body)
        return EXIT_OK
    count = f"{len(verbs)} verb" + ("" if len(verbs) == 1 else "s")
    print(f"agent {body.get('agent_id', args.agent)}: {count}")
    print("\n\n".join(_verb_text(name, verbs[name]) for name in sorted(verbs)))
    return EXIT_OK


# -- run: one verb on one agent, output streamed live -----------------------------------


def coerce_args(pairs: list[str], params: dict) -> dict:
    """``key=value`` words -> args typed by the verb's schema (integers stay integers).

    ``key:=JSON`` passes a JSON value as it is (``count:=3``, ``tags:='["a"]'``).
    """
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"arguments are key=value, got {pair!r}")
        if key.endswith(":"):
            key = key[:-1]
            try:
                args[key] = json.loads(value)
            except ValueError:
                raise CLIError(f"{key}:= needs a JSON value, got {value!r}") from None
            continue
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
    verbs = client.request("GET", _path("agents", args.agent, "verbs"))["verbs"]
    params = verbs.get(args.verb, {}).get("params", {})
    body: dict[str, Any] = {"verb": args.verb, "args": coerce_args(args.args, params)}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    command = client.request("POST", _path("agents", args.agent, "commands"), body)
    if not args.json:
        print(
            f"command {command['command_id']}: {command['verb']} on {command['agent_id']}"
            f" ({command['status']})",
            file=sys.stderr,
            flush=True,
        )
    final, streamed = follow_command(client, command, args.wait, echo=not args.json)
    if final is None:
        command = client.request("GET", _path("commands", command["command_id"]))
        if args.json:
            _print_json(command)
        print(
            f"viworks: command {command['command_id']} is still {command['status']}; "
            f"see GET /api/v1/commands/{command['command_id']}",
            file=sys.stderr,
        )
        return EXIT_PENDING
    if args.json:
        _print_json(final)
    else:
        _print_command(final, streamed)
    return EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED


def follow_command(
    client: ApiClient, command: dict, wait: float, echo: bool = True
) -> tuple[dict | None, set[str]]:
    """Follow a command's output stream: print chunks as they come (``echo``).

    Returns (the final command, the streams printed), or (None, ...) if it is not final
    within ``wait`` seconds or on Ctrl-C.
    """
    streamed: set[str] = set()
    feed = EventFeed(
        client, _path("commands", command["command_id"], "output", follow=1), "command.status"
    )
    deadline = time.monotonic() + wait
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, streamed
            try:
                message = feed.get(min(remaining, 1.0))
            except EOFError:
                return None, streamed
            if message is None:
                continue
            if message.event == "command.output":
                chunk = message.data
                streamed.add(chunk["stream"])
                if echo:
                    out = sys.stderr if chunk["stream"] == "stderr" else sys.stdout
                    out.write(chunk["data"])
                    out.flush()
            elif message.event == "command.status":
                return message.data, streamed
    except KeyboardInterrupt:
        return None, streamed


def process_exit(command: dict) -> int | None:
    """The program's exit code when it tells the outcome, else None.

    A verb may judge its program's answer itself: ``delete_panel_user`` fails with
    ``NOT_FOUND`` after htpasswd exited 0. Its exit code then says nothing about the
    outcome, so only a success or an ``EXIT_NONZERO`` failure shows one.
    """
    error = command.get("error")
    if error is not None and error.get("code") != "EXIT_NONZERO":
        return None
    return command.get("exit_code")


def _print_command(command: dict, streamed: set[str] = frozenset()) -> None:
    if streamed:
        print()
    code = process_exit(command)
    print(f"status: {command['status']}" + (f" (exit code {code})" if code is not None else ""))
    if command.get("error"):
        print(f"error: {command['error']['code']}: {command['error']['message']}")
    if command.get("result") is not None:
        print("result:")
        print(json.dumps(command["result"], indent=2))
    for stream in ("stdout", "stderr"):
        marker = " (truncated)" if command.get(f"{stream}_truncated") else ""
        if command.get(stream) and stream not in streamed:
            print(f"--- {stream}{marker}\n{command[stream].rstrip()}")
        elif marker and stream in streamed:
            print(f"--- {stream}{marker}")


# -- jobs: one verb on many agents --------------------------------------------------------

JOB_FINAL = {"completed", "stopped", "cancelled"}
IN_FLIGHT = {"dispatched", "running"}
STATUS_ORDER = ["succeeded", "failed", "timed_out", "rejected", "cancelled", "expired", "lost",
                "running", "dispatched", "queued"]  # fmt: skip


def _amount(value: str | None, name: str) -> int | str | None:
    """``10`` -> 10, ``10%`` -> "10%" (the API takes a number or a percentage)."""
    if value is None:
        return None
    text = value.strip()
    number = text[:-1] if text.endswith("%") else text
    if not number.isdigit():
        raise CLIError(f"--{name} must be a number or a percentage (10 or 10%), got {value!r}")
    return text if text.endswith("%") else int(number)


def _job_done(job: dict) -> bool:
    if job["status"] in ("completed", "cancelled"):
        return True
    # A stopped job starts nothing new; wait for what is already out there.
    return job["status"] == "stopped" and not any(
        c["status"] in IN_FLIGHT for c in job.get("commands") or []
    )


def _counts_text(counts: dict) -> str:
    ordered = [s for s in STATUS_ORDER if counts.get(s)]
    ordered += sorted(s for s in counts if s not in STATUS_ORDER and counts[s])
    return "  ".join(f"{s} {counts[s]}" for s in ordered) or "no commands yet"


def _progress_line(job: dict, width: int = 24) -> str:
    counts = job.get("counts") or {}
    total = max(len(job.get("commands") or []), sum(counts.values()), int(job.get("total") or 0))
    done = sum(n for s, n in counts.items() if s in FINAL)
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "." * (width - filled)
    return f"job {job['job_id']} {job['status']:<9} [{bar}] {done}/{total}  {_counts_text(counts)}"


def _print_job(job: dict) -> None:
    print(f"job {job['job_id']}: {job['status']}")
    error = job.get("error")
    if error:
        # Why it is paused (CANARY, PAUSED) or stopped (MAX_ERRORS, SECRETS_UNAVAILABLE).
        print(f"reason: {error['code']}: {error['message']}")
    if job["status"] == "paused":
        print(f"next: viworks job resume {job['job_id']}  (or: viworks job cancel)")
    for key in ("verb", "selector", "concurrency", "max_errors", "canary"):
        if job.get(key) is not None:
            print(f"{key}: {job[key]}")
    print(f"counts: {_counts_text(job.get('counts') or {})}")
    rows = [
        [c["agent_id"], c["status"], c.get("command_id") or "-"] for c in job.get("commands") or []
    ]
    if rows:
        print(_table(rows, ["AGENT", "STATUS", "COMMAND"]))


def _job_exit(job: dict) -> int:
    commands = job.get("commands") or []
    ok = job["status"] == "completed" and all(c["status"] == "succeeded" for c in commands)
    return EXIT_OK if ok else EXIT_FAILED


def _verb_params(client: ApiClient, selector: str, verb: str) -> dict:
    """The verb's schema from the first matching agent that offers it (for typing k=v)."""
    for agent in client.request("GET", _path("agents", selector=selector))["agents"]:
        if verb in (agent.get("verbs") or []):
            verbs = client.request("GET", _path("agents", agent["agent_id"], "verbs"))["verbs"]
            return verbs.get(verb, {}).get("params", {})
    return {}


def cmd_job(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.job_command == "start":
        return _job_start(client, args)
    if args.job_command == "show":
        job = client.request("GET", _path("jobs", args.job_id))
    else:
        job = client.request("POST", _path("jobs", args.job_id, args.job_command))
    if args.json:
        _print_json(job)
    else:
        _print_job(job)
    return EXIT_OK


def _job_start(client: ApiClient, args: argparse.Namespace) -> int:
    params = _verb_params(client, args.selector, args.verb)
    body: dict[str, Any] = {
        "verb": args.verb,
        "args": coerce_args(args.args, params),
        "selector": args.selector,
        "concurrency": _amount(args.concurrency, "concurrency"),
        "max_errors": None if args.max_errors is None else _amount(args.max_errors, "max-errors"),
    }
    if args.canary_auto:
        body["canary_auto"] = True
    for key in ("canary", "ttl", "timeout"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    job = client.request("POST", "/api/v1/jobs", {k: v for k, v in body.items() if v is not None})
    if args.detach:
        if args.json:
            _print_json(job)
        else:
            print(
                f"job {job['job_id']} started ({job['status']}); viworks job show {job['job_id']}"
            )
        # Exit 0 would claim the job completed with every command succeeded.
        return _job_exit(job) if _job_done(job) else EXIT_PENDING
    job = watch_job(client, job, quiet=args.json)
    if job is None:
        return EXIT_PENDING
    if args.json:
        _print_json(job)
    else:
        _print_job(job)
    return _job_exit(job)


def watch_job(client: ApiClient, job: dict, quiet: bool = False, poll: float = 2.0) -> dict | None:
    """A live progress bar until the job is done; its last state, or None if detached.

    ``job.progress`` events for this job wake the redraw; without them it polls every
    ``poll`` s. Ctrl-C asks whether to cancel the job or detach (detach without a TTY).
    """
    job_id = job["job_id"]
    tty = sys.stderr.isatty()
    feed = EventFeed(client, _path("events", types="job.progress"))
    shown = ""

    def draw(job: dict) -> None:
        nonlocal shown
        line = _progress_line(job)
        if quiet or line == shown:
            return
        shown = line
        if tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        if job["status"] == "paused" and not tty:
            sys.stderr.write(f"paused: viworks job resume {job_id}\n")
        sys.stderr.flush()

    draw(job)
    while not _job_done(job):
        try:
            deadline = time.monotonic() + poll
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    message = feed.get(remaining)
                except (EOFError, CLIError):
                    _sleep(remaining)  # no event stream: poll
                    break
                if message is not None and (message.data or {}).get("job_id") == job_id:
                    break
            job = client.request("GET", _path("jobs", job_id))
            draw(job)
        except KeyboardInterrupt:
            if tty and not quiet:
                sys.stderr.write("\n")
            choice = "d"
            if _stdin_is_tty():
                try:
                    choice = _ask(f"cancel job {job_id} or detach? [c/D] ").strip().lower()
                except (KeyboardInterrupt, EOFError):
                    choice = "d"
            if not choice.startswith("c"):
                print(f"detached: job {job_id} goes on; viworks job show {job_id}", file=sys.stderr)
                return None
            job = client.request("POST", _path("jobs", job_id, "cancel"))
            draw(job)
    if tty and not quiet:
        sys.stderr.write("\n")
    return job


# -- shell completion ----------------------------------------------------------------------


def _command_tree(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """{"": [words after viworks], "job": [...], "job start": [...]} from the parser."""
    words: list[str] = []
    tree: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                tree.update(_command_tree(sub, f"{prefix} {name}".strip()))
        elif action.help != argparse.SUPPRESS:
            words.extend(action.option_strings)
            if not action.option_strings and action.choices:
                words.extend(action.choices)
    tree[prefix] = words
    return tree


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    tree = _command_tree(parser)
    # Quoted case patterns: "job"|"job start"|... (the same in bash and zsh).
    alternatives = "|".join(f'"{p}"' for p in tree if p)
    if shell == "bash":
        cases = "\n".join(f'        "{p}") words="{" ".join(w)}" ;;' for p, w in tree.items())
        return f"""# bash completion for viworks: eval "$(viworks completion bash)"
_viworks() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" word i words
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        case "${{cmd:+$cmd }}$word" in
            {alternatives}) cmd="${{cmd:+$cmd }}$word" ;;
        esac
    done
    case "$cmd" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _viworks viworks
"""
    cases = "\n".join(f'        ("{p}") opts=({" ".join(w)}) ;;' for p, w in tree.items())
    return f"""#compdef viworks
# zsh completion for viworks: viworks completion zsh > "${{fpath[1]}}/_viworks"
# (or: source <(viworks completion zsh))
_viworks() {{
    local cmd="" word i
    local -a opts
    for ((i = 2; i < CURRENT; i++)); do
        word="${{words[i]}}"
        [[ "$word" == -* ]] && continue
        case "${{cmd:+$cmd }}$word" in
            ({alternatives}) cmd="${{cmd:+$cmd }}$word" ;;
        esac
    done
    case "$cmd" in
{cases}
    esac
    compadd -- "${{opts[@]}}"
    _files
}}
if [[ "${{funcstack[1]}}" == _viworks ]]; then
    _viworks "$@"
else
    compdef _viworks viworks
fi
"""


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(args.shell, build_parser()), end="")
    return EXIT_OK


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
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x.add_argument("--reason", help="why (kept in the store and the audit log)")
    x.add_argument(
        "--serial", help="revoke only this certificate (hex serial, e.g. from openssl x509 -serial)"
    )
    x.add_argument("agent_id", nargs="?", help="revoke every certificate this agent id used")
    x.set_defaults(func=cmd_pki_revoke)
    p.set_defaults(func=cmd_pki)

    p = sub.add_parser("token", help="API tokens (roles: viewer, operator, admin)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    x = tsub.add_parser("create", help="create a token; prints it once, on the last line")
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x.add_argument("--name", required=True)
    x.add_argument(
        "--role",
        choices=["viewer", "operator", "admin"],
        default="operator",
        help="viewer: read; operator (default): also run verbs and cancel; admin: everything",
    )
    x.add_argument("--verbs", help="operator: only these verbs (comma-separated)")
    x.add_argument("--sites", help="operator: only agents of these sites (comma-separated)")
    x.add_argument("--expires-in", type=float, metavar="SECONDS", help="valid this long")
    x = tsub.add_parser("list", help="list tokens (names, roles, limits; never secrets)")
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x.add_argument("--json", action="store_true", help="print JSON")
    x = tsub.add_parser("revoke", help="revoke a token (at once, for every backend)")
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x.add_argument("name")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("audit", help="the tamper-evident audit log")
    asub = p.add_subparsers(dest="audit_command", required=True)
    x = asub.add_parser("verify", help="check the hash chain: exit 0 intact, 1 broken")
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="a head printed by 'audit head' earlier: exit 1 unless the log still holds"
        " that record with that hash (finds records removed from the end)",
    )
    x = asub.add_parser("head", help="print the last record as SEQ:HASH, to keep elsewhere")
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x = asub.add_parser("export", help="write the records as JSON lines")
    x.add_argument("--config", required=True, help="the backend's configuration file")
    x.add_argument("--output", help="the file to write (default: stdout)")
    p.set_defaults(func=cmd_audit)

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

    p = sub.add_parser("agents", help="list the agents (or what a selector matches)")
    p.add_argument("--selector", help="only agents matching, e.g. site=prod,role=edge|core")
    p.add_argument("--watch", action="store_true", help="redraw every --interval s (Ctrl-C quits)")
    p.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    api_options(p)
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser(
        "verbs", help="an agent's verbs and their parameters (type, required, default, limits)"
    )
    p.add_argument("agent", help="the agent's id")
    p.add_argument("verb", nargs="?", help="only this verb")
    api_options(p)
    p.set_defaults(func=cmd_verbs)

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
    api_options(p)
    p.set_defaults(func=cmd_run)

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
    api_options(x)
    for action, text in (
        ("show", "a job's status, counts and commands"),
        ("pause", "start no new agents until resumed"),
        ("resume", "continue a paused job"),
        ("cancel", "cancel the job: start nothing more"),
    ):
        x = jsub.add_parser(action, help=text)
        x.add_argument("job_id")
        api_options(x)
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("commands", help="list recent commands, newest first")
    p.add_argument("--agent", help="only this agent's")
    p.add_argument("--status", help="only commands in this status")
    p.add_argument("--limit", type=int, help="at most N (default 100)")
    api_options(p)
    p.set_defaults(func=cmd_commands)

    p = sub.add_parser("telemetry", help="an agent's latest telemetry")
    p.add_argument("agent")
    api_options(p)
    p.set_defaults(func=cmd_telemetry)

    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=cmd_completion)
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
