"""Verb parameter schemas: validation of schemas and of arguments.

Pure functions with no I/O, shared by the backend (which checks arguments
before sending a command) and the gateway (which checks them again before
running anything).

A schema is a JSON-able dict ``{param_name: spec}``. Every spec has a
``type`` and optionally ``required`` (default true), ``default`` and
``description``. Per type:

- ``string``: ``pattern`` (a full match, RE2 syntax), ``min_length``, ``max_length``
- ``secret``: like ``string``; the value is never logged or stored
- ``integer`` / ``number``: ``min``, ``max`` (bool is neither)
- ``enum``: ``values`` (a non-empty list of JSON scalars)
- ``ip``: an IPv4 or IPv6 address (normalised by :mod:`ipaddress`)
- ``boolean``

Redacting secret arguments for storage is :func:`viworks.redaction.redact_args`.
Error messages never contain argument values, so they are safe to log and to
send back to callers even when the value was a secret.

Schemas come from agents (their HELLO), so patterns are attacker input: they run
on RE2 (``google-re2``), which matches in time linear in the input and refuses
what would need backtracking (backreferences, lookaround). Every cost is
bounded: pattern length and RE2 memory, the number of verbs, parameters and
patterns in one announcement, the length of names and of a string checked
against a pattern.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import math
from collections.abc import Mapping
from typing import Any

import re2

__all__ = [
    "ArgsError",
    "SchemaError",
    "validate_args",
    "validate_schema",
    "validate_verbs",
]

#: Longest ``pattern`` accepted, in characters.
MAX_PATTERN_LENGTH = 1000
#: Memory RE2 may use for one pattern (program and DFA cache). It bounds the time a
#: compilation takes and the work per character matched (docs/benchmarks.md, "Figures
#: behind the code"); a pattern that needs more is refused. More memory would make both
#: worse.
PATTERN_MAX_MEM = 1 << 20
#: Longest string checked against a pattern: matching is linear in it, and the worst
#: patterns within PATTERN_MAX_MEM are slow per character.
MAX_PATTERN_SUBJECT = 1024
#: Longest verb or parameter name.
MAX_NAME_LENGTH = 64
#: Parameters one verb may declare.
MAX_PARAMS = 64
#: Verbs one announcement (HELLO) may declare.
MAX_VERBS = 256
#: Distinct patterns one announcement may declare (each costs a compilation).
MAX_PATTERNS = 32

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = PATTERN_MAX_MEM
_RE2_OPTIONS.log_errors = False  # RE2 would print every refused pattern on stderr

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


class SchemaError(ValueError):
    """A schema (or a verb announcement) that is refused.

    ``verb`` and ``param`` name where the problem is, when it is in one verb or
    one parameter; the message names them too.
    """

    def __init__(self, message: str, verb: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.verb = verb
        self.param = param


@functools.lru_cache(maxsize=128)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program for ``pattern``, cached; raises ``re2.error``.

    re2 has a cache of its own, but its lookup reads every option each time (it costs
    more than the match): every argument checked goes through here.
    """
    return re2.compile(pattern, _RE2_OPTIONS)


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but True is not a valid integer argument.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def validate_schema(params: object) -> None:
    """Check that a parameter schema is well formed.

    Raises :class:`SchemaError` naming the offending parameter. Unknown spec
    keys are errors so that typos (``"max_lenght"``) do not silently disable a
    check.
    """
    if not isinstance(params, Mapping):
        raise SchemaError("schema must be an object mapping parameter names to specs")
    if len(params) > MAX_PARAMS:
        raise SchemaError(f"more than {MAX_PARAMS} parameters")
    for name, spec in params.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise SchemaError(
                f"parameter name {_shown(name)} must be a string of 1 to {MAX_NAME_LENGTH}"
                " characters"
            )
        try:
            _validate_spec(name, spec)
        except (ValueError, TypeError) as e:
            raise SchemaError(str(e), param=name) from None


