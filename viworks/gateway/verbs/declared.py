"""Verbs an operator declares in ``[verbs.NAME]``: a program, argv and stdin templates.

Each argv element is rendered on its own from its template, so a value never splits into
several arguments and no shell is involved. A string value that would start an argv
element must not start with ``-`` (it would be read as an option). The stdin template
(the only place secrets may appear) is written to the process and stdin is then closed.
The result is ``None``; stdout and stderr are in the outcome.
"""

from __future__ import annotations

import copy
from typing import Any

from viworks.config.verbs import VerbConfig
from viworks.gateway.verbs.model import Invocation, Verb
from viworks.gateway.verbs.template import parse_template, render

__all__ = ["declared_verb"]


def declared_verb(name: str, vc: VerbConfig) -> Verb:
    """A :class:`Verb` for an operator's ``[verbs.NAME]`` declaration (already validated)."""
    if vc.argv is None:
        raise ValueError(f"verb {name!r}: a declared verb needs argv")
    params = copy.deepcopy(vc.params)
    argv_templates = [parse_template(item) for item in vc.argv]
    stdin_template = parse_template(vc.stdin) if vc.stdin is not None else None

    def build(args: dict[str, Any]) -> Invocation:
        argv = [render(t, args, params, guard_options=True) for t in argv_templates]
        stdin = None
        if stdin_template is not None:
            stdin = render(stdin_template, args, params).encode("utf-8")
        return Invocation(argv=argv, stdin=stdin)

    # A program named literally (no placeholder) is checked before each run.
    program = argv_templates[0]
    tools = (program[0][0],) if len(program) == 1 else ()
    return Verb(
        name=name,
        params=params,
        description=vc.description,
        changes_state=vc.changes_state,
        tools=tools,
        timeout=vc.timeout if vc.timeout is not None else Verb.timeout,
        output_cap=vc.output_cap if vc.output_cap is not None else Verb.output_cap,
        concurrency=vc.concurrency,
        no_output_timeout=vc.no_output_timeout,
        build=build,
    )
