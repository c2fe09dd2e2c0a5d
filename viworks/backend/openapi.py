"""The API's OpenAPI 3.1 description (``GET /api/v1/openapi.json``).

The source is ``openapi.yaml`` beside this module, written by hand next to the routes and
shipped as package data (``docs/openapi.yaml`` links to it): YAML so that it can be read
and reviewed, with comments. It is parsed once, on first use.
``tests/backend/test_openapi.py`` keeps it and the routes in step.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

SOURCE = "openapi.yaml"


@functools.cache
def description() -> dict[str, Any]:
    """The description as a JSON-able dict (parsed once; do not modify it)."""
    text = resources.files(__package__).joinpath(SOURCE).read_text(encoding="utf-8")
    # The C parser where PyYAML has it (several times faster), else the pure-Python one.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(text, Loader=loader)
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3.1"):
        raise ValueError(f"{SOURCE} is not an OpenAPI 3.1 document")
    return document
