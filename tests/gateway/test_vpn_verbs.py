"""Tests for the VPN user verbs (viworks.gateway.verbs.builtin: vpn, vpncmd, fwknop).

Three layers:

- the recorded fake ``tests/fakes/vpncmd`` (copied into a temp dir) checks the exact argv
  and stdin of every vpncmd step, the rollback and the error mapping;
- the real ``fwknopd -a FILE --dump-config`` (Debian's fwknop-server) parses the stanzas
  written by the verbs back;
- a real SoftEther hub: Debian's softether-vpnserver is started as a private instance
  (its own mount namespace, so its state dirs are temp dirs and a system server is never
  touched), its admin listener is moved to a free high port, and the verbs create, list
  and delete a user on it through the real vpncmd.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from viworks.config.agent import FwknopSection, VPNSection
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.builtin import BUILTIN_VERBS, fwknop, vpncmd
from viworks.gateway.verbs.builtin import vpn as vpn_verbs
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.model import VerbOutcome

FAKES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakes")
FWKNOPD = "/usr/sbin/fwknopd"
VPNCMD = "/usr/bin/vpncmd"
VPNSERVER = "/usr/bin/vpnserver"

PASSWORD = "Correct horse 42!"
HUB_PASSWORD = "hub-admin-pw-7"
KEY = base64.b64encode(bytes(range(32))).decode()
HMAC_KEY = base64.b64encode(bytes(range(100, 164))).decode()
ALICE = {
    "username": "alice",
    "password": PASSWORD,
    "source_ip": "192.0.2.10",
    "spa_key": KEY,
    "spa_hmac_key": HMAC_KEY,
    "timeout": 3600,
}
SECRETS = (PASSWORD, HUB_PASSWORD, KEY, HMAC_KEY)


def fwknopd_dump(path: str) -> subprocess.CompletedProcess[str]:
    """The real fwknopd parsing ``path`` (it must be 0600)."""
    return subprocess.run(
        [FWKNOPD, "-f", "-a", path, "--dump-config"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


class Base(unittest.TestCase):
    """A catalog of the VPN verbs over a copy of the fake vpncmd and a temp access file."""

    hub_password: str | None = HUB_PASSWORD
    fwknopd = "/nonexistent/fwknopd"

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.fake = os.path.join(self.tmp, "vpncmd")
        shutil.copy(os.path.join(FAKES, "vpncmd"), self.fake)
        os.chmod(self.fake, 0o755)
        self.configure_fake(hub_password=self.hub_password, users={})
        password_file = ""
        if self.hub_password is not None:
            password_file = os.path.join(self.tmp, "hub.pw")
            with open(password_file, "w") as f:
                f.write(self.hub_password + "\n")
        self.vpn = VPNSection(
            vpncmd=self.fake, server="localhost:5555", hub="VPN", hub_password_file=password_file
        )
        self.access = os.path.join(self.tmp, "access.conf")
        self.fw = FwknopSection(
            access_file=self.access, open_ports="tcp/443, udp/1194", fwknopd=self.fwknopd
        )
        self.runner = ProcessRunner(reactor)
        self.catalog = VerbCatalog(
            self.runner, {v.name: v for v in vpn_verbs.verbs(self.vpn, self.fw, self.runner)}
        )
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def configure_fake(self, **changes: Any) -> None:
        state = self.fake_state()
        state.update(changes)
        with open(self.fake + ".json", "w") as f:
            json.dump(state, f)

    def fake_state(self) -> dict[str, Any]:
        try:
            with open(self.fake + ".json") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def calls(self) -> list[dict[str, Any]]:
        try:
            with open(self.fake + ".calls") as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def argv(self, *command: str) -> list[str]:
        return [self.fake, "localhost:5555", "/SERVER", "/HUB:VPN", "/CSV", "/CMD", *command]

    def stdin(self, *answers: str) -> str:
        lines = ([self.hub_password] if self.hub_password else []) + list(answers)
        return "".join(f"{line}\n" for line in lines) + "\x04"

    def access_text(self) -> str:
        with open(self.access) as f:
            return f.read()

    def run_verb(self, name: str, args: dict[str, Any]) -> Deferred[VerbOutcome]:
        return self.catalog.execute(name, args)

    def assert_no_secret_leaked(self, outcome: VerbOutcome) -> None:
        """No secret in any argv, the outcome or a log event."""
        dumped = json.dumps(outcome.to_dict()) + repr(self.events)
        for call in self.calls():
            dumped += json.dumps(call["argv"])
        for secret in SECRETS:
            self.assertNotIn(secret, dumped)


class CreateTests(Base):
    async def test_create_argv_stdin_and_stanza(self) -> None:
        """create_vpn_user runs UserCreate, UserPolicySet, UserPasswordSet with exact argv and
        stdin (hub password, then the answers, then Ctrl+D), and writes a 0600 stanza."""
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        self.assertEqual(
            outcome.result,
            {
                "username": "alice",
                "created": True,
                "hub": "VPN",
                "source_ip": "192.0.2.10",
                "open_ports": "tcp/443, udp/1194",
                "timeout": 3600,
            },
        )
        self.assertEqual(
            [(c["argv"], c["stdin"]) for c in self.calls()],
            [
                (
                    self.argv("UserCreate", "alice", "/GROUP:none", "/REALNAME:none", "/NOTE:none"),
                    self.stdin(),
                ),
                (self.argv("UserPolicySet", "alice", "/NAME:Access", "/VALUE:yes"), self.stdin()),
                (self.argv("UserPasswordSet", "alice"), self.stdin(PASSWORD, PASSWORD)),
            ],
        )
        self.assertEqual(
            self.fake_state()["users"]["alice"],
            {"access": True, "password": PASSWORD, "realname": ""},
        )
        self.assertEqual(
            self.access_text(),
            "# viworks-user: alice (managed by viworks; do not edit)\n"
            "SOURCE 192.0.2.10\n"
            "OPEN_PORTS tcp/443, udp/1194\n"
            f"KEY_BASE64 {KEY}\n"
            f"HMAC_KEY_BASE64 {HMAC_KEY}\n"
            "FW_ACCESS_TIMEOUT 3600\n"
            "MAX_FW_TIMEOUT 3600\n"
            "# viworks-end: alice\n",
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.access).st_mode), 0o600)
        self.assertEqual(os.listdir(self.tmp).count("access.conf"), 1)
        self.assertFalse([n for n in os.listdir(self.tmp) if n.startswith(".access.conf.")])
        self.assert_no_secret_leaked(outcome)

    async def test_existing_user_refused_untouched(self) -> None:
        """A user already on the hub is ALREADY_EXISTS: no other step, no rollback, no stanza."""
        self.configure_fake(users={"alice": {"access": True, "password": "old", "realname": ""}})
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual((outcome.status, outcome.error["code"]), ("failed", "ALREADY_EXISTS"))
        self.assertEqual([c["argv"][6] for c in self.calls()], ["UserCreate"])
        self.assertEqual(self.fake_state()["users"]["alice"]["password"], "old")
        self.assertFalse(os.path.exists(self.access))

    async def test_rollback_when_access_file_cannot_be_written(self) -> None:
        """If the stanza cannot be written after the hub user exists, the user is deleted."""
        self.fw = FwknopSection(
            access_file=os.path.join(self.tmp, "missing-dir", "access.conf"),
            open_ports="tcp/443",
            fwknopd=self.fwknopd,
        )
        catalog = VerbCatalog(
            self.runner, {v.name: v for v in vpn_verbs.verbs(self.vpn, self.fw, self.runner)}
        )
        outcome = await catalog.execute("create_vpn_user", ALICE)
        self.assertEqual((outcome.status, outcome.error["code"]), ("failed", "ACCESS_FILE_ERROR"))
        self.assertIn("the hub user was removed again", outcome.error["message"])
        self.assertEqual([c["argv"][6:] for c in self.calls()][-1], ["UserDelete", "alice"])
        self.assertEqual(self.fake_state()["users"], {})
        self.assert_no_secret_leaked(outcome)

    async def test_rollback_when_password_step_fails(self) -> None:
        """A failing UserPasswordSet is reported and the half-created user removed."""
        self.configure_fake(fail={"UserPasswordSet": 45})
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual((outcome.status, outcome.error["code"]), ("failed", "VPNCMD_ERROR"))
        self.assertIn("UserPasswordSet", outcome.error["message"])
        self.assertEqual(
            [c["argv"][6] for c in self.calls()],
            ["UserCreate", "UserPolicySet", "UserPasswordSet", "UserDelete"],
        )
        self.assertEqual(self.fake_state()["users"], {})
        self.assertFalse(os.path.exists(self.access))

    async def test_wrong_hub_password(self) -> None:
        """A wrong hub password fails fast (Ctrl+D cancels the re-prompt): HUB_AUTH_FAILED,
        and the user's password is never read as another admin password attempt."""
        self.configure_fake(hub_password="something-else")
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual((outcome.status, outcome.error["code"]), ("failed", "HUB_AUTH_FAILED"))
        self.assertEqual(len(self.calls()), 1)
        self.assertFalse(os.path.exists(self.access))

    async def test_unreachable_server(self) -> None:
        """A connection failure (SoftEther error 1) is VPN_UNREACHABLE."""
        self.configure_fake(unreachable=True)
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual(outcome.error["code"], "VPN_UNREACHABLE")

    async def test_replaces_own_stanza_keeps_others(self) -> None:
        """A leftover stanza of the user is replaced; the operator's stanzas are kept."""
        operator = "# operator stanza\nSOURCE 198.51.100.0/24\nKEY_BASE64 b3BlcmF0b3I=\n"
        stale = fwknop.render_stanza(
            fwknop.Stanza("alice", "203.0.113.5", "tcp/22", HMAC_KEY, KEY, 60)
        )
        with open(self.access, "w") as f:
            f.write(operator + "\n" + stale)
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        text = self.access_text()
        self.assertTrue(text.startswith(operator + "\n"))
        self.assertEqual(text.count("# viworks-user: alice"), 1)
        self.assertIn("SOURCE 192.0.2.10\n", text)
        self.assertNotIn("203.0.113.5", text)

    async def test_corrupt_access_file_refused_before_hub(self) -> None:
        """An access file with a begin marker but no end marker is refused before vpncmd runs."""
        with open(self.access, "w") as f:
            f.write("# viworks-user: bob\nSOURCE 192.0.2.1\n")
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual(outcome.error["code"], "ACCESS_FILE_ERROR")
        self.assertEqual(self.calls(), [])

    async def test_argument_checks(self) -> None:
        """Schema and fwknopd limits: names, passwords, keys, timeout, IPv6, equal keys."""
        rejected = [
            {"username": "-rf"},
            {"username": "ab"},
            {"password": "pässwörter"},  # vpncmd's prompt drops non-ASCII bytes
            {"password": "short"},
            {"spa_key": "not base64!!" * 3},
            {"spa_key": base64.b64encode(b"x" * 8).decode()},  # too short
            {"timeout": 59},
            {"timeout": 86401},
            {"source_ip": "not-an-ip"},
        ]
        for change in rejected:
            outcome = await self.run_verb("create_vpn_user", {**ALICE, **change})
            self.assertEqual(outcome.status, "rejected", change)
            self.assertEqual(outcome.error["code"], "INVALID_ARGS", change)
        outcome = await self.run_verb("create_vpn_user", {**ALICE, "source_ip": "2001:db8::1"})
        self.assertEqual(outcome.error["code"], "UNSUPPORTED_ADDRESS")
        outcome = await self.run_verb("create_vpn_user", {**ALICE, "spa_hmac_key": KEY})
        self.assertEqual(outcome.error["code"], "INVALID_ARGS")
        self.assertIn("spa_hmac_key", outcome.error["message"])
        self.assertEqual(self.calls(), [])


