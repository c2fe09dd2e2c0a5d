"""Tests for the session verbs (terminate_session, get_session_status).

The verbs drive two recorded fakes, each copied into a temporary directory:

- ``tests/fakes/docker`` (state file of containers, records every argv);
- ``tests/fakes/vpncmd`` (a hub with a session table; records argv and stdin). Its
  ``SessionList``/``SessionDisconnect`` output was copied from the real vpncmd 5.01 talking
  to a real softether-vpnserver.

A last test runs the verbs against a real SoftEther hub (private vpnserver instance, as in
``test_vpn_verbs``), with VPN sessions made by cascade connections from a second hub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from tests.gateway import test_vpn_verbs
from tests.gateway.fake_engine import FakeEngine
from viworks.config import load_agent_config
from viworks.config.agent import BootstrapSection, ContainersSection, FwknopSection, VPNSection
from viworks.gateway.catalog import catalog_from_config
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.builtin import BUILTIN_VERBS
from viworks.gateway.verbs.builtin import bootstrap as bootstrap_verbs
from viworks.gateway.verbs.builtin import sessions as session_verbs
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.model import VerbError, VerbOutcome

FAKES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakes")
HUB_PASSWORD = "hub-admin-pw-7"
PS_SESSION = [
    "ps",
    "-a",
    "--no-trunc",
    "--filter",
    "label=viw.managed=true",
    "--filter",
    "label=viw.session=s1",
    "--format",
    "{{json .}}",
]
PS_ALICE = [*PS_SESSION[:6], "label=viw.user=alice", *PS_SESSION[7:]]
#: Real ``SessionList /CSV`` output of vpncmd 5.01 build 9674 (hub admin, password given).
REAL_SESSION_LIST = (
    "Password: *****\n\n"
    "Session Name,VLAN ID,Location,User Name,Source Host Name,TCP Connections,Transfer Bytes,"
    "Transfer Packets\n"
    'SID-ALICE-1,-,Local Session,alice,localhost,8 / 8,"168,032","2,754"\n'
    'SID-ALICE-2,-,Local Session,alice,localhost,8 / 8,"168,032","2,754"\n'
    'SID-SECURENAT-3,-,SecureNAT Session,SecureNAT,Virtual Host,None,"167,910","2,752"\n'
)
SESSIONS = [
    {
        "name": "SID-ALICE-1",
        "user": "alice",
        "host": "198.51.100.7",
        "tcp": "2 / 2",
        "bytes": 168032,
        "packets": 2754,
    },
    {"name": "SID-ALICE-2", "user": "Alice", "host": "198.51.100.8"},
    {"name": "SID-BOB-3", "user": "bob"},
    {
        "name": "SID-SECURENAT-4",
        "user": "SecureNAT",
        "location": "SecureNAT Session",
        "host": "Virtual Host",
        "tcp": "None",
    },
]

BOOTSTRAP = BootstrapSection(public_host="gw.example", spa_port=62201, vpn_port=443, max_ttl=3600)
FWKNOP = FwknopSection(
    access_file="/nonexistent/access.conf", open_ports="tcp/443", fwknopd="/nonexistent/fwknopd"
)


def containers_section(engine_path: str) -> ContainersSection:
    return ContainersSection(
        engine="docker",
        engine_path=engine_path,
        images=("nginx:1.27",),
        default_image="nginx:1.27",
        port_range="20000-20009",
        container_port=8080,
        network="",
    )


class Base(unittest.TestCase):
    """Session verbs over copies of the fake docker and the fake vpncmd."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.engine = FakeEngine(self.tmp)
        self.exe = self.engine.exe
        # vpncmd
        self.vpncmd = os.path.join(self.tmp, "vpncmd")
        shutil.copy(os.path.join(FAKES, "vpncmd"), self.vpncmd)
        os.chmod(self.vpncmd, 0o755)
        self.configure_hub(hub_password=HUB_PASSWORD, users={}, sessions=SESSIONS)
        password_file = os.path.join(self.tmp, "hub.pw")
        with open(password_file, "w") as f:
            f.write(HUB_PASSWORD + "\n")
        self.vpn = VPNSection(
            vpncmd=self.vpncmd,
            server="localhost:5555",
            hub="VPN",
            hub_password_file=password_file,
        )
        self.containers = containers_section(self.exe)
        self.state_dir = os.path.join(self.tmp, "agent")
        os.mkdir(self.state_dir)
        self.runner = ProcessRunner(reactor)
        verbs = session_verbs.verbs(self.containers, self.vpn, self.runner, self.state_dir)
        self.catalog = VerbCatalog(self.runner, {v.name: v for v in verbs})
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    # -- fakes

    def configure_engine(self, **changes: Any) -> None:
        self.engine.configure(**changes)

    def configure_hub(self, **changes: Any) -> None:
        state = self.hub_state()
        state.update(changes)
        with open(self.vpncmd + ".json", "w") as f:
            json.dump(state, f)

    def hub_state(self) -> dict[str, Any]:
        try:
            with open(self.vpncmd + ".json") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def hub_sessions(self) -> list[str]:
        return [s["name"] for s in self.hub_state().get("sessions", [])]

    def vpn_calls(self) -> list[tuple[list[str], str]]:
        """(argv, stdin) of every vpncmd run."""
        try:
            with open(self.vpncmd + ".calls") as f:
                return [(c["argv"], c["stdin"]) for c in map(json.loads, f)]
        except FileNotFoundError:
            return []

    def vpn_argv(self, *command: str) -> list[str]:
        return [self.vpncmd, "localhost:5555", "/SERVER", "/HUB:VPN", "/CSV", "/CMD", *command]

    def engine_calls(self) -> list[list[str]]:
        return [call["argv"] for call in self.engine.calls()]

    def engine_cli(self, *argv: str) -> str:
        return self.engine.cli(*argv)

    def seed(self, user: str, session: str, port: int, *, running: bool = True) -> str:
        """A viworks container viworks-<user>-<session>; return its id."""
        labels = [
            *("--label", f"viw.session={session}", "--label", f"viw.user={user}"),
            *("--label", "viw.managed=true", "--label", f"viw.port={port}"),
        ]
        return self.engine.run_container(f"viworks-{user}-{session}", port, labels, running=running)

    def engine_state(self) -> dict[str, dict[str, Any]]:
        return self.engine.state()

    # -- assertions

    def assertError(self, outcome: VerbOutcome, status: str, code: str) -> str:
        self.assertEqual(outcome.status, status, outcome)
        assert outcome.error is not None
        self.assertEqual(outcome.error["code"], code, outcome)
        return outcome.error["message"]

    def assertSucceeded(self, outcome: VerbOutcome) -> Any:
        self.assertEqual(outcome.status, "succeeded", outcome)
        return outcome.result

    def assert_no_secret_leaked(self, outcome: VerbOutcome) -> None:
        """The hub password is on stdin only: never in argv, the outcome or a log event."""
        dumped = json.dumps(outcome.to_dict()) + repr(self.events)
        dumped += json.dumps([argv for argv, _stdin in self.vpn_calls()])
        dumped += json.dumps(self.engine_calls())
        self.assertNotIn(HUB_PASSWORD, dumped)


