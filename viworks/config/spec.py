"""The configuration engine: keys described by specs, loaded strictly, one-line errors.

Every key is described once, by a spec attached to the dataclass field that holds it
(``spec``): its TOML type, its default (or that it is required) and a check that
validates and normalises the value. ``load_file`` walks those specs, so adding a key
means adding one field. Any problem raises ``ConfigError`` whose text is one line naming
the file, the section and the key::

    /etc/viworks/agent.toml: [outbound] backend_url: must be a wss:// URL, got 'https://x'

Relative paths are resolved against the directory of the configuration file (``Ctx``).
Checks raise ``Invalid``; the engine turns it into the ``ConfigError`` naming the place.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REQUIRED",
    "Check",
    "ConfigError",
    "Ctx",
    "CrossCheck",
    "Invalid",
    "Sections",
    "Spec",
    "Table",
    "load_file",
    "load_section",
    "optional_section",
    "spec",
    "suggest",
    "toml_type",
]


class ConfigError(Exception):
    """A configuration problem; ``str()`` is a single line naming the file and the key."""

    def __init__(
        self, path: str, message: str, section: str | None = None, key: str | None = None
    ) -> None:
        self.path = path
        self.section = section
        self.key = key
        self.message = message
        super().__init__(path, message, section, key)

    def __str__(self) -> str:
        where = ""
        if self.section is not None:
            where = f"[{self.section}]"
            if self.key is not None:
                where += f" {self.key}"
            where += ": "
        text = f"{self.path}: {where}{self.message}"
        return " ".join(text.split())  # always one line


class Invalid(ValueError):
    """Raised by checks; ``subkey`` refines the key (``labels.rack``)."""

    def __init__(self, message: str, subkey: str | None = None) -> None:
        super().__init__(message)
        self.subkey = subkey


@dataclass(frozen=True)
class Ctx:
    """What checks may need beyond the value: where the file is, whether to open files."""

    base_dir: str
    check_files: bool


#: A key's check: the TOML value (type already checked) in, the value to keep out.
Check = Callable[[Any, Ctx], Any]
#: A section's check across its keys, run once every key is valid.
CrossCheck = Callable[[Mapping[str, Any]], None]

#: The default of a key that must be set.
REQUIRED: Any = object()


@dataclass(frozen=True)
class Spec:
    kind: str  # "string", "integer", "number", "boolean", "table", "string table", "string array"
    default: Any = REQUIRED
    check: Check | None = None


def spec(kind: str, default: Any = REQUIRED, check: Check | None = None) -> Any:
    """A dataclass field described by its TOML type, default and check."""
    return field(metadata={"spec": Spec(kind, default, check)})


def toml_type(value: object) -> str:
    """The TOML name of ``value``'s type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def _coerce(kind: str, value: Any) -> Any:
    """Check the TOML type of ``value``; bool is never a number, an integer is a number."""
    actual = toml_type(value)
    if kind == "string" and actual == "string":
        return value
    if kind == "integer" and actual == "integer":
        return value
    if kind == "number" and actual in ("integer", "float"):
        return float(value)
    if kind == "boolean" and actual == "boolean":
        return value
    if kind == "table" and actual == "table":
        return copy.deepcopy(value)
    if kind == "string array" and actual == "array":
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise Invalid(f"item {i} must be a string, got {toml_type(item)}")
        return tuple(value)
    if kind == "string table" and actual == "table":
        for k, v in value.items():
            if not isinstance(v, str):
                raise Invalid(f"must be a string, got {toml_type(v)}", subkey=k)
        return dict(value)
    expected = {"number": "a number", "integer": "an integer", "boolean": "a boolean"}.get(
        kind, f"a {kind}"
    )
    raise Invalid(f"expected {expected}, got {actual} ({value!r})")


def suggest(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a configuration file") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read configuration file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not valid UTF-8: {e.reason}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"TOML syntax error: {e}") from None


def load_section(
    path: str, name: str, cls: type, checks: tuple[CrossCheck, ...], table: Any, ctx: Ctx
) -> Any:
    """An instance of ``cls`` (a dataclass of ``spec`` fields) from section ``name``."""

    def fail(message: str, key: str | None = None) -> ConfigError:
        return ConfigError(path, message, section=name, key=key)

    if not isinstance(table, dict):
        raise fail(f"must be a table, got {toml_type(table)}")
    specs: dict[str, Spec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}
    for key in table:
        if key not in specs:
            raise fail(f"unknown key{suggest(key, list(specs))}", key)
    values: dict[str, Any] = {}
    for key, key_spec in specs.items():
        if key not in table:
            if key_spec.default is REQUIRED:
                raise fail("required key is missing", key)
            raw, convert = key_spec.default, False
        else:
            raw, convert = table[key], True
        try:
            value = _coerce(key_spec.kind, raw) if convert else raw
            if isinstance(value, dict):
                value = dict(value)
            # Defaults go through the check too, so default paths are normalised the
            # same way; defaults never need the file-existence check (no file defaults).
            if key_spec.check is not None:
                value = key_spec.check(value, ctx)
        except Invalid as e:
            subkey = f"{key}.{e.subkey}" if e.subkey else key
            raise fail(str(e), subkey) from None
        values[key] = value
    for check in checks:
        try:
            check(values)
        except Invalid as e:
            raise fail(str(e), e.subkey) from None
    return cls(**values)


#: section name -> (dataclass, cross-key checks run after every key is valid)
Sections = Mapping[str, tuple[type, tuple[CrossCheck, ...]]]


@dataclass(frozen=True)
class Table:
    """A top-level name loaded by its own function: named subtables, an optional section.

    ``load(path, value, ctx)`` gets the file's value for the name (``{}`` when it is
    missing); an ``optional`` table that is missing is ``None`` instead.
    """

    load: Callable[[str, Any, Ctx], Any]
    optional: bool = False


def optional_section(name: str, cls: type) -> Table:
    """A section that may be left out (``None`` then), with no cross-key checks."""

    def load(path: str, table: Any, ctx: Ctx) -> Any:
        return load_section(path, name, cls, (), table, ctx)

    return Table(load, optional=True)


def load_file(
    path: str, sections: Sections, check_files: bool, tables: Mapping[str, Table] | None = None
) -> dict[str, Any]:
    """The keyword arguments of a configuration class: ``path`` and each section loaded.

    Every name in ``sections`` is loaded (a missing section gets its defaults); ``tables``
    are loaded by their own functions. Any other top-level name is an error.
    """
    path = os.path.abspath(os.fspath(path))
    tables = tables or {}
    data = _read_toml(path)
    for name in data:
        if name not in sections and name not in tables:
            names = [*sections, *tables]
            known = ", ".join(f"[{s}]" for s in names)
            raise ConfigError(
                path, f"unknown section [{name}]{suggest(name, names)}; known: {known}"
            )
    ctx = Ctx(base_dir=os.path.dirname(path), check_files=check_files)
    loaded: dict[str, Any] = {"path": path}
    for name, (cls, checks) in sections.items():
        loaded[name] = load_section(path, name, cls, checks, data.get(name, {}), ctx)
    for name, table in tables.items():
        if table.optional and name not in data:
            loaded[name] = None
        else:
            loaded[name] = table.load(path, data.get(name, {}), ctx)
    return loaded