class NoHubPasswordTests(Base):
    hub_password = None

    async def test_stdin_without_hub_password(self) -> None:
        """Without hub_password_file, stdin holds only the answers and Ctrl+D."""
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        stdins = [c["stdin"] for c in self.calls()]
        self.assertEqual(stdins, ["\x04", "\x04", f"{PASSWORD}\n{PASSWORD}\n\x04"])

    async def test_hub_needing_a_password_fails_fast(self) -> None:
        """If the hub wants a password that is not configured, Ctrl+D cancels the prompt."""
        self.configure_fake(hub_password="needed-one")
        outcome = await self.run_verb("list_vpn_users", {})
        self.assertEqual(outcome.error["code"], "HUB_AUTH_FAILED")


class DeleteAndListTests(Base):
    async def test_delete_both(self) -> None:
        """delete_vpn_user removes the hub user and only its own stanza."""
        await self.run_verb("create_vpn_user", ALICE)
        await self.run_verb("create_vpn_user", {**ALICE, "username": "bob_2"})
        outcome = await self.run_verb("delete_vpn_user", {"username": "alice"})
        self.assertEqual(
            outcome.result, {"username": "alice", "hub_user_deleted": True, "stanza_removed": True}
        )
        self.assertEqual(self.calls()[-1]["argv"], self.argv("UserDelete", "alice"))
        self.assertEqual(self.calls()[-1]["stdin"], self.stdin())
        self.assertEqual(list(fwknop.managed_stanzas(self.access_text())), ["bob_2"])
        self.assertEqual(list(self.fake_state()["users"]), ["bob_2"])
        self.assertFalse(self.access_text().startswith("\n"))

    async def test_delete_partial_and_missing(self) -> None:
        """Only a stanza left: it is removed; neither hub user nor stanza: NOT_FOUND."""
        with open(self.access, "w") as f:
            f.write(
                fwknop.render_stanza(
                    fwknop.Stanza("carol", "192.0.2.3", "tcp/1", KEY, HMAC_KEY, 60)
                )
            )
        outcome = await self.run_verb("delete_vpn_user", {"username": "carol"})
        self.assertEqual(
            outcome.result,
            {"username": "carol", "hub_user_deleted": False, "stanza_removed": True},
        )
        self.assertEqual(self.access_text(), "")
        outcome = await self.run_verb("delete_vpn_user", {"username": "carol"})
        self.assertEqual((outcome.status, outcome.error["code"]), ("failed", "NOT_FOUND"))

    async def test_list(self) -> None:
        """list_vpn_users parses UserList's CSV (quoted fields too) and joins the stanzas."""
        await self.run_verb("create_vpn_user", ALICE)
        state = self.fake_state()
        state["users"]["dave"] = {
            "realname": 'Dave, "the" D|x',
            "logins": 3,
            "last_login": "2024-05-01 (Wed) 12:00:00",
            "bytes": 1234567,
            "packets": 89,
        }
        self.configure_fake(users=state["users"])
        with open(self.access, "a") as f:
            f.write(
                fwknop.render_stanza(
                    fwknop.Stanza("ghost", "192.0.2.9", "tcp/1", KEY, HMAC_KEY, 60)
                )
            )
        outcome = await self.run_verb("list_vpn_users", {})
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        self.assertEqual(self.calls()[-1]["argv"], self.argv("UserList"))
        users = {u["username"]: u for u in outcome.result["users"]}
        self.assertEqual(
            users["alice"]["spa"],
            {"source_ip": "192.0.2.10", "open_ports": "tcp/443, udp/1194", "timeout": 3600},
        )
        self.assertEqual(
            users["dave"],
            {
                "username": "dave",
                "full_name": 'Dave, "the" D|x',
                "group": None,
                "description": None,
                "auth_method": "Password Authentication",
                "num_logins": 3,
                "last_login": "2024-05-01 (Wed) 12:00:00",
                "expiration": "No Expiration",
                "transfer_bytes": 1234567,
                "transfer_packets": 89,
                "spa": None,
            },
        )
        self.assertEqual(outcome.result["orphan_stanzas"], ["ghost"])
        self.assert_no_secret_leaked(outcome)

    def test_catalog_and_config_names(self) -> None:
        """The family's verbs are BUILTIN_VERBS; only list_vpn_users is read-only."""
        verbs = {v.name: v for v in vpn_verbs.verbs(self.vpn, self.fw, self.runner)}
        self.assertLessEqual(set(verbs), BUILTIN_VERBS)
        self.assertEqual(
            {n: (v.changes_state, v.serialize) for n, v in verbs.items()},
            {
                "create_vpn_user": (True, "vpn_users"),
                "delete_vpn_user": (True, "vpn_users"),
                "list_vpn_users": (False, None),
            },
        )


