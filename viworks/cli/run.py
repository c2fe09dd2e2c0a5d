"""``run``: one verb on one agent, its output streamed live (and ``key=value`` typing)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Collection
from typing import Any

from viworks.cli.api import Api, CommandRequest, CommandView, ParamSpec, process_exit
from viworks.cli.client import client_from_args
from viworks.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_PENDING, CLIError
from viworks.cli.terminal import print_json
from viworks.lifecycle import SUCCEEDED


def coerce_args(pairs: list[str], params: dict[str, ParamSpec]) -> dict[str, Any]:
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


def verb_params(api: Api, agent_id: str, verb: str) -> dict[str, ParamSpec]:
    """The parameters ``agent_id`` announced for ``verb`` (none if it has no such verb)."""
    verbs = api.verbs(agent_id).get("verbs") or {}
    return verbs.get(verb, {}).get("params") or {}


def cmd_run(args: argparse.Namespace) -> int:
    api = Api(client_from_args(args))
    request: CommandRequest = {
        "verb": args.verb,
        "args": coerce_args(args.args, verb_params(api, args.agent, args.verb)),
    }
    if args.timeout is not None:
        request["timeout"] = args.timeout
    command = api.submit(args.agent, request)
    if not args.json:
        print(
            f"command {command['command_id']}: {command['verb']} on {command['agent_id']}"
            f" ({command['status']})",
            file=sys.stderr,
            flush=True,
        )
    final, streamed = follow_command(api, command, args.wait, echo=not args.json)
    if final is None:
        command = api.command(command["command_id"])
        if args.json:
            print_json(command)
        print(
            f"viworks: command {command['command_id']} is still {command['status']}; "
            f"see GET /api/v1/commands/{command['command_id']}",
            file=sys.stderr,
        )
        return EXIT_PENDING
    if args.json:
        print_json(final)
    else:
        _print_command(final, streamed)
    return EXIT_OK if final["status"] == SUCCEEDED else EXIT_FAILED


def follow_command(
    api: Api, command: CommandView, wait: float, echo: bool = True
) -> tuple[CommandView | None, set[str]]:
    """Follow a command's output stream: print chunks as they come (``echo``).

    Returns (the final command, the streams printed), or (None, ...) if it is not final
    within ``wait`` seconds or on Ctrl-C.
    """
    streamed: set[str] = set()
    feed = api.command_output(command["command_id"])
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
                final: CommandView = message.data
                return final, streamed
    except KeyboardInterrupt:
        return None, streamed


def _print_command(command: CommandView, streamed: Collection[str] = ()) -> None:
    if streamed:
        print()
    code = process_exit(command)
    print(f"status: {command['status']}" + (f" (exit code {code})" if code is not None else ""))
    error = command.get("error")
    if error:
        print(f"error: {error['code']}: {error['message']}")
    if command.get("result") is not None:
        print("result:")
        print(json.dumps(command["result"], indent=2))
    outputs = (
        ("stdout", command.get("stdout"), command.get("stdout_truncated")),
        ("stderr", command.get("stderr"), command.get("stderr_truncated")),
    )
    for stream, text, truncated in outputs:
        marker = " (truncated)" if truncated else ""
        if text and stream not in streamed:
            print(f"--- {stream}{marker}\n{text.rstrip()}")
        elif marker and stream in streamed:
            print(f"--- {stream}{marker}")
