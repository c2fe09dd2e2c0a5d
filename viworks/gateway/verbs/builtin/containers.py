"""Per-session workspace containers: spawn_container, stop_container, list_containers.

Each verb takes several engine commands (``ps`` then ``run``; ``inspect``, ``stop`` then
``rm``), so they are in-process ``call``s driving :class:`~.container_engine.Engine`
through the agent's runner. ``spawn_container`` and ``stop_container`` share the
``"containers"`` serialization key: a port is chosen from what ``ps`` reports and must not
be handed out twice.

``egress_profile = "strict"`` attaches the container to the network named
:data:`STRICT_NETWORK` instead of ``[containers] network``; the operator creates that
network and restricts its egress (see docs/verbs.md). Nothing else differs.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred

from viworks.config.agent import ContainersSection
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.builtin.container_engine import (
    ENGINE_NOT_FOUND,
    NAME_PREFIX,
    Engine,
    allocate_port,
    container_name,
    used_ports,
)
from viworks.gateway.verbs.model import Verb, VerbError

__all__ = ["STRICT_NETWORK", "verbs"]

#: Network used for ``egress_profile = "strict"``; created by the operator.
STRICT_NETWORK = "viworks-strict"
#: Ports tried by one spawn when the engine reports the chosen one busy (held by a
#: process or container viworks does not manage).
PORT_ATTEMPTS = 5

USERNAME_SPEC: dict[str, Any] = {
    "type": "string",
    # No leading "-": a name must never look like a command-line option.
    "pattern": "[A-Za-z0-9_][A-Za-z0-9_-]*",
    "min_length": 3,
    "max_length": 64,
    "description": "the user the container belongs to",
}
SESSION_SPEC: dict[str, Any] = {
    "type": "string",
    "pattern": "[A-Za-z0-9_-]{1,64}",
    "min_length": 1,
    "max_length": 64,
    "description": "the session the container serves",
}
CONTAINER_REF_SPEC: dict[str, Any] = {
    "type": "string",
    # A (possibly short) hex id, or a viworks container name.
    "pattern": "[0-9a-f]{12,64}|viworks-[A-Za-z0-9_][A-Za-z0-9_-]*",
    "min_length": 12,
    "max_length": 160,
    "description": "container id (12-64 hex digits) or viworks-* name",
}
# A docker/podman image reference: [registry[:port]/]path[:tag][@digest], no leading '-'.
_IMAGE_REF = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?::[0-9]+)?(?:/[a-z0-9][a-z0-9._-]*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


def _image_spec(section: ContainersSection) -> dict[str, Any]:
    spec: dict[str, Any] = {"description": "image to run, from the gateway's allowlist"}
    if section.images:
        spec.update(type="enum", values=list(section.images))
        if section.default_image:
            spec["default"] = section.default_image
        else:
            spec["required"] = False
    else:
        # Nothing is allowed; keep a well-formed schema and refuse at run time.
        spec.update(type="string", pattern=_IMAGE_REF.pattern, max_length=255, required=False)
    return spec


def verbs(section: ContainersSection, runner: ProcessRunner) -> list[Verb]:
    """The container verbs for ``[containers]``, running the engine through ``runner``."""
    for image in section.images:
        if not _IMAGE_REF.fullmatch(image):
            raise ValueError(f"[containers] images: not an image reference: {image!r}")
    engine = Engine(section, runner)

    def choose_image(args: dict[str, Any]) -> str:
        if not section.images:
            raise VerbError(
                "NO_IMAGES_CONFIGURED",
                "no container images are allowed on this gateway ([containers] images is empty)",
            )
        image = args.get("image")
        if image is None:
            raise VerbError(
                "NO_DEFAULT_IMAGE",
                "no image given and [containers] default_image is not set",
            )
        if image not in section.images:  # the enum already checked it; belt and braces
            raise VerbError("IMAGE_NOT_ALLOWED", "image is not in the allowlist")
        return image

    async def spawn(args: dict[str, Any]) -> dict[str, Any]:
        image = choose_image(args)
        username, session_id = args["username"], args["session_id"]
        name = container_name(username, session_id)
        existing = await engine.list_managed()
        if any(c.name == name for c in existing):
            raise VerbError("ALREADY_EXISTS", f"container {name} already exists")
        if args["egress_profile"] == "strict":
            network: str | None = STRICT_NETWORK
        else:
            network = section.network or None
        taken = used_ports(existing)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = allocate_port(section.ports, taken)
            argv = engine.run_argv(
                name=name,
                username=username,
                session_id=session_id,
                port=port,
                cpu=args["cpu"],
                mem_mb=args["mem_mb"],
                image=image,
                network=network,
            )
            try:
                run = await engine.run(*argv, what="run")
                break
            except VerbError as e:
                if e.code not in ("ALREADY_EXISTS", "ENGINE_UNAVAILABLE", ENGINE_NOT_FOUND):
                    # "run" may have created the container before failing to start it (a
                    # port taken outside viworks): remove it so the name is free again.
                    # The name was free before (no ALREADY_EXISTS), so this one is ours.
                    await _remove_quietly(engine, name)
                if e.code != "PORT_IN_USE" or attempt == PORT_ATTEMPTS:
                    raise
                taken.add(port)  # held by something viworks does not manage: next one
        container_id = run.stdout.strip().splitlines()[-1].strip() if run.stdout.strip() else ""
        if not re.fullmatch(r"[0-9a-f]{12,64}", container_id):
            raise VerbError("UNEXPECTED_OUTPUT", "the engine did not print a container id")
        return {"container_id": container_id, "name": name, "port": port, "image": image}

    async def stop(args: dict[str, Any]) -> dict[str, Any]:
        ref = args["container_id"]
        info = await engine.inspect(ref)
        if info is None:
            raise VerbError("NOT_FOUND", "no such container")
        if not info.managed:
            raise VerbError("NOT_MANAGED", "the container is not managed by viworks")
        # Act on the full id from inspect, not on the caller's (possibly short) ref.
        target = info.id or ref
        was_running = info.running
        if was_running:
            await engine.stop(target)
        await engine.remove(target)
        return {
            "container_id": info.id,
            "name": info.name,
            "user": info.user,
            "session": info.session,
            "stopped": was_running,
            "removed": True,
        }

    async def list_all(_args: dict[str, Any]) -> dict[str, Any]:
        containers = await engine.list_managed()
        return {
            "containers": [
                {
                    "container_id": c.id,
                    "name": c.name,
                    "user": c.user,
                    "session": c.session,
                    "image": c.image,
                    "state": c.state,
                    "status": c.status,
                    "created": c.created,
                    "port": c.port,
                }
                for c in sorted(containers, key=lambda c: c.name)
            ]
        }

    def call(fn: Any) -> Any:
        return lambda args: Deferred.fromCoroutine(fn(args))

    # Checked before anything runs, with the code of the engine's own check (Engine.run).
    engine_tool = (section.executable,)
    return [
        Verb(
            name="spawn_container",
            params={
                "username": USERNAME_SPEC,
                "session_id": SESSION_SPEC,
                "image": _image_spec(section),
                "cpu": {"type": "number", "min": 0.5, "max": 4, "description": "CPU limit"},
                "mem_mb": {
                    "type": "integer",
                    "min": 256,
                    "max": 8192,
                    "description": "memory limit in MiB",
                },
                "egress_profile": {
                    "type": "enum",
                    "values": ["default", "strict"],
                    "default": "default",
                    "description": f"strict: attach to the {STRICT_NETWORK} network",
                },
            },
            description=(
                f"Run a session container named {NAME_PREFIX}<user>-<session> on a free host"
                " port, with CPU/memory limits, no capabilities and no-new-privileges."
            ),
            changes_state=True,
            timeout=180.0,
            call=call(spawn),
            serialize="containers",
            tools=engine_tool,
            missing_tool_code=ENGINE_NOT_FOUND,
        ),
        Verb(
            name="stop_container",
            params={"container_id": CONTAINER_REF_SPEC},
            description="Stop and remove a viworks container (others are refused).",
            changes_state=True,
            timeout=90.0,
            call=call(stop),
            serialize="containers",
            tools=engine_tool,
            missing_tool_code=ENGINE_NOT_FOUND,
        ),
        Verb(
            name="list_containers",
            params={},
            description="The viworks containers with user, session, status, created and port.",
            timeout=30.0,
            call=call(list_all),
            tools=engine_tool,
            missing_tool_code=ENGINE_NOT_FOUND,
        ),
    ]


async def _remove_quietly(engine: Engine, name: str) -> None:
    try:
        await engine.remove(name, force=True)
    except VerbError:
        pass
