"""Job requests parsed into a ``JobSpec`` (pure): what is kept, and what is refused."""

from __future__ import annotations

from twisted.trial import unittest

from viworks.backend.api.errors import STATUS
from viworks.backend.bounds import MAX_TIMEOUT, MAX_TTL
from viworks.backend.errors import DomainError
from viworks.backend.jobspec import MAX_COUNT, JobSpec, parse_job_spec

BODY = {"verb": "ping", "selector": "site=prod"}


class JobSpecTests(unittest.TestCase):
    def test_values_kept_as_given(self):
        """Counts keep their form ("10%" stays a percentage, without blanks), seconds
        become floats, what is left out is None (the defaults apply later)."""
        self.assertEqual(
            parse_job_spec(BODY),
            JobSpec(verb="ping", args={}, selector="site=prod"),
        )
        spec = parse_job_spec(
            {
                **BODY,
                "args": {"n": 1},
                "concurrency": " 10% ",
                "max_errors": 3,
                "canary": 2,
                "canary_auto": True,
                "ttl": 60,
                "timeout": 2.5,
            }
        )
        self.assertEqual(
            (spec.args, spec.concurrency, spec.max_errors, spec.canary, spec.canary_auto),
            ({"n": 1}, "10%", 3, 2, True),
        )
        self.assertEqual((spec.ttl, spec.timeout), (60.0, 2.5))
        self.assertIsInstance(spec.ttl, float)
        self.assertEqual(parse_job_spec({**BODY, "args": None}).args, {})

    def test_refusals_name_code_and_field(self):
        """Each bad request is refused with its code (and today's HTTP status through the
        API's table), naming the offending field."""
        cases = [
            ([1], "BAD_REQUEST", None),
            ({**BODY, "colour": "red"}, "BAD_REQUEST", "colour"),
            ({"verb": "ping"}, "BAD_REQUEST", "selector"),
            ({**BODY, "selector": 7}, "BAD_REQUEST", "selector"),
            ({**BODY, "selector": "site="}, "BAD_SELECTOR", "selector"),
            ({"selector": "site=prod"}, "UNKNOWN_VERB", "verb"),
            ({**BODY, "verb": ""}, "UNKNOWN_VERB", "verb"),
            ({**BODY, "args": []}, "INVALID_ARGS", "args"),
            ({**BODY, "concurrency": 0}, "BAD_REQUEST", "concurrency"),
            ({**BODY, "concurrency": "101%"}, "BAD_REQUEST", "concurrency"),
            ({**BODY, "max_errors": MAX_COUNT + 1}, "BAD_REQUEST", "max_errors"),
            ({**BODY, "max_errors": True}, "BAD_REQUEST", "max_errors"),
            ({**BODY, "canary": 0}, "BAD_REQUEST", "canary"),
            ({**BODY, "canary": True}, "BAD_REQUEST", "canary"),
            ({**BODY, "canary": 1, "canary_auto": "yes"}, "BAD_REQUEST", "canary_auto"),
            ({**BODY, "canary_auto": True}, "BAD_REQUEST", "canary_auto"),
            ({**BODY, "timeout": "5"}, "INVALID_ARGS", "timeout"),
            ({**BODY, "timeout": MAX_TIMEOUT + 1}, "INVALID_ARGS", "timeout"),
            ({**BODY, "ttl": 0}, "INVALID_ARGS", "ttl"),
            ({**BODY, "ttl": MAX_TTL * 2}, "INVALID_ARGS", "ttl"),
        ]
        for body, code, field in cases:
            with self.assertRaises(DomainError, msg=repr(body)) as caught:
                parse_job_spec(body)
            self.assertEqual((caught.exception.code, caught.exception.field), (code, field))
            expected = {"BAD_REQUEST": 400, "BAD_SELECTOR": 400}.get(code, 422)
            self.assertEqual(STATUS[code], expected)
