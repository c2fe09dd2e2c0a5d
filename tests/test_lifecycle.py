"""The command lifecycle's transition rules (pure)."""

from __future__ import annotations

from twisted.trial import unittest

from viworks import lifecycle


class LifecycleTests(unittest.TestCase):
    def test_lost_only_takes_a_late_result(self):
        """A lost command becomes an outcome an agent reports only as a late result
        (``late=True``), never again lost or in flight; every other final status is
        settled for good."""
        for outcome in lifecycle.LATE_OUTCOMES:
            self.assertNotIn(lifecycle.LOST, lifecycle.sources(outcome))
            self.assertIn(lifecycle.LOST, lifecycle.sources(outcome, late=True))
            lifecycle.check(lifecycle.LOST, outcome, late=True)
            with self.assertRaises(lifecycle.IllegalTransition):
                lifecycle.check(lifecycle.LOST, outcome)
        for target in (lifecycle.LOST, lifecycle.DISPATCHED, lifecycle.RUNNING):
            with self.assertRaises(lifecycle.IllegalTransition):
                lifecycle.check(lifecycle.LOST, target, late=True)
        for settled in lifecycle.SETTLED:
            for target in lifecycle.ALL:
                with self.assertRaises(lifecycle.IllegalTransition):
                    lifecycle.check(settled, target, late=True)
        self.assertEqual(lifecycle.sources("running"), ("dispatched",))
        with self.assertRaises(ValueError):
            lifecycle.sources("nonsense")
