"""What the fleet looks like: ``agents``, ``verbs``, ``commands`` and ``telemetry``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from viworks.cli import terminal
from viworks.cli.api import AgentList, Api, CommandView, ParamSpec, VerbView, process_exit
from viworks.cli.client import client_from_args
from viworks.cli.errors import EXIT_OK, CLIError
from viworks.cli.terminal import print_json, table

# -- agents ------------------------------------------------------------------------------


def _labels(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "-"


def _agents_table(body: AgentList) -> str:
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
    return table(rows, ["AGENT", "STATUS", "SITE", "LABELS", "VERSION", "HOSTNAME", "LAST SEEN"])


def cmd_agents(args: argparse.Namespace) -> int:
    api = Api(client_from_args(args))
    if not args.watch:
        body = api.agents(args.selector)
        if args.json:
            print_json(body)
        else:
            print(_agents_table(body))
        return EXIT_OK
    tty = sys.stdout.isatty()
    try:
        while True:
            body = api.agents(args.selector)
            if args.json:
                print(json.dumps(body, separators=(",", ":")), flush=True)  # one line a refresh
            else:
                online = sum(a["status"] == "online" for a in body["agents"])
                head = f"{time.strftime('%H:%M:%S')}  {online}/{len(body['agents'])} online"
                head += f"  (selector {args.selector})" if args.selector else ""
                clear = "\033[H\033[2J" if tty else ""
                print(f"{clear}{head}  - Ctrl-C to quit\n{_agents_table(body)}\n", flush=True)
            terminal.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


# -- verbs: what an agent offers, with each parameter's schema ------------------------------


def _bounds(low: object, high: object) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}"
    return f">= {low}" if low is not None else f"<= {high}"


def param_constraints(spec: ParamSpec) -> str:
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


def _verb_text(name: str, verb: VerbView) -> str:
    effect = "changes state" if verb.get("changes_state") else "read-only"
    description = verb.get("description")
    lines = [f"{name} ({effect})" + (f": {description}" if description else "")]
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
    text = table(rows, headers) if rows else "(no parameters)"
    lines += ["  " + line for line in text.splitlines()]
    return "\n".join(lines)


def cmd_verbs(args: argparse.Namespace) -> int:
    body = Api(client_from_args(args)).verbs(args.agent)
    verbs = body.get("verbs") or {}
    if args.verb is not None:
        if args.verb not in verbs:
            offered = ", ".join(sorted(verbs)) or "none"
            raise CLIError(f"agent {args.agent!r} does not offer verb {args.verb!r} ({offered})")
        verbs = {args.verb: verbs[args.verb]}
        body = {**body, "verbs": verbs}
    if args.json:
        print_json(body)
        return EXIT_OK
    count = f"{len(verbs)} verb" + ("" if len(verbs) == 1 else "s")
    print(f"agent {body.get('agent_id', args.agent)}: {count}")
    print("\n\n".join(_verb_text(name, verbs[name]) for name in sorted(verbs)))
    return EXIT_OK


# -- commands and telemetry ----------------------------------------------------------------


def _error_code(command: CommandView) -> str:
    error = command.get("error")
    return (error.get("code") if error else None) or "-"


def cmd_commands(args: argparse.Namespace) -> int:
    body = Api(client_from_args(args)).commands(args.agent, args.status, args.limit)
    if args.json:
        print_json(body)
        return EXIT_OK
    rows = [
        [
            c["command_id"],
            c["agent_id"],
            c["verb"],
            c["status"],
            str(code) if (code := process_exit(c)) is not None else "-",
            c.get("created_at") or "-",
            _error_code(c),
        ]
        for c in body["commands"]
    ]
    print(table(rows, ["COMMAND", "AGENT", "VERB", "STATUS", "EXIT", "CREATED", "ERROR"]))
    return EXIT_OK


def _flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    """Nested metrics (any JSON) as ``a.b.c`` / ``a[0].b`` keys with their leaf values."""
    if isinstance(value, dict) and value:
        out: list[tuple[str, object]] = []
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
    body = Api(client_from_args(args)).telemetry(args.agent)
    if args.json:
        print_json(body)
        return EXIT_OK
    print(f"agent {body['agent_id']}, reported at {body.get('at') or '-'}")
    rows = [
        [key, v if isinstance(v, str) else json.dumps(v)]
        for key, v in _flatten(body.get("metrics"))
    ]
    print(table(rows, ["METRIC", "VALUE"]))
    return EXIT_OK
