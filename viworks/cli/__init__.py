"""The ``viworks`` command: PKI, tokens, the audit log, the local dev stack and an API client.

API commands: ``agents [--selector S] [--watch]``, ``verbs AGENT [VERB]``, ``run AGENT
VERB k=v ...`` (output streamed live), ``job start|show|pause|resume|cancel``,
``commands``, ``telemetry AGENT``; human tables by default, ``--json`` prints the API's
JSON. ``completion bash|zsh`` prints a shell completion script generated from the
argument parser. docs/cli.md is the reference.

Exit codes (scripts rely on them; ``viworks.cli.errors``):
  0  success (``run``: the command succeeded; ``job start``: the job completed and every
     command succeeded; ``agents --watch``: ended with Ctrl-C)
  1  the command ran and did not succeed (failed, timed_out, rejected, ...); ``job
     start``: the job was stopped or cancelled, or a command did not succeed
  2  usage or configuration error
  3  the API could not be reached or refused the request
  4  still unfinished: ``run`` when --wait ran out (or on Ctrl-C), ``job start`` when
     detached from a job that goes on (``--detach``, or Ctrl-C and detach)

The modules, one job each: ``parser`` (arguments, ``main``); ``pki`` (the PKI's files);
``database`` and ``admin`` (commands on the backend's database, run on the reactor);
``sse``, ``client`` and ``api`` (the HTTP API: SSE parsing, the urllib client, typed
endpoints); ``fleet``, ``run``, ``jobs`` and ``progress`` (the API commands);
``terminal`` (tables, JSON, the terminal's seams); ``completion``; ``dev`` (glue to
``viworks.dev``).
"""

from viworks.cli.parser import main

__all__ = ["main"]
