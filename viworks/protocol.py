"""The agent <-> backend wire protocol: JSON frames, pure (no I/O).

Every frame is one WebSocket text message holding a JSON object with a ``type``
and the protocol version ``v``. ``decode`` turns bytes into a validated ``Frame``
or raises ``FrameError`` carrying the error code to send back; ``encode`` is its
inverse. docs/protocol.md describes every frame.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

# The framing (every frame's "v"): JSON objects whose extra fields a peer ignores.
PROTOCOL_VERSION = 1
# What an agent speaks, announced in hello.protocol (the framing above is unchanged):
# 1: command signatures cover command_id, agent_id, verb, args, expires_at;
# 2: they also cover timeout and redacted, and cancel frames are signed.
# The backend accepts both and signs for each agent what it verifies.
HELLO_PROTOCOL = 2

# Close codes (RFC 6455 and the 4000-4999 private range).
# Autobahn itself closes with 1002 (protocol error), 1007 (invalid UTF-8) and
# 1009 (message too big); ours are in the private range it lets us send.
CLOSE_POLICY = 4000
CLOSE_HELLO_REFUSED = 4001
CLOSE_REPLACED = 4002
CLOSE_SHUTDOWN = 4003
# An agent that kept sending beyond [backend] agent_frame_rate ("flood; retry-after=N").
CLOSE_FLOOD = 4005

_RETRY_AFTER = re.compile(r"retry-after=(\d+(?:\.\d+)?)")

# Error codes carried by ``error`` frames.
MALFORMED_FRAME = "MALFORMED_FRAME"
UNKNOWN_TYPE = "UNKNOWN_TYPE"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
INVALID_FRAME = "INVALID_FRAME"
HELLO_REQUIRED = "HELLO_REQUIRED"
IDENTITY_MISMATCH = "IDENTITY_MISMATCH"
UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
# A frame dropped because the agent sends faster than [backend] agent_frame_rate.
RATE_LIMITED = "RATE_LIMITED"
# Output for a command that is not running on that agent (final, queued, or not its own).
NOT_RUNNING = "NOT_RUNNING"
# A frame over the size cap of its type (telemetry: MAX_TELEMETRY_BYTES).
TOO_LARGE = "TOO_LARGE"

# The largest telemetry frame the backend accepts (encoded, in bytes).
MAX_TELEMETRY_BYTES = 64 * 1024

_STR = (str,)
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_DICT = (dict, type(None))

# Required fields of each frame type and the JSON types they accept.  Extra
# fields are allowed so that newer peers can add information.
FRAME_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {
        "agent_id": _STR,
        "version": _STR,
        "site": _STR,
        "hostname": _STR,
        "protocol": (int,),
        "verbs": (dict,),
    },
    "welcome": {
        "session_id": _STR,
        "epoch": (int,),
        "heartbeat_interval": _NUM,
        "heartbeat_timeout": _NUM,
    },
    "command": {
        "command_id": _STR,
        "verb": _STR,
        "args": (dict,),
        "timeout": _NUM,
        "expires_at": _OPT_NUM,
    },
    "ack": {"command_id": _STR},
    "output": {"command_id": _STR, "seq": (int,), "stream": _STR, "data": _STR},
    "cancel": {"command_id": _STR},
    "result_ack": {"command_id": _STR},
    "result": {
        "command_id": _STR,
        "status": _STR,
        "exit_code": (int, type(None)),
        "result": (dict, list, str, int, float, bool, type(None)),
        "stdout": _STR,
        "stderr": _STR,
        "stdout_truncated": (bool,),
        "stderr_truncated": (bool,),
        "error": _OPT_DICT,
        "started_at": _OPT_NUM,
        "finished_at": _OPT_NUM,
    },
    "heartbeat": {"ts": _NUM},
    "telemetry": {"ts": _NUM, "metrics": (dict,)},
    "error": {"code": _STR, "message": _STR},
}

# The final statuses an agent may report in a ``result`` frame: ``expired`` when a
# command arrived after its deadline, ``lost`` when the agent died while running it.
RESULT_STATUSES = frozenset(
    {"succeeded", "failed", "timed_out", "rejected", "cancelled", "expired", "lost"}
)

STREAMS = frozenset({"stdout", "stderr"})

_TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
    type(None): "null",
}


class FrameError(ValueError):
    """A frame that cannot be accepted; ``code`` goes into the error frame."""

    def __init__(self, code: str, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command_id = command_id


@dataclass(frozen=True)
class Frame:
    """A decoded, validated frame."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    # Bytes of the encoded frame (0 for a frame not decoded from the wire).
    size: int = 0

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def encode(frame_type: str, **fields: Any) -> bytes:
    """Serialise a frame; ``fields`` must be JSON-able."""
    if frame_type not in FRAME_FIELDS:
        raise ValueError(f"unknown frame type {frame_type!r}")
    body = {"type": frame_type, "v": PROTOCOL_VERSION}
    body.update(fields)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def error_frame(code: str, message: str, command_id: str | None = None) -> bytes:
    """An ``error`` frame, optionally about one command."""
    extra = {"command_id": command_id} if command_id is not None else {}
    return encode("error", code=code, message=message, **extra)


