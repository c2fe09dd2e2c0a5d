"""Tests for viworks.config."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import stat

from twisted.trial import unittest

from viworks import pki
from viworks.config import (
    AgentConfig,
    BackendConfig,
    ConfigError,
    load_agent_config,
    load_backend_config,
)
from viworks.config.verbs import VerbConfig
from viworks.files import ensure_private_dir
from viworks.gateway.verbs.builtin import BUILTIN_VERBS
from viworks.gateway.verbs.template import parse_template
from viworks.netaddr import parse_bind, parse_wss_url

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")

GOOD_PIN = "sha256/" + base64.b64encode(b"\x01" * 32).decode()

AGENT_MINIMAL = """\
[outbound]
backend_url = "wss://backend.example/ws/agent"
agent_id = "agent-1"

[tls]
cert = "pki/agent.crt"
key = "pki/agent.key"
ca = "pki/ca.crt"
"""

BACKEND_MINIMAL = """\
[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
"""


class _ConfigTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "pki"))
        for name in ("agent.crt", "agent.key", "server.crt", "server.key", "ca.crt"):
            with open(os.path.join(self.dir, "pki", name), "w") as f:
                f.write("-----BEGIN PLACEHOLDER-----\n")
        # signing.key and signing.pub: [signing] checks that they are real Ed25519 keys.
        pki.make_signing_key(os.path.join(self.dir, "pki"))

    def write(self, text: str, name: str = "config.toml") -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def agent(self, extra: str = "", base: str = AGENT_MINIMAL) -> AgentConfig:
        return load_agent_config(self.write(base + extra))

    def assertAgentError(self, text: str, *fragments: str) -> ConfigError:
        """Loading ``text`` as an agent config fails; the one-line message has every fragment."""
        path = self.write(text)
        err = self.assertRaises(ConfigError, load_agent_config, path)
        return self.assertMessage(err, path, *fragments)

    def assertBackendError(self, text: str, *fragments: str) -> ConfigError:
        path = self.write(text)
        err = self.assertRaises(ConfigError, load_backend_config, path)
        return self.assertMessage(err, path, *fragments)

    def assertMessage(self, err: ConfigError, path: str, *fragments: str) -> ConfigError:
        message = str(err)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(path + ": "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return err


class ShippedFilesTests(_ConfigTestCase):
    def test_agent_example_parses(self):
        """etc/agent.toml is valid and holds the documented example values."""
        config = load_agent_config(os.path.join(ETC, "agent.toml"), check_files=False)
        self.assertEqual(config.agent.bind_host, "127.0.0.1")
        self.assertEqual(config.agent.bind_port, 8443)
        self.assertEqual(config.agent.site, "production")
        self.assertEqual(config.agent.state_dir, "/var/lib/viworks/agent")
        self.assertEqual(config.outbound.backend_url, "wss://backend.example:8081/ws/agent")
        self.assertEqual(config.outbound.agent_id, "os-agent-1")
        self.assertEqual(config.tls.cert, "/etc/viworks/pki/agents/os-agent-1.crt")
        self.assertEqual(config.tls.key, "/etc/viworks/pki/agents/os-agent-1.key")
        self.assertEqual(config.tls.ca, "/etc/viworks/pki/ca.crt")
        self.assertEqual(config.panel.users_file, "/etc/viworks/panel.htpasswd")
        self.assertTrue(config.agent.exec_enable)
        self.assertEqual(config.verbs, {})

    def test_agent_example_verbs_parse(self):
        """The commented-out [verbs.*] examples in etc/agent.toml are valid once uncommented."""
        with open(os.path.join(ETC, "agent.toml")) as f:
            text = f.read()
        examples = text[text.index("# Verbs (optional)") :]
        uncommented = "\n".join(
            line[len("#   ") :] for line in examples.splitlines() if line.startswith("#   ")
        )
        config = load_agent_config(self.write(text + "\n" + uncommented + "\n"), check_files=False)
        self.assertEqual(set(config.verbs), {"create_panel_user", "rotate_logs", "set_db_password"})
        self.assertFalse(config.verbs["create_panel_user"].enabled)
        rotate = config.verbs["rotate_logs"]
        self.assertEqual(rotate.argv, ("/usr/sbin/logrotate", "--force", "{config}"))
        self.assertEqual(rotate.params["config"]["pattern"], "^/etc/logrotate\\.d/[a-z0-9_-]+$")
        self.assertEqual(config.verbs["set_db_password"].stdin, "{password}\n")

    def test_backend_example_parses(self):
        """etc/backend.toml is valid and holds the documented example values."""
        config = load_backend_config(os.path.join(ETC, "backend.toml"), check_files=False)
        self.assertEqual((config.backend.http_host, config.backend.http_port), ("127.0.0.1", 8080))
        self.assertEqual((config.backend.ws_host, config.backend.ws_port), ("0.0.0.0", 8081))
        self.assertEqual(config.backend.ws_path, "/ws/agent")
        self.assertEqual(config.backend.database, "/var/lib/viworks/backend.db")
        self.assertFalse(config.backend.is_postgres)
        self.assertEqual(config.tls.cert, "/etc/viworks/pki/server.crt")
        self.assertEqual(config.tls.key, "/etc/viworks/pki/server.key")
        self.assertEqual(config.tls.client_ca, "/etc/viworks/pki/ca.crt")

    def test_examples_set_every_key(self):
        """The shipped examples spell out every key, with the loader's default values."""
        import tomllib

        from viworks.config import agent, backend

        for name, sections in (
            # [signing] is optional (a table loader), and the examples turn it on.
            ("agent.toml", {**agent.AGENT_SECTIONS, "signing": (agent.AgentSigning, ())}),
            ("backend.toml", {**backend.BACKEND_SECTIONS, "signing": (backend.BackendSigning, ())}),
        ):
            with open(os.path.join(ETC, name), "rb") as f:
                data = tomllib.load(f)
            self.assertEqual(set(data), set(sections), name)
            for section, (cls, _checks) in sections.items():
                keys = {f.name for f in dataclasses.fields(cls)}
                self.assertEqual(set(data[section]), keys, f"{name} [{section}]")

    def test_default_units_are_the_packages_units(self):
        """[services] and [logs] default to the unit names the packages `make tools`
        installs ship (softether-vpnserver, fwknop-server), and etc/agent.toml agrees."""
        import subprocess

        package_of = {
            "nginx": "nginx-common",
            "softether-vpnserver": "softether-vpnserver",
            "fwknop-server": "fwknop-server",
            "docker": "docker.io",
        }
        default = self.agent()
        defaults = set(default.services.units) | set(default.logs.units)
        self.assertEqual(defaults - set(package_of), {"viworks-gateway-agent"})
        self.assertTrue(
            os.path.exists(os.path.join(ETC, "systemd", "viworks-gateway-agent.service"))
        )
        checked = 0
        for unit in sorted(defaults - {"viworks-gateway-agent"}):
            listing = subprocess.run(
                ["dpkg", "-L", package_of[unit]], capture_output=True, text=True
            )
            if listing.returncode != 0:
                continue  # not installed here (docker)
            shipped = [p for p in listing.stdout.split() if p.endswith(f"/system/{unit}.service")]
            self.assertTrue(shipped, f"{package_of[unit]} ships no {unit}.service")
            checked += 1
        if not checked:
            raise unittest.SkipTest("none of the packages is installed (`make tools`)")
        config = load_agent_config(os.path.join(ETC, "agent.toml"), check_files=False)
        self.assertEqual(config.services.units, default.services.units)
        self.assertEqual(config.logs.units, default.logs.units)

    def test_example_with_existing_files(self):
        """A copy of etc/agent.toml whose TLS files exist loads with file checks enabled."""
        with open(os.path.join(ETC, "agent.toml")) as f:
            text = f.read().replace("/etc/viworks/pki/agents/os-agent-1", "pki/agent")
            text = text.replace("/etc/viworks/pki/", "pki/")
        config = load_agent_config(self.write(text))
        self.assertEqual(config.tls.cert, os.path.join(self.dir, "pki", "agent.crt"))
        self.assertEqual(config.tls.ca, os.path.join(self.dir, "pki", "ca.crt"))
        shutil.copy(os.path.join(ETC, "backend.toml"), self.dir)
        err = self.assertRaises(
            ConfigError, load_backend_config, os.path.join(self.dir, "backend.toml")
        )
        self.assertIn("[tls] cert: file does not exist", str(err))


class DefaultsTests(_ConfigTestCase):
    def test_agent_defaults(self):
        """Keys left out of an agent file take their documented defaults."""
        config = self.agent()
        self.assertEqual(config.path, os.path.join(self.dir, "config.toml"))
        self.assertEqual(config.agent.bind_address, "127.0.0.1:8443")
        self.assertEqual(config.agent.log_level, "info")
        self.assertEqual(config.agent.site, "production")
        self.assertEqual(config.agent.state_dir, "/var/lib/viworks/agent")
        self.assertEqual(config.agent.max_connections, 100)
        self.assertEqual(config.agent.request_timeout, 30.0)
        self.assertEqual(config.agent.labels, {})
        self.assertEqual(config.outbound.heartbeat_interval, 15.0)
        self.assertEqual(config.outbound.reconnect_initial, 1.0)
        self.assertEqual(config.outbound.reconnect_max, 60.0)
        self.assertEqual(config.outbound.backend_port, 443)
        self.assertEqual(config.outbound.backend_path, "/ws/agent")
        self.assertEqual(config.tls.backend_spki_pins, ())
        self.assertEqual(config.panel.users_file, "/etc/viworks/panel.htpasswd")
        self.assertEqual(config.panel.htpasswd, "/usr/bin/htpasswd")

    def test_backend_defaults(self):
        """Keys left out of a backend file take their documented defaults."""
        config = load_backend_config(self.write(BACKEND_MINIMAL))
        self.assertIsInstance(config, BackendConfig)
        b = config.backend
        self.assertEqual(b.http_bind, "127.0.0.1:8080")
        self.assertEqual(b.ws_bind, "0.0.0.0:8081")
        self.assertEqual(b.ws_path, "/ws/agent")
        self.assertEqual(b.database, "/var/lib/viworks/backend.db")
        self.assertEqual(b.log_level, "info")
        self.assertEqual(b.heartbeat_interval, 15.0)
        self.assertEqual(b.max_message_size, 1048576)
        self.assertEqual(b.default_command_timeout, 60.0)
        self.assertEqual((b.default_ttl, b.lost_grace), (3600.0, 60.0))
        self.assertEqual((b.handshake_rate, b.handshake_burst), (200.0, 200))
        self.assertEqual((b.max_output_bytes, b.event_history_bytes), (1 << 20, 16 << 20))
        self.assertEqual((b.telemetry_history_bytes, b.telemetry_min_interval), (4 << 20, 1.0))
        self.assertEqual(config.api.sse_buffer_bytes, 1 << 20)

    def test_values_are_read(self):
        """Explicit values are used; integers are accepted for floats, 'warning' means warn."""
        config = self.agent(
            f'backend_spki_pins = ["{GOOD_PIN}"]\n'
            '[agent]\nbind_address = "[::1]:9443"\nlog_level = "WARNING"\n'
            'request_timeout = 5\nlabels = { rack = "r12" }\n'
        )
        self.assertEqual((config.agent.bind_host, config.agent.bind_port), ("::1", 9443))
        self.assertEqual(config.agent.log_level, "warn")
        self.assertEqual(config.agent.request_timeout, 5.0)
        self.assertIsInstance(config.agent.request_timeout, float)
        self.assertEqual(config.agent.labels, {"rack": "r12"})
        self.assertEqual(config.tls.backend_spki_pins, (GOOD_PIN,))

    def test_postgres_url_kept(self):
        """A PostgreSQL URL for database is kept verbatim rather than resolved as a path."""
        url = "postgresql://viworks:pw@127.0.0.1:5432/viworks"
        config = load_backend_config(
            self.write(BACKEND_MINIMAL + f'[backend]\ndatabase = "{url}"\n')
        )
        self.assertEqual(config.backend.database, url)
        self.assertTrue(config.backend.is_postgres)


class PathTests(_ConfigTestCase):
    def test_relative_paths_resolved(self):
        """Relative paths are resolved against the configuration file's directory."""
        config = self.agent('[agent]\nstate_dir = "state"\n[panel]\nusers_file = "../u"\n')
        self.assertEqual(config.agent.state_dir, os.path.join(self.dir, "state"))
        self.assertEqual(config.panel.users_file, os.path.join(os.path.dirname(self.dir), "u"))
        self.assertEqual(config.tls.key, os.path.join(self.dir, "pki", "agent.key"))

    def test_relative_sqlite_path(self):
        """A relative SQLite database path is resolved against the config directory."""
        path = self.write(BACKEND_MINIMAL + '[backend]\ndatabase = "db/x.db"\n')
        config = load_backend_config(path)
        self.assertEqual(config.backend.database, os.path.join(self.dir, "db", "x.db"))
        self.assertEqual(config.tls.client_ca, os.path.join(self.dir, "pki", "ca.crt"))

    def test_missing_tls_file(self):
        """A TLS file that does not exist is reported with its key."""
        os.remove(os.path.join(self.dir, "pki", "ca.crt"))
        self.assertAgentError(AGENT_MINIMAL, "[tls] ca:", "does not exist")

    def test_tls_path_is_directory(self):
        """A TLS path naming a directory is rejected."""
        text = AGENT_MINIMAL.replace('"pki/agent.key"', '"pki"')
        self.assertAgentError(text, "[tls] key:", "not a regular file")

    def test_unreadable_tls_file(self):
        """A TLS file that cannot be opened is reported with its key."""
        if os.getuid() == 0:
            raise unittest.SkipTest("root can read any file")
        os.chmod(os.path.join(self.dir, "pki", "agent.key"), 0)
        self.assertAgentError(AGENT_MINIMAL, "[tls] key:", "cannot read")

    def test_ensure_private_dir(self):
        """ensure_private_dir creates missing parents and a 0700 directory, idempotently."""
        target = os.path.join(self.dir, "a", "b", "state")
        self.assertEqual(ensure_private_dir(target), target)
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o700)
        ensure_private_dir(target)
        self.assertTrue(os.path.isdir(target))
        self.assertRaises(OSError, ensure_private_dir, os.path.join(self.dir, "pki", "ca.crt"))


