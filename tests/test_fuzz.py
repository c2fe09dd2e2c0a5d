"""Property-based fuzzing (hypothesis) of what untrusted peers feed us.

- the frame decoder: on any bytes, any JSON, any near-valid frame, it returns a
  valid ``Frame`` or raises ``FrameError``, nothing else; valid frames round-trip;
- the verb parameter validators: for any well-formed schema and any arguments,
  ``validate_args`` returns values that satisfy the schema or raises ``ArgsError``,
  nothing else; ``validate_schema`` raises only ``ValueError`` on any JSON;
- ``redact`` never lets a secret (or an unknown parameter's value) through.

Bounded for CI: a fixed number of examples, derandomized (the same examples on
every run, no example database), no deadline.
"""

from __future__ import annotations

import ipaddress
import json
import math
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from viworks import protocol
from viworks.redaction import REDACTED, redact_args
from viworks.schema import ArgsError, validate_args, validate_schema

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- JSON values ----------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)

_BY_TYPE = {
    str: st.text(max_size=30),
    int: st.integers(min_value=-(2**53), max_value=2**53),
    float: st.floats(allow_nan=False, allow_infinity=False),
    bool: st.booleans(),
    type(None): st.none(),
    dict: st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    list: st.lists(json_values, max_size=4),
}


def _value_of(accepted: tuple[type, ...]) -> st.SearchStrategy:
    return st.one_of(*(_BY_TYPE[t] for t in accepted))


@st.composite
def valid_frames(draw) -> tuple[str, dict[str, Any]]:
    """A frame type and fields that the protocol accepts (extras included)."""
    frame_type = draw(st.sampled_from(sorted(protocol.FRAME_FIELDS)))
    spec = protocol.FRAME_FIELDS[frame_type]
    fields = {name: draw(_value_of(accepted)) for name, accepted in spec.items()}
    if frame_type == "output":
        fields["stream"] = draw(st.sampled_from(sorted(protocol.STREAMS)))
        fields["seq"] = draw(st.integers(min_value=0, max_value=2**31))
    if frame_type == "result":
        fields["status"] = draw(st.sampled_from(sorted(protocol.RESULT_STATUSES)))
    extra_names = st.text(max_size=10).filter(lambda k: k not in spec and k not in ("type", "v"))
    fields.update(draw(st.dictionaries(extra_names, json_values, max_size=3)))
    return frame_type, fields


@st.composite
def near_frames(draw) -> bytes:
    """JSON objects shaped like frames, with some fields wrong: reach deep validation."""
    frame_type = draw(st.one_of(st.sampled_from(sorted(protocol.FRAME_FIELDS)), json_values))
    body: dict[str, Any] = {"type": frame_type}
    if draw(st.booleans()):
        body["v"] = draw(st.one_of(st.just(protocol.PROTOCOL_VERSION), json_values))
    spec = protocol.FRAME_FIELDS.get(frame_type) if isinstance(frame_type, str) else None
    for name, accepted in (spec or {}).items():
        choice = draw(st.integers(0, 4))
        if choice == 0:
            continue  # missing
        body[name] = draw(json_values if choice == 1 else _value_of(accepted))
    return json.dumps(body).encode()


def _strict_json(value: Any) -> None:
    json.dumps(value, allow_nan=False)