HUB_STDIN = f"{HUB_PASSWORD}\n\x04"


class TerminateTests(Base):
    async def test_terminate_argv_stdin_and_report(self) -> None:
        """terminate_session lists the session's containers, stops and removes each, then
        runs SessionList and SessionDisconnect for every VPN session of the container's user
        (user names compared without case, as SoftEther does), with the hub password on
        stdin only. Other users' sessions and containers are untouched."""
        cid = self.seed("alice", "s1", 20000)
        other = self.seed("alice", "s2", 20001)
        self.seed("bob", "s3", 20002)
        outcome = await self.catalog.execute("terminate_session", {"session_id": "s1"})
        result = self.assertSucceeded(outcome)
        self.assertEqual(
            result,
            {
                "session_id": "s1",
                "usernames": ["alice"],
                "containers_stopped": [
                    {
                        "container_id": cid,
                        "name": "viworks-alice-s1",
                        "username": "alice",
                        "was_running": True,
                    }
                ],
                "vpn_sessions_disconnected": [
                    {"session_name": "SID-ALICE-1", "username": "alice"},
                    {"session_name": "SID-ALICE-2", "username": "Alice"},
                ],
                "errors": [],
            },
        )
        self.assertEqual(self.engine_calls(), [PS_SESSION, ["stop", cid], ["rm", cid]])
        self.assertEqual(
            self.vpn_calls(),
            [
                (self.vpn_argv("SessionList"), HUB_STDIN),
                (self.vpn_argv("SessionDisconnect", "SID-ALICE-1"), HUB_STDIN),
                (self.vpn_argv("SessionDisconnect", "SID-ALICE-2"), HUB_STDIN),
            ],
        )
        self.assertEqual(sorted(self.engine_state()), ["viworks-alice-s2", "viworks-bob-s3"])
        self.assertEqual(self.engine_state()["viworks-alice-s2"]["id"], other)
        self.assertEqual(self.hub_sessions(), ["SID-BOB-3", "SID-SECURENAT-4"])
        self.assert_no_secret_leaked(outcome)

    async def test_stopped_container_only_removed(self) -> None:
        """A container that is not running is removed without a ``stop``."""
        cid = self.seed("bob", "s1", 20000, running=False)
        result = self.assertSucceeded(
            await self.catalog.execute("terminate_session", {"session_id": "s1"})
        )
        self.assertEqual(self.engine_calls(), [PS_SESSION, ["rm", cid]])
        self.assertFalse(result["containers_stopped"][0]["was_running"])
        self.assertEqual(
            result["vpn_sessions_disconnected"], [{"session_name": "SID-BOB-3", "username": "bob"}]
        )

    async def test_not_found(self) -> None:
        """No container of the session and no known user: NOT_FOUND, no vpncmd run at all."""
        self.seed("alice", "s2", 20000)
        message = self.assertError(
            await self.catalog.execute("terminate_session", {"session_id": "s1"}),
            "failed",
            "NOT_FOUND",
        )
        self.assertEqual(message, "no container of session s1")
        self.assertEqual(self.engine_calls(), [PS_SESSION])
        self.assertEqual(self.vpn_calls(), [])
        self.assertIn("viworks-alice-s2", self.engine_state())

    async def test_not_found_user_without_vpn_session(self) -> None:
        """A user known only from the bootstrap bundle but with no VPN session: NOT_FOUND
        after one SessionList, nothing disconnected."""
        await self.bootstrap("carol", "s1")
        message = self.assertError(
            await self.catalog.execute("terminate_session", {"session_id": "s1"}),
            "failed",
            "NOT_FOUND",
        )
        self.assertEqual(message, "no container of session s1 and no VPN session of carol")
        self.assertEqual(self.vpn_calls(), [(self.vpn_argv("SessionList"), HUB_STDIN)])
        self.assertEqual(len(self.hub_sessions()), 4)

    async def bootstrap(self, username: str, session_id: str) -> None:
        """A bundle written by the real generate_bootstrap verb into the state dir."""
        verbs = bootstrap_verbs.verbs(BOOTSTRAP, self.vpn, FWKNOP, self.state_dir)
        catalog = VerbCatalog(self.runner, {v.name: v for v in verbs})
        outcome = await catalog.execute(
            "generate_bootstrap",
            {"username": username, "session_id": session_id, "ttl_seconds": 600},
        )
        self.assertSucceeded(outcome)

    async def test_user_from_bootstrap_bundle(self) -> None:
        """With no container left, the session's user comes from its bootstrap bundle (a
        bundle of another session is ignored), and its VPN sessions are disconnected."""
        await self.bootstrap("bob", "s1")
        await self.bootstrap("alice", "s2")
        result = self.assertSucceeded(
            await self.catalog.execute("terminate_session", {"session_id": "s1"})
        )
        self.assertEqual(result["usernames"], ["bob"])
        self.assertEqual(result["containers_stopped"], [])
        self.assertEqual(
            result["vpn_sessions_disconnected"], [{"session_name": "SID-BOB-3", "username": "bob"}]
        )
        self.assertEqual(
            [argv for argv, _ in self.vpn_calls()],
            [self.vpn_argv("SessionList"), self.vpn_argv("SessionDisconnect", "SID-BOB-3")],
        )

    async def test_partial_container_failure(self) -> None:
        """A container that cannot be stopped is reported and the VPN sessions are still
        disconnected; the verb fails with PARTIAL and its message says what was done."""
        cid = self.seed("alice", "s1", 20000)
        self.configure_engine(
            fail={
                "stop": {
                    "exit": 1,
                    "stderr": "Error response from daemon: cannot stop container: "
                    f"{cid}: permission denied\n",
                }
            }
        )
        outcome = await self.catalog.execute("terminate_session", {"session_id": "s1"})
        message = self.assertError(outcome, "failed", "PARTIAL")
        self.assertEqual(
            message,
            "session s1 partly terminated: containers stopped: none; VPN sessions"
            " disconnected: SID-ALICE-1, SID-ALICE-2; errors: stop viworks-alice-s1:"
            " ENGINE_ERROR: stop exited with code 1: Error response from daemon: cannot stop"
            " container:"
            f" {cid}: permission denied",
        )
        # The structured report travels with the failure.
        self.assertEqual(
            [s["session_name"] for s in outcome.result["vpn_sessions_disconnected"]],
            ["SID-ALICE-1", "SID-ALICE-2"],
        )
        self.assertEqual(outcome.result["containers_stopped"], [])
        self.assertEqual(self.engine_calls(), [PS_SESSION, ["stop", cid]])
        self.assertIn("viworks-alice-s1", self.engine_state())
        self.assertEqual(self.hub_sessions(), ["SID-BOB-3", "SID-SECURENAT-4"])
        self.assert_no_secret_leaked(outcome)

    async def test_partial_vpn_failures(self) -> None:
        """One VPN session failing to disconnect does not stop the next one; the container
        is removed; PARTIAL names the failing session and its code."""
        cid = self.seed("alice", "s1", 20000)
        sessions = [dict(s) for s in SESSIONS]
        sessions[0]["disconnect_error"] = 12
        self.configure_hub(sessions=sessions)
        message = self.assertError(
            await self.catalog.execute("terminate_session", {"session_id": "s1"}),
            "failed",
            "PARTIAL",
        )
        self.assertIn("containers stopped: viworks-alice-s1;", message)
        self.assertIn("VPN sessions disconnected: SID-ALICE-2;", message)
        self.assertIn(
            "errors: SessionDisconnect SID-ALICE-1: HUB_AUTH_FAILED: SessionDisconnect:", message
        )
        self.assertEqual(self.engine_calls(), [PS_SESSION, ["stop", cid], ["rm", cid]])
        self.assertEqual(self.hub_sessions(), ["SID-ALICE-1", "SID-BOB-3", "SID-SECURENAT-4"])

    async def test_partial_hub_unusable(self) -> None:
        """A wrong hub password (SessionList fails) still lets the containers go: PARTIAL
        with HUB_AUTH_FAILED in the message; nothing leaks the configured password."""
        self.seed("alice", "s1", 20000)
        self.configure_hub(hub_password="another-password")
        outcome = await self.catalog.execute("terminate_session", {"session_id": "s1"})
        message = self.assertError(outcome, "failed", "PARTIAL")
        self.assertIn(
            "errors: SessionList: HUB_AUTH_FAILED: SessionList: hub administrator"
            " authentication failed",
            message,
        )
        self.assertEqual(self.engine_state(), {})
        self.assertEqual([argv for argv, _ in self.vpn_calls()], [self.vpn_argv("SessionList")])
        self.assert_no_secret_leaked(outcome)

    async def test_nothing_possible_keeps_the_cause(self) -> None:
        """When every step failed and nothing was done, the verb fails with the first
        step's own code (not PARTIAL)."""
        self.configure_engine(daemon_down=True)
        message = self.assertError(
            await self.catalog.execute("terminate_session", {"session_id": "s1"}),
            "failed",
            "ENGINE_UNAVAILABLE",
        )
        self.assertTrue(message.startswith("session s1 not terminated: containers stopped:"))
        self.assertEqual(self.vpn_calls(), [])

    async def test_session_gone_meanwhile(self) -> None:
        """A VPN session that ended between SessionList and SessionDisconnect (SoftEther
        error 29) is neither an error nor reported as disconnected."""
        self.seed("alice", "s1", 20000)
        sessions = [dict(s) for s in SESSIONS]
        sessions[1]["disconnect_error"] = 29
        self.configure_hub(sessions=sessions)
        result = self.assertSucceeded(
            await self.catalog.execute("terminate_session", {"session_id": "s1"})
        )
        self.assertEqual(
            result["vpn_sessions_disconnected"],
            [{"session_name": "SID-ALICE-1", "username": "alice"}],
        )
        self.assertEqual(result["errors"], [])

    async def test_invalid_session_id(self) -> None:
        """A session id outside ``[A-Za-z0-9_-]{1,64}`` is rejected before anything runs."""
        for bad in ("", "a/b", "x" * 65, "s1,viw.user=bob", "s 1"):
            outcome = await self.catalog.execute("terminate_session", {"session_id": bad})
            self.assertError(outcome, "rejected", "INVALID_ARGS")
        self.assertEqual(self.engine_calls(), [])
        self.assertEqual(self.vpn_calls(), [])