def validate_verbs(verbs: object) -> None:
    """Check the verbs an agent announces (``hello.verbs``): names, counts and schemas.

    Raises :class:`SchemaError` naming the verb (and the parameter) at fault. The
    counts are checked before any pattern is compiled, so a refused announcement
    costs little.
    """
    if not isinstance(verbs, Mapping):
        raise SchemaError("verbs must be an object")
    if len(verbs) > MAX_VERBS:
        raise SchemaError(f"more than {MAX_VERBS} verbs")
    patterns: set[str] = set()
    for verb, description in verbs.items():
        if not isinstance(verb, str) or not verb or len(verb) > MAX_NAME_LENGTH:
            raise SchemaError(
                f"verb name {_shown(verb)} must be a string of 1 to {MAX_NAME_LENGTH} characters"
            )
        if not isinstance(description, Mapping):
            raise SchemaError(f"verb {verb!r}: description must be an object", verb)
        params = description.get("params", {})
        if isinstance(params, Mapping):
            patterns.update(
                spec["pattern"]
                for spec in params.values()
                if isinstance(spec, Mapping) and isinstance(spec.get("pattern"), str)
            )
    if len(patterns) > MAX_PATTERNS:
        raise SchemaError(f"more than {MAX_PATTERNS} distinct patterns")
    for verb, description in verbs.items():
        try:
            validate_schema(description.get("params", {}))
        except SchemaError as e:
            raise SchemaError(f"verb {verb!r}: {e}", verb, e.param) from None


def _shown(value: object) -> str:
    """An agent's value for an error message, as its repr, shortened: it may be huge."""
    return _clipped(repr(value))


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_NAME_LENGTH + 2 else text[:MAX_NAME_LENGTH] + "..."


def _validate_spec(name: str, spec: object) -> None:
    if not isinstance(spec, Mapping):
        raise ValueError(f"parameter {name!r}: spec must be an object")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in _TYPE_KEYS:
        raise ValueError(f"parameter {name!r}: unknown type {_shown(kind)}")
    unknown = set(spec) - _COMMON_KEYS - _TYPE_KEYS[kind]
    if unknown:
        raise ValueError(f"parameter {name!r}: unknown keys {_shown(sorted(unknown))}")
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
            _check_pattern(name, spec["pattern"])
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


def _check_pattern(name: str, pattern: object) -> None:
    if not isinstance(pattern, str):
        raise ValueError(f"parameter {name!r}: 'pattern' must be a string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"parameter {name!r}: pattern longer than {MAX_PATTERN_LENGTH} characters")
    try:
        compile_pattern(pattern)
    except re2.error as e:
        reason = e.args[0] if e.args else b"refused"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"parameter {name!r}: bad pattern: {_clipped(reason)} (RE2 syntax, linear time:"
            f" no backreferences or lookaround, at most {PATTERN_MAX_MEM >> 20} MiB compiled)"
        ) from None
    except UnicodeEncodeError:
        raise ValueError(f"parameter {name!r}: pattern is not valid Unicode") from None


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
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (JSON allows it): no program can be given it.
                raise ArgsError(name, "must be valid Unicode text") from None
        if len(value) < spec.get("min_length", 0):
            raise ArgsError(name, f"must be at least {spec['min_length']} characters")
        if "max_length" in spec and len(value) > spec["max_length"]:
            raise ArgsError(name, f"must be at most {spec['max_length']} characters")
        if "pattern" in spec:
            if len(value) > MAX_PATTERN_SUBJECT:
                raise ArgsError(
                    name, f"must be at most {MAX_PATTERN_SUBJECT} characters to check its pattern"
                )
            try:
                program = compile_pattern(spec["pattern"])
            except re2.error:
                # A schema stored before patterns had to run on RE2 (the agent must upgrade).
                raise ArgsError(name, "has a pattern that cannot be checked (not RE2)") from None
            if program.fullmatch(value) is None:
                raise ArgsError(name, "does not match the required pattern")
        return value
    if kind in ("integer", "number"):
        if kind == "integer" and not _is_int(value):
            raise ArgsError(name, "must be an integer")
        if kind == "number" and not _is_number(value):
            raise ArgsError(name, "must be a finite number")
        if "min" in spec and value < spec["min"]:
            raise ArgsError(name, f"must be >= {spec['min']}")
        if "max" in spec and value > spec["max"]:
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

