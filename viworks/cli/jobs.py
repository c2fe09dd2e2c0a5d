"""``job start|show|pause|resume|cancel``: one verb on every agent a selector matches."""

from __future__ import annotations

import argparse

from viworks.backend.model import JOB_COMPLETED, JOB_PAUSED
from viworks.cli.api import Api, JobRequest, JobView, ParamSpec
from viworks.cli.client import client_from_args
from viworks.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_PENDING, CLIError
from viworks.cli.progress import counts_text, job_done, watch_job
from viworks.cli.run import coerce_args, verb_params
from viworks.cli.terminal import print_json, table
from viworks.lifecycle import SUCCEEDED


def amount(value: str, name: str) -> int | str:
    """``10`` -> 10, ``10%`` -> "10%" (the API takes a number or a percentage)."""
    text = value.strip()
    number = text[:-1] if text.endswith("%") else text
    if not number.isdigit():
        raise CLIError(f"--{name} must be a number or a percentage (10 or 10%), got {value!r}")
    return text if text.endswith("%") else int(number)


def print_job(job: JobView) -> None:
    print(f"job {job['job_id']}: {job['status']}")
    error = job.get("error")
    if error:
        # Why it is paused (CANARY, PAUSED) or stopped (MAX_ERRORS, SECRETS_UNAVAILABLE).
        print(f"reason: {error['code']}: {error['message']}")
    if job["status"] == JOB_PAUSED:
        print(f"next: viworks job resume {job['job_id']}  (or: viworks job cancel)")
    details = (
        ("verb", job.get("verb")),
        ("selector", job.get("selector")),
        ("concurrency", job.get("concurrency")),
        ("max_errors", job.get("max_errors")),
        ("canary", job.get("canary")),
    )
    for key, value in details:
        if value is not None:
            print(f"{key}: {value}")
    print(f"counts: {counts_text(job.get('counts') or {})}")
    rows = [
        [c["agent_id"], c["status"], c.get("command_id") or "-"] for c in job.get("commands") or []
    ]
    if rows:
        print(table(rows, ["AGENT", "STATUS", "COMMAND"]))


def job_exit(job: JobView) -> int:
    """0 only when the job completed and every one of its commands succeeded."""
    commands = job.get("commands") or []
    ok = job["status"] == JOB_COMPLETED and all(c["status"] == SUCCEEDED for c in commands)
    return EXIT_OK if ok else EXIT_FAILED


def _params(api: Api, selector: str, verb: str) -> dict[str, ParamSpec]:
    """The verb's schema from the first matching agent that offers it (for typing k=v)."""
    for agent in api.agents(selector)["agents"]:
        if verb in (agent.get("verbs") or []):
            return verb_params(api, agent["agent_id"], verb)
    return {}


def cmd_job(args: argparse.Namespace) -> int:
    api = Api(client_from_args(args))
    if args.job_command == "start":
        return _job_start(api, args)
    if args.job_command == "show":
        job = api.job(args.job_id)
    else:
        job = api.job_action(args.job_id, args.job_command)
    if args.json:
        print_json(job)
    else:
        print_job(job)
    return EXIT_OK


def _job_request(api: Api, args: argparse.Namespace) -> JobRequest:
    request: JobRequest = {
        "verb": args.verb,
        "args": coerce_args(args.args, _params(api, args.selector, args.verb)),
        "selector": args.selector,
        "concurrency": amount(args.concurrency, "concurrency"),
    }
    # Without --max-errors the API's default applies.
    if args.max_errors is not None:
        request["max_errors"] = amount(args.max_errors, "max-errors")
    if args.canary is not None:
        request["canary"] = args.canary
    if args.canary_auto:
        request["canary_auto"] = True
    if args.ttl is not None:
        request["ttl"] = args.ttl
    if args.timeout is not None:
        request["timeout"] = args.timeout
    return request


def _job_start(api: Api, args: argparse.Namespace) -> int:
    job = api.start_job(_job_request(api, args))
    if args.detach:
        if args.json:
            print_json(job)
        else:
            print(
                f"job {job['job_id']} started ({job['status']}); viworks job show {job['job_id']}"
            )
        # Exit 0 would claim the job completed with every command succeeded.
        return job_exit(job) if job_done(job) else EXIT_PENDING
    final = watch_job(api, job, quiet=args.json)
    if final is None:
        return EXIT_PENDING
    if args.json:
        print_json(final)
    else:
        print_job(final)
    return job_exit(final)
