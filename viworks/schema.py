"""Verb parameter schemas: validation of schemas and of arguments.

Pure functions with no I/O, shared by the backend (which checks arguments
before sending a command) and the gateway (which checks them again before
running anything).

A schema is a JSON-able dict ``{param_name: spec}``. Every spec has a
``type`` and optionally ``required`` (default true), ``default`` and
``description``. Per type:

- ``string``: ``pattern`` (``re.fullmatch``), ``min_length``, ``max_length``
- ``secret``: like ``string``; the value is never logged or stored
- ``integer`` / ``number``: ``min``, ``max`` (bool is neither)
- ``enum``: ``values`` (a non-empty list of JSON scalars)
- ``ip``: an IPv4 or IPv6 address (normalised by :mod:`ipaddress`)
- ``boolean``

Error messages never contain argument values, so they are safe to log and to
send back to callers even when the value was a secret.
"""

from __future__ import annotations

import copy
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ArgsError", "REDACTED", "redact", "validate_args", "validate_schema"]

REDACTED = "***"

_COMMON_KEYS = frozenset({"type", "required", "default", "description"})
_TYPE_KEYS: dict[str, frozenset[str]] = {
    "string": frozenset({"pattern", "min_length", "max_length"}),
    "secret": frozenset({"pattern", "min_length", "max_length"}),
    "integer": frozenset({"min", "max"}),
    "number": frozenset({"min", "max"}),
    "enum": frozenset({"values"}),
    "ip": frozenset(),
    "boolean": frozenset(),
}


class ArgsError(ValueError):
    """Arguments do not match a verb's schema.

    ``field`` names the offending parameter (``None`` when the arguments as a
    whole are wrong); ``message`` never includes the offending value.
    """

    code = "INVALID_ARGS"

    def __init__(self, field: str | None, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field is not None else message)


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but True is not a valid integer argument.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def validate_schema(params: object) -> None:
    """Check that a parameter schema is well formed.

    Raises :class:`ValueError` naming the offending parameter. Unknown spec
    keys are errors so that typos (``"max_lenght"``) do not silently disable a
    check.
    """
    if not isinstance(params, Mapping):
        raise ValueError("schema must be an object mapping parameter names to specs")
    for name, spec in params.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"parameter name {name!r} must be a non-empty string")
        _validate_spec(name, spec)


def _validate_spec(name: str, spec: object) -> None:
    if not isinstance(spec, Mapping):
        raise ValueError(f"parameter {name!r}: spec must be an object")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in _TYPE_KEYS:
        raise ValueError(f"parameter {name!r}: unknown type {kind!r}")
    unknown = set(spec) - _COMMON_KEYS - _TYPE_KEYS[kind]
    if unknown:
        raise ValueError(f"parameter {name!r}: unknown keys {sorted(unknown)!r}")
    if "required" in spec and not isinstance(spec["required"], bool):
        raise ValueError(f"parameter {name!r}: 'required' must be a boolean")
    if "description" in spec and not isinstance(spec["description"], str):
        raise ValueError(f"parameter {name!r}: 'description' must be a string")

    if kind in ("string", "secret"):
        for key in ("min_length", "max_length"):
            if key in spec and not (_is_int(spec[key]) and spec[key] >= 0):
                raise ValueError(f"parameter {name!r}: {key!r} must be a non-negative integer")
        if spec.get("min_length", 0) > spec.get("max_length", math.inf):
            raise ValueError(f"parameter {name!r}: min_length exceeds max_length")
        if "pattern" in spec:
            if not isinstance(spec["pattern"], str):
                raise ValueError(f"parameter {name!r}: 'pattern' must be a string")
            try:
                re.compile(spec["pattern"])
            except re.error as e:
                raise ValueError(f"parameter {name!r}: bad pattern: {e}") from None
    elif kind in ("integer", "number"):
        check = _is_int if kind == "integer" else _is_number
        for key in ("min", "max"):
            if key in spec and not check(spec[key]):
                raise ValueError(f"parameter {name!r}: {key!r} must be a finite {kind}")
        if spec.get("min", -math.inf) > spec.get("max", math.inf):
            raise ValueError(f"parameter {name!r}: min exceeds max")
    elif kind == "enum":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"parameter {name!r}: 'values' must be a non-empty list")
        for v in values:
            if not (v is None or isinstance(v, (str, bool)) or _is_number(v)):
                raise ValueError(f"parameter {name!r}: enum values must be JSON scalars")

    if "default" in spec:
        if kind == "secret":
            # A default secret would be a credential baked into a schema.
            raise ValueError(f"parameter {name!r}: secrets cannot have a default")
        try:
            _check_value(name, spec, spec["default"])
        except ArgsError as e:
            raise ValueError(f"parameter {name!r}: default is invalid: {e.message}") from None


