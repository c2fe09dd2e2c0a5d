"""Tests for the container verbs (spawn_container, stop_container, list_containers).

No container engine can run here, so the verbs drive ``tests/fakes/docker``: a recorded
fake that keeps a small state file and prints docker's (or, named ``podman``, podman's)
output formats. The tests copy it into a temporary directory with a ``#!`` line naming
this interpreter (the agent gives its children only PATH and LANG), point
``[containers] engine_path`` at it, and assert the exact argv it recorded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial import unittest

from tests.gateway.fake_engine import FakeEngine
from viworks.config import load_agent_config
from viworks.config.agent import ContainersSection
from viworks.gateway.catalog import catalog_from_config
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.builtin import container_engine
from viworks.gateway.verbs.builtin import containers as container_verbs
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.model import VerbError, VerbOutcome

IMAGE = "registry.example/viworks/workspace:1.4"
OTHER_IMAGE = "registry.example/viworks/desktop:2"
PS = ["ps", "-a", "--no-trunc", "--filter", "label=viw.managed=true", "--format", "{{json .}}"]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SPAWN = {"username": "alice", "session_id": "s1", "cpu": 1.5, "mem_mb": 1024}


def run_argv(
    user: str = "alice",
    session: str = "s1",
    port: int = 20000,
    cpus: str = "1.5",
    memory: str = "1024m",
    image: str = IMAGE,
    network: str | None = None,
) -> list[str]:
    """The ``run`` argv the engine must receive for a viworks container."""
    argv = [
        "run",
        "-d",
        "--name",
        f"viworks-{user}-{session}",
        "--label",
        f"viw.session={session}",
        "--label",
        f"viw.user={user}",
        "--label",
        "viw.managed=true",
        "--label",
        f"viw.port={port}",
        "-p",
        f"{port}:8080",
        "--cpus",
        cpus,
        "--memory",
        memory,
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]
    if network:
        argv += ["--network", network]
    return [*argv, image]


class Base(unittest.TestCase):
    engine = "docker"

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.fake = FakeEngine(
            self.tmp, self.engine, networks=["viworks-net", container_verbs.STRICT_NETWORK]
        )
        self.exe = self.fake.exe
        self.runner = ProcessRunner(reactor)
        self.catalog = self.make_catalog()

    def write_fake_config(self, **changes: Any) -> None:
        self.fake.configure(**changes)

    def section(self, **kw: Any) -> ContainersSection:
        values: dict[str, Any] = {
            "engine": self.engine,
            "engine_path": self.exe,
            "images": (IMAGE, OTHER_IMAGE),
            "default_image": IMAGE,
            "port_range": "20000-20009",
            "container_port": 8080,
            "network": "",
        }
        values.update(kw)
        return ContainersSection(**values)

    def make_catalog(self, **kw: Any) -> VerbCatalog:
        verbs = container_verbs.verbs(self.section(**kw), self.runner)
        return VerbCatalog(self.runner, {v.name: v for v in verbs})

    def recorded(self) -> list[list[str]]:
        """The argv (without the program) of every engine call so far."""
        calls = self.fake.calls()
        for call in calls:
            self.assertEqual(call["prog"], self.engine)
        return [call["argv"] for call in calls]

    def engine_cli(self, *argv: str) -> str:
        return self.fake.cli(*argv)

    def seed(self, name: str, port: int, *, managed: bool = True, running: bool = True) -> str:
        """Create a container (a viworks one unless ``managed`` is false); return its id."""
        labels = ["--label", "viw.managed=true", "--label", f"viw.port={port}"] if managed else []
        if managed:
            user, _, session = name.removeprefix("viworks-").partition("-")
            labels += ["--label", f"viw.user={user}", "--label", f"viw.session={session}"]
        return self.fake.run_container(name, port, labels, running=running)

    def state(self) -> dict[str, dict[str, Any]]:
        return self.fake.state()

    def assertError(self, outcome: VerbOutcome, status: str, code: str) -> None:
        self.assertEqual(outcome.status, status, outcome)
        assert outcome.error is not None
        self.assertEqual(outcome.error["code"], code, outcome)

    def assertSucceeded(self, outcome: VerbOutcome) -> Any:
        self.assertEqual(outcome.status, "succeeded", outcome)
        return outcome.result


class SpawnTests(Base):
    async def test_spawn_argv(self) -> None:
        """spawn_container lists the viworks containers, then runs exactly the documented
        ``run`` argv (name, labels, port, limits, no capabilities, no-new-privileges) and
        returns the id the engine printed, the name, the port and the image."""
        result = self.assertSucceeded(await self.catalog.execute("spawn_container", SPAWN))
        self.assertEqual(self.recorded(), [PS, run_argv()])
        container = self.state()["viworks-alice-s1"]
        self.assertEqual(
            result,
            {
                "container_id": container["id"],
                "name": "viworks-alice-s1",
                "port": 20000,
                "image": IMAGE,
            },
        )
        self.assertRegex(result["container_id"], "^[0-9a-f]{64}$")
        self.assertEqual(container["state"], "running")

    async def test_limits_formatting(self) -> None:
        """Whole CPU counts are written without a decimal part, memory in MiB with ``m``."""
        args = {**SPAWN, "cpu": 2, "mem_mb": 256, "image": OTHER_IMAGE}
        self.assertSucceeded(await self.catalog.execute("spawn_container", args))
        self.assertEqual(self.recorded()[-1], run_argv(cpus="2", memory="256m", image=OTHER_IMAGE))

    async def test_networks(self) -> None:
        """``[containers] network`` is used for the default egress profile; ``strict`` uses
        the viworks-strict network instead."""
        catalog = self.make_catalog(network="viworks-net")
        self.assertSucceeded(await catalog.execute("spawn_container", SPAWN))
        strict = {**SPAWN, "session_id": "s2", "egress_profile": "strict"}
        self.assertSucceeded(await catalog.execute("spawn_container", strict))
        runs = [argv for argv in self.recorded() if argv[0] == "run"]
        self.assertEqual(
            runs,
            [
                run_argv(network="viworks-net"),
                run_argv(session="s2", port=20001, network=container_verbs.STRICT_NETWORK),
            ],
        )

    async def test_image_allowlist(self) -> None:
        """An image outside ``[containers] images`` is rejected (naming the field) before
        anything runs; the default image is used when none is given."""
        outcome = await self.catalog.execute("spawn_container", {**SPAWN, "image": "alpine"})
        self.assertError(outcome, "rejected", "INVALID_ARGS")
        self.assertIn("image", outcome.error["message"])
        self.assertEqual(self.recorded(), [])
        result = self.assertSucceeded(await self.catalog.execute("spawn_container", SPAWN))
        self.assertEqual(result["image"], IMAGE)

    async def test_no_images_configured(self) -> None:
        """With an empty allowlist every spawn fails with NO_IMAGES_CONFIGURED; nothing runs."""
        catalog = self.make_catalog(images=(), default_image="")
        outcome = await catalog.execute("spawn_container", {**SPAWN, "image": "nginx:1.27"})
        self.assertError(outcome, "failed", "NO_IMAGES_CONFIGURED")
        outcome = await catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "NO_IMAGES_CONFIGURED")
        self.assertEqual(self.recorded(), [])

    async def test_no_default_image(self) -> None:
        """With an allowlist but no default_image, omitting the image fails clearly."""
        catalog = self.make_catalog(default_image="")
        outcome = await catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "NO_DEFAULT_IMAGE")
        self.assertSucceeded(await catalog.execute("spawn_container", {**SPAWN, "image": IMAGE}))

    def test_bad_image_in_config(self) -> None:
        """An allowlisted image that is not an image reference (e.g. an option) is refused
        when the verbs are built."""
        self.assertRaises(ValueError, self.make_catalog, images=("--privileged",))

    async def test_parameter_limits(self) -> None:
        """Out-of-range or malformed parameters are rejected and the engine never runs."""
        bad = [
            {"cpu": 0.4},
            {"cpu": 4.5},
            {"mem_mb": 255},
            {"mem_mb": 8193},
            {"mem_mb": 512.5},
            {"username": "-rf"},
            {"username": "ab"},
            {"username": "a" * 65},
            {"username": "al ice"},
            {"session_id": ""},
            {"session_id": "a/b"},
            {"session_id": "s" * 65},
            {"egress_profile": "open"},
            {"privileged": True},
        ]
        for change in bad:
            outcome = await self.catalog.execute("spawn_container", {**SPAWN, **change})
            self.assertError(outcome, "rejected", "INVALID_ARGS")
        for edge in ({"cpu": 0.5, "mem_mb": 256}, {"cpu": 4, "mem_mb": 8192, "session_id": "x"}):
            self.assertSucceeded(await self.catalog.execute("spawn_container", {**SPAWN, **edge}))
        self.assertEqual(len(self.recorded()), 4)

    async def test_port_allocation_skips_used_ports(self) -> None:
        """The lowest port of the range not held by a viworks container is chosen; a stopped
        viworks container keeps its port (``viw.port`` label)."""
        self.seed("viworks-bob-s1", 20000)
        self.seed("viworks-carol-s1", 20001, running=False)
        result = self.assertSucceeded(await self.catalog.execute("spawn_container", SPAWN))
        self.assertEqual(result["port"], 20002)
        self.assertEqual(self.recorded(), [PS, run_argv(port=20002)])

    async def test_port_held_outside_viworks(self) -> None:
        """A port the engine reports busy (a container viworks does not manage, or another
        process) makes ``run`` fail after creating the container: that container is
        force-removed and the next port is tried."""
        self.seed("web", 20000, managed=False)
        self.write_fake_config(host_ports_in_use=[20001])
        result = self.assertSucceeded(await self.catalog.execute("spawn_container", SPAWN))
        self.assertEqual(result["port"], 20002)
        rm = ["rm", "-f", "viworks-alice-s1"]
        self.assertEqual(
            self.recorded(),
            [PS, run_argv(port=20000), rm, run_argv(port=20001), rm, run_argv(port=20002)],
        )
        self.assertEqual(self.state()["viworks-alice-s1"]["state"], "running")

    async def test_port_in_use_gives_up(self) -> None:
        """After five busy ports spawn fails with PORT_IN_USE, quoting the engine, and leaves
        no half-created container behind."""
        self.write_fake_config(host_ports_in_use=list(range(20000, 20010)))
        outcome = await self.catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "PORT_IN_USE")
        self.assertIn("20004", outcome.error["message"])
        self.assertEqual([a[0] for a in self.recorded()], ["ps"] + ["run", "rm"] * 5)
        self.assertEqual(self.state(), {})

    async def test_ports_exhausted(self) -> None:
        """When every port of the range is held, spawn fails with PORTS_EXHAUSTED and does
        not call ``run``."""
        catalog = self.make_catalog(port_range="20000-20001")
        self.seed("viworks-bob-s1", 20000)
        self.seed("viworks-bob-s2", 20001, running=False)
        outcome = await catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "PORTS_EXHAUSTED")
        self.assertIn("20000-20001", outcome.error["message"])
        self.assertEqual(self.recorded(), [PS])

    async def test_concurrent_spawns_get_distinct_ports(self) -> None:
        """Spawns are serialized: two started together never get the same port."""
        results = await gatherResults(
            [
                self.catalog.execute("spawn_container", {**SPAWN, "session_id": f"s{i}"})
                for i in range(3)
            ]
        )
        ports = sorted(self.assertSucceeded(o)["port"] for o in results)
        self.assertEqual(ports, [20000, 20001, 20002])

    async def test_already_exists(self) -> None:
        """A second spawn for the same user and session fails with ALREADY_EXISTS (seen in
        ``ps``, so ``run`` is not even tried) and leaves the first container alone."""
        first = self.assertSucceeded(await self.catalog.execute("spawn_container", SPAWN))
        outcome = await self.catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "ALREADY_EXISTS")
        self.assertEqual([a[0] for a in self.recorded()], ["ps", "run", "ps"])
        self.assertEqual(self.state()["viworks-alice-s1"]["id"], first["container_id"])

    async def test_name_taken_by_unmanaged_container(self) -> None:
        """If the engine itself reports the name in use (a container without the viworks
        labels), spawn fails with ALREADY_EXISTS and removes nothing."""
        cid = self.seed("viworks-alice-s1", 30000, managed=False)
        outcome = await self.catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "ALREADY_EXISTS")
        self.assertIn("already in use", outcome.error["message"])
        self.assertEqual([a[0] for a in self.recorded()], ["ps", "run"])
        self.assertEqual(self.state()["viworks-alice-s1"]["id"], cid)

    async def test_range_exhausted_by_outside_ports(self) -> None:
        """When the remaining ports of the range are all busy outside viworks, spawn ends
        with PORTS_EXHAUSTED and no container left behind."""
        catalog = self.make_catalog(port_range="20000-20001")
        self.write_fake_config(host_ports_in_use=[20000, 20001])
        outcome = await catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "PORTS_EXHAUSTED")
        self.assertEqual(self.state(), {})

    async def test_engine_errors(self) -> None:
        """Engine failures map onto clear codes: unknown image, unknown network, daemon
        down, missing executable, and anything else as ENGINE_ERROR."""
        self.write_fake_config(missing_images=[OTHER_IMAGE])
        outcome = await self.catalog.execute("spawn_container", {**SPAWN, "image": OTHER_IMAGE})
        self.assertError(outcome, "failed", "IMAGE_UNAVAILABLE")

        self.write_fake_config(networks=[])
        outcome = await self.catalog.execute(
            "spawn_container", {**SPAWN, "egress_profile": "strict"}
        )
        self.assertError(outcome, "failed", "NETWORK_NOT_FOUND")
        self.assertIn(container_verbs.STRICT_NETWORK, outcome.error["message"])

        self.write_fake_config(fail={"run": {"exit": 125, "stderr": "docker: weird failure\n"}})
        outcome = await self.catalog.execute("spawn_container", SPAWN)
        self.assertError(outcome, "failed", "ENGINE_ERROR")
        self.assertIn("weird failure", outcome.error["message"])

        self.write_fake_config(daemon_down=True)
        for verb, args in (("spawn_container", SPAWN), ("list_containers", {})):
            outcome = await self.catalog.execute(verb, args)
            self.assertError(outcome, "failed", "ENGINE_UNAVAILABLE")
            self.assertIn("Cannot connect", outcome.error["message"])

        catalog = self.make_catalog(engine_path=os.path.join(self.tmp, "no-such-engine"))
        outcome = await catalog.execute("list_containers", {})
        self.assertError(outcome, "failed", "ENGINE_NOT_FOUND")

    async def test_timeout_kills_engine(self) -> None:
        """An engine command that hangs is killed when the verb's time is up: the outcome
        is timed_out and no engine process is left behind."""
        self.write_fake_config(delay={"ps": 60})
        outcome = await self.catalog.execute("list_containers", {}, timeout=1.0)
        self.assertError(outcome, "timed_out", "TIMEOUT")
        leftover = subprocess.run(
            ["pgrep", "-f", self.exe], capture_output=True, text=True, check=False
        )
        # The group gets TERM at once; allow it a moment to go.
        for _ in range(50):
            if not leftover.stdout.strip():
                break
            await _sleep(0.1)
            leftover = subprocess.run(
                ["pgrep", "-f", self.exe], capture_output=True, text=True, check=False
            )
        self.assertEqual(leftover.stdout.strip(), "")


class StopTests(Base):
    async def test_stop_by_id(self) -> None:
        """stop_container inspects the container, checks the viworks label, then stops and
        removes it by its full id."""
        spawned = self.assertSucceeded(await self.catalog.execute("spawn_container", SPAWN))
        cid = spawned["container_id"]
        before = len(self.recorded())
        result = self.assertSucceeded(
            await self.catalog.execute("stop_container", {"container_id": cid[:12]})
        )
        self.assertEqual(
            self.recorded()[before:],
            [["container", "inspect", cid[:12]], ["stop", cid], ["rm", cid]],
        )
        self.assertEqual(
            result,
            {
                "container_id": cid,
                "name": "viworks-alice-s1",
                "user": "alice",
                "session": "s1",
                "stopped": True,
                "removed": True,
            },
        )
        self.assertEqual(self.state(), {})

    async def test_stop_by_name_and_already_stopped(self) -> None:
        """A viworks-* name is accepted; a container that is not running is only removed."""
        cid = self.seed("viworks-bob-s1", 20000, running=False)
        result = self.assertSucceeded(
            await self.catalog.execute("stop_container", {"container_id": "viworks-bob-s1"})
        )
        self.assertFalse(result["stopped"])
        self.assertEqual(self.recorded(), [["container", "inspect", "viworks-bob-s1"], ["rm", cid]])

    async def test_refuses_unmanaged(self) -> None:
        """A container without ``viw.managed=true`` is refused with NOT_MANAGED and left
        running, even when its name starts with viworks-."""
        for name in ("viworks-eve-x", "database"):
            cid = self.seed(name, 30000 + len(name), managed=False)
            outcome = await self.catalog.execute("stop_container", {"container_id": cid})
            self.assertError(outcome, "failed", "NOT_MANAGED")
        outcome = await self.catalog.execute("stop_container", {"container_id": "viworks-eve-x"})
        self.assertError(outcome, "failed", "NOT_MANAGED")
        self.assertEqual([a[:2] for a in self.recorded()], [["container", "inspect"]] * 3)
        self.assertEqual(self.state()["database"]["state"], "running")

    async def test_not_found(self) -> None:
        """An id or name the engine does not know gives NOT_FOUND."""
        for ref in ("0123456789ab", "viworks-nobody-s9"):
            outcome = await self.catalog.execute("stop_container", {"container_id": ref})
            self.assertError(outcome, "failed", "NOT_FOUND")

    async def test_bad_reference_rejected(self) -> None:
        """Only hex ids (12-64 digits) and viworks-* names are accepted; nothing runs."""
        for ref in ("database", "0123abc", "-f", "viworks-", "viworks--rm", "A" * 12, "0" * 65):
            outcome = await self.catalog.execute("stop_container", {"container_id": ref})
            self.assertError(outcome, "rejected", "INVALID_ARGS")
        self.assertEqual(self.recorded(), [])


class ListTests(Base):
    async def test_list(self) -> None:
        """list_containers reports only viworks containers, sorted by name, with user,
        session, state, status, RFC 3339 creation time and host port (stopped ones too)."""
        spawned = self.assertSucceeded(await self.catalog.execute("spawn_container", SPAWN))
        self.seed("viworks-bob-s7", 20005, running=False)
        self.seed("web", 8080, managed=False)
        before = len(self.recorded())
        result = self.assertSucceeded(await self.catalog.execute("list_containers", {}))
        self.assertEqual(self.recorded()[before:], [PS])
        rows = result["containers"]
        self.assertEqual([r["name"] for r in rows], ["viworks-alice-s1", "viworks-bob-s7"])
        alice, bob = rows
        self.assertEqual(alice["container_id"], spawned["container_id"])
        self.assertEqual(
            {k: alice[k] for k in ("user", "session", "state", "port", "image")},
            {"user": "alice", "session": "s1", "state": "running", "port": 20000, "image": IMAGE},
        )
        self.assertEqual(
            {k: bob[k] for k in ("user", "session", "state", "port")},
            {"user": "bob", "session": "s7", "state": "exited", "port": 20005},
        )
        for row in rows:
            self.assertRegex(row["created"], RFC3339)
            self.assertTrue(row["status"])

    async def test_list_empty(self) -> None:
        """No viworks containers: an empty list."""
        result = self.assertSucceeded(await self.catalog.execute("list_containers", {}))
        self.assertEqual(result, {"containers": []})


class PodmanTests(SpawnTests, StopTests, ListTests):
    """Every test above again with ``engine = "podman"``: the same argv, podman's output
    shapes (``Names`` list, ``Labels`` object, ``Ports`` objects, epoch ``Created``) and
    podman's error messages."""

    engine = "podman"