class FileErrorTests(_ConfigTestCase):
    def test_missing_file(self):
        """A missing configuration file is a ConfigError naming the file."""
        path = os.path.join(self.dir, "nope.toml")
        err = self.assertRaises(ConfigError, load_agent_config, path)
        self.assertEqual(str(err), f"{path}: configuration file not found")

    def test_syntax_error(self):
        """A TOML syntax error names the file and the line."""
        err = self.assertAgentError(AGENT_MINIMAL + "[agent\n", "TOML syntax error", "line 9")
        self.assertIsNone(err.key)

    def test_unknown_section(self):
        """An unknown section is rejected with a suggestion."""
        self.assertAgentError(
            AGENT_MINIMAL + "[outbund]\n", "unknown section [outbund]", "'outbound'"
        )

    def test_section_not_table(self):
        """A section given as a plain value is rejected."""
        self.assertBackendError("backend = 3\n" + BACKEND_MINIMAL, "[backend]", "must be a table")


class KeyErrorTests(_ConfigTestCase):
    def test_unknown_key(self):
        """An unknown key is rejected, naming section and key, with a suggestion."""
        err = self.assertAgentError(
            AGENT_MINIMAL + '[agent]\nbind_adress = "1.2.3.4:1"\n',
            "[agent] bind_adress: unknown key",
            "'bind_address'",
        )
        self.assertEqual((err.section, err.key), ("agent", "bind_adress"))

    def test_missing_required_key(self):
        """A required key that is absent is reported."""
        self.assertAgentError(
            AGENT_MINIMAL.replace('agent_id = "agent-1"\n', ""),
            "[outbound] agent_id: required key is missing",
        )

    def test_missing_required_section(self):
        """A missing section with required keys reports its first required key."""
        self.assertBackendError("[backend]\n", "[tls] cert: required key is missing")

    def test_wrong_types(self):
        """Wrong TOML types are rejected; a boolean is not an integer."""
        cases = [
            ("[agent]\nmax_connections = true\n", "[agent] max_connections:", "boolean"),
            ("[agent]\nmax_connections = 1.5\n", "[agent] max_connections:", "an integer"),
            ("[agent]\nrequest_timeout = false\n", "[agent] request_timeout:", "a number"),
            ('[agent]\nrequest_timeout = "30"\n', "[agent] request_timeout:", "string"),
            ("[agent]\nsite = 1\n", "[agent] site:", "expected a string"),
            ('[agent]\nlabels = ["a"]\n', "[agent] labels:", "array"),
            ("[agent]\nlabels = { rack = 1 }\n", "[agent] labels.rack:", "must be a string"),
            ('[panel]\nusers_file = ["x"]\n', "[panel] users_file:", "array"),
        ]
        for extra, *fragments in cases:
            self.assertAgentError(AGENT_MINIMAL + extra, *fragments)
        pins = AGENT_MINIMAL + 'backend_spki_pins = "x"\n'
        self.assertAgentError(pins, "[tls] backend_spki_pins:", "string array")
        self.assertBackendError(
            BACKEND_MINIMAL + "[backend]\nmax_message_size = true\n",
            "[backend] max_message_size:",
            "boolean",
        )

    def test_bad_url(self):
        """backend_url must be wss:// with a host and a valid port."""
        for url, why in [
            ("https://backend.example/ws", "wss://"),
            ("ws://backend.example/ws", "wss://"),
            ("wss:///ws/agent", "no host"),
            ("wss://backend.example:99999/ws", "invalid URL"),
            ("wss://u:p@backend.example/ws", "credentials"),
        ]:
            text = AGENT_MINIMAL.replace("wss://backend.example/ws/agent", url)
            self.assertAgentError(text, "[outbound] backend_url:", why)

    def test_bad_agent_id(self):
        """agent_id must match the identifier pattern."""
        for bad in ["", "-agent", "a b", "x" * 65, "agent/1"]:
            text = AGENT_MINIMAL.replace('"agent-1"', f'"{bad}"')
            self.assertAgentError(text, "[outbound] agent_id:")

    def test_reconnect_max_below_initial(self):
        """reconnect_max smaller than reconnect_initial is rejected."""
        text = AGENT_MINIMAL.replace(
            'agent_id = "agent-1"',
            'agent_id = "agent-1"\nreconnect_initial = 10\nreconnect_max = 5',
        )
        self.assertAgentError(text, "[outbound] reconnect_max:", ">= reconnect_initial")

    def test_bad_pin(self):
        """SPKI pins must be sha256/ plus the base64 of 32 bytes."""
        for bad in ["sha1/" + GOOD_PIN[7:], "sha256/not-base64!", "sha256/" + "QUJD", GOOD_PIN[7:]]:
            text = AGENT_MINIMAL + f'backend_spki_pins = ["{GOOD_PIN}", "{bad}"]\n'
            self.assertAgentError(text, "[tls] backend_spki_pins:", "item 1")

    def test_bad_values(self):
        """Out-of-range and malformed values are rejected, naming the key."""
        agent_cases = [
            ('[agent]\nbind_address = "localhost"\n', "[agent] bind_address:"),
            ('[agent]\nbind_address = "1.2.3.4:0"\n', "[agent] bind_address:"),
            ('[agent]\nbind_address = "::1:80"\n', "[agent] bind_address:"),
            ('[agent]\nlog_level = "loud"\n', "[agent] log_level:"),
            ('[agent]\nsite = " "\n', "[agent] site:"),
            ('[agent]\nstate_dir = ""\n', "[agent] state_dir:"),
            ("[agent]\nmax_connections = 0\n", "[agent] max_connections:"),
            ("[agent]\nrequest_timeout = 0\n", "[agent] request_timeout:"),
        ]
        for extra, fragment in agent_cases:
            self.assertAgentError(AGENT_MINIMAL + extra, fragment)
        backend_cases = [
            ('ws_path = "ws"', "[backend] ws_path:"),
            ("max_message_size = 1023", "[backend] max_message_size:"),
            ("heartbeat_interval = -1", "[backend] heartbeat_interval:"),
            ("default_command_timeout = 0", "[backend] default_command_timeout:"),
            ('database = "mysql://x/y"', "[backend] database:"),
            ('ws_bind = "0.0.0.0:http"', "[backend] ws_bind:"),
            ("max_output_bytes = 1023", "[backend] max_output_bytes:"),
            # Below one telemetry report of the largest size accepted (64 KiB).
            ("telemetry_history_bytes = 65535", "[backend] telemetry_history_bytes:"),
            ("telemetry_min_interval = -1", "[backend] telemetry_min_interval:"),
            ("event_history_bytes = 1000", "[backend] event_history_bytes:"),
        ]
        for extra, fragment in backend_cases:
            self.assertBackendError(BACKEND_MINIMAL + f"[backend]\n{extra}\n", fragment)
        self.assertBackendError(
            BACKEND_MINIMAL + "[api]\nsse_buffer_bytes = 4096\n", "[api] sse_buffer_bytes:"
        )


