"""viworks.runtime: the garbage-collector settings of a long-running service."""

from __future__ import annotations

import gc

from twisted.trial import unittest

from viworks.runtime import THRESHOLDS, tune_gc


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
