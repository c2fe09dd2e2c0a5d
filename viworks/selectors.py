"""Agent selectors: which agents a fan-out targets (pure; no I/O).

A selector is comma-separated ``key=value`` terms, all of which must match
(AND). A value may list alternatives with ``|`` (OR within the term)::

    site=prod,role=edge|core
    id=gw-1|gw-7

``site`` (the agent's site) and ``id`` (its agent id) are reserved keys; every
other key is looked up in the agent's ``labels``. A label value that is not a
string is compared through ``str()``. Whitespace around terms, keys and values
is ignored. A key may appear only once (use ``|`` for alternatives), and an
empty selector is malformed: "every agent" is never implied by a typo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["RESERVED", "Selectable", "Selector", "SelectorError", "matches", "parse"]

#: Keys that are not labels: ``site`` is the agent's site, ``id`` its agent id.
RESERVED = frozenset({"site", "id"})

MAX_LENGTH = 4096
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")
_VALUE = re.compile(r"[^\s,|=]+")


class SelectorError(ValueError):
    """A malformed selector: ``term`` is the offending term, ``message`` why."""

    def __init__(self, term: str, message: str) -> None:
        super().__init__(f"selector term {term!r}: {message}")
        self.term = term
        self.message = message


class Selectable(Protocol):
    """What a selector looks at: an agent's id, site and labels (``viworks.backend.model``'s
    ``Agent`` and ``AgentSummary`` are)."""

    @property
    def agent_id(self) -> str: ...
    @property
    def site(self) -> str | None: ...
    @property
    def labels(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Selector:
    """A parsed selector: ``terms`` maps each key to its accepted values."""

    text: str
    terms: tuple[tuple[str, frozenset[str]], ...]

    def matches(self, agent: Selectable) -> bool:
        """Whether ``agent`` matches."""
        labels = agent.labels or {}
        for key, values in self.terms:
            actual: Any
            if key == "id":
                actual = agent.agent_id
            elif key == "site":
                actual = agent.site
            else:
                actual = labels.get(key)
            if actual is None or str(actual) not in values:
                return False
        return True

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> Selector:
    """Parse ``text``; raise :class:`SelectorError` naming the first bad term."""
    if not isinstance(text, str):
        raise SelectorError(repr(text), "a selector must be a string")
    if len(text) > MAX_LENGTH:
        raise SelectorError(text[:40] + "...", f"a selector is limited to {MAX_LENGTH} characters")
    if not text.strip():
        raise SelectorError(text, "empty selector (want key=value[,key=value...])")
    terms: dict[str, frozenset[str]] = {}
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            raise SelectorError(raw, "empty term (two commas, or a trailing comma)")
        key, eq, value = term.partition("=")
        key = key.strip()
        if not eq:
            raise SelectorError(term, "want key=value")
        if not _KEY.fullmatch(key):
            raise SelectorError(term, f"invalid key {key!r}")
        if key in terms:
            raise SelectorError(term, f"key {key!r} given twice; list alternatives with |")
        alternatives = [v.strip() for v in value.split("|")]
        for alternative in alternatives:
            if not _VALUE.fullmatch(alternative):
                what = "an empty value" if not alternative else f"invalid value {alternative!r}"
                raise SelectorError(term, what)
        terms[key] = frozenset(alternatives)
    canonical = ",".join(f"{k}={'|'.join(sorted(v))}" for k, v in terms.items())
    return Selector(canonical, tuple(terms.items()))


def matches(selector: Selector | str, agent: Selectable) -> bool:
    """Whether ``agent`` matches ``selector`` (parsed first if it is a string)."""
    if isinstance(selector, str):
        selector = parse(selector)
    return selector.matches(agent)