ROTATE = """\
[verbs.rotate_logs]
argv = ["/usr/sbin/logrotate", "--force", "{config}"]
timeout = 60
changes_state = true
params.config = {type = "string", pattern = "^/etc/logrotate\\\\.d/[a-z0-9_-]+$"}
"""


class VerbConfigTests(_ConfigTestCase):
    def assertVerbError(self, extra: str, *fragments: str) -> ConfigError:
        """``AGENT_MINIMAL + extra`` fails to load with every fragment in the message."""
        return self.assertAgentError(AGENT_MINIMAL + extra, *fragments)

    def test_declared_verb(self):
        """A [verbs.NAME] table declares a verb: argv, timeout, changes_state and params."""
        config = self.agent(ROTATE)
        verb = config.verbs["rotate_logs"]
        self.assertIsInstance(verb, VerbConfig)
        self.assertEqual(verb.argv, ("/usr/sbin/logrotate", "--force", "{config}"))
        self.assertEqual(verb.timeout, 60.0)
        self.assertTrue(verb.changes_state)
        self.assertEqual(
            verb.params,
            {"config": {"type": "string", "pattern": "^/etc/logrotate\\.d/[a-z0-9_-]+$"}},
        )

    def test_declared_verb_defaults(self):
        """Unset keys: no stdin, limits left to the gateway, changes_state true, enabled."""
        verb = self.agent('[verbs.hello]\nargv = ["/bin/true"]\n').verbs["hello"]
        self.assertEqual(
            verb,
            VerbConfig(
                argv=("/bin/true",),
                stdin=None,
                timeout=None,
                output_cap=None,
                concurrency=None,
                no_output_timeout=None,
                changes_state=True,
                description="",
                params={},
                enabled=True,
            ),
        )

    def test_all_verb_keys(self):
        """Every key of a declared verb is read, including a stdin template and all param
        types."""
        verb = self.agent(
            "[verbs.set_pw]\n"
            'argv = ["/usr/local/bin/setpw", "--user={user}", "--port", "{port}", "{mode}"]\n'
            'stdin = "{password}\\n"\n'
            "timeout = 2.5\noutput_cap = 4096\nconcurrency = 1\nchanges_state = false\n"
            'description = "Set a password."\nenabled = true\n'
            'params.user = {type = "string", min_length = 3, max_length = 32}\n'
            'params.port = {type = "integer", min = 1, max = 65535, default = 22}\n'
            'params.mode = {type = "enum", values = ["fast", "slow"]}\n'
            'params.addr = {type = "ip", required = false}\n'
            'params.password = {type = "secret"}\n'
        ).verbs["set_pw"]
        self.assertEqual(verb.stdin, "{password}\n")
        self.assertEqual((verb.timeout, verb.output_cap, verb.concurrency), (2.5, 4096, 1))
        self.assertFalse(verb.changes_state)
        self.assertEqual(verb.description, "Set a password.")
        self.assertEqual(set(verb.params), {"user", "port", "mode", "addr", "password"})

    def test_builtin_overrides(self):
        """A built-in verb accepts timeout, output_cap, concurrency and enabled."""
        config = self.agent(
            "[verbs.ping]\ntimeout = 1\n"
            "[verbs.create_panel_user]\noutput_cap = 2048\nconcurrency = 2\n"
            "[verbs.delete_panel_user]\nenabled = false\n"
        )
        self.assertEqual(config.verbs["ping"].timeout, 1.0)
        self.assertEqual(config.verbs["create_panel_user"].output_cap, 2048)
        self.assertEqual(config.verbs["create_panel_user"].concurrency, 2)
        self.assertFalse(config.verbs["delete_panel_user"].enabled)
        self.assertLessEqual(
            {"ping", "system_health", "create_panel_user", "delete_panel_user"}, BUILTIN_VERBS
        )

    def test_exec_enable(self):
        """[agent] exec_enable defaults to true and must be a boolean."""
        self.assertTrue(self.agent().agent.exec_enable)
        self.assertFalse(self.agent("[agent]\nexec_enable = false\n").agent.exec_enable)
        self.assertVerbError(
            '[agent]\nexec_enable = "no"\n', "[agent] exec_enable:", "expected a boolean"
        )

    def test_bad_verb_name(self):
        """Verb names are 1-64 of a-z, 0-9, '_' starting with a letter; the error names it."""
        for name in ["Rotate", "9lives", '"rotate-logs"', "_x", '"' + "a" * 65 + '"']:
            err = self.assertVerbError(
                f'[verbs.{name}]\nargv = ["/bin/true"]\n', "invalid verb name"
            )
            self.assertEqual(err.section, "verbs." + name.strip('"'))

    def test_verbs_not_tables(self):
        """[verbs] and each [verbs.NAME] must be tables."""
        self.assertAgentError("verbs = 1\n" + AGENT_MINIMAL, "[verbs]: must be a table")
        self.assertVerbError("[verbs]\nx = 1\n", "[verbs.x]: must be a table")

    def test_relative_argv0(self):
        """argv[0] must be an absolute path without placeholders; argv must not be empty."""
        cases = [
            ('argv = ["logrotate", "-f"]', "item 0 must be an absolute path"),
            ('argv = ["./logrotate"]', "item 0 must be an absolute path"),
            ("argv = []", "must not be empty"),
            ('argv = ["/usr/bin/{tool}"]\nparams.tool = {type = "string"}', "placeholders"),
            ('argv = "/bin/true"', "expected a string array"),
            ('argv = ["/bin/true", 1]', "item 1 must be a string"),
        ]
        for body, fragment in cases:
            self.assertVerbError(f"[verbs.x]\n{body}\n", "[verbs.x] argv:", fragment)

    def test_declared_verb_needs_argv(self):
        """A verb that is not built in must set argv."""
        self.assertVerbError("[verbs.x]\ntimeout = 5\n", "[verbs.x] argv: required key is missing")

    def test_unknown_placeholder(self):
        """A placeholder in argv or stdin must name a declared parameter."""
        self.assertVerbError(
            ROTATE.replace('"{config}"', '"{confg}"'),
            "[verbs.rotate_logs] argv:",
            "{confg}",
            "'config'",
        )
        self.assertVerbError(
            '[verbs.x]\nargv = ["/bin/cat"]\nstdin = "{pw}"\n', "[verbs.x] stdin:", "{pw}"
        )

    def test_bad_template_syntax(self):
        """Stray braces are errors; {{ and }} are literal braces."""
        self.assertVerbError(
            '[verbs.x]\nargv = ["/bin/echo", "{a"]\nparams.a = {type = "string"}\n',
            "[verbs.x] argv:",
            "item 1",
            "unmatched '{'",
        )
        self.assertVerbError(
            '[verbs.x]\nargv = ["/bin/cat"]\nstdin = "}"\n', "[verbs.x] stdin:", "unmatched '}'"
        )
        verb = self.agent('[verbs.x]\nargv = ["/bin/echo", "{{literal}}"]\n').verbs["x"]
        self.assertEqual(verb.argv[1], "{{literal}}")

    def test_optional_placeholder_needs_default(self):
        """A placeholder cannot name an optional parameter that may have no value."""
        self.assertVerbError(
            '[verbs.x]\nargv = ["/bin/echo", "{a}"]\n'
            'params.a = {type = "string", required = false}\n',
            "[verbs.x] argv:",
            "optional parameter without a default",
        )
        self.agent(
            '[verbs.x]\nargv = ["/bin/echo", "{a}"]\n'
            'params.a = {type = "string", required = false, default = "z"}\n'
        )

    def test_secret_in_argv(self):
        """A secret parameter may appear in stdin only, never in argv."""
        self.assertVerbError(
            '[verbs.x]\nargv = ["/bin/setpw", "--password={pw}"]\nparams.pw = {type = "secret"}\n',
            "[verbs.x] argv:",
            "{pw} is a secret",
            "stdin",
        )
        verb = self.agent(
            '[verbs.x]\nargv = ["/bin/setpw"]\nstdin = "{pw}\\n"\nparams.pw = {type = "secret"}\n'
        ).verbs["x"]
        self.assertEqual(verb.stdin, "{pw}\n")

    def test_bad_param_schema(self):
        """Param specs are checked by viworks.schema; the error names params.NAME."""
        cases = [
            ('params.a = {type = "nope"}', "[verbs.x] params.a:", "unknown type 'nope'"),
            ('params.a = {type = "string", max_lenght = 3}', "[verbs.x] params.a:", "unknown keys"),
            ('params.a = {type = "integer", min = 5, max = 1}', "[verbs.x] params.a:", "min"),
            ('params.a = {type = "string", pattern = "("}', "[verbs.x] params.a:", "bad pattern"),
            ('params.a = {type = "secret", default = "x"}', "[verbs.x] params.a:", "default"),
            ('params.a = "string"', "[verbs.x] params.a:", "must be a table"),
            ('params."a-b" = {type = "string"}', "[verbs.x] params.a-b:", "parameter names"),
            ('params = ["a"]', "[verbs.x] params:", "expected a table"),
        ]
        for body, *fragments in cases:
            self.assertVerbError(f'[verbs.x]\nargv = ["/bin/true"]\n{body}\n', *fragments)

    def test_builtin_rejects_definition_keys(self):
        """A built-in verb cannot take argv, params, stdin, changes_state or description."""
        for key, value in [
            ("argv", '["/bin/true"]'),
            ("params", '{a = {type = "string"}}'),
            ("stdin", '"x"'),
            ("changes_state", "false"),
            ("description", '"x"'),
        ]:
            err = self.assertVerbError(
                f"[verbs.create_panel_user]\n{key} = {value}\n",
                f"[verbs.create_panel_user] {key}: cannot be set for the built-in verb",
            )
            self.assertEqual(err.key, key)

    def test_bad_verb_values(self):
        """Limits are range-checked, types are strict and unknown keys are errors."""
        cases = [
            ("timeout = 0", "[verbs.ping] timeout:", "must be > 0"),
            ('timeout = "5"', "[verbs.ping] timeout:", "a number"),
            ("output_cap = 1023", "[verbs.ping] output_cap:", ">= 1024"),
            ("concurrency = 0", "[verbs.ping] concurrency:", ">= 1"),
            ("concurrency = 1.5", "[verbs.ping] concurrency:", "an integer"),
            ('enabled = "no"', "[verbs.ping] enabled:", "a boolean"),
            ("timout = 5", "[verbs.ping] timout: unknown key", "'timeout'"),
        ]
        for body, *fragments in cases:
            self.assertVerbError(f"[verbs.ping]\n{body}\n", *fragments)
        self.assertVerbError(
            '[verbs.x]\nargv = ["/bin/true"]\nchanges_state = 1\n',
            "[verbs.x] changes_state:",
            "a boolean",
        )


