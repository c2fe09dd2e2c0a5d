"""The API's JSON answers: what a route handler returns, and how it is written."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

from viworks.backend.api.errors import ApiError, Refusal, status_of


class Json:
    """A JSON answer: ``body`` (JSON-able) with ``status``."""

    __slots__ = ("body", "status")

    def __init__(self, body: Any, status: int = 200) -> None:
        self.body = body
        self.status = status

    @property
    def error_code(self) -> str | None:
        """The ``error.code`` of an error answer (None: not one)."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


def error(code: str, message: str | None, status: int, field: str | None = None) -> Json:
    """``{"error": {"code", "message", "field"?}}`` with ``status``."""
    body: dict[str, str | None] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return Json({"error": body}, status)


INTERNAL = error("INTERNAL", "internal error; see the log", 500)


def refusal(request: IRequest, refused: Refusal) -> Json:
    """The answer to a refusal (its status from the error table), with its headers; a 401
    says how to authenticate (RFC 9110)."""
    status = status_of(refused.code)
    if status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="viworks"')
    if isinstance(refused, ApiError):
        for name, value in refused.headers.items():
            request.setHeader(name, value)
    return error(refused.code, refused.message, status, refused.field)


def render(request: IRequest, reply: Json) -> bytes:
    """Write ``reply``'s status and headers; its body, to return to Klein."""
    request.setResponseCode(reply.status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(reply.body, separators=(",", ":")).encode("utf-8")
