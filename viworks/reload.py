"""Reloading keys, certificates and the log level on SIGHUP, without dropping links.

Both services own a ``Reloader``. On ``reload()`` it reads the configuration file
again and hands the new configuration to every registered callback, in the order
they were added. A configuration that no longer loads, or a callback that fails
(a missing or mismatched certificate, an unreadable key), is logged as an error
and changes nothing for that callback: the material in use stays in use and the
process keeps running. Only NEW connections (the backend's next handshakes, the
agent's next reconnect) see reloaded TLS material; open links are left alone.

Other components register their own reloadable material::

    service.reloader.add("signing keys", lambda config: signer.load(config.signing))

``install_sighup`` is called by the twistd entry points only (never by tests or
``viworks dev``), once the reactor runs.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from viworks.files import one_line
from viworks.logs import Logger

__all__ = ["Reloader", "install_sighup"]


class Reloader:
    """Callbacks that apply a freshly loaded configuration; each fails on its own."""

    log = Logger()

    def __init__(self, load_config: Callable[[], Any]) -> None:
        self.load_config = load_config
        self._callbacks: list[tuple[str, Callable[[Any], Any]]] = []

    def add(self, name: str, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(config)`` on every reload; ``name`` appears in the log."""
        self._callbacks.append((name, callback))

    def reload(self) -> list[str]:
        """Reload everything; return the names of what failed (logged, old kept).

        Never raises: a bad file must not bring the service down.
        """
        try:
            config = self.load_config()
        except Exception as e:
            self.log.error(
                "reload: configuration not reloaded, everything kept as it was: {error}",
                error=one_line(e),
            )
            return ["configuration"]
        failed = []
        for name, callback in self._callbacks:
            try:
                callback(config)
            except Exception as e:
                failed.append(name)
                self.log.error(
                    "reload: {name} not reloaded, the previous one stays in use: {error}",
                    name=name,
                    error=one_line(e),
                )
        self.log.info(
            "reload: done{failures}",
            failures=f" ({len(failed)} failed: {', '.join(failed)})" if failed else "",
        )
        return failed


def install_sighup(reactor: Any, reloader: Reloader) -> None:
    """Reload on SIGHUP once the reactor has started (where signals exist)."""
    if not hasattr(signal, "SIGHUP"):
        return

    def handler(signum: int, frame: Any) -> None:
        # Signal handlers interrupt arbitrary code: do the work in the reactor.
        reactor.callFromThread(reloader.reload)

    def install() -> None:
        signal.signal(signal.SIGHUP, handler)

    reactor.addSystemEventTrigger("after", "startup", install)