def validate_args(params: Mapping[str, Any], args: object) -> dict[str, Any]:
    """Validate ``args`` against the (well-formed) schema ``params``.

    Returns a new dict holding the validated values (IP addresses normalised)
    with defaults filled in; optional parameters without a default that were
    not given are absent. Raises :class:`ArgsError` on the first problem.
    """
    if not isinstance(args, Mapping):
        raise ArgsError(None, "arguments must be a JSON object")
    for key in args:
        if key not in params:
            # The key is caller-chosen text; keep it out of the message.
            raise ArgsError(str(key), "unknown parameter")
    out: dict[str, Any] = {}
    for name, spec in params.items():
        if name in args:
            out[name] = _check_value(name, spec, args[name])
        elif "default" in spec:
            out[name] = copy.deepcopy(spec["default"])
        elif spec.get("required", True):
            raise ArgsError(name, "missing required parameter")
    return out


def _check_value(name: str, spec: Mapping[str, Any], value: object) -> Any:
    kind = spec["type"]
    if kind in ("string", "secret"):
        if not isinstance(value, str):
            raise ArgsError(name, "must be a string")
        if "\x00" in value:
            # NUL cannot be passed in argv and is never legitimate here.
            raise ArgsError(name, "must not contain NUL characters")
        if len(value) < spec.get("min_length", 0):
            raise ArgsError(name, f"must be at least {spec['min_length']} characters")
        if "max_length" in spec and len(value) > spec["max_length"]:
            raise ArgsError(name, f"must be at most {spec['max_length']} characters")
        if "pattern" in spec and re.fullmatch(spec["pattern"], value) is None:
            raise ArgsError(name, "does not match the required pattern")
        return value
    if kind in ("integer", "number"):
        if kind == "integer" and not _is_int(value):
            raise ArgsError(name, "must be an integer")
        if kind == "number" and not _is_number(value):
            raise ArgsError(name, "must be a finite number")
        if "min" in spec and value < spec["min"]:  # type: ignore[operator]
            raise ArgsError(name, f"must be >= {spec['min']}")
        if "max" in spec and value > spec["max"]:  # type: ignore[operator]
            raise ArgsError(name, f"must be <= {spec['max']}")
        return value
    if kind == "enum":
        # Compare types too: in Python True == 1 and 1 == 1.0.
        if not any(type(v) is type(value) and v == value for v in spec["values"]):
            raise ArgsError(name, "must be one of the allowed values")
        return value
    if kind == "ip":
        if not isinstance(value, str):
            raise ArgsError(name, "must be an IP address string")
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ArgsError(name, "must be a valid IPv4 or IPv6 address") from None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ArgsError(name, "must be a boolean")
        return value
    raise ArgsError(name, "has an unknown type in the schema")


def redact(params: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``args`` safe to log or store.

    Secret-typed values become ``"***"``. Values of keys the schema does not
    know are redacted too: a misspelt secret parameter must not leak.
    """
    if not isinstance(args, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in args.items():
        spec = params.get(key)
        if not isinstance(spec, Mapping) or spec.get("type") == "secret":
            out[key] = REDACTED
        else:
            out[key] = copy.deepcopy(value)
    return out
