"""A recording stand-in for ``reactor.spawnProcess``: tests see the argv and stdin a verb
would give the tool, then finish the "process" with the output they choose."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure


class Transport:
    def __init__(self) -> None:
        self.pid = 999999
        self.stdin = b""

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        pass


class RecordingSpawner:
    """Records every spawn (protocol, argv, transport and keyword arguments)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, list[str], Transport]] = []
        self.kwargs: list[dict[str, Any]] = []

    def __call__(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        transport = Transport()
        protocol.makeConnection(transport)
        self.calls.append((protocol, args, transport))
        self.kwargs.append(kw)
        return transport

    def finish(
        self, index: int = -1, *, stdout: bytes = b"", stderr: bytes = b"", code: int = 0
    ) -> None:
        """End spawn ``index`` (the last by default) with this output and exit code."""
        protocol = self.calls[index][0]
        if stdout:
            protocol.childDataReceived(1, stdout)
        if stderr:
            protocol.childDataReceived(2, stderr)
        reason = Failure(ProcessDone(0) if code == 0 else ProcessTerminated(code))
        protocol.processExited(reason)
        protocol.processEnded(reason)
