"""viworks.runtime: the garbage-collector and allocator settings of a long-running service."""

from __future__ import annotations

import gc
import subprocess
import sys

from twisted.trial import unittest

from tests.processes import ENV, ROOT
from viworks.runtime import THRESHOLDS, tune_gc

# Frees 64 buffers of 1 MiB (JSON, as frames and events are) with smaller allocations
# between them, after glibc has raised its mmap threshold; prints the MiB not returned.
RETENTION = """
import json, sys
from viworks.runtime import release_large_buffers
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
if sys.argv[1] == "tuned":
    assert release_large_buffers()
first = json.dumps("x" * (1 << 20)); del first
base = rss()
kept, buffers = [], []
for _ in range(64):
    buffers.append(json.dumps("y" * (1 << 20)).encode())
    kept.append(json.dumps("z" * 3000).encode())
del buffers
print((rss() - base) / (1 << 20))
"""


class TuneGcTests(unittest.TestCase):
    def setUp(self) -> None:
        # Process-wide state: put it back for the rest of the test run.
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        self.addCleanup(gc.unfreeze)

    def test_thresholds(self) -> None:
        """Collections become rarer: the documented thresholds, or the ones given."""
        tune_gc()
        self.assertEqual(gc.get_threshold(), THRESHOLDS)
        tune_gc((1000, 5, 5))
        self.assertEqual(gc.get_threshold(), (1000, 5, 5))

    def test_startup_objects_frozen(self) -> None:
        """What is alive at start-up (here: this object) leaves the collector's sight."""
        gc.unfreeze()
        alive = [object()]
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertTrue(any(o is alive for o in gc.get_objects()))
        tune_gc()
        self.assertGreater(gc.get_freeze_count(), 0)
        # Frozen objects are in none of the three generations a collection walks.
        self.assertFalse(any(o is alive for o in gc.get_objects()))


class ReleaseLargeBuffersTests(unittest.TestCase):
    def retained_mib(self, mode: str) -> float:
        run = subprocess.run(
            [sys.executable, "-c", RETENTION, mode],
            env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(run.returncode, 0, run.stderr)
        return float(run.stdout)

    def test_freed_buffers_go_back_to_the_system(self) -> None:
        """With release_large_buffers, 64 MiB of freed 1 MiB buffers leave the process
        (glibc's default keeps them once it has raised its mmap threshold)."""
        self.assertLess(self.retained_mib("tuned"), 8)
        self.assertGreater(self.retained_mib("default"), 32)  # what the setting prevents