def websocket_options(max_message_size: int, heartbeat_interval: float) -> dict[str, Any]:
    """The Autobahn protocol options both ends of the link use.

    WebSocket pings every heartbeat interval, answered within another, find a dead
    (even half-open) peer within about two intervals; oversized messages are
    refused, and the close code (1009 too big, 1007 bad UTF-8, 1002) is sent before
    dropping so that the peer learns why (Autobahn's default drops silently: 1006).
    """
    return {
        "maxMessagePayloadSize": max_message_size,
        "maxFramePayloadSize": max_message_size,
        "autoPingInterval": heartbeat_interval,
        "autoPingTimeout": heartbeat_interval,
        "openHandshakeTimeout": 10,
        "closeHandshakeTimeout": 2,
        "failByDrop": False,
    }


def retry_after_reason(reason: str, seconds: float) -> str:
    """A close reason carrying a reconnect hint (the agent waits at least that long)."""
    return f"{reason}; retry-after={seconds:.1f}"


def parse_retry_after(reason: str | None) -> float | None:
    """The reconnect hint in a close reason (or an HTTP refusal's text), if any."""
    match = _RETRY_AFTER.search(reason or "")
    return float(match.group(1)) if match else None


def _type_ok(value: Any, accepted: tuple[type, ...]) -> bool:
    # bool is a subclass of int in Python but not a number on the wire.
    if isinstance(value, bool):
        return bool in accepted
    return isinstance(value, accepted)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def decode(payload: bytes, is_binary: bool = False) -> Frame:
    """Parse and validate one frame, raising ``FrameError`` on anything wrong.

    Size limits are enforced earlier, by Autobahn (close 1009).
    """
    if is_binary:
        raise FrameError(MALFORMED_FRAME, "binary frames are not accepted; send JSON text")
    try:
        # Strict JSON (RFC 8259): no NaN or Infinity, which json accepts by default.
        body = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError) as e:
        raise FrameError(MALFORMED_FRAME, f"frame is not valid JSON: {e}") from None
    except RecursionError:
        # Found by fuzzing: deeply nested arrays exhaust the parser's stack.
        raise FrameError(MALFORMED_FRAME, "frame is nested too deeply") from None
    if not isinstance(body, dict):
        raise FrameError(MALFORMED_FRAME, "frame must be a JSON object")
    frame_type = body.pop("type", None)
    command_id = body.get("command_id") if isinstance(body.get("command_id"), str) else None
    if not isinstance(frame_type, str):
        raise FrameError(MALFORMED_FRAME, "frame has no string 'type'", command_id)
    version = body.pop("v", None)
    # An integer: in Python true == 1 and 1.0 == 1, and neither is a version.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise FrameError(
            UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported (want {PROTOCOL_VERSION})",
            command_id,
        )
    spec = FRAME_FIELDS.get(frame_type)
    if spec is None:
        raise FrameError(UNKNOWN_TYPE, f"unknown frame type {frame_type!r}", command_id)
    for name, accepted in spec.items():
        if name not in body:
            raise FrameError(INVALID_FRAME, f"{frame_type} frame lacks {name!r}", command_id)
        if not _type_ok(body[name], accepted):
            want = " or ".join(_TYPE_NAMES[t] for t in accepted)
            raise FrameError(
                INVALID_FRAME, f"{frame_type} frame field {name!r} must be {want}", command_id
            )
    if frame_type == "output" and (body["stream"] not in STREAMS or body["seq"] < 0):
        raise FrameError(
            INVALID_FRAME, "output needs stream stdout or stderr and seq >= 0", command_id
        )
    if frame_type == "result" and body["status"] not in RESULT_STATUSES:
        raise FrameError(
            INVALID_FRAME, f"result status {body['status']!r} is not a final status", command_id
        )
    return Frame(frame_type, body, len(payload))
