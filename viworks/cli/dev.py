"""``viworks dev``: the command's glue to the local stack (``viworks.dev``)."""

from __future__ import annotations

import argparse

from viworks.cli.database import cli_actor


def cmd_dev(args: argparse.Namespace) -> int:
    # Imported here: the stack loads both services (the other commands need neither).
    from viworks.dev import run_dev

    return run_dev(
        args.dir,
        http_port=args.http_port,
        ws_port=args.ws_port,
        api_port=args.agent_port,
        actor=cli_actor(),
    )
