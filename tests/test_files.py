"""Tests for viworks.files: reading operators' files with one-line errors."""

from __future__ import annotations

import os

from twisted.trial import unittest

from viworks.files import one_line, read_bytes, read_text


class Refused(Exception):
    pass


class FilesTests(unittest.TestCase):
    def test_one_line(self) -> None:
        """Whitespace runs (newlines too) become one space; empty text gives the type."""
        self.assertEqual(one_line(ValueError("a\n  b\tc ")), "a b c")
        self.assertEqual(one_line(KeyError()), "KeyError")

    def test_read_bytes(self) -> None:
        """The bytes of a file; a file that cannot be read raises the caller's error with
        a one-line reason, not an OSError."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\x00pem")
        self.assertEqual(read_bytes(path, Refused), b"\x00pem")
        error = self.assertRaises(Refused, read_bytes, path + ".missing", Refused)
        self.assertEqual(str(error), "cannot read: No such file or directory")
        error = self.assertRaises(Refused, read_bytes, os.path.dirname(path), Refused)
        self.assertEqual(str(error), "cannot read: Is a directory")

    def test_read_text(self) -> None:
        """Text with undecodable bytes replaced (a /proc file is not always UTF-8)."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"ok \xff")
        self.assertEqual(read_text(path), "ok \ufffd")
