"""The backend's HTTP API from the CLI: a small synchronous JSON client (urllib) and an
SSE follower that reads in a thread (no reactor: the API commands block, simply)."""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any, Final

from viworks import __version__
from viworks.cli import terminal
from viworks.cli.errors import EXIT_API, CLIError
from viworks.cli.sse import SSE, parse_sse

DEFAULT_URL: Final = "http://127.0.0.1:8080"


class ApiClient:
    """A small synchronous JSON client for the backend's HTTP API."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _headers(self, **extra: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "User-Agent": f"viworks-cli/{__version__}",
            **extra,
        }

    def _open(self, request: urllib.request.Request, timeout: float) -> HTTPResponse:
        """The response; HTTP errors and unreachable APIs raise ``CLIError`` (exit 3)."""
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise CLIError(api_error_text(e), EXIT_API, http=e.code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CLIError(f"cannot reach the API at {self.url}: {reason}", EXIT_API) from None
        return response

    def request(self, method: str, path: str, body: Any = None, timeout: float = 330) -> Any:
        """``method path`` with ``body`` (any JSON value, or None) as JSON; the answer's
        JSON (the endpoints' shapes: ``viworks.cli.api``)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers=self._headers(**{"Content-Type": "application/json"}),
        )
        with self._open(request, timeout) as response:
            try:
                raw = response.read()
            except OSError as e:
                raise CLIError(f"cannot reach the API at {self.url}: {e}", EXIT_API) from None
        return json.loads(raw or b"null")

    def stream(
        self, path: str, last_event_id: str | None = None, timeout: float = 60.0
    ) -> Iterator[SSE]:
        """Read a Server-Sent Events stream: yields ``SSE`` messages until the server ends it.

        ``timeout`` bounds each read; the backend sends a keep-alive every 15 s.
        HTTP errors raise ``CLIError`` with ``http`` set (not worth retrying).
        """
        headers = self._headers(Accept="text/event-stream")
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        response = self._open(urllib.request.Request(self.url + path, headers=headers), timeout)
        with response:
            try:
                yield from parse_sse(response)
            except OSError as e:
                raise CLIError(f"the event stream from {self.url} broke: {e}", EXIT_API) from None


def api_error_text(e: urllib.error.HTTPError) -> str:
    """One line from the API's error answer (``{"error": {"code", "message", "field"}}``)."""
    try:
        error = json.loads(e.read())["error"]
        field = f" (field: {error['field']})" if error.get("field") else ""
        return f"API error {e.code} {error['code']}: {error['message']}{field}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"API error {e.code}: {e.reason}"


def client_from_args(args: argparse.Namespace) -> ApiClient:
    """The client the API options name: --url/$VIWORKS_URL, --token/$VIWORKS_TOKEN."""
    url = args.url or os.environ.get("VIWORKS_URL") or DEFAULT_URL
    token = args.token or os.environ.get("VIWORKS_TOKEN")
    if not token:
        raise CLIError("no API token: pass --token or set VIWORKS_TOKEN")
    return ApiClient(url, token)


def api_path(*parts: object, **query: object) -> str:
    """An API path with each part URL-quoted and the query's non-None values encoded."""
    path = "/".join(urllib.parse.quote(str(p), safe="") for p in parts)
    pairs = {k: v for k, v in query.items() if v is not None}
    return "/api/v1/" + path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")


class _End:
    """Queued once the feed is over (and put back, so that it stays over)."""


_END: Final = _End()


class EventFeed:
    """Reads an SSE stream in a daemon thread into a queue, resuming with Last-Event-ID.

    The stream is opened again after a broken connection (a few times, backing off);
    it is over when ``final_event`` arrives (or, without one, never). HTTP errors end it.
    """

    def __init__(
        self, client: ApiClient, path: str, final_event: str | None = None, retries: int = 5
    ) -> None:
        self.client = client
        self.path = path
        self.final_event = final_event
        self.retries = retries
        self.last_id: str | None = None
        self.error: CLIError | None = None
        self.queue: queue.Queue[SSE | _End] = queue.Queue()
        threading.Thread(target=self._run, name="viworks-events", daemon=True).start()

    def _run(self) -> None:
        failures = 0
        while True:
            try:
                for message in self.client.stream(self.path, self.last_id):
                    failures = 0
                    if message.id is not None:
                        self.last_id = message.id
                    self.queue.put(message)
                    if message.event == self.final_event:
                        self.queue.put(_END)
                        return
            except CLIError as e:
                failures += 1
                if e.http is not None or failures > self.retries:
                    self.error = e
                    self.queue.put(_END)
                    return
            terminal.sleep(min(0.5 * 2**failures, 5.0))

    def get(self, timeout: float) -> SSE | None:
        """The next message, or None after ``timeout`` s; raises the error that ended it
        (``CLIError``), or ``EOFError`` when it ended without one."""
        try:
            item = self.queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if isinstance(item, _End):
            self.queue.put(_END)  # stays over
            if self.error is not None:
                raise self.error
            raise EOFError
        return item
