"""Serving the console's static files: from memory, gzip when asked, strict CSP."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from typing import Any

# No inline script or style anywhere; the page talks to its own origin only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    b"content-security-policy": CSP.encode(),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: bytes


def load(package: str = "viworks.console", folder: str = "static") -> dict[str, StaticFile]:
    """Every servable file under the package's ``folder``, by its path relative to it."""
    files: dict[str, StaticFile] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            path = prefix + child.name
            if child.is_dir():
                walk(child, path + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            content_type = _TYPES.get(suffix) or mimetypes.guess_type(child.name)[0]
            if content_type is None:
                continue
            body = child.read_bytes()
            files[path] = StaticFile(
                body,
                gzip.compress(body, 9, mtime=0),
                content_type,
                b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"',
            )

    walk(resources.files(package) / folder, "")
    return files


class ConsoleFiles:
    """``/ui/<path>``: ``index.html`` at the root, the files of ``static/`` by name."""

    def __init__(self, files: dict[str, StaticFile] | None = None) -> None:
        self.files = load() if files is None else files

    def render(self, request: Any, path: str) -> bytes:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        found = self.files.get(path or "index.html")
        if found is None or ".." in path.split("/"):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        # Revalidated on every load (cheap: 304 by ETag), so an upgrade shows at once.
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", found.etag)
        request.setHeader(b"vary", b"accept-encoding")
        request.setHeader(b"content-type", found.content_type.encode())
        if request.getHeader(b"if-none-match") == found.etag:
            request.setResponseCode(304)
            return b""
        body = found.body
        if b"gzip" in (request.getHeader(b"accept-encoding") or b""):
            request.setHeader(b"content-encoding", b"gzip")
            body = found.gzipped
        request.setHeader(b"content-length", b"%d" % len(body))
        return body