class FrameDecoderFuzz(unittest.TestCase):
    def check(self, payload: bytes, is_binary: bool = False) -> None:
        try:
            frame = protocol.decode(payload, is_binary)
        except protocol.FrameError as e:
            self.assertIsInstance(e.code, str)
            self.assertIsInstance(e.message, str)
            return
        # Whatever is accepted is a known type with all its fields, in strict JSON.
        self.assertIn(frame.type, protocol.FRAME_FIELDS)
        for name in protocol.FRAME_FIELDS[frame.type]:
            self.assertIn(name, frame.fields)
        _strict_json(frame.fields)

    @FUZZ
    @given(st.binary(max_size=512), st.booleans())
    def test_arbitrary_bytes(self, payload, is_binary):
        self.check(payload, is_binary)

    @FUZZ
    @given(json_values)
    def test_arbitrary_json(self, value):
        self.check(json.dumps(value).encode())

    @FUZZ
    @given(near_frames())
    def test_near_valid_frames(self, payload):
        self.check(payload)

    @FUZZ
    @given(valid_frames())
    def test_round_trip(self, frame):
        frame_type, fields = frame
        decoded = protocol.decode(protocol.encode(frame_type, **fields))
        self.assertEqual(decoded.type, frame_type)
        self.assertEqual(decoded.fields, fields)

    def test_found_by_fuzzing(self):
        """Deep nesting and non-JSON numbers are refused as MALFORMED_FRAME."""
        for payload in (
            b"[" * 100_000,
            b'{"type": "heartbeat", "v": 1, "ts": NaN}',
            b'{"type": "heartbeat", "v": 1, "ts": -Infinity}',
            b'{"type": "heartbeat", "v": 1, "ts": 1e999}',
            b'{"type": "heartbeat", "v": 1, "ts": ' + b"9" * 5000 + b"}",
        ):
            with self.assertRaises(protocol.FrameError) as caught:
                protocol.decode(payload)
            self.assertEqual(caught.exception.code, protocol.MALFORMED_FRAME)


# -- verb parameter schemas ------------------------------------------------------------

PATTERNS = ["[a-z]+", "^[a-z0-9_-]{1,16}$", r"\d{2,4}", "a|b|c", ".*", "[^/]+"]
bounds = st.one_of(st.none(), st.integers(min_value=-1000, max_value=1000))


@st.composite
def param_specs(draw) -> dict[str, Any]:
    kind = draw(st.sampled_from(["string", "secret", "integer", "number", "enum", "ip", "boolean"]))
    spec: dict[str, Any] = {"type": kind}
    if kind in ("string", "secret"):
        low, high = draw(bounds), draw(bounds)
        if low is not None:
            spec["min_length"] = abs(low) % 40
        if high is not None:
            spec["max_length"] = abs(high) % 40 + spec.get("min_length", 0)
        if draw(st.booleans()):
            spec["pattern"] = draw(st.sampled_from(PATTERNS))
    elif kind in ("integer", "number"):
        low, high = draw(bounds), draw(bounds)
        if low is not None and high is not None and low > high:
            low, high = high, low
        for key, value in (("min", low), ("max", high)):
            if value is not None:
                spec[key] = value if kind == "integer" or draw(st.booleans()) else value + 0.5
        assume(spec.get("min", -math.inf) <= spec.get("max", math.inf))
    elif kind == "enum":
        spec["values"] = draw(st.lists(json_scalars, min_size=1, max_size=5))
    if draw(st.booleans()):
        spec["required"] = draw(st.booleans())
    if kind != "secret" and draw(st.integers(0, 3)) == 0:
        spec["default"] = draw(st.one_of(json_scalars, arg_for(spec)))
    return spec


def arg_for(spec: dict[str, Any]) -> st.SearchStrategy:
    """Values likely (not certain) to satisfy ``spec``, to reach the accepting paths."""
    kind = spec["type"]
    if kind in ("string", "secret"):
        return st.one_of(
            st.text(min_size=spec.get("min_length", 0), max_size=spec.get("max_length", 40)),
            st.from_regex(spec.get("pattern", ".*"), fullmatch=True),
        )
    if kind == "integer":
        return st.integers(min_value=spec.get("min"), max_value=spec.get("max"))
    if kind == "number":
        return st.one_of(
            st.floats(min_value=spec.get("min"), max_value=spec.get("max"), allow_nan=False),
            st.integers(),
        )
    if kind == "enum":
        return st.sampled_from(spec["values"])
    if kind == "ip":
        return st.one_of(st.ip_addresses().map(str), st.text(max_size=20))
    return st.booleans()


