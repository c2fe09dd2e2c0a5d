"""Tests for viworks.schema."""

from __future__ import annotations

from twisted.trial import unittest

from viworks.redaction import redact_args
from viworks.schema import ArgsError, validate_args, validate_schema

SCHEMA = {
    "name": {"type": "string", "pattern": "[a-z]+", "min_length": 2, "max_length": 5},
    "password": {"type": "secret", "min_length": 8, "max_length": 16},
    "count": {"type": "integer", "min": 1, "max": 10, "required": False, "default": 3},
    "ratio": {"type": "number", "min": 0, "max": 1, "required": False},
    "mode": {"type": "enum", "values": ["a", "b", 1], "required": False},
    "addr": {"type": "ip", "required": False},
    "flag": {"type": "boolean", "required": False},
}


def ok_args(**extra: object) -> dict[str, object]:
    return {"name": "abc", "password": "s3cretpassw", **extra}


class ValidateArgsTests(unittest.TestCase):
    def assertArgsError(self, args: object, field: str | None) -> ArgsError:
        with self.assertRaises(ArgsError) as cm:
            validate_args(SCHEMA, args)
        self.assertEqual(cm.exception.field, field)
        self.assertEqual(cm.exception.code, "INVALID_ARGS")
        return cm.exception

    def test_valid_args_fill_defaults(self) -> None:
        """Valid arguments are returned in a new dict with defaults filled in."""
        args = ok_args()
        out = validate_args(SCHEMA, args)
        self.assertEqual(out, {"name": "abc", "password": "s3cretpassw", "count": 3})
        self.assertIsNot(out, args)
        self.assertNotIn("count", args)

    def test_not_an_object(self) -> None:
        """Arguments that are not a JSON object are rejected with no field."""
        for bad in (None, [], "x", 1):
            self.assertArgsError(bad, None)

    def test_unknown_parameter(self) -> None:
        """An unknown key is rejected, naming that key."""
        e = self.assertArgsError(ok_args(extra=1), "extra")
        self.assertEqual(e.message, "unknown parameter")

    def test_missing_required(self) -> None:
        """A missing required parameter is rejected, naming it."""
        self.assertArgsError({"name": "abc"}, "password")

    def test_string_checks(self) -> None:
        """Strings are checked for type, length, full-match pattern and NUL."""
        for bad in (5, "a", "abcdef", "ab1", "ABC", "ab\x00"):
            self.assertArgsError(ok_args(name=bad), "name")

    def test_pattern_is_fullmatch(self) -> None:
        """A pattern must match the whole value, not a prefix."""
        self.assertArgsError(ok_args(name="ab c"), "name")

    def test_integer_checks(self) -> None:
        """Integers reject bools, floats, strings and out-of-range values."""
        for bad in (True, 2.0, "2", 0, 11):
            self.assertArgsError(ok_args(count=bad), "count")
        self.assertEqual(validate_args(SCHEMA, ok_args(count=10))["count"], 10)

    def test_number_checks(self) -> None:
        """Numbers accept int and float in range; reject bool, NaN, infinity."""
        self.assertEqual(validate_args(SCHEMA, ok_args(ratio=0.5))["ratio"], 0.5)
        self.assertEqual(validate_args(SCHEMA, ok_args(ratio=1))["ratio"], 1)
        for bad in (False, float("nan"), float("inf"), 1.5, -0.1, "0.5"):
            self.assertArgsError(ok_args(ratio=bad), "ratio")

    def test_enum_compares_types(self) -> None:
        """Enum membership is type-strict: True is not 1 and 1.0 is not 1."""
        self.assertEqual(validate_args(SCHEMA, ok_args(mode=1))["mode"], 1)
        self.assertEqual(validate_args(SCHEMA, ok_args(mode="b"))["mode"], "b")
        for bad in (True, 1.0, "c"):
            self.assertArgsError(ok_args(mode=bad), "mode")

    def test_ip(self) -> None:
        """IP parameters accept IPv4/IPv6 (normalised) and reject the rest."""
        self.assertEqual(validate_args(SCHEMA, ok_args(addr="10.0.0.1"))["addr"], "10.0.0.1")
        v6 = validate_args(SCHEMA, ok_args(addr="2001:DB8:0::1"))["addr"]
        self.assertEqual(v6, "2001:db8::1")
        for bad in ("10.0.0.256", "example.com", "10.0.0.0/8", 167772161):
            self.assertArgsError(ok_args(addr=bad), "addr")

    def test_boolean(self) -> None:
        """Booleans accept only true/false."""
        self.assertIs(validate_args(SCHEMA, ok_args(flag=False))["flag"], False)
        for bad in (0, "true", None):
            self.assertArgsError(ok_args(flag=bad), "flag")

    def test_secret_value_not_in_message(self) -> None:
        """Error messages never contain the rejected value (secrets stay secret)."""
        e = self.assertArgsError(ok_args(password="hunter2"), "password")
        self.assertNotIn("hunter2", str(e))
        self.assertNotIn("hunter2", e.message)

    def test_optional_without_default_absent(self) -> None:
        """An optional parameter without a default is simply absent."""
        self.assertNotIn("ratio", validate_args(SCHEMA, ok_args()))


