"""Talking to the container engine (``docker`` or ``podman``): the reusable layer.

The container verbs (:mod:`.containers`) and any other verb that
needs to look at or act on the per-session containers build on :class:`Engine`:

- argv building: every command is ``[<engine executable>, <subcommand>, ...]`` run through
  the :class:`~viworks.gateway.runner.ProcessRunner` (no shell, minimal environment, own
  process group);
- parsing of ``ps --format '{{json .}}'`` lines and of ``container inspect`` output into
  :class:`ContainerInfo` (docker and podman shapes are both accepted: docker prints
  ``Names``/``Labels``/``Ports`` as strings, podman as a list, a map and a list of maps);
- port allocation (:func:`allocate_port`) from ``[containers] port_range``, skipping the
  ports held by existing viworks containers, running or not;
- engine failures mapped onto stable error codes (:func:`classify_engine_error`), raised
  as :class:`~viworks.gateway.verbs.model.VerbError`.

Every viworks container carries the labels ``viw.managed=true``, ``viw.user``,
``viw.session`` and ``viw.port`` (its host port, so that a stopped container keeps its
port reserved: the engine reports no ``Ports`` for a container that is not running).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from viworks.config.agent import ContainersSection
from viworks.gateway.runner import ProcessRunner, RunResult
from viworks.gateway.verbs.model import VerbError, missing_tool

__all__ = [
    "ENGINE_NOT_FOUND",
    "LABEL_MANAGED",
    "LABEL_PORT",
    "LABEL_SESSION",
    "LABEL_USER",
    "NAME_PREFIX",
    "ContainerInfo",
    "Engine",
    "allocate_port",
    "classify_engine_error",
    "container_name",
    "parse_inspect",
    "parse_ps",
    "used_ports",
]

NAME_PREFIX = "viworks-"
LABEL_MANAGED = "viw.managed"
LABEL_USER = "viw.user"
LABEL_SESSION = "viw.session"
LABEL_PORT = "viw.port"

#: The error code of every container verb while the engine's executable is missing.
ENGINE_NOT_FOUND = "ENGINE_NOT_FOUND"
#: Output kept from an engine command (``ps`` of many containers can be long).
ENGINE_OUTPUT_CAP = 4 * 1024 * 1024
#: Longest engine message quoted in an error.
_MESSAGE_MAX = 300


def container_name(username: str, session_id: str) -> str:
    """``viworks-<user>-<session>``."""
    return f"{NAME_PREFIX}{username}-{session_id}"


@dataclass(frozen=True)
class ContainerInfo:
    """One container as the engine describes it (``ps`` or ``inspect``).

    ``labels`` holds every label; ``user``/``session`` come from the viworks labels
    (``None`` when absent). ``port`` is the host port: the ``viw.port`` label, else the
    first published port. ``created`` is RFC 3339 UTC when the engine's format is known,
    else the engine's own text. ``state`` is the engine's machine state (``running``,
    ``exited``, ``created``...), ``status`` its human text (``Up 2 minutes``).
    """

    id: str
    name: str
    image: str
    state: str
    status: str
    created: str | None
    port: int | None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def managed(self) -> bool:
        return self.labels.get(LABEL_MANAGED) == "true"

    @property
    def user(self) -> str | None:
        return self.labels.get(LABEL_USER)

    @property
    def session(self) -> str | None:
        return self.labels.get(LABEL_SESSION)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able description returned by verbs (labels included)."""
        out = asdict(self)
        out["user"] = self.user
        out["session"] = self.session
        out["managed"] = self.managed
        return out


# --------------------------------------------------------------------------- parsing


def _parse_labels(raw: Any) -> dict[str, str]:
    # docker ps: "k=v,k2=v2"; podman ps and every inspect: a JSON object (or null).
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, str) and raw:
        labels = {}
        for item in raw.split(","):
            key, sep, value = item.partition("=")
            if sep:
                labels[key.strip()] = value
        return labels
    return {}


_DOCKER_PORT = re.compile(r":(\d{1,5})->\d{1,5}/")


