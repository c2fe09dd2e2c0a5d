"""The backend's database from the (synchronous) CLI: its configuration, the store opened
for one coroutine on the reactor, and who acts, for the audit log.

The backend's modules are imported by the calls that need them: the API commands
(``agents``, ``run``, ...) start without loading the store and its engines.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from viworks.cli.errors import EXIT_API, CLIError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from viworks.backend.store import Store
    from viworks.config import BackendConfig

_T = TypeVar("_T")


def cli_actor() -> str:
    """Who acts from the command line, for the audit log: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (containers without a passwd entry)
        return f"cli:uid-{os.getuid()}"


def backend_config(path: str) -> BackendConfig:
    """The backend's configuration file; errors exit 2."""
    from viworks.config import ConfigError, load_backend_config

    try:
        # The store is all these commands need: TLS files may live elsewhere.
        return load_backend_config(path, check_files=False)
    except ConfigError as e:
        raise CLIError(f"configuration error: {e}") from None


def run_async(fn: Callable[[IReactorTime], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``fn(reactor)`` to completion on the reactor; return its value (or raise)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    outcome: list[_T | Failure] = []

    def go() -> None:
        d = Deferred.fromCoroutine(fn(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


async def with_store(
    database: str, reactor: IReactorTime, fn: Callable[[Store], Awaitable[_T]]
) -> _T:
    """Open the backend's store (migrating it if needed), ``await fn(store)``, close it."""
    from viworks.backend.store import open_store

    store = open_store(database, reactor=reactor)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def store_call(config: BackendConfig, fn: Callable[[Store], Awaitable[_T]]) -> _T:
    """``fn(store)`` against the configured database; failures to reach it exit 3."""
    from viworks.backend.store import StoreError

    try:
        return run_async(lambda reactor: with_store(config.backend.database, reactor, fn))
    except (CLIError, StoreError):
        raise
    except Exception as e:
        raise CLIError(f"database {config.backend.database}: {e}", EXIT_API) from None