class ValidateSchemaTests(unittest.TestCase):
    def assertBad(self, schema: object, needle: str) -> None:
        with self.assertRaises(ValueError) as cm:
            validate_schema(schema)
        self.assertIn(needle, str(cm.exception))

    def test_good_schema(self) -> None:
        """A well-formed schema passes."""
        validate_schema(SCHEMA)
        validate_schema({})

    def test_not_a_mapping(self) -> None:
        """A schema must be an object of objects."""
        self.assertBad([], "schema must be")
        self.assertBad({"p": "string"}, "'p'")

    def test_unknown_type(self) -> None:
        """Unknown types are rejected, naming the parameter."""
        self.assertBad({"p": {"type": "blob"}}, "'p'")
        self.assertBad({"p": {}}, "'p'")

    def test_unknown_key(self) -> None:
        """Misspelt spec keys are rejected rather than silently ignored."""
        self.assertBad({"p": {"type": "string", "max_lenght": 3}}, "'p'")
        self.assertBad({"p": {"type": "integer", "pattern": "x"}}, "'p'")

    def test_bad_pattern(self) -> None:
        """A pattern that does not compile is rejected."""
        self.assertBad({"p": {"type": "string", "pattern": "("}}, "'p'")

    def test_bad_bounds(self) -> None:
        """Bounds must have the right type and order."""
        self.assertBad({"p": {"type": "string", "min_length": -1}}, "'p'")
        self.assertBad({"p": {"type": "string", "min_length": 5, "max_length": 2}}, "'p'")
        self.assertBad({"p": {"type": "integer", "min": 1.5}}, "'p'")
        self.assertBad({"p": {"type": "integer", "min": True}}, "'p'")
        self.assertBad({"p": {"type": "number", "min": 2, "max": 1}}, "'p'")

    def test_bad_enum(self) -> None:
        """Enum values must be a non-empty list of scalars."""
        self.assertBad({"p": {"type": "enum"}}, "'p'")
        self.assertBad({"p": {"type": "enum", "values": []}}, "'p'")
        self.assertBad({"p": {"type": "enum", "values": [[1]]}}, "'p'")

    def test_bad_required_and_default(self) -> None:
        """required must be a bool, defaults must be valid, secrets have none."""
        self.assertBad({"p": {"type": "string", "required": "yes"}}, "'p'")
        self.assertBad({"p": {"type": "integer", "max": 3, "default": 4}}, "'p'")
        self.assertBad({"p": {"type": "secret", "default": "x"}}, "'p'")


class RedactTests(unittest.TestCase):
    def test_secrets_replaced(self) -> None:
        """Secret values become *** and other values are kept; input untouched."""
        args = ok_args(count=2)
        self.assertEqual(redact_args(SCHEMA, args), {"name": "abc", "password": "***", "count": 2})
        self.assertEqual(args["password"], "s3cretpassw")

    def test_unknown_keys_redacted(self) -> None:
        """Values of keys the schema does not know are redacted too."""
        self.assertEqual(redact_args(SCHEMA, {"pasword": "x"}), {"pasword": "***"})