class HelperTests(unittest.TestCase):
    def test_parse_template(self):
        """parse_template splits literals and {name} placeholders; {{ }} are literal."""
        self.assertEqual(parse_template("plain"), (("plain", None),))
        self.assertEqual(parse_template("{a}"), (("", "a"), ("", None)))
        self.assertEqual(parse_template("--x={a}:{b}!"), (("--x=", "a"), (":", "b"), ("!", None)))
        self.assertEqual(parse_template("{{{a}}}"), (("{", "a"), ("}", None)))
        for bad in ["{", "}", "{a", "{a.b}", "{0}", "{a!r}", "{}"]:
            self.assertRaises(ValueError, parse_template, bad)

    def test_parse_bind(self):
        """parse_bind splits host:port and bracketed IPv6, and rejects malformed values."""
        self.assertEqual(parse_bind("127.0.0.1:8443"), ("127.0.0.1", 8443))
        self.assertEqual(parse_bind("[::1]:8443"), ("::1", 8443))
        self.assertEqual(parse_bind("backend.example:1"), ("backend.example", 1))
        for bad in ["", "host", ":80", "host:", "host:65536", "::1:80", "[::1]", "a b:1"]:
            self.assertRaises(ValueError, parse_bind, bad)

    def test_parse_wss_url(self):
        """parse_wss_url returns host, port (default 443) and path (default /)."""
        self.assertEqual(
            parse_wss_url("wss://b.example:8081/ws/agent"), ("b.example", 8081, "/ws/agent")
        )
        self.assertEqual(parse_wss_url("wss://b.example"), ("b.example", 443, "/"))
        self.assertEqual(parse_wss_url("wss://[::1]:9/x"), ("::1", 9, "/x"))
        self.assertRaises(ValueError, parse_wss_url, "wss://b.example/?q=1")

    def test_error_format(self):
        """ConfigError renders as one line with file, [section] key and message."""
        self.assertEqual(
            str(ConfigError("/f.toml", "bad\nthing", section="agent", key="site")),
            "/f.toml: [agent] site: bad thing",
        )
        self.assertEqual(str(ConfigError("/f.toml", "oops", section="x")), "/f.toml: [x]: oops")