def _parse_ports(raw: Any) -> list[int]:
    """Host ports of published ports, in order, without duplicates."""
    ports: list[int] = []
    if isinstance(raw, str):
        # docker ps: "0.0.0.0:20000->8080/tcp, [::]:20000->8080/tcp"
        ports = [int(m) for m in _DOCKER_PORT.findall(raw)]
    elif isinstance(raw, list):
        # podman ps: [{"host_ip": "", "container_port": 8080, "host_port": 20000, ...}]
        for item in raw:
            if isinstance(item, dict) and item.get("host_port"):
                ports.append(int(item["host_port"]))
    elif isinstance(raw, dict):
        # inspect: {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "20000"}], ...}
        for bindings in raw.values():
            for b in bindings or ():
                if isinstance(b, dict) and str(b.get("HostPort", "")).isdigit():
                    ports.append(int(b["HostPort"]))
    return list(dict.fromkeys(p for p in ports if 0 < p < 65536))


def _label_port(labels: dict[str, str]) -> int | None:
    value = labels.get(LABEL_PORT, "")
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else None


def _rfc3339(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _parse_created(raw: Any) -> str | None:
    """Normalise the engine's creation time to RFC 3339 UTC when its format is known."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):  # podman ps: epoch seconds
        return _rfc3339(datetime.fromtimestamp(raw, UTC))
    text = str(raw)
    # docker ps: "2025-05-30 12:34:56 +0000 UTC" (Go's time.String()).
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)? ([+-]\d{4})(?: \S+)?", text)
    if m:
        return _rfc3339(datetime.strptime(f"{m[1]} {m[3]}", "%Y-%m-%d %H:%M:%S %z"))
    # inspect: "2025-05-30T12:34:56.123456789Z" (nanoseconds: trim to microseconds).
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if m:
        frac = (m[2] or "0")[:6].ljust(6, "0")
        tz = "+00:00" if m[3] == "Z" else m[3]
        return _rfc3339(datetime.fromisoformat(f"{m[1]}.{frac}{tz}"))
    return text


def _container_from_ps(obj: dict[str, Any]) -> ContainerInfo:
    labels = _parse_labels(obj.get("Labels"))
    names = obj.get("Names")
    if isinstance(names, list):
        name = str(names[0]) if names else ""
    else:
        name = str(names or "").split(",")[0]
    ports = _parse_ports(obj.get("Ports"))
    state = str(obj.get("State") or "")
    return ContainerInfo(
        id=str(obj.get("ID") or obj.get("Id") or ""),
        name=name.lstrip("/"),
        image=str(obj.get("Image") or ""),
        state=state,
        status=str(obj.get("Status") or state),
        created=_parse_created(obj.get("CreatedAt") if "ID" in obj else obj.get("Created")),
        port=_label_port(labels) or (ports[0] if ports else None),
        labels=labels,
    )


def parse_ps(stdout: str) -> list[ContainerInfo]:
    """Parse ``ps --format '{{json .}}'`` output: one JSON object per line.

    A line holding a JSON array (``--format json``) is accepted too. Raises
    :class:`VerbError` ``UNEXPECTED_OUTPUT`` for anything else.
    """
    out: list[ContainerInfo] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise VerbError("UNEXPECTED_OUTPUT", "the engine's ps output is not JSON") from None
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                raise VerbError("UNEXPECTED_OUTPUT", "the engine's ps output is not JSON objects")
            out.append(_container_from_ps(item))
    return out


def parse_inspect(stdout: str) -> list[ContainerInfo]:
    """Parse ``container inspect`` output (a JSON array of objects)."""
    try:
        value = json.loads(stdout or "[]")
    except ValueError:
        raise VerbError("UNEXPECTED_OUTPUT", "the engine's inspect output is not JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise VerbError("UNEXPECTED_OUTPUT", "the engine's inspect output is not a JSON array")
    out = []
    for obj in value:
        if not isinstance(obj, dict):
            raise VerbError("UNEXPECTED_OUTPUT", "the engine's inspect output is not JSON objects")
        config = obj.get("Config") or {}
        state = obj.get("State") or {}
        labels = _parse_labels(config.get("Labels"))
        ports = _parse_ports((obj.get("HostConfig") or {}).get("PortBindings"))
        status = str(state.get("Status") or "") if isinstance(state, dict) else str(state)
        out.append(
            ContainerInfo(
                id=str(obj.get("Id") or obj.get("ID") or ""),
                name=str(obj.get("Name") or "").lstrip("/"),
                image=str(config.get("Image") or obj.get("ImageName") or ""),
                state=status,
                status=status,
                created=_parse_created(obj.get("Created")),
                port=_label_port(labels) or (ports[0] if ports else None),
                labels=labels,
            )
        )
    return out


# --------------------------------------------------------------------------- ports


def used_ports(containers: Iterable[ContainerInfo]) -> set[int]:
    """Host ports held by ``containers`` (the ``viw.port`` label and published ports)."""
    used: set[int] = set()
    for c in containers:
        if c.port is not None:
            used.add(c.port)
        label = _label_port(c.labels)
        if label is not None:
            used.add(label)
    return used


def allocate_port(port_range: tuple[int, int], used: Iterable[int]) -> int:
    """The lowest port of ``port_range`` (inclusive) not in ``used``.

    Raises :class:`VerbError` ``PORTS_EXHAUSTED`` when every port is taken.
    """
    low, high = port_range
    taken = set(used)
    for port in range(low, high + 1):
        if port not in taken:
            return port
    raise VerbError(
        "PORTS_EXHAUSTED",
        f"no free host port in {low}-{high}: all {high - low + 1} are in use",
    )


# --------------------------------------------------------------------------- errors

# (code, pattern over the engine's stderr, lower-cased), first match wins.
_ENGINE_ERRORS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (code, re.compile(pattern))
    for code, pattern in (
        (
            "ENGINE_UNAVAILABLE",
            r"cannot connect to the docker daemon|is the docker daemon running"
            r"|cannot connect to podman|unable to connect to podman"
            r"|permission denied while trying to connect",
        ),
        ("ALREADY_EXISTS", r"is already in use|that name is already in use"),
        ("NOT_FOUND", r"no such container|no container with name or id"),
        ("PORT_IN_USE", r"port is already allocated|address already in use"),
        (
            "NETWORK_NOT_FOUND",
            r"network [^ ]+ not found|unable to find network|network not found",
        ),
        (
            "IMAGE_UNAVAILABLE",
            r"unable to find image|pull access denied|manifest unknown|no such image"
            r"|repository does not exist|image not known|reading manifest",
        ),
    )
)


def _engine_message(stderr: str) -> str:
    # Skip docker's "Run 'docker run --help' for more information" / "See '...'" hints.
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.strip().startswith(("Run '", "See '"))
    ]
    # The last "Error..." line is the engine's verdict; earlier ones are progress.
    errors = [line for line in lines if "error" in line.lower()]
    text = errors[-1] if errors else (lines or ["(no message)"])[0]
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def classify_engine_error(run: RunResult, what: str) -> VerbError:
    """A :class:`VerbError` for a failed engine command ``what`` (e.g. ``"run"``).

    Codes: ``ENGINE_UNAVAILABLE``, ``ALREADY_EXISTS``, ``NOT_FOUND``, ``PORT_IN_USE``,
    ``NETWORK_NOT_FOUND``, ``IMAGE_UNAVAILABLE``, ``ENGINE_TIMEOUT``, ``ENGINE_ERROR``
    (anything else). The message quotes the engine's last error line.
    """
    if run.timed_out:
        return VerbError("ENGINE_TIMEOUT", f"the engine's {what} did not finish in time")
    if run.exit_code is None:
        return VerbError("ENGINE_ERROR", f"the engine's {what} was killed by signal {run.signal}")
    lowered = run.stderr.lower()
    message = _engine_message(run.stderr)
    for code, pattern in _ENGINE_ERRORS:
        if pattern.search(lowered):
            return VerbError(code, f"{what}: {message}")
    return VerbError("ENGINE_ERROR", f"{what} exited with code {run.exit_code}: {message}")


# --------------------------------------------------------------------------- engine


class Engine:
    """Run engine commands for ``section`` through ``runner``.

    The ``async`` methods are coroutines (use them from ``async def`` verbs wrapped with
    ``Deferred.fromCoroutine``); cancelling the Deferred awaiting one kills the engine
    process group. Failures raise :class:`VerbError` (see :func:`classify_engine_error`).
    """

    def __init__(self, section: ContainersSection, runner: ProcessRunner, timeout: float = 60.0):
        self.section = section
        self.runner = runner
        self.timeout = timeout

    @property
    def executable(self) -> str:
        return self.section.executable

    def argv(self, *args: str) -> list[str]:
        """``[executable, *args]``."""
        return [self.executable, *args]

    async def run(self, *args: str, what: str | None = None) -> RunResult:
        """Run ``engine args...``; raise :class:`VerbError` unless it exits 0."""
        what = what or args[0]
        missing = missing_tool(self.executable, ENGINE_NOT_FOUND, "the container engine")
        if missing is not None:
            raise missing
        run = await self.runner.run(
            self.argv(*args), timeout=self.timeout, output_cap=ENGINE_OUTPUT_CAP
        )
        if run.cancelled or run.timed_out or run.exit_code != 0:
            raise classify_engine_error(run, what)
        if run.stdout_truncated:
            raise VerbError("UNEXPECTED_OUTPUT", f"the engine's {what} output is too large")
        return run

    # -- reads

    def ps_argv(self, *filters: str) -> list[str]:
        """Argv of ``ps`` listing every viworks container (and ``filters``: ``k=v``)."""
        args = ["ps", "-a", "--no-trunc", "--filter", f"label={LABEL_MANAGED}=true"]
        for f in filters:
            args += ["--filter", f]
        return [*args, "--format", "{{json .}}"]

    async def list_managed(self, *filters: str) -> list[ContainerInfo]:
        """Every viworks container (running or not), e.g. ``filters=("label=viw.user=bob",)``.

        The label filter is applied again here: a container is only reported as
        managed if its labels say so.
        """
        run = await self.run(*self.ps_argv(*filters), what="ps")
        return [c for c in parse_ps(run.stdout) if c.managed]

    async def inspect(self, ref: str) -> ContainerInfo | None:
        """The container ``ref`` (id or name), or ``None`` when the engine has none."""
        try:
            run = await self.run("container", "inspect", ref, what="inspect")
        except VerbError as e:
            if e.code == "NOT_FOUND":
                return None
            raise
        found = parse_inspect(run.stdout)
        return found[0] if found else None

    async def used_ports(self) -> set[int]:
        """Host ports held by viworks containers, running or stopped."""
        return used_ports(await self.list_managed())

    # -- writes

    def run_argv(
        self,
        *,
        name: str,
        username: str,
        session_id: str,
        port: int,
        cpu: float,
        mem_mb: int,
        image: str,
        network: str | None,
        extra_labels: Sequence[str] = (),
    ) -> list[str]:
        """Arguments of ``run`` for a viworks container (without the executable)."""
        args = [
            "run",
            "-d",
            "--name",
            name,
            "--label",
            f"{LABEL_SESSION}={session_id}",
            "--label",
            f"{LABEL_USER}={username}",
            "--label",
            f"{LABEL_MANAGED}=true",
            "--label",
            f"{LABEL_PORT}={port}",
        ]
        for label in extra_labels:
            args += ["--label", label]
        args += [
            "-p",
            f"{port}:{self.section.container_port}",
            "--cpus",
            _format_cpus(cpu),
            "--memory",
            f"{mem_mb}m",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
        ]
        if network:
            args += ["--network", network]
        return [*args, image]

    async def stop(self, ref: str) -> None:
        await self.run("stop", ref, what="stop")

    async def remove(self, ref: str, *, force: bool = False) -> None:
        await self.run("rm", *(["-f"] if force else []), ref, what="rm")


def _format_cpus(cpu: float) -> str:
    """``1`` for 1.0, ``0.5`` for 0.5 (what ``--cpus`` accepts), never an exponent."""
    text = f"{cpu:.3f}".rstrip("0").rstrip(".")
    return text or "0"