class ParsingTests(unittest.TestCase):
    # A line of real `docker ps -a --no-trunc --format '{{json .}}'` output (Go's encoder
    # escapes '>' as \u003e).
    DOCKER_PS = (
        '{"Command":"\\"/usr/bin/workspace\\"","CreatedAt":"2025-05-30 12:34:56 +0000 UTC",'
        '"ID":"' + "a" * 64 + '","Image":"ws:1","Labels":"viw.managed=true,viw.port=20007,'
        'viw.session=s1,viw.user=alice","LocalVolumes":"0","Mounts":"","Names":'
        '"viworks-alice-s1","Networks":"bridge","Ports":"0.0.0.0:20007-\\u003e8080/tcp, '
        '[::]:20007-\\u003e8080/tcp","RunningFor":"2 hours ago","Size":"0B","State":"running",'
        '"Status":"Up 2 hours"}'
    )
    PODMAN_PS = json.dumps(
        {
            "Id": "b" * 64,
            "Names": ["viworks-bob-s2"],
            "Image": "localhost/ws:1",
            "Labels": {"viw.managed": "true", "viw.user": "bob", "viw.session": "s2"},
            "Ports": [
                {
                    "host_ip": "",
                    "container_port": 8080,
                    "host_port": 20003,
                    "range": 1,
                    "protocol": "tcp",
                }
            ],
            "Created": 1748608496,
            "CreatedAt": "2 hours ago",
            "State": "exited",
            "Status": "",
        }
    )

    def test_docker_ps_line(self) -> None:
        """A docker ``ps`` JSON line gives id, name, labels, port, state and status, with
        the creation time converted to RFC 3339."""
        (c,) = container_engine.parse_ps(self.DOCKER_PS + "\n")
        self.assertEqual(c.id, "a" * 64)
        self.assertEqual(
            (c.name, c.user, c.session, c.port), ("viworks-alice-s1", "alice", "s1", 20007)
        )
        self.assertEqual((c.state, c.status), ("running", "Up 2 hours"))
        self.assertEqual(c.created, "2025-05-30T12:34:56.000Z")
        self.assertTrue(c.managed)

    def test_podman_ps_line(self) -> None:
        """A podman ``ps`` JSON line (lists and objects, epoch time) parses the same way."""
        (c,) = container_engine.parse_ps(self.PODMAN_PS)
        self.assertEqual(
            (c.id, c.name, c.user, c.session), ("b" * 64, "viworks-bob-s2", "bob", "s2")
        )
        self.assertEqual((c.port, c.state, c.status), (20003, "exited", "exited"))
        self.assertEqual(c.created, "2025-05-30T12:34:56.000Z")

    def test_garbage_is_an_error(self) -> None:
        """Output that is not JSON objects raises UNEXPECTED_OUTPUT."""
        for text in ("Error: oops", "[1, 2]", '"x"'):
            with self.assertRaises(VerbError) as cm:
                container_engine.parse_ps(text)
            self.assertEqual(cm.exception.code, "UNEXPECTED_OUTPUT")

    def test_inspect(self) -> None:
        """``container inspect`` output: the leading '/' of the name is dropped and the port
        comes from the label or the port bindings; an empty array is no container."""
        text = json.dumps(
            [
                {
                    "Id": "c" * 64,
                    "Name": "/web",
                    "Created": "2025-05-30T12:34:56.987654321Z",
                    "State": {"Status": "running", "Running": True},
                    "Config": {"Image": "nginx", "Labels": None},
                    "HostConfig": {
                        "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8081"}]}
                    },
                }
            ]
        )
        (c,) = container_engine.parse_inspect(text)
        self.assertEqual((c.name, c.port, c.managed, c.state), ("web", 8081, False, "running"))
        self.assertEqual(c.created, "2025-05-30T12:34:56.987Z")
        self.assertEqual(container_engine.parse_inspect("[]\n"), [])

    def test_allocate_port(self) -> None:
        """The lowest free port wins; a full range raises PORTS_EXHAUSTED."""
        self.assertEqual(container_engine.allocate_port((10, 13), {10, 12}), 11)
        self.assertEqual(container_engine.allocate_port((10, 10), ()), 10)
        with self.assertRaises(VerbError) as cm:
            container_engine.allocate_port((10, 12), {10, 11, 12, 99})
        self.assertEqual(cm.exception.code, "PORTS_EXHAUSTED")


