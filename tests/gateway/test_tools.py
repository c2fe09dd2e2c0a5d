"""Verbs whose tool is not installed: TOOL_NOT_FOUND at once, listed, and logged once in telemetry.

The runner's spawner only records (``RecordingSpawner``), so these tests also show
that nothing is started when a tool is missing.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from tests.gateway.spawn import RecordingSpawner
from viworks.config.agent import FwknopSection, PanelSection, VPNSection
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.telemetry import TelemetryCollector
from viworks.gateway.verbs.builtin import panel as panel_verbs
from viworks.gateway.verbs.builtin import vpn as vpn_verbs
from viworks.gateway.verbs.builtin import vpncmd
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.model import TOOL_NOT_FOUND, Verb, VerbError

ALICE = {"username": "alice", "password": "correct horse battery"}


def make_tool(path: str) -> str:
    """An executable file at ``path`` (a stand-in that is never run here)."""
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


class MissingToolTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.tool = os.path.join(self.tmp, "htpasswd")  # absent until make_tool
        self.spawner = RecordingSpawner()
        self.runner = ProcessRunner(Clock(), self.spawner, killpg=lambda pid, sig: None)
        panel = PanelSection(users_file=os.path.join(self.tmp, "users"), htpasswd=self.tool)
        self.catalog = VerbCatalog(self.runner, {v.name: v for v in panel_verbs.verbs(panel)})

    async def test_missing_tool_fails_at_once(self) -> None:
        """A panel verb without htpasswd fails with TOOL_NOT_FOUND naming it; nothing runs."""
        for verb, args in (
            ("create_panel_user", ALICE),
            ("delete_panel_user", {"username": "alice"}),
        ):
            outcome = await self.catalog.execute(verb, args)
            self.assertEqual(outcome.status, "failed")
            self.assertEqual(outcome.error["code"], TOOL_NOT_FOUND)
            self.assertIn(self.tool, outcome.error["message"])
        self.assertEqual(self.spawner.calls, [])
        # Before the tool is looked at, bad arguments are still rejected as such.
        outcome = await self.catalog.execute("create_panel_user", {"username": "alice"})
        self.assertEqual((outcome.status, outcome.error["code"]), ("rejected", "INVALID_ARGS"))

    async def test_installed_later_runs(self) -> None:
        """The check is made for every run: once the tool is installed the verb runs."""
        outcome = await self.catalog.execute("delete_panel_user", {"username": "alice"})
        self.assertEqual(outcome.error["code"], TOOL_NOT_FOUND)
        make_tool(self.tool)
        with open(os.path.join(self.tmp, "users"), "w") as f:
            f.write("alice:x\n")
        execution = self.catalog.start("delete_panel_user", {"username": "alice"})
        self.assertEqual(len(self.spawner.calls), 1)
        self.assertEqual(self.spawner.calls[0][1][1], self.tool)  # setsid TOOL ...
        execution.cancel()

    def test_unavailable_lists_verbs_and_tools(self) -> None:
        """missing_tools() names each missing tool with the verbs that need it."""
        self.assertEqual(
            self.catalog.missing_tools(), {self.tool: ["create_panel_user", "delete_panel_user"]}
        )
        make_tool(self.tool)
        self.assertEqual(self.catalog.missing_tools(), {})

    async def test_vpn_verbs_without_vpncmd(self) -> None:
        """VPN verbs without vpncmd fail with TOOL_NOT_FOUND, not as a SoftEther error."""
        vpncmd_path = os.path.join(self.tmp, "vpncmd")
        vpn = VPNSection(
            vpncmd=vpncmd_path, server="localhost:5555", hub="VPN", hub_password_file=""
        )
        fw = FwknopSection(
            access_file=os.path.join(self.tmp, "access.conf"),
            open_ports="tcp/443",
            fwknopd=os.path.join(self.tmp, "fwknopd"),
        )
        family = vpn_verbs.verbs(vpn, fw, self.runner)
        catalog = VerbCatalog(self.runner, {v.name: v for v in family})
        self.assertEqual(
            catalog.missing_tools(),
            {vpncmd_path: ["create_vpn_user", "delete_vpn_user", "list_vpn_users"]},
        )
        outcome = await catalog.execute("list_vpn_users", {})
        self.assertEqual(outcome.error["code"], TOOL_NOT_FOUND)
        # Multi-step verbs (sessions) run vpncmd through vpncmd.run: same code per step.
        invocation = vpncmd.command(vpn, "SessionList", [], hub_password=None)
        with self.assertRaises(VerbError) as raised:
            await vpncmd.run(self.runner, invocation)
        self.assertEqual(raised.exception.code, TOOL_NOT_FOUND)
        self.assertEqual(self.spawner.calls, [])


class TelemetryLogTests(unittest.TestCase):
    """Telemetry runs service_status every round: a missing tool is logged once."""

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.systemctl = os.path.join(self.tmp, "systemctl")
        verb = Verb(
            name="service_status",
            params={},
            call=lambda _args: {"units": {"nginx": "active"}},
            tools=(self.systemctl,),
        )
        runner = ProcessRunner(Clock(), RecordingSpawner())
        self.collector = TelemetryCollector(VerbCatalog(runner, {"service_status": verb}))
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level: LogLevel) -> list[str]:
        return [
            e["log_format"]
            for e in self.events
            if e["log_level"] == level and e["log_namespace"].startswith("viworks.gateway")
        ]

    async def test_missing_tool_logged_once(self) -> None:
        """Three failing rounds give one warning (no per-round info line); recovery one info."""
        for _ in range(3):
            metrics = await self.collector.collect()
            self.assertNotIn("services", metrics)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("telemetry: {verb} failed", warning)
        self.assertEqual(self.lines(LogLevel.info), [])
        make_tool(self.systemctl)
        metrics = await self.collector.collect()
        self.assertEqual(metrics["services"], {"nginx": "active"})
        self.assertEqual(self.lines(LogLevel.info), ["telemetry: {verb} works again"])
        self.assertEqual(len(self.lines(LogLevel.warn)), 1)
