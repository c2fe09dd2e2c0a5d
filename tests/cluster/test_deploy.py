"""The cluster's deployment files: etc/nginx/viworks-cluster.conf checked by the real nginx,
and the systemd template etc/systemd/viworks-backend@.service by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from twisted.trial import unittest

from tests.cluster.nginx import SHIPPED, pki_paths, private_config, shipped_text, substitute
from tests.stack import shared_pki, write
from tests.test_nginx import NO_STREAM, REPO, SKIP, STREAM_MODULE, run_nginx_t

UNIT = os.path.join(REPO, "etc", "systemd", "viworks-backend@.service")


class ClusterNginxConfigTests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        if not os.path.exists(STREAM_MODULE):
            self.fail(NO_STREAM)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.pki = shared_pki()["ours"]

    def test_system_nginx_accepts_the_shipped_file(self):
        """`nginx -t -c viworks-cluster.conf` with nginx's own prefix (the stream module
        from the packaged modules-enabled include) accepts the file: only the PKI and pid
        paths are substituted."""
        conf = write(
            os.path.join(self.dir, "viworks-cluster.conf"),
            substitute(
                shipped_text(),
                [*pki_paths(self.pki), ("/run/nginx-viworks-cluster.pid", f"{self.dir}/nginx.pid")],
            ),
        )
        run = run_nginx_t(["-e", os.path.join(self.dir, "error.log"), "-c", conf])
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("test is successful", run.stderr)

    def test_private_copy_with_three_replicas(self):
        """The copy the cluster harness runs (own prefix, loopback ports) lists every
        replica of the test in both upstreams and passes `nginx -t`."""
        replicas = [(f"b{i}", f"127.0.0.1:{9100 + i}", f"127.0.0.1:{9200 + i}") for i in (1, 2, 3)]
        text = private_config(self.dir, self.pki, 9443, 9445, replicas)
        for name, ws, http in replicas:
            self.assertIn(f"server {ws} max_fails=1 fail_timeout=5s;   # replica {name}", text)
            self.assertIn(f"server {http} max_fails=1 fail_timeout=5s;   # replica {name}", text)
        self.assertNotIn("127.0.0.1:8091", text)
        conf = write(os.path.join(self.dir, "nginx.conf"), text)
        run = run_nginx_t(["-e", os.path.join(self.dir, "error.log"), "-c", conf, "-p", self.dir])
        self.assertEqual(run.returncode, 0, run.stderr)

    def test_agents_pass_through_and_sse_unbuffered(self):
        """What the design promises, in the file: agents by SNI to a least_conn upstream
        of the replicas' WebSocket ports, with a 2 s connect timeout, TLS untouched (no
        ssl_certificate in the stream block); the events and output routes unbuffered."""
        text = open(SHIPPED).read()
        stream = text[text.index("\nstream {") : text.index("\nhttp {")]
        self.assertRegex(stream, r"upstream viworks_agents \{\s*least_conn;")
        self.assertIn("proxy_connect_timeout 2s;", stream)
        self.assertIn("ssl_preread on;", stream)
        self.assertNotIn("ssl_certificate", stream)
        routes = ("location = /api/v1/events {", r"location ~ ^/api/v1/commands/[^/]+/output$ {")
        for route in routes:
            block = text[text.index(route) :].split("}", 1)[0]
            self.assertIn("proxy_buffering off;", block, route)
            self.assertRegex(block, r"proxy_read_timeout \d{4,}s;", route)
        # POSTs are never retried on another replica (no double submission).
        self.assertNotIn("non_idempotent", re.sub(r"#.*", "", text))


def _verify_skip() -> str | None:
    for tool in ("systemd-analyze", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    if os.geteuid() != 0:
        return "mounting a stand-in /opt needs root"
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        return "unshare --mount is not permitted here"
    return None


class TemplateUnitTests(unittest.TestCase):
    skip = _verify_skip()

    def test_systemd_analyze_verifies_an_instance(self):
        """`systemd-analyze verify viworks-backend@b1.service` has nothing to say about the
        template. Its ExecStart must exist: a stand-in executable is mounted on /opt in a
        private mount namespace (tests/test_install.py checks the real installed venv)."""
        base = os.path.abspath(self.mktemp())
        units, opt = os.path.join(base, "units"), os.path.join(base, "opt")
        os.makedirs(units)
        os.makedirs(os.path.join(opt, "viworks", "venv", "bin"))
        twistd = write(os.path.join(opt, "viworks", "venv", "bin", "twistd"), "#!/bin/sh\n")
        os.chmod(twistd, 0o755)
        shutil.copy(UNIT, units)
        script = 'mount --bind "$1" /opt && exec systemd-analyze verify "$2"'
        run = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", opt,
             os.path.join(units, "viworks-backend@b1.service")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        self.assertEqual((run.returncode, run.stdout + run.stderr), (0, ""))

    def test_instance_names_its_config_and_is_hardened_like_the_single_unit(self):
        """The instance name picks /etc/viworks/backend-%i.toml, and the template keeps
        every hardening setting of viworks-backend.service."""
        template = open(UNIT).read()
        self.assertIn("--config /etc/viworks/backend-%i.toml", template)
        single = open(os.path.join(REPO, "etc", "systemd", "viworks-backend.service")).read()
        hardening = single[single.index("# Hardening") :].split("[Install]")[0]
        for line in hardening.splitlines():
            if line and not line.startswith("#"):
                self.assertIn(line + "\n", template)
