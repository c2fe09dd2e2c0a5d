"""The wire protocol: frames encode, decode and fail cleanly."""

import json

from twisted.trial import unittest

from viworks import protocol


def _raw(**body) -> bytes:
    return json.dumps(body).encode()


GOOD_RESULT = {
    "command_id": "c1",
    "status": "succeeded",
    "exit_code": 0,
    "result": {"ok": True},
    "stdout": "",
    "stderr": "",
    "stdout_truncated": False,
    "stderr_truncated": False,
    "error": None,
    "started_at": 1.0,
    "finished_at": 2.0,
}


class DecodeTests(unittest.TestCase):
    def assertFrameError(self, payload: bytes, code: str, **kw) -> protocol.FrameError:
        e = self.assertRaises(protocol.FrameError, protocol.decode, payload, **kw)
        self.assertEqual(e.code, code)
        return e

    def test_roundtrip_every_type(self):
        """Each frame type that ``encode`` produces decodes back to the same fields."""
        samples = {
            "hello": dict(agent_id="a", version="1", site="s", hostname="h", protocol=1, verbs={}),
            "welcome": dict(session_id="s", epoch=3, heartbeat_interval=15, heartbeat_timeout=30),
            "command": dict(command_id="c", verb="ping", args={}, timeout=5.5, expires_at=None),
            "ack": dict(command_id="c"),
            "result_ack": dict(command_id="c"),
            "output": dict(command_id="c", seq=0, stream="stdout", data="line\n"),
            "cancel": dict(command_id="c"),
            "telemetry": dict(ts=1.5, metrics={"load": {"1m": 0.1}}),
            "result": GOOD_RESULT,
            "heartbeat": dict(ts=12.5),
            "error": dict(code="X", message="m"),
        }
        self.assertEqual(set(samples), set(protocol.FRAME_FIELDS))
        for frame_type, fields in samples.items():
            frame = protocol.decode(protocol.encode(frame_type, **fields))
            self.assertEqual(frame.type, frame_type)
            self.assertEqual(frame.fields, fields)

    def test_not_json(self):
        """Bytes that are not JSON are a MALFORMED_FRAME, not an exception of another kind."""
        self.assertFrameError(b"{nope", protocol.MALFORMED_FRAME)
        self.assertFrameError(b"\xff\xfe", protocol.MALFORMED_FRAME)

    def test_not_an_object(self):
        """A JSON array or scalar is refused."""
        self.assertFrameError(b"[1, 2]", protocol.MALFORMED_FRAME)
        self.assertFrameError(b"42", protocol.MALFORMED_FRAME)

    def test_binary_refused(self):
        """Binary WebSocket messages are refused: the protocol is JSON text."""
        self.assertFrameError(
            protocol.encode("ack", command_id="c"), protocol.MALFORMED_FRAME, is_binary=True
        )

    def test_missing_type(self):
        """A frame without a string type is malformed."""
        self.assertFrameError(_raw(v=1), protocol.MALFORMED_FRAME)
        self.assertFrameError(_raw(v=1, type=3), protocol.MALFORMED_FRAME)

    def test_wrong_version(self):
        """Another protocol version is UNSUPPORTED_VERSION and keeps the command id."""
        e = self.assertFrameError(
            _raw(type="ack", v=99, command_id="c9"), protocol.UNSUPPORTED_VERSION
        )
        self.assertEqual(e.command_id, "c9")

    def test_version_must_be_an_integer(self):
        """``v`` is the integer 1: ``true`` and ``1.0`` (equal to 1 in Python) are
        UNSUPPORTED_VERSION, as are "1" and a missing ``v``."""
        for version in (True, 1.0, "1", None):
            payload = json.dumps({"type": "ack", "v": version, "command_id": "c"}).encode()
            e = self.assertFrameError(payload, protocol.UNSUPPORTED_VERSION)
            self.assertIn(repr(version), e.message)
        self.assertEqual(protocol.decode(_raw(type="ack", v=1, command_id="c")).type, "ack")

    def test_unknown_type(self):
        """An unknown type is UNKNOWN_TYPE."""
        self.assertFrameError(_raw(type="launch", v=1), protocol.UNKNOWN_TYPE)

    def test_missing_field(self):
        """A missing required field names the field."""
        e = self.assertFrameError(
            _raw(type="command", v=1, command_id="c", verb="x", args={}), protocol.INVALID_FRAME
        )
        self.assertIn("timeout", e.message)

    def test_wrong_field_type(self):
        """A field of the wrong JSON type names the field and the type wanted."""
        e = self.assertFrameError(_raw(type="heartbeat", v=1, ts="now"), protocol.INVALID_FRAME)
        self.assertIn("'ts'", e.message)
        self.assertIn("number", e.message)

    def test_bool_is_not_a_number(self):
        """JSON true is not accepted where a number is required."""
        self.assertFrameError(_raw(type="heartbeat", v=1, ts=True), protocol.INVALID_FRAME)

    def test_result_status_must_be_final(self):
        """A result frame must carry a final status."""
        body = dict(GOOD_RESULT, status="running")
        self.assertFrameError(_raw(type="result", v=1, **body), protocol.INVALID_FRAME)

    def test_output_stream_and_seq(self):
        """An output chunk must name stdout or stderr and have a non-negative seq."""
        for bad in (dict(stream="stdin", seq=0), dict(stream="stdout", seq=-1)):
            body = dict(type="output", v=1, command_id="c", data="x", **bad)
            self.assertFrameError(_raw(**body), protocol.INVALID_FRAME)

    def test_extra_fields_allowed(self):
        """Unknown extra fields are kept, so newer peers can add information."""
        frame = protocol.decode(_raw(type="ack", v=1, command_id="c", note="hi"))
        self.assertEqual(frame.get("note"), "hi")

    def test_error_frame(self):
        """error_frame carries the command id only when given."""
        self.assertNotIn("command_id", protocol.decode(protocol.error_frame("X", "m")).fields)
        frame = protocol.decode(protocol.error_frame("X", "m", "c1"))
        self.assertEqual(frame["command_id"], "c1")

    def test_encode_unknown_type(self):
        """encode refuses to produce a frame type that does not exist."""
        self.assertRaises(ValueError, protocol.encode, "bogus")

    def test_retry_after_roundtrip(self):
        """A retry-after hint written into a close reason is read back; none gives None."""
        reason = protocol.retry_after_reason("shutdown", 12.25)
        self.assertAlmostEqual(protocol.parse_retry_after(reason), 12.2, places=1)
        self.assertIsNone(protocol.parse_retry_after("replaced"))
        self.assertIsNone(protocol.parse_retry_after(None))
        text = "WebSocket connection upgrade failed (503 - busy; retry-after=3.5)"
        self.assertEqual(protocol.parse_retry_after(text), 3.5)