class UnitTests(unittest.TestCase):
    def test_vpncmd_command(self) -> None:
        """vpncmd.command: argv has no secrets; stdin is hub password, answers, Ctrl+D."""
        vpn = VPNSection(vpncmd="/usr/bin/vpncmd", server="h:1", hub="H", hub_password_file="")
        inv = vpncmd.command(vpn, "UserPasswordSet", ["u"], hub_password="hp", answers=("a", "a"))
        self.assertEqual(
            inv.argv,
            ["/usr/bin/vpncmd", "h:1", "/SERVER", "/HUB:H", "/CSV", "/CMD", "UserPasswordSet", "u"],
        )
        self.assertEqual(inv.stdin, b"hp\na\na\n\x04")
        with self.assertRaises(ValueError):
            vpncmd.command(vpn, "UserGet", ['a"b'], hub_password=None)

    def test_parse_csv_and_errors(self) -> None:
        """parse_csv_table skips the prompt echo; a missing table is UNEXPECTED_OUTPUT."""
        out = 'Password: ****\n\nUser Name,Full Name\nalice,"A, B"\n\n'
        self.assertEqual(
            vpncmd.parse_csv_table(out, "User Name"), [{"User Name": "alice", "Full Name": "A, B"}]
        )
        self.assertEqual(vpncmd.parse_csv_table("User Name,Full Name\n", "User Name"), [])
        with self.assertRaises(vpn_verbs.VerbError):
            vpncmd.parse_csv_table("Password: **\n", "User Name")

    def test_stanza_roundtrip(self) -> None:
        """set_stanza/remove_stanza keep foreign text byte for byte; markers must pair."""
        st = fwknop.render_stanza(fwknop.Stanza("u1", "192.0.2.1", "tcp/443", KEY, HMAC_KEY, 60))
        base = "# mine\nSOURCE ANY\nKEY_BASE64 x\n"
        added = fwknop.set_stanza(base, st, "u1")
        self.assertEqual(added, base + "\n" + st)
        self.assertEqual(fwknop.remove_stanza(added, "u1"), (base + "\n", True))
        self.assertEqual(fwknop.remove_stanza(base, "u1"), (base, False))
        for broken in ("# viworks-end: u1\n", "# viworks-user: a\n# viworks-user: b\n"):
            with self.assertRaises(fwknop.AccessFileError):
                fwknop.managed_stanzas(broken)
        with self.assertRaises(ValueError):
            fwknop.render_stanza(fwknop.Stanza("u1", "2001:db8::1", "tcp/443", KEY, HMAC_KEY, 60))
        with self.assertRaises(ValueError):
            fwknop.check_open_ports("tcp/443; rm -rf /")


