"""What both twistd services share: turning config and listen problems into one clean line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from twisted.application.service import IService

from viworks.config import ConfigError
from viworks.net import ListenError, check_listeners
from viworks.tls import TLSConfigError

C = TypeVar("C")
T = TypeVar("T", bound=IService)


def build_or_exit(
    loader: Callable[[str], C], build: Callable[[C, Any], T], options: Any, reactor: Any
) -> T:
    """Load the config named by ``options["config"]`` and build the service from it.

    A bad file, key or certificate, or a listen address already in use (checked
    here, before twistd sets up its log and forks), prints one line and exits 2:
    twistd would otherwise print a traceback (or its usage text).
    """
    path = options["config"]
    try:
        service = build(loader(path), reactor)
        check_listeners(service, path)
    except (ConfigError, TLSConfigError) as e:
        exit_with(f"configuration error: {e}")
    except ListenError as e:
        exit_with(str(e))
    return service


def exit_with(message: str, code: int = 2) -> NoReturn:
    """Print ``viworks: message`` (one line) to stderr and exit."""
    print(f"viworks: {message}", file=sys.stderr)
    raise SystemExit(code)
