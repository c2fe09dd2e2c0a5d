"""etc/install-service.sh in a throw-away root, and what it installs.

The script runs for real, as root, with ``--root DIR``: it builds a virtualenv with pip
(versions from constraints.txt, packages from the pip cache or PyPI), creates the
``viworks`` user in DIR's account files, gives it the backend's keys, and installs and
enables both units in DIR. Nothing on the host changes and nothing is started.
``systemd-analyze verify`` then checks the installed units, with DIR/opt mounted on /opt
in a private mount namespace (``unshare``) so that ExecStart is found where the unit says.

Also here: constraints.txt is the runtime dependency closure of the venv the tests run in.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig

from twisted.trial import unittest

from viworks import pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("systemctl", "systemd-analyze", "useradd", "unshare")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "install-service.sh needs root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing: {', '.join(missing)}"
    if subprocess.run(["python3", "-m", "venv", "--help"], capture_output=True).returncode:
        return "python3 -m venv is unavailable (python3-venv)"
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        return "unshare --mount is not permitted here (systemd-analyze needs /opt replaced)"
    return None


def _constraints_module():
    spec = importlib.util.spec_from_file_location(
        "constraints", os.path.join(REPO, "etc", "constraints.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_pins(text: str) -> dict[str, str]:
    """{canonical name: version} of ``name==version`` lines (comments ignored)."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in text.splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[canonicalize_name(name)] = version
    return pins


def shipped_pins() -> dict[str, str]:
    with open(os.path.join(REPO, "constraints.txt")) as f:
        return parse_pins(f.read())


class ConstraintsTests(unittest.TestCase):
    def test_constraints_pin_the_tested_runtime_closure(self):
        """constraints.txt pins exactly the runtime dependency closure, at the versions
        installed in the venv the tests run in (else: run `make constraints`)."""
        from packaging.utils import canonicalize_name

        module = _constraints_module()
        expected = {canonicalize_name(k): v for k, v in module.runtime_closure().items()}
        pins = shipped_pins()
        self.assertIn("pip", pins)
        del pins["pip"]
        self.assertEqual(pins, expected, "constraints.txt is stale: run `make constraints`")
        for name in ("twisted", "autobahn", "klein", "pyopenssl", "cryptography"):
            self.assertIn(name, pins)
        for test_only in ("ruff", "hypothesis"):
            self.assertNotIn(test_only, pins)


class InstallServiceTests(unittest.TestCase):
    skip = _skip_reason()
    timeout = 900

    def setUp(self):
        base = os.path.abspath(self.mktemp())
        # A copy of the checkout: pip builds in the source tree, keep the real one clean.
        self.repo = os.path.join(base, "src")
        shutil.copytree(
            REPO,
            self.repo,
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "_trial_temp*", "build", "*.egg-info", ".dev", "bench",
                "__pycache__", "dropin.cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
                ".coverage*",
            ),
        )  # fmt: skip
        self.root = os.path.join(base, "root")
        etc = os.path.join(self.root, "etc")
        os.makedirs(etc)
        for name, line in (
            ("passwd", "root:x:0:0:root:/root:/bin/sh"),
            ("group", "root:x:0:"),
            ("shadow", "root:*:19000:0:99999:7:::"),
            ("gshadow", "root:*::"),
        ):
            with open(os.path.join(etc, name), "w") as f:
                f.write(line + "\n")
        self.host_has_viworks = _has_user("viworks")

    def install(self, role: str) -> str:
        # As from a shell with another environment active (trial's own workers put theirs
        # on PYTHONPATH): the script must still build a complete venv of its own.
        site = sysconfig.get_paths()["purelib"]
        env = {**os.environ, "PYTHONPATH": site, "VIRTUAL_ENV": sys.prefix}
        run = subprocess.run(
            [os.path.join(self.repo, "etc", "install-service.sh"), role, "--root", self.root],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        output = run.stdout + run.stderr
        self.assertEqual(run.returncode, 0, output)
        return output

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def test_backend_and_gateway(self):
        """Both roles install into the root: user, key ownership, state directories,
        configs, enabled units, a relocated virtualenv with the pinned versions and the
        twistd plugins; systemd-analyze verify finds nothing to say about the units."""
        keys = self.path("etc", "viworks", "pki")
        pki.init_ca(keys)
        pki.issue_server(keys, "backend.example", [])
        pki.make_signing_key(keys)
        os.chmod(os.path.join(keys, "server.key"), 0o644)  # wrong on purpose: gets fixed

        output = self.install("backend")
        viworks = _user_in(self.path("etc", "passwd"), "viworks")
        self.assertIsNotNone(viworks, output)
        uid, gid = viworks
        self.assertEqual(_has_user("viworks"), self.host_has_viworks, "host accounts untouched")
        for name in ("server.key", "signing.key"):
            info = os.stat(os.path.join(keys, name))
            self.assertEqual((info.st_uid, info.st_gid), (uid, gid), name)
            self.assertEqual(stat.S_IMODE(info.st_mode), 0o600, name)
        self.assertEqual(os.stat(os.path.join(keys, "ca.key")).st_uid, 0, "only its keys")
        state = os.stat(self.path("var", "lib", "viworks"))
        self.assertEqual((state.st_uid, stat.S_IMODE(state.st_mode)), (uid, 0o700))
        self.assertSameFile(self.path("etc", "viworks", "backend.toml"), "etc/backend.toml")

        output = self.install("gateway")
        agent_state = os.stat(self.path("var", "lib", "viworks", "agent"))
        self.assertEqual((agent_state.st_uid, stat.S_IMODE(agent_state.st_mode)), (0, 0o700))
        self.assertSameFile(self.path("etc", "viworks", "agent.toml"), "etc/agent.toml")

        units = ("viworks-backend.service", "viworks-gateway-agent.service")
        for unit in units:
            self.assertTrue(
                os.path.islink(self.path("etc/systemd/system/multi-user.target.wants", unit)),
                f"{unit} enabled\n{output}",
            )
        self.assertVenv()
        self.assertVerified([self.path("etc", "systemd", "system", unit) for unit in units])

    def assertSameFile(self, installed: str, shipped: str) -> None:
        with open(installed) as a, open(os.path.join(REPO, shipped)) as b:
            self.assertEqual(a.read(), b.read(), installed)

    def assertVenv(self) -> None:
        """Scripts name /opt/viworks/venv/bin/python; the pins and the plugins are there."""
        venv = self.path("opt", "viworks", "venv")
        with open(os.path.join(venv, "bin", "twistd")) as f:
            head = f.read(300)
        self.assertIn("/opt/viworks/venv/bin/python", head)
        self.assertNotIn(self.root, head)
        python = os.path.join(venv, "bin", "python")
        freeze = subprocess.run(
            [python, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
        )
        installed = parse_pins(freeze.stdout)
        for name, version in shipped_pins().items():
            self.assertEqual(installed.get(name), version, name)
        plugins = subprocess.run(
            [python, os.path.join(venv, "bin", "twistd"), "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertIn("viworks-backend", plugins.stdout)
        self.assertIn("viworks-gateway", plugins.stdout)

    def assertVerified(self, units: list[str]) -> None:
        """systemd-analyze verify, with the root's /opt on /opt (a private mount)."""
        script = 'mount --bind "$1" /opt && shift && exec systemd-analyze verify "$@"'
        run = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             self.path("opt"), *units],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        self.assertEqual((run.returncode, run.stdout + run.stderr), (0, ""))


def _user_in(passwd: str, name: str) -> tuple[int, int] | None:
    with open(passwd) as f:
        for line in f:
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2]), int(fields[3])
    return None


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
