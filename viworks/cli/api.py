"""The endpoints of the backend's API the CLI uses, each with the shape of its answer.

The answers are the API's JSON (docs/api.md) as ``TypedDict``s: the fields the CLI
reads, typed; ``--json`` prints them as they came. Values that are arbitrary JSON (a
command's result, an agent's metrics, a parameter's default) stay ``Any``.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, cast

from viworks.cli.client import ApiClient, EventFeed, api_path

# -- answers ---------------------------------------------------------------------------


class ErrorView(TypedDict):
    """Why a command failed, or why a job paused or stopped."""

    code: str
    message: str
    field: NotRequired[str | None]


class AgentView(TypedDict):
    agent_id: str
    status: str
    site: NotRequired[str | None]
    labels: NotRequired[dict[str, str] | None]
    version: NotRequired[str | None]
    hostname: NotRequired[str | None]
    last_seen: NotRequired[str | None]
    #: The names of the verbs it offers.
    verbs: NotRequired[list[str] | None]


class AgentList(TypedDict):
    agents: list[AgentView]


class ParamSpec(TypedDict, total=False):
    """A verb parameter's schema, in the language of ``viworks.schema``."""

    type: str
    required: bool
    default: Any
    description: str | None
    min_length: int
    max_length: int
    pattern: str
    min: float
    max: float
    values: list[Any] | None


class VerbView(TypedDict, total=False):
    description: str | None
    changes_state: bool
    params: dict[str, ParamSpec] | None


class AgentVerbs(TypedDict):
    agent_id: NotRequired[str]
    verbs: NotRequired[dict[str, VerbView] | None]


class CommandView(TypedDict):
    command_id: str
    agent_id: str
    verb: str
    status: str
    exit_code: NotRequired[int | None]
    result: NotRequired[Any]
    stdout: NotRequired[str | None]
    stderr: NotRequired[str | None]
    stdout_truncated: NotRequired[bool]
    stderr_truncated: NotRequired[bool]
    error: NotRequired[ErrorView | None]
    created_at: NotRequired[str | None]


class CommandList(TypedDict):
    commands: list[CommandView]


class CommandRequest(TypedDict):
    verb: str
    args: dict[str, Any]
    timeout: NotRequired[float]


class Telemetry(TypedDict):
    agent_id: str
    at: NotRequired[str | None]
    #: As the agent reported them: any JSON.
    metrics: NotRequired[Any]


class JobTarget(TypedDict):
    agent_id: str
    status: str
    command_id: NotRequired[str | None]


class JobView(TypedDict):
    job_id: str
    status: str
    verb: NotRequired[str]
    selector: NotRequired[str]
    concurrency: NotRequired[int | str | None]
    max_errors: NotRequired[int | str | None]
    canary: NotRequired[int | None]
    #: Commands (and targets) per status.
    counts: NotRequired[dict[str, int] | None]
    commands: NotRequired[list[JobTarget] | None]
    total: NotRequired[int | None]
    error: NotRequired[ErrorView | None]


class JobRequest(TypedDict):
    verb: str
    args: dict[str, Any]
    selector: str
    concurrency: NotRequired[int | str]
    max_errors: NotRequired[int | str]
    canary: NotRequired[int]
    canary_auto: NotRequired[bool]
    ttl: NotRequired[float]
    timeout: NotRequired[float]


def process_exit(command: CommandView) -> int | None:
    """The program's exit code when it tells the outcome, else None.

    A verb may judge its program's answer itself: ``delete_panel_user`` fails with
    ``NOT_FOUND`` after htpasswd exited 0. Its exit code then says nothing about the
    outcome, so only a success or an ``EXIT_NONZERO`` failure shows one.
    """
    error = command.get("error")
    if error is not None and error.get("code") != "EXIT_NONZERO":
        return None
    return command.get("exit_code")


# -- endpoints --------------------------------------------------------------------------


class Api:
    """The API calls of the CLI's commands; errors raise ``CLIError`` (exit 3)."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def agents(self, selector: str | None = None) -> AgentList:
        return cast(AgentList, self.client.request("GET", api_path("agents", selector=selector)))

    def verbs(self, agent_id: str) -> AgentVerbs:
        return cast(AgentVerbs, self.client.request("GET", api_path("agents", agent_id, "verbs")))

    def telemetry(self, agent_id: str) -> Telemetry:
        path = api_path("agents", agent_id, "telemetry")
        return cast(Telemetry, self.client.request("GET", path))

    def submit(self, agent_id: str, command: CommandRequest) -> CommandView:
        path = api_path("agents", agent_id, "commands")
        return cast(CommandView, self.client.request("POST", path, command))

    def command(self, command_id: str) -> CommandView:
        return cast(CommandView, self.client.request("GET", api_path("commands", command_id)))

    def commands(
        self, agent_id: str | None = None, status: str | None = None, limit: int | None = None
    ) -> CommandList:
        path = api_path("commands", agent_id=agent_id, status=status, limit=limit)
        return cast(CommandList, self.client.request("GET", path))

    def command_output(self, command_id: str) -> EventFeed:
        """The command's output as it comes, until its final ``command.status``."""
        path = api_path("commands", command_id, "output", follow=1)
        return EventFeed(self.client, path, "command.status")

    def start_job(self, job: JobRequest) -> JobView:
        return cast(JobView, self.client.request("POST", api_path("jobs"), job))

    def job(self, job_id: str) -> JobView:
        return cast(JobView, self.client.request("GET", api_path("jobs", job_id)))

    def job_action(self, job_id: str, action: str) -> JobView:
        """``pause``, ``resume`` or ``cancel``: the job as it is then."""
        return cast(JobView, self.client.request("POST", api_path("jobs", job_id, action)))

    def job_progress(self) -> EventFeed:
        """Every job's ``job.progress`` events (they say which job changed)."""
        return EventFeed(self.client, api_path("events", types="job.progress"))