class RealFwknopdTests(Base):
    """The stanzas, parsed back by the real fwknopd."""

    fwknopd = FWKNOPD

    def setUp(self) -> None:
        if not os.access(FWKNOPD, os.X_OK):
            raise unittest.SkipTest(f"{FWKNOPD} missing: apt-get install fwknop-server")
        super().setUp()

    async def test_fwknopd_parses_stanzas(self) -> None:
        """fwknopd --dump-config accepts the file the verbs wrote and shows our values
        (SOURCE, OPEN_PORTS, key lengths, both timeouts), never the keys."""
        await self.run_verb("create_vpn_user", ALICE)
        outcome = await self.run_verb(
            "create_vpn_user",
            {**ALICE, "username": "bob", "source_ip": "198.51.100.7", "timeout": 60},
        )
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        dump = fwknopd_dump(self.access)
        self.assertEqual(dump.returncode, 0, dump.stderr)
        out = dump.stdout
        self.assertIn("SOURCE (1):  192.0.2.10", out)
        self.assertIn("SOURCE (2):  198.51.100.7", out)
        self.assertEqual(out.count("OPEN_PORTS:  tcp/443, udp/1194"), 2)
        self.assertEqual(out.count("KEY_LEN:  32"), 2)
        self.assertEqual(out.count("HMAC_KEY_LEN:  64"), 2)
        self.assertIn("FW_ACCESS_TIMEOUT:  3600", out)
        self.assertIn("MAX_FW_TIMEOUT:  3600", out)
        self.assertIn("FW_ACCESS_TIMEOUT:  60", out)
        self.assertNotIn(KEY, out)
        self.assertNotIn("permissions should only be user read/write", dump.stderr)
        outcome = await self.run_verb("delete_vpn_user", {"username": "alice"})
        dump = fwknopd_dump(self.access)
        self.assertEqual(dump.returncode, 0, dump.stderr)
        self.assertIn("SOURCE (1):  198.51.100.7", dump.stdout)
        self.assertNotIn("192.0.2.10", dump.stdout)

    async def test_fwknopd_veto_rolls_back(self) -> None:
        """The verb lets fwknopd check the staged file: a file fwknopd refuses (an operator's
        broken stanza here) is never installed, and the hub user is removed again."""
        broken = "SOURCE 2001:db8::5\nKEY_BASE64 b3BlcmF0b3I=\n"
        with open(self.access, "w") as f:
            f.write(broken)
        outcome = await self.run_verb("create_vpn_user", ALICE)
        self.assertEqual((outcome.status, outcome.error["code"]), ("failed", "FWKNOP_REJECTED"))
        self.assertIn("invalid SOURCE", outcome.error["message"])
        self.assertEqual(self.access_text(), broken)
        self.assertEqual(self.fake_state()["users"], {})
        self.assertFalse([n for n in os.listdir(self.tmp) if n.startswith(".access.conf.")])
        self.assert_no_secret_leaked(outcome)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class RealSoftEtherTests(unittest.TestCase):
    """A private softether-vpnserver instance driven through the real vpncmd."""

    timeout = 60

    def setUp(self) -> None:
        missing = [
            p
            for p in (VPNCMD, VPNSERVER, "/usr/bin/unshare", "/usr/bin/nsenter")
            if not os.access(p, os.X_OK)
        ]
        if missing:
            raise unittest.SkipTest(
                f"{', '.join(missing)} missing:"
                " apt-get install softether-vpnserver softether-vpncmd"
            )
        if os.geteuid() != 0:
            raise unittest.SkipTest("the SoftEther integration test needs root (mount namespace)")
        if _port_open(5555):
            # The new instance's admin listener must be ours (a system server may run).
            raise unittest.SkipTest("port 5555 is in use (a SoftEther server already runs?)")
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.start_private_server()

    def start_private_server(self) -> None:
        """vpnserver in its own mount namespace: /var/lib, /var/log and /run/softether are
        bind mounts of temp dirs there, so its config and pid/ctl files are ours only."""
        binds = []
        for target in ("/var/lib/softether", "/var/log/softether", "/run/softether"):
            if not os.path.isdir(target):
                os.makedirs(target, exist_ok=True)  # the mount point (Debian's own dir)
            source = os.path.join(self.tmp, target.strip("/").replace("/", "_"))
            os.makedirs(source)
            binds.append((source, target))
        # A Python child sets the namespace up and execs "vpnserver start": no shell.
        script = (
            "import os, subprocess, sys\n"
            "subprocess.run(['mount', '--make-rprivate', '/'], check=True)\n"
            f"for s, t in {binds!r}:\n"
            "    subprocess.run(['mount', '--bind', s, t], check=True)\n"
            f"os.execv({VPNSERVER!r}, [{VPNSERVER!r}, 'start'])\n"
        )
        started = subprocess.run(
            ["/usr/bin/unshare", "-m", "/usr/bin/python3", "-c", script],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        self.assertEqual(started.returncode, 0, started.stdout + started.stderr)
        deadline = time.monotonic() + 15
        pid = ""
        while not pid.endswith("\n"):  # the daemon writes its pid file just after "start"
            if time.monotonic() > deadline:
                self.fail("vpnserver wrote no pid file")
            time.sleep(0.05)
            for name in os.listdir(binds[2][0]):
                if name.startswith(".pid_"):
                    with open(os.path.join(binds[2][0], name)) as f:
                        pid = f.read()
        self.server_pid = int(pid)
        self.addCleanup(self.stop_private_server)
        while not _port_open(5555):
            if time.monotonic() > deadline:
                self.fail("vpnserver did not listen on 5555")
            time.sleep(0.1)

    def stop_private_server(self) -> None:
        """``vpnserver stop`` inside the server's mount namespace (it reads its pid file)."""
        subprocess.run(
            ["/usr/bin/nsenter", f"--mount=/proc/{self.server_pid}/ns/mnt", VPNSERVER, "stop"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        for _ in range(100):
            if not os.path.exists(f"/proc/{self.server_pid}"):
                return
            time.sleep(0.1)
        # It did not stop (e.g. a test failed half-way): kill everything in its private
        # mount namespace, the watchdog included, so that no server outlives the test.
        namespace = os.readlink(f"/proc/{self.server_pid}/ns/mnt")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/ns/mnt") == namespace:
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass

    def admin(self, port: int, *command: str, stdin: str = "\x04") -> str:
        """Server admin mode (setup only): vpncmd localhost:PORT /SERVER /CMD ...

        A listener just created, or a server just started, may not accept the admin
        connection yet ("Connection to the server failed", exit 1): retry for a while.
        """
        deadline = time.monotonic() + 15
        while True:
            done = subprocess.run(
                [VPNCMD, f"localhost:{port}", "/SERVER", "/CSV", "/CMD", *command],
                input=stdin.encode(),
                capture_output=True,
                timeout=20,
                check=False,
            )
            refused = done.returncode == 1 and b"Connection to the server failed" in done.stdout
            if not refused or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(done.returncode, 0, done.stdout.decode(errors="replace"))
        return done.stdout.decode()

    async def test_create_list_delete_on_real_hub(self) -> None:
        """Move the listener to a free high port, create a hub with an admin password, then
        create, list and delete a VPN user with the verbs against localhost:PORT."""
        port = _free_port()
        self.admin(5555, "ListenerCreate", str(port))
        server_pw = "server-admin-pw-1"
        for old in (5555, 992, 1194, 443):
            self.admin(port, "ListenerDelete", str(old))
        deadline = time.monotonic() + 5
        while _port_open(5555):  # a deleted listener closes asynchronously
            self.assertLess(time.monotonic(), deadline, "listener 5555 still open")
            time.sleep(0.1)
        self.admin(port, "ServerPasswordSet", stdin=f"{server_pw}\n{server_pw}\n\x04")
        hub_pw = f"{server_pw}\n{HUB_PASSWORD}\n{HUB_PASSWORD}\n\x04"
        self.admin(port, "HubCreate", "VIWTEST", stdin=hub_pw)

        password_file = os.path.join(self.tmp, "hub.pw")
        with open(password_file, "w") as f:
            f.write(HUB_PASSWORD + "\n")
        vpn = VPNSection(
            vpncmd=VPNCMD,
            server=f"localhost:{port}",
            hub="VIWTEST",
            hub_password_file=password_file,
        )
        fw = FwknopSection(
            access_file=os.path.join(self.tmp, "access.conf"), open_ports="tcp/443", fwknopd=FWKNOPD
        )
        runner = ProcessRunner(reactor)
        catalog = VerbCatalog(runner, {v.name: v for v in vpn_verbs.verbs(vpn, fw, runner)})

        outcome = await catalog.execute("create_vpn_user", ALICE)
        self.assertEqual(outcome.status, "succeeded", outcome.error)
        again = await catalog.execute("create_vpn_user", ALICE)
        self.assertEqual(again.error["code"], "ALREADY_EXISTS")

        listed = await catalog.execute("list_vpn_users", {})
        self.assertEqual(listed.status, "succeeded", listed.error)
        [alice] = listed.result["users"]
        self.assertEqual(alice["username"], "alice")
        self.assertEqual(alice["auth_method"], "Password Authentication")
        self.assertEqual(alice["num_logins"], 0)
        self.assertEqual(alice["spa"]["source_ip"], "192.0.2.10")

        # The policy and auth type really are set on the hub (read back as hub admin).
        got = subprocess.run(
            [
                VPNCMD,
                f"localhost:{port}",
                "/SERVER",
                "/HUB:VIWTEST",
                "/CSV",
                "/CMD",
                "UserGet",
                "alice",
            ],
            input=f"{HUB_PASSWORD}\n\x04".encode(),
            capture_output=True,
            timeout=20,
            check=False,
        ).stdout.decode()
        self.assertIn("Auth Type,Password Authentication", got)
        self.assertIn("Access,Allow Access,Yes", got)

        wrong = VPNSection(
            vpncmd=VPNCMD, server=f"localhost:{port}", hub="VIWTEST", hub_password_file=""
        )
        bad = VerbCatalog(runner, {v.name: v for v in vpn_verbs.verbs(wrong, fw, runner)})
        denied = await bad.execute("list_vpn_users", {})
        self.assertEqual(denied.error["code"], "HUB_AUTH_FAILED")

        deleted = await catalog.execute("delete_vpn_user", {"username": "alice"})
        self.assertEqual(
            deleted.result, {"username": "alice", "hub_user_deleted": True, "stanza_removed": True}
        )
        listed = await catalog.execute("list_vpn_users", {})
        self.assertEqual(listed.result["users"], [])
        missing = await catalog.execute("delete_vpn_user", {"username": "alice"})
        self.assertEqual(missing.error["code"], "NOT_FOUND")
