"""A running backend fuzzed from its own OpenAPI description (schemathesis).

A real backend (this process, real sockets) with one real gateway connected, whose only
verbs are ``ping`` and a declared ``echo`` (every other built-in verb is disabled: the
fuzzer must change nothing on this host). schemathesis (its CLI, in a thread, so that
the reactor keeps serving) reads ``GET /api/v1/openapi.json`` with an admin token and
sends a bounded number of generated requests per operation, valid and invalid. Any 5xx
fails the test, and so does an answer the description does not allow (status code,
media type, headers, JSON schema, each event of a stream) or a method the description
does not give that is not a 405 with ``Allow``. Seeded, so a run is repeatable.

Left out: ``GET /api/v1/events`` (a stream that ends only when the client goes). Two
operations run last, each alone and with a token of its own: schemathesis reuses values
it read in earlier answers, so the token revocation finds its own token's name, and the
certificate revocation's example is the connected agent; either would take something
away from the operations after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.processes import create_token
from tests.stack import Stack, eventually
from viworks.gateway.verbs.builtin import BUILTIN_VERBS

SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")
#: Generated requests per operation and phase (examples, coverage, fuzzing); a longer
#: hunt: VIWORKS_FUZZ_EXAMPLES=500 VIWORKS_FUZZ_SEED=7 (the output of each run is kept in
#: the test's directory, schemathesis/*.txt).
MAX_EXAMPLES = int(os.environ.get("VIWORKS_FUZZ_EXAMPLES", "15"))
SEED = int(os.environ.get("VIWORKS_FUZZ_SEED", "14"))
#: Bounds on one request and on one whole run (seconds).
REQUEST_TIMEOUT = 20
RUN_TIMEOUT = 600
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
)
REVOKE_CERTIFICATE = "/api/v1/agents/{agent_id}/certificate/revoke"
REVOKE_TOKEN = "/api/v1/tokens/{name}"
#: (name, which operations) of each run, in order.
RUNS = (
    ("everything else", ("--exclude-path", "/api/v1/events", "--exclude-path",
                         REVOKE_CERTIFICATE, "--exclude-path", REVOKE_TOKEN)),
    ("certificate revocation", ("--include-path", REVOKE_CERTIFICATE)),
    ("token revocation", ("--include-path", REVOKE_TOKEN)),
)  # fmt: skip
# No per-token or per-source limits in the way of a fuzzer sending hundreds of requests.
API = (
    "[api]\nrate_limit_per_token = 100000.0\nrate_limit_burst = 100000\n"
    "auth_failure_rate = 100000.0\nauth_failure_burst = 100000\n"
)
# The gateway's verbs: ping and echo; the other built-in ones are disabled.
VERBS = "".join(
    f"[verbs.{name}]\nenabled = false\n" for name in sorted(BUILTIN_VERBS - {"ping"})
) + (
    '[verbs.echo]\nargv = ["/bin/echo", "{text}"]\ntimeout = 10\nchanges_state = false\n'
    'description = "Print the text."\n'
    'params.text = { type = "string", pattern = "[a-z ]{1,40}" }\n'
)


def _skip_reason() -> str | None:
    if not os.path.exists(SCHEMATHESIS):
        return "schemathesis is not installed (pip install -e '.[test]')"
    return None


class SchemathesisTests(unittest.TestCase):
    skip = _skip_reason()
    timeout = len(RUNS) * RUN_TIMEOUT + 120

    async def test_no_server_error_and_every_answer_described(self) -> None:
        """Generated requests to every operation (bounded, seeded) get no 5xx and only
        answers the OpenAPI description allows."""
        stack = Stack(self)
        backend = await stack.start_backend(extra=API)
        stack.start_gateway(extra=VERBS)
        await eventually(lambda: backend.parts.registry.get("gw-1") is not None, timeout=30)
        base = f"http://127.0.0.1:{stack.http_port}"
        reports = os.path.join(stack.dir, "schemathesis")
        for n, (name, selection) in enumerate(RUNS):
            token = await deferToThread(
                create_token, os.path.join(stack.dir, "backend.toml"), f"fuzzer-{n}", "admin"
            )
            await self.run_schemathesis(base, token, reports, name, *selection)

    async def run_schemathesis(
        self, base: str, token: str, reports: str, name: str, *selection: str
    ) -> None:
        argv = [
            SCHEMATHESIS, "run", f"{base}/api/v1/openapi.json", "--url", base,
            "--header", f"Authorization: Bearer {token}",
            "--checks", ",".join(CHECKS),
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
            "--generation-database", "none",
            "--workers", "1",
            "--request-timeout", str(REQUEST_TIMEOUT),
            "--report", "junit", "--report-dir", os.path.join(reports, name.replace(" ", "-")),
            "--no-color",
            *selection,
        ]  # fmt: skip
        # Its own working directory: it may write state files where it runs.
        os.makedirs(reports, exist_ok=True)
        run = await deferToThread(
            subprocess.run,
            argv,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
            cwd=reports,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        )
        output = run.stdout + run.stderr
        with open(os.path.join(reports, name.replace(" ", "-") + ".txt"), "w") as f:
            f.write(output)
        self.assertEqual(run.returncode, 0, f"schemathesis ({name}) failed:\n{output}")
        self.assertIn("passed", output, output)
        # Bound what it left behind (its reports are kept with the test's directory).
        shutil.rmtree(os.path.join(reports, ".hypothesis"), ignore_errors=True)