@st.composite
def schemas(draw) -> dict[str, Any]:
    names = draw(st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), max_size=5))
    schema = {name: draw(param_specs()) for name in names}
    try:
        validate_schema(schema)
    except ValueError:
        assume(False)  # e.g. a default that does not fit its own spec
    return schema


@st.composite
def schema_and_args(draw) -> tuple[dict[str, Any], Any]:
    schema = draw(schemas())
    if draw(st.integers(0, 9)) == 0:
        return schema, draw(json_values)  # not even an object, most of the time
    args = {}
    for name, spec in schema.items():
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        args[name] = draw(json_values if choice == 1 else arg_for(spec))
    if draw(st.integers(0, 4)) == 0:
        args[draw(st.text(max_size=8))] = draw(json_values)
    return schema, args


def satisfies(spec: dict[str, Any], value: Any) -> bool:
    """An independent statement of what a valid value is."""
    kind = spec["type"]
    if kind in ("string", "secret"):
        return (
            isinstance(value, str)
            and "\x00" not in value
            and spec.get("min_length", 0) <= len(value) <= spec.get("max_length", math.inf)
            and ("pattern" not in spec or _fullmatch(spec["pattern"], value))
        )
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(
            value, int if kind == "integer" else (int, float)
        ):
            return False
        return math.isfinite(value) and spec.get("min", -math.inf) <= value <= spec.get(
            "max", math.inf
        )
    if kind == "enum":
        return any(type(v) is type(value) and v == value for v in spec["values"])
    if kind == "ip":
        try:
            return isinstance(value, str) and str(ipaddress.ip_address(value)) == value
        except ValueError:
            return False
    return isinstance(value, bool)


def _fullmatch(pattern: str, value: str) -> bool:
    import re

    return re.fullmatch(pattern, value) is not None


class SchemaFuzz(unittest.TestCase):
    @FUZZ
    @given(schema_and_args())
    def test_validate_args(self, case):
        schema, args = case
        try:
            out = validate_args(schema, args)
        except ArgsError as e:
            self.assertIsInstance(e.message, str)
            return
        self.assertIsInstance(args, dict)
        self.assertLessEqual(set(args), set(schema))
        for name, spec in schema.items():
            if name in out:
                self.assertTrue(satisfies(spec, out[name]), (name, spec, out[name]))
            else:
                self.assertFalse(spec.get("required", True) or "default" in spec, name)

    @FUZZ
    @given(json_values)
    def test_validate_schema_on_any_json(self, value):
        try:
            validate_schema(value)
        except ValueError:
            pass

    @FUZZ
    @given(st.dictionaries(st.text(max_size=8), json_values, max_size=4), json_values)
    def test_validate_schema_on_near_valid_specs(self, extra, default):
        for kind in ("string", "secret", "integer", "number", "enum", "ip", "boolean"):
            spec = {"type": kind, **extra, "default": default}
            try:
                validate_schema({"p": spec})
            except ValueError:
                pass

    @FUZZ
    @given(schemas(), st.data())
    def test_redact_never_leaks(self, schema, data):
        marker = "s3cr3t-"
        plain = json_values.filter(lambda v: marker not in json.dumps(v))
        args = {}
        for name, spec in schema.items():
            if data.draw(st.booleans()):
                secret = spec["type"] == "secret"
                args[name] = (
                    marker + data.draw(st.text(max_size=10)) if secret else data.draw(plain)
                )
        # Unknown keys (a misspelt secret parameter) are redacted too.
        unknown = data.draw(st.dictionaries(st.text(max_size=8), st.text(max_size=10)))
        for key, value in unknown.items():
            if key not in schema:
                args[key] = marker + value
        out = redact_args(schema, args)
        self.assertEqual(set(out), set(args))
        self.assertNotIn(marker, json.dumps(out))
        for key, value in out.items():
            spec = schema.get(key)
            if spec is None or spec["type"] == "secret":
                self.assertEqual(value, REDACTED)
            else:
                self.assertEqual(value, args[key])
