"""The documentation's own consistency: every relative link resolves, the README stays a
front door.

Links are Markdown inline links ``[text](target)`` outside code blocks and code spans in
README.md and docs/*.md. A relative target must name an existing file; a ``#fragment``
on a Markdown file must be one of its headings, slugged as GitHub does (lower case,
punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for repeats).
"""

from __future__ import annotations

import glob
import os
import re

from twisted.trial import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def documents() -> list[str]:
    return [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(path: str) -> list[str]:
    """The relative links of one document that do not resolve, with the reason."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    problems = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # https:, mailto:, ...
        file_part, _, fragment = target.partition("#")
        resolved = (
            os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        )
        if not os.path.exists(resolved):
            problems.append(f"{target}: no such file")
            continue
        if fragment and resolved.endswith(".md"):
            with open(resolved, encoding="utf-8") as f:
                if fragment not in anchors(f.read()):
                    problems.append(f"{target}: no heading #{fragment}")
    return problems


class LinkTests(unittest.TestCase):
    def test_every_relative_link_resolves(self):
        """Each relative link in README.md and docs/*.md names an existing file and, for a
        Markdown file, an existing heading."""
        problems = {
            os.path.relpath(path, REPO): broken
            for path in documents()
            if (broken := broken_links(path))
        }
        self.assertEqual(problems, {})
        self.assertGreater(sum(len(links(open(p).read())) for p in documents()), 50)

    def test_checker_catches_broken_links(self):
        """The checker itself: a missing file, a missing heading, GitHub's slugs, and
        links inside code are not links."""
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "b.md"), "w") as f:
            f.write("# Title\n## `command` (B→A)\n## Same\n## Same\n```\n# not a heading\n```\n")
        page = os.path.join(directory, "a.md")
        with open(page, "w") as f:
            f.write(
                "[ok](b.md#command-ba) [ok](b.md#same-1) [ok](#local) [web](https://x.example/y)\n"
                "[gone](c.md) [bad](b.md#nope) [bad](b.md#not-a-heading)\n"
                "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n## Local\n"
            )
        self.assertEqual(
            broken_links(page),
            ["c.md: no such file", "b.md#nope: no heading #nope",
             "b.md#not-a-heading: no heading #not-a-heading"],
        )  # fmt: skip


#: A path into the package (``viworks/gateway/link.py``), not ``/etc/viworks/...``.
CODE_PATH = re.compile(r"(?<![/\w.-])viworks/[\w/.-]*[\w/]")


class CodePathTests(unittest.TestCase):
    def test_code_paths_exist(self):
        """Every file or directory of the package the documents name exists (modules move;
        the documents must follow)."""
        missing = {
            os.path.relpath(path, REPO): sorted(
                name
                for name in set(CODE_PATH.findall(open(path, encoding="utf-8").read()))
                if not os.path.exists(os.path.join(REPO, name))
            )
            for path in documents()
        }
        self.assertEqual({doc: names for doc, names in missing.items() if names}, {})
        self.assertIn(
            "viworks/gateway/verbs/builtin/", CODE_PATH.findall("`viworks/gateway/verbs/builtin/`")
        )
        self.assertEqual(
            CODE_PATH.findall("/etc/viworks/pki/ca.crt viworks/x.py."), ["viworks/x.py"]
        )


class ReadmeTests(unittest.TestCase):
    def test_front_door(self):
        """README.md starts with the two set-up commands, stays under 15 KB and points
        at the reference documents in docs/."""
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            text = f.read()
        self.assertLess(len(text.encode()), 15_000)
        first_block = text.split("```", 2)[1]
        commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
        self.assertEqual(commands, ["make run", "make test"])
        for name in ("configuration", "api", "cli", "operations", "troubleshooting", "internals"):
            self.assertIn(f"(docs/{name}.md)", text)