class StatusTests(Base):
    async def test_status_active(self) -> None:
        """get_session_status reports the user's running container (id, name, status,
        port), its session label, creation time and the user's VPN sessions, parsed from
        ``ps`` filtered on viw.user and from SessionList."""
        cid = self.seed("alice", "s1", 20003)
        self.seed("bob", "s3", 20004)
        outcome = await self.catalog.execute("get_session_status", {"username": "alice"})
        result = self.assertSucceeded(outcome)
        created = result.pop("started_at")
        self.assertRegex(created, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(
            result,
            {
                "username": "alice",
                "active": True,
                "session_id": "s1",
                "container": {
                    "id": cid,
                    "name": "viworks-alice-s1",
                    "status": "running",
                    "status_text": "Up 2 minutes",
                    "port": 20003,
                },
                "containers": 1,
                "vpn_sessions": [
                    {
                        "session_name": "SID-ALICE-1",
                        "location": "Local Session",
                        "source_host": "198.51.100.7",
                        "vlan_id": None,
                        "tcp_connections": "2 / 2",
                        "transfer_bytes": 168032,
                        "transfer_packets": 2754,
                    },
                    {
                        "session_name": "SID-ALICE-2",
                        "location": "Local Session",
                        "source_host": "198.51.100.8",
                        "vlan_id": None,
                        "tcp_connections": "1 / 1",
                        "transfer_bytes": 0,
                        "transfer_packets": 0,
                    },
                ],
            },
        )
        self.assertEqual(self.engine_calls(), [PS_ALICE])
        self.assertEqual(self.vpn_calls(), [(self.vpn_argv("SessionList"), HUB_STDIN)])
        self.assertEqual(len(self.hub_sessions()), 4)
        self.assert_no_secret_leaked(outcome)

    async def test_status_nothing(self) -> None:
        """A user with neither container nor VPN session: inactive, nulls, empty list."""
        result = self.assertSucceeded(
            await self.catalog.execute("get_session_status", {"username": "carol"})
        )
        self.assertEqual(
            result,
            {
                "username": "carol",
                "active": False,
                "session_id": None,
                "container": None,
                "started_at": None,
                "containers": 0,
                "vpn_sessions": [],
            },
        )

    async def test_status_stopped_container_only(self) -> None:
        """An exited container alone is reported (status ``exited``) but is not active."""
        self.configure_hub(sessions=[])
        cid = self.seed("alice", "s7", 20000, running=False)
        result = self.assertSucceeded(
            await self.catalog.execute("get_session_status", {"username": "alice"})
        )
        self.assertFalse(result["active"])
        self.assertEqual(result["session_id"], "s7")
        self.assertEqual(result["container"]["id"], cid)
        self.assertEqual(result["container"]["status"], "exited")
        self.assertEqual(result["container"]["status_text"], "Exited (0) 5 seconds ago")

    async def test_status_prefers_running_container(self) -> None:
        """With several containers the running one is reported, even if older."""
        self.seed("alice", "s1", 20000)
        time.sleep(1.1)  # the fake's creation time has a 1 s resolution
        self.seed("alice", "s2", 20001, running=False)
        result = self.assertSucceeded(
            await self.catalog.execute("get_session_status", {"username": "alice"})
        )
        self.assertEqual((result["session_id"], result["containers"]), ("s1", 2))

    async def test_status_vpn_only(self) -> None:
        """VPN sessions without a container: active, no session id, no container."""
        result = self.assertSucceeded(
            await self.catalog.execute("get_session_status", {"username": "bob"})
        )
        self.assertTrue(result["active"])
        self.assertIsNone(result["session_id"])
        self.assertIsNone(result["container"])
        self.assertEqual([s["session_name"] for s in result["vpn_sessions"]], ["SID-BOB-3"])

    async def test_status_errors(self) -> None:
        """A failing tool fails the read: the hub's code (HUB_NOT_FOUND here) or the
        engine's; an invalid user name is rejected before anything runs."""
        self.configure_hub(fail={"SessionList": 8})
        self.assertError(
            await self.catalog.execute("get_session_status", {"username": "alice"}),
            "failed",
            "HUB_NOT_FOUND",
        )
        self.configure_engine(daemon_down=True)
        self.assertError(
            await self.catalog.execute("get_session_status", {"username": "alice"}),
            "failed",
            "ENGINE_UNAVAILABLE",
        )
        calls = len(self.engine_calls())
        for bad in ("-rf", "ab", "a b", "x" * 65):
            self.assertError(
                await self.catalog.execute("get_session_status", {"username": bad}),
                "rejected",
                "INVALID_ARGS",
            )
        self.assertEqual(len(self.engine_calls()), calls)


class UnitAndCatalogTests(Base):
    def test_parse_real_session_list(self) -> None:
        """parse_sessions reads real vpncmd output: thousands separators, ``-`` VLAN."""
        sessions = session_verbs.parse_sessions(REAL_SESSION_LIST)
        self.assertEqual(
            [s["session_name"] for s in sessions],
            [
                "SID-ALICE-1",
                "SID-ALICE-2",
                "SID-SECURENAT-3",
            ],
        )
        self.assertEqual(
            sessions[2],
            {
                "session_name": "SID-SECURENAT-3",
                "username": "SecureNAT",
                "location": "SecureNAT Session",
                "source_host": "Virtual Host",
                "vlan_id": None,
                "tcp_connections": "None",
                "transfer_bytes": 167910,
                "transfer_packets": 2752,
            },
        )
        self.assertEqual(session_verbs.parse_sessions(REAL_SESSION_LIST.split("SID-")[0]), [])
        with self.assertRaises(VerbError) as cm:
            session_verbs.parse_sessions("Password: *****\n\n")
        self.assertEqual(cm.exception.code, "UNEXPECTED_OUTPUT")

    def test_verb_properties(self) -> None:
        """Both verbs are BUILTIN_VERBS; terminate changes state under the containers
        lock, get_session_status is read-only."""
        verbs = {v.name: v for v in session_verbs.verbs(self.containers, self.vpn, self.runner)}
        self.assertLessEqual(set(verbs), BUILTIN_VERBS)
        self.assertEqual(
            {n: (v.changes_state, v.serialize) for n, v in verbs.items()},
            {"terminate_session": (True, "containers"), "get_session_status": (False, None)},
        )

    async def test_from_config_and_exec_disabled(self) -> None:
        """The agent's catalog offers both verbs; with exec_enable = false terminate is
        refused (EXEC_DISABLED) and the status still runs."""
        path = os.path.join(self.tmp, "agent.toml")
        with open(path, "w") as f:
            f.write(
                '[outbound]\nbackend_url = "wss://backend.example/ws/agent"\nagent_id = "a1"\n'
                '[tls]\ncert = "a.crt"\nkey = "a.key"\nca = "ca.crt"\n'
                f"[agent]\nexec_enable = false\nstate_dir = {json.dumps(self.state_dir)}\n"
                f"[containers]\nengine_path = {json.dumps(self.exe)}\n"
                f"[vpn]\nvpncmd = {json.dumps(self.vpncmd)}\n"
                f"hub_password_file = {json.dumps(self.vpn.hub_password_file)}\n"
            )
        catalog = catalog_from_config(self.runner, load_agent_config(path, check_files=False))
        described = catalog.describe()
        self.assertTrue(described["terminate_session"]["changes_state"])
        self.assertFalse(described["get_session_status"]["changes_state"])
        self.assertError(
            await catalog.execute("terminate_session", {"session_id": "s1"}),
            "rejected",
            "EXEC_DISABLED",
        )
        self.assertSucceeded(await catalog.execute("get_session_status", {"username": "bob"}))
        self.assertEqual(
            self.engine_calls(), [[*PS_ALICE[:6], "label=viw.user=bob", *PS_ALICE[7:]]]
        )


class RealSoftEtherSessionTests(unittest.TestCase):
    """The session verbs against a real hub: VPN sessions of ``alice`` are made by two
    cascade connections from a second hub of the same private vpnserver instance."""

    timeout = 90
    setUp = test_vpn_verbs.RealSoftEtherTests.setUp
    start_private_server = test_vpn_verbs.RealSoftEtherTests.start_private_server
    stop_private_server = test_vpn_verbs.RealSoftEtherTests.stop_private_server
    admin = test_vpn_verbs.RealSoftEtherTests.admin

    def hub(self, port: int, hub: str, *command: str, stdin: str) -> str:
        done = subprocess.run(
            [test_vpn_verbs.VPNCMD, f"localhost:{port}", "/SERVER", f"/HUB:{hub}", "/CSV"]
            + ["/CMD", *command],
            input=stdin.encode(),
            capture_output=True,
            timeout=20,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stdout.decode(errors="replace"))
        return done.stdout.decode()

    async def test_status_and_terminate_on_real_hub(self) -> None:
        """get_session_status lists alice's two real VPN sessions; terminate_session (user
        from the bootstrap bundle, no container) disconnects exactly those two."""
        port = test_vpn_verbs._free_port()
        self.admin(5555, "ListenerCreate", str(port))
        for old in (5555, 992, 1194, 443):
            self.admin(port, "ListenerDelete", str(old))
        server_pw = "server-admin-pw-1"
        self.admin(port, "ServerPasswordSet", stdin=f"{server_pw}\n{server_pw}\n\x04")
        self.admin(
            port, "HubCreate", "VIWTEST", stdin=f"{server_pw}\n{HUB_PASSWORD}\n{HUB_PASSWORD}\n\x04"
        )
        self.admin(port, "HubCreate", "SRC", stdin=f"{server_pw}\nsrc-pw-1\nsrc-pw-1\n\x04")
        hub_in = f"{HUB_PASSWORD}\n\x04"
        self.hub(
            port,
            "VIWTEST",
            "UserCreate",
            "alice",
            "/GROUP:none",
            "/REALNAME:none",
            "/NOTE:none",
            stdin=hub_in,
        )
        self.hub(
            port,
            "VIWTEST",
            "UserPasswordSet",
            "alice",
            stdin=f"{HUB_PASSWORD}\nalice-pw-1\nalice-pw-1\n\x04",
        )
        for link in ("c1", "c2"):
            src_in = "src-pw-1\n\x04"
            self.hub(
                port,
                "SRC",
                "CascadeCreate",
                link,
                f"/SERVER:localhost:{port}",
                "/HUB:VIWTEST",
                "/USERNAME:alice",
                stdin=src_in,
            )
            self.hub(
                port,
                "SRC",
                "CascadePasswordSet",
                link,
                "/PASSWORD:alice-pw-1",
                "/TYPE:standard",
                stdin=src_in,
            )
            self.hub(port, "SRC", "CascadeOnline", link, stdin=src_in)

        password_file = os.path.join(self.tmp, "hub.pw")
        with open(password_file, "w") as f:
            f.write(HUB_PASSWORD + "\n")
        vpn = VPNSection(
            vpncmd=test_vpn_verbs.VPNCMD,
            server=f"localhost:{port}",
            hub="VIWTEST",
            hub_password_file=password_file,
        )
        # No engine here: an engine that lists nothing (empty ps) stands in for docker.
        engine = FakeEngine(self.tmp).exe
        state_dir = os.path.join(self.tmp, "agent")
        runner = ProcessRunner(reactor)
        verbs = session_verbs.verbs(
            containers_section(engine), vpn, runner, state_dir
        ) + bootstrap_verbs.verbs(BOOTSTRAP, vpn, FWKNOP, state_dir)
        catalog = VerbCatalog(runner, {v.name: v for v in verbs})

        deadline = time.monotonic() + 30
        while True:  # the cascades log in asynchronously
            status = await catalog.execute("get_session_status", {"username": "alice"})
            self.assertEqual(status.status, "succeeded", status.error)
            if len(status.result["vpn_sessions"]) == 2:
                break
            self.assertLess(time.monotonic(), deadline, status.result)
            await deferLater(reactor, 0.5, lambda: None)
        self.assertTrue(status.result["active"])
        names = sorted(s["session_name"] for s in status.result["vpn_sessions"])
        self.assertEqual([n.rsplit("-", 1)[0] for n in names], ["SID-ALICE", "SID-ALICE"])
        self.assertEqual(status.result["vpn_sessions"][0]["location"], "Local Session")

        outcome = await catalog.execute(
            "generate_bootstrap", {"username": "alice", "session_id": "s1", "ttl_seconds": 600}
        )
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        outcome = await catalog.execute("terminate_session", {"session_id": "s1"})
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        self.assertEqual(
            sorted(s["session_name"] for s in outcome.result["vpn_sessions_disconnected"]), names
        )
        # The cascades reconnect later under new names; the old sessions are gone.
        listed = self.hub(port, "VIWTEST", "SessionList", stdin=hub_in)
        for name in names:
            self.assertNotIn(f"{name},", listed)