class SigningConfigTests(_ConfigTestCase):
    def test_absent_means_off(self):
        """Without [signing] both configs load with signing None (existing files keep working)."""
        self.assertIsNone(self.agent().signing)
        self.assertIsNone(load_backend_config(self.write(BACKEND_MINIMAL)).signing)

    def test_agent_signing(self):
        """[signing] public_keys are resolved against the file; clock_window defaults to 60."""
        config = self.agent('[signing]\npublic_keys = ["pki/signing.pub", "pki/signing.pub"]\n')
        pub = os.path.join(self.dir, "pki", "signing.pub")
        self.assertEqual(config.signing.public_keys, (pub, pub))
        self.assertEqual(config.signing.clock_window, 60.0)
        config = self.agent('[signing]\npublic_keys = ["pki/signing.pub"]\nclock_window = 5\n')
        self.assertEqual(config.signing.clock_window, 5.0)

    def test_agent_signing_errors(self):
        """Bad [signing] values name the file, the section and the key."""
        self.assertAgentError(
            AGENT_MINIMAL + "[signing]\n", "[signing] public_keys: required key is missing"
        )
        self.assertAgentError(
            AGENT_MINIMAL + "[signing]\npublic_keys = []\n",
            "[signing] public_keys: must list at least one",
        )
        self.assertAgentError(
            AGENT_MINIMAL + '[signing]\npublic_keys = ["pki/nope.pub"]\n',
            "[signing] public_keys: item 0: file does not exist",
        )
        self.assertAgentError(
            AGENT_MINIMAL + '[signing]\npublic_keys = ["pki/ca.crt"]\n',
            "[signing] public_keys: item 0:",
            "not a PEM public key",
        )
        self.assertAgentError(
            AGENT_MINIMAL + '[signing]\npublic_keys = ["pki/signing.pub"]\nclock_window = 0\n',
            "[signing] clock_window: must be > 0",
        )

    def test_backend_signing(self):
        """backend.toml [signing] key must exist and be an Ed25519 private key."""
        config = load_backend_config(
            self.write(BACKEND_MINIMAL + '[signing]\nkey = "pki/signing.key"\n')
        )
        self.assertEqual(config.signing.key, os.path.join(self.dir, "pki", "signing.key"))
        self.assertBackendError(
            BACKEND_MINIMAL + '[signing]\nkey = "pki/missing.key"\n',
            "[signing] key: file does not exist",
        )
        self.assertBackendError(
            BACKEND_MINIMAL + '[signing]\nkey = "pki/signing.pub"\n',
            "[signing] key:",
            "not an unencrypted PEM private key",
        )
        self.assertBackendError(
            BACKEND_MINIMAL + '[signing]\nkye = "pki/signing.key"\n', "[signing] kye: unknown key"
        )
