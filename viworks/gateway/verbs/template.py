"""The template language of declared verbs' ``argv`` and ``stdin`` (``[verbs.NAME]``).

``{name}`` is a placeholder for parameter ``name``; ``{{`` and ``}}`` are literal braces;
any other brace is an error. No format specs, indexing or attributes: a value is
inserted as text, never through a shell. The config loader parses templates to refuse
bad ones at start-up; the declared verb renders them for each run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from viworks import schema

__all__ = ["Template", "parse_template", "render"]

#: ``(literal, parameter name or None)`` pairs; the last name is always None.
Template = tuple[tuple[str, str | None], ...]

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


def parse_template(text: str) -> Template:
    """Split a template into ``(literal, param_name_or_None)`` pairs; raise ValueError.

    ``"--config={path}"`` gives ``(("--config=", "path"), ("", None))``.
    """
    parts: list[tuple[str, str | None]] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif m.group(1) is not None:
            parts.append(("".join(literal), m.group(1)))
            literal = []
        else:
            raise ValueError(
                f"unmatched {token!r} at position {m.start()} (placeholders are {{name}};"
                f" write {token * 2!r} for a literal brace)"
            )
    literal.append(text[pos:])
    parts.append(("".join(literal), None))
    return tuple(parts)


def render(
    template: Template,
    args: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    guard_options: bool = False,
) -> str:
    """``template`` with each placeholder replaced by its (validated) argument as text.

    ``guard_options``: a ``string`` value that starts the rendered text must not start
    with ``-`` (as an argv element it would be read as an option).

    :raises viworks.schema.ArgsError: a placeholder without a value, or a guarded value.
    """
    out: list[str] = []
    for literal, name in template:
        out.append(literal)
        if name is None:
            continue
        if name not in args:  # the config loader forbids optional params without a default
            raise schema.ArgsError(name, "missing required parameter")
        text = _as_text(args[name])
        starts_element = not "".join(out)
        kind = params[name]["type"]
        if guard_options and starts_element and kind == "string" and text.startswith("-"):
            raise schema.ArgsError(name, "must not start with '-' (it would be read as an option)")
        out.append(text)
    return "".join(out)


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)
