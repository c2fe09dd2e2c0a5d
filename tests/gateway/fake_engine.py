"""The recorded fake container engine (``tests/fakes/docker``) installed in a temp dir.

No container engine can run here: the fake records every call (program and argv, one JSON
line each), keeps its containers in a JSON state file and answers like docker/podman, so
the verbs' real argv and their handling of the engine's answers are tested. Shared by the
container and the session verb tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

FAKE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakes", "docker")


class FakeEngine:
    """A copy of the fake named ``name`` in ``directory``, with its config (``**config``)."""

    def __init__(self, directory: str, name: str = "docker", **config: Any) -> None:
        self.exe = os.path.join(directory, name)
        with open(FAKE) as f:
            body = f.read().split("\n", 1)[1]
        # A "#!" line naming this interpreter (the verbs' children get only PATH and LANG).
        with open(self.exe, "w") as f:
            f.write(f"#!{sys.executable}\n{body}")
        os.chmod(self.exe, 0o755)
        self.record = os.path.join(directory, "record.jsonl")
        self._setup_record = os.path.join(directory, "setup")
        self.config: dict[str, Any] = {
            "record": self.record,
            "state": os.path.join(directory, "state.json"),
            **config,
        }
        self.configure()

    def configure(self, **changes: Any) -> None:
        """Change the fake's behaviour (failures, delays, ports in use, ...)."""
        self.config.update(changes)
        with open(self.exe + ".json", "w") as f:
            json.dump(self.config, f)

    def calls(self) -> list[dict[str, Any]]:
        """Every recorded call so far: ``{"prog": ..., "argv": [...]}``."""
        if not os.path.exists(self.record):
            return []
        with open(self.record) as f:
            return [json.loads(line) for line in f]

    def cli(self, *argv: str) -> str:
        """Run the fake directly (to set up or inspect state) without recording it."""
        env = {"PATH": "/usr/bin:/bin", "FAKE_ENGINE_RECORD": self._setup_record}
        done = subprocess.run(
            [self.exe, *argv], capture_output=True, text=True, env=env, check=False
        )
        return done.stdout

    def run_container(
        self, name: str, port: int, labels: list[str], *, running: bool = True
    ) -> str:
        """Create a container publishing ``port``, stopped unless ``running``; its id."""
        cid = self.cli("run", "-d", "--name", name, *labels, "-p", f"{port}:8080", "nginx:1.27")
        cid = cid.strip()
        if not running:
            self.cli("stop", cid)
        return cid

    def state(self) -> dict[str, dict[str, Any]]:
        """The fake engine's containers by name."""
        if not os.path.exists(self.config["state"]):
            return {}
        with open(self.config["state"]) as f:
            return {c["name"]: c for c in json.load(f)["containers"]}
