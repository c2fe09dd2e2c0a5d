"""The shipped etc/nginx/viworks-cluster.conf, run by the real nginx in a test's directory.

As tests/test_nginx.py does for viworks.conf, nginx reads the shipped file itself with only
its paths, ports and host name substituted, and each substituted string must still be in
the file, so a test never silently checks something else. The file lists two replicas in
each upstream (``# replica b1``, ``# replica b2``): the b1 line is the template of one line
per replica of the test, the b2 line goes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from typing import Any

from tests.processes import wait_for
from tests.stack import write
from tests.test_nginx import NGINX, REPO, STREAM_MODULE, run_nginx_t

SHIPPED = os.path.join(REPO, "etc", "nginx", "viworks-cluster.conf")
#: The shipped replicas' addresses: (agents' ws_bind, API's http_bind) of b1 and b2.
B1 = ("127.0.0.1:8081", "127.0.0.1:8080")
B2 = ("127.0.0.1:8091", "127.0.0.1:8090")
HTTPS_API = "127.0.0.1:8445"


def shipped_text() -> str:
    with open(SHIPPED) as f:
        return f.read()


def substitute(text: str, replacements: Sequence[tuple[str, str]]) -> str:
    """``text`` with each ``(old, new)`` applied; every ``old`` must be there."""
    for old, new in replacements:
        if old not in text:
            raise AssertionError(f"etc/nginx/viworks-cluster.conf no longer contains {old!r}")
        text = text.replace(old, new)
    return text


def with_replicas(text: str, replicas: Sequence[tuple[str, str, str]]) -> str:
    """The upstreams listing ``replicas`` (name, ws address, http address) instead of the
    shipped b1 and b2 lines."""
    for address in (*B1, *B2):
        if address not in text:
            raise AssertionError(f"etc/nginx/viworks-cluster.conf no longer lists {address}")
    lines = []
    for line in text.splitlines(keepends=True):
        if any(b2 in line for b2 in B2):
            continue
        template = next((i for i, b1 in enumerate(B1) if b1 in line), None)
        if template is None:
            lines.append(line)
            continue
        for name, *addresses in replicas:
            copy = line.replace(B1[template], addresses[template])
            lines.append(copy.replace("replica b1", f"replica {name}"))
    return "".join(lines)


def pki_paths(pki: str) -> list[tuple[str, str]]:
    return [("/etc/viworks/pki/", pki + "/")]


def private_config(
    directory: str,
    pki: str,
    front_port: int,
    api_port: int,
    replicas: Sequence[tuple[str, str, str]],
) -> str:
    """The shipped file for a private nginx in ``directory``: stream module by absolute
    path, pid, logs and temporary files inside, loopback ports, the test PKI."""
    temp = "".join(
        f"    {name}_temp_path {directory}/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return substitute(
        with_replicas(shipped_text(), replicas),
        [
            ("include /etc/nginx/modules-enabled/*.conf;", f"load_module {STREAM_MODULE};"),
            ("/run/nginx-viworks-cluster.pid", f"{directory}/nginx.pid"),
            ("worker_processes auto;", "worker_processes 1;"),
            ("listen 443;", f"listen 127.0.0.1:{front_port};"),
            ("listen [::]:443;", ""),  # tests stay on IPv4 loopback
            (HTTPS_API, f"127.0.0.1:{api_port}"),
            ("agents.backend.example", "localhost"),  # the test PKI's server name
            ("\nhttp {\n", f"\nhttp {{\n    access_log off;\n{temp}"),
            *pki_paths(pki),
        ],
    )


class Nginx:
    """One nginx process running a config of the test's, stopped by PID at cleanup."""

    def __init__(self, testcase: Any, directory: str, config: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self.conf = write(os.path.join(directory, "nginx.conf"), config)
        self.error_log = os.path.join(directory, "error.log")
        self.args = ["-e", self.error_log, "-c", self.conf, "-p", directory]
        self.process: subprocess.Popen | None = None
        testcase.addCleanup(self.stop)

    def check(self) -> subprocess.CompletedProcess:
        """``nginx -t`` on the config (binds nothing; opens the certificates)."""
        return run_nginx_t(self.args)

    def start(self, port: int) -> Nginx:
        """Start in the foreground and wait (bounded) until ``port`` accepts."""
        checked = self.check()
        if checked.returncode != 0:
            raise AssertionError(f"nginx -t refused the config: {checked.stderr}")
        assert NGINX is not None
        self.process = subprocess.Popen(
            [NGINX, *self.args, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self.process is not None and (self.process.poll() is not None
                                                       or listening(port)), 15, 0.02)  # fmt: skip
        if self.process.poll() is not None:
            raise AssertionError(f"nginx exited at once: {self.log_text()}")
        return self

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # fast shutdown: proxied links are cut
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log_text(self) -> str:
        if not os.path.exists(self.error_log):
            return ""
        with open(self.error_log, errors="replace") as f:
            return f.read()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