class ConfigTests(Base):
    def load(self, extra: str) -> Any:
        text = (
            '[outbound]\nbackend_url = "wss://backend.example/ws/agent"\nagent_id = "a1"\n'
            '[tls]\ncert = "a.crt"\nkey = "a.key"\nca = "ca.crt"\n'
            f"[containers]\nengine_path = {json.dumps(self.exe)}\n"
            f"images = [{json.dumps(IMAGE)}]\ndefault_image = {json.dumps(IMAGE)}\n"
            f'port_range = "21000-21001"\n' + extra
        )
        path = os.path.join(self.tmp, "agent.toml")
        with open(path, "w") as f:
            f.write(text)
        return load_agent_config(path, check_files=False)

    async def test_from_config(self) -> None:
        """The agent's catalog offers the container verbs configured from [containers]; the
        image parameter is the allowlist and the port comes from port_range."""
        catalog = catalog_from_config(self.runner, self.load(""))
        described = catalog.describe()
        self.assertEqual(described["spawn_container"]["params"]["image"]["values"], [IMAGE])
        self.assertTrue(described["spawn_container"]["changes_state"])
        self.assertFalse(described["list_containers"]["changes_state"])
        result = self.assertSucceeded(await catalog.execute("spawn_container", SPAWN))
        self.assertEqual(result["port"], 21000)

    async def test_exec_disabled(self) -> None:
        """With exec_enable = false spawn and stop are refused; list still runs."""
        catalog = catalog_from_config(self.runner, self.load("[agent]\nexec_enable = false\n"))
        for verb, args in (
            ("spawn_container", SPAWN),
            ("stop_container", {"container_id": "a" * 12}),
        ):
            self.assertError(await catalog.execute(verb, args), "rejected", "EXEC_DISABLED")
        self.assertSucceeded(await catalog.execute("list_containers", {}))
        self.assertEqual(self.recorded(), [PS])


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
