"""Tests for viworks.redaction: the two markers and what each redaction hides."""

from __future__ import annotations

from twisted.trial import unittest

from viworks.redaction import REDACTED, REDACTED_DETAIL, redact_args, redact_detail

PARAMS = {"username": {"type": "string"}, "password": {"type": "secret"}, "n": {"type": "integer"}}


class MarkerTests(unittest.TestCase):
    def test_marker_values(self) -> None:
        """The markers keep the values API answers, signed redeliveries and the audit log
        have always carried (they are contracts)."""
        self.assertEqual((REDACTED, REDACTED_DETAIL), ("***", "[redacted]"))


class ArgsTests(unittest.TestCase):
    def test_also_secret(self) -> None:
        """A key secret by another account (``also_secret``) is redacted although this
        schema types it a plain string; others are kept, and the input is untouched."""
        args = {"username": "alice", "password": "pw", "n": 2}
        out = redact_args(PARAMS, args, also_secret={"username"})
        self.assertEqual(out, {"username": REDACTED, "password": REDACTED, "n": 2})
        self.assertEqual(args["username"], "alice")

    def test_values_are_copies(self) -> None:
        """Kept values are deep copies: changing the answer changes nothing stored."""
        params = {"tags": {"type": "string"}}
        args = {"tags": ["a"]}
        out = redact_args(params, args)
        out["tags"].append("b")
        self.assertEqual(args, {"tags": ["a"]})

    def test_not_a_mapping(self) -> None:
        """Arguments that are not a mapping give an empty dict (nothing to show)."""
        self.assertEqual(redact_args(PARAMS, ["x"]), {})  # type: ignore[arg-type]


class DetailTests(unittest.TestCase):
    def test_secret_looking_keys_at_any_depth(self) -> None:
        """Values under secret-looking keys are replaced at any depth, in lists too; other
        values and every key stay."""
        detail = {
            "verb": "ping",
            "Authorization": "Bearer x",
            "nested": [{"api_key": "k", "n": 1}, {"db_password": {"a": 1}}],
            "arg_names": ["password"],
        }
        self.assertEqual(
            redact_detail(detail),
            {
                "verb": "ping",
                "Authorization": REDACTED_DETAIL,
                "nested": [{"api_key": REDACTED_DETAIL, "n": 1}, {"db_password": REDACTED_DETAIL}],
                "arg_names": ["password"],
            },
        )

    def test_scalars_pass(self) -> None:
        """A detail that is not a container is returned as it is."""
        self.assertEqual(redact_detail("text"), "text")
        self.assertIsNone(redact_detail(None))
