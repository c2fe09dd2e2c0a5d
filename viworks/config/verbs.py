"""The agent's ``[verbs.NAME]`` tables: tune a built-in verb, or declare a new one.

Each table is loaded with the same field specs as any section (as section
``verbs.NAME``). A built-in verb (``viworks.gateway.verbs.builtin.BUILTIN_VERBS``: the
gateway owns that list) may only have ``BUILTIN_VERB_KEYS`` set; any other name
declares a verb run from its ``argv``/``stdin`` templates
(``viworks.gateway.verbs.template``) over a parameter schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from viworks.config import checks
from viworks.config.spec import ConfigError, Ctx, Invalid, load_section, spec, suggest, toml_type
from viworks.gateway.verbs.builtin import BUILTIN_VERBS
from viworks.gateway.verbs.template import parse_template
from viworks.schema import validate_schema

__all__ = ["BUILTIN_VERB_KEYS", "VerbConfig", "load_verbs"]

#: What a ``[verbs.NAME]`` table for a built-in verb may set.
BUILTIN_VERB_KEYS = ("timeout", "output_cap", "concurrency", "no_output_timeout", "enabled")
_VERB_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _template(value: str | None, ctx: Ctx) -> str | None:
    if value is not None:
        checks.parsed(parse_template, value)
    return value


def _argv(value: tuple[str, ...] | None, ctx: Ctx) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value:
        raise Invalid("must not be empty")
    if not os.path.isabs(value[0]):
        raise Invalid(f"item 0 must be an absolute path to the program, got {value[0]!r}")
    for i, item in enumerate(value):
        try:
            parts = parse_template(item)
        except ValueError as e:
            raise Invalid(f"item {i}: {e}") from None
        if i == 0 and len(parts) > 1:
            raise Invalid(f"item 0 (the program) must not contain placeholders, got {item!r}")
    return value


def _param_specs(value: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    for name, param in value.items():
        if not _PARAM_NAME.fullmatch(name):
            raise Invalid(
                "parameter names must be 1-64 letters, digits or '_', not starting with a digit",
                subkey=name,
            )
        if not isinstance(param, dict):
            raise Invalid(
                f'must be a table such as {{type = "string"}}, got {toml_type(param)}',
                subkey=name,
            )
        try:
            validate_schema({name: param})
        except ValueError as e:
            message = str(e).removeprefix(f"parameter {name!r}: ")
            raise Invalid(message, subkey=name) from None
    return value


def _check_templates(values: Mapping[str, Any]) -> None:
    """Every placeholder names a declared parameter that always has a value; no secret in argv."""
    params = values["params"]
    templates = [("argv", item) for item in values["argv"] or ()]
    if values["stdin"] is not None:
        templates.append(("stdin", values["stdin"]))
    for key, template in templates:
        for _literal, name in parse_template(template):
            if name is None:
                continue
            param = params.get(name)
            if param is None:
                raise Invalid(
                    f"placeholder {{{name}}} does not name a parameter in params"
                    f"{suggest(name, list(params))}",
                    subkey=key,
                )
            if key == "argv" and param["type"] == "secret":
                raise Invalid(
                    f"placeholder {{{name}}} is a secret: secrets may only be passed on stdin"
                    " (other users can read a process's argv)",
                    subkey=key,
                )
            if param.get("required", True) is False and "default" not in param:
                raise Invalid(
                    f"placeholder {{{name}}} names an optional parameter without a default",
                    subkey=key,
                )


@dataclass(frozen=True)
class VerbConfig:
    """One ``[verbs.NAME]`` table: overrides of a built-in verb, or a declared verb.

    ``None`` means "not set": a built-in keeps its own value, a declared verb gets the
    gateway default (timeout 30 s, output cap 64 KiB, no concurrency limit).  ``argv`` and
    ``stdin`` are templates (see ``parse_template``) over ``params``, a schema checked with
    ``viworks.schema.validate_schema``.  Built-in verbs accept only ``timeout``,
    ``output_cap``, ``concurrency``, ``no_output_timeout`` and ``enabled``; a declared verb
    requires ``argv``. ``concurrency`` caps how many run at once (beyond it they wait in the
    gateway's queue); ``no_output_timeout`` kills a run that stays silent that long.
    """

    argv: tuple[str, ...] | None = spec("string array", None, _argv)
    stdin: str | None = spec("string", None, _template)
    timeout: float | None = spec("number", None, checks.optional(checks.positive))
    output_cap: int | None = spec("integer", None, checks.optional(checks.at_least(1024)))
    concurrency: int | None = spec("integer", None, checks.optional(checks.at_least(1)))
    no_output_timeout: float | None = spec("number", None, checks.optional(checks.positive))
    changes_state: bool = spec("boolean", True)
    description: str = spec("string", "")
    params: dict[str, Any] = spec("table", {}, _param_specs)
    enabled: bool = spec("boolean", True)


def load_verbs(path: str, table: Any, ctx: Ctx) -> dict[str, VerbConfig]:
    """The ``[verbs]`` table of ``path``: one ``VerbConfig`` per ``[verbs.NAME]``."""
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table, got {toml_type(table)}", section="verbs")
    known_keys = {f.name for f in fields(VerbConfig)}
    verbs: dict[str, VerbConfig] = {}
    for name, sub in table.items():
        section = f"verbs.{name}"
        if not _VERB_NAME.fullmatch(name):
            raise ConfigError(
                path,
                f"invalid verb name {name!r}: must be 1-64 characters of a-z, 0-9 and '_',"
                " starting with a letter",
                section=section,
            )
        if name in BUILTIN_VERBS and isinstance(sub, dict):
            for key in sub:
                if key in known_keys and key not in BUILTIN_VERB_KEYS:
                    raise ConfigError(
                        path,
                        f"cannot be set for the built-in verb {name!r} (only"
                        f" {', '.join(BUILTIN_VERB_KEYS)}); declare a new verb under another"
                        " name instead",
                        section=section,
                        key=key,
                    )
        verb = load_section(path, section, VerbConfig, (_check_templates,), sub, ctx)
        if name not in BUILTIN_VERBS and verb.argv is None:
            raise ConfigError(
                path,
                "required key is missing (a declared verb needs the program to run;"
                f" built-in verbs are {', '.join(sorted(BUILTIN_VERBS))})",
                section=section,
                key="argv",
            )
        verbs[name] = verb
    return verbs
