"""Agent selectors: parsing, matching and the errors that name the bad term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.trial import unittest

from viworks.selectors import SelectorError, matches, parse


@dataclass(frozen=True)
class Agent:
    """What a selector looks at (the backend's Agent and AgentSummary have these)."""

    agent_id: str
    site: str | None
    labels: Any


EDGE = Agent("gw-1", "prod", {"role": "edge", "region": "eu"})
CORE = Agent("gw-7", "prod", {"role": "core"})
LAB = Agent("gw-9", "lab", {"role": "edge", "count": 3})
BARE = Agent("gw-0", None, None)


class SelectorTests(unittest.TestCase):
    def test_terms_and_alternatives(self):
        """Terms AND together; ``|`` lists alternatives for one key."""
        selector = parse("site=prod,role=edge|core")
        self.assertEqual(
            [a.agent_id for a in (EDGE, CORE, LAB, BARE) if selector.matches(a)],
            ["gw-1", "gw-7"],
        )
        self.assertFalse(matches("site=prod,role=core", EDGE))
        self.assertTrue(matches("role=edge,region=eu", EDGE))

    def test_reserved_keys(self):
        """``id`` is the agent id and ``site`` the agent's site, not labels."""
        self.assertTrue(matches("id=gw-1|gw-7", EDGE))
        self.assertTrue(matches("id=gw-1|gw-7", CORE))
        self.assertFalse(matches("id=gw-1|gw-7", LAB))
        self.assertTrue(matches("site=lab", LAB))
        # A label called "site" does not stand in for the agent's site.
        self.assertFalse(matches("site=x", Agent("a", "y", {"site": "x"})))

    def test_missing_labels_and_values(self):
        """An agent without the label (or without labels/site at all) does not match."""
        self.assertFalse(matches("region=eu", CORE))
        self.assertFalse(matches("role=edge", BARE))
        self.assertFalse(matches("site=prod", BARE))
        self.assertTrue(matches("id=gw-0", BARE))

    def test_non_string_label_values(self):
        """Label values that are not strings are compared as their str()."""
        self.assertTrue(matches("count=3", LAB))

    def test_whitespace_and_canonical_text(self):
        """Spaces around terms are ignored; the parsed text is canonical."""
        selector = parse(" site = prod , role=core | edge ")
        self.assertTrue(selector.matches(EDGE))
        self.assertEqual(str(selector), "site=prod,role=core|edge")

    def test_malformed(self):
        """Each malformed selector raises SelectorError naming the offending term."""
        cases = {
            "": "",
            "   ": "   ",
            "site": "site",
            "site=prod,role": "role",
            "site=prod,,role=edge": "",
            "site=prod,": "",
            "=prod": "=prod",
            "site=": "site=",
            "role=edge||core": "role=edge||core",
            "role=edge|": "role=edge|",
            "role=a=b": "role=a=b",
            "ro le=edge": "ro le=edge",
            "site=a,site=b": "site=b",
        }
        for text, term in cases.items():
            with self.assertRaises(SelectorError, msg=text) as caught:
                parse(text)
            self.assertEqual(caught.exception.term.strip(), term.strip(), text)
            self.assertIn(repr(caught.exception.term), str(caught.exception))

    def test_not_a_string(self):
        """A selector that is not a string is malformed, not a crash."""
        with self.assertRaises(SelectorError):
            parse(["site=prod"])  # type: ignore[arg-type]

    def test_too_long(self):
        """Absurdly long selectors are refused."""
        with self.assertRaises(SelectorError):
            parse("id=" + "|".join(f"gw-{i}" for i in range(2000)))
