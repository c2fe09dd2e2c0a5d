"""What both twistd services share: turning config problems into one clean line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from viworks.config import ConfigError
from viworks.tls import TLSConfigError

C = TypeVar("C")
T = TypeVar("T")


def build_or_exit(
    loader: Callable[[str], C], build: Callable[[C, Any], T], options: Any, reactor: Any
) -> T:
    """Load the config named by ``options["config"]`` and build the service from it.

    A bad file, key or certificate prints one line and exits 2: twistd would
    otherwise print a traceback (or its usage text) for a typo in a file.
    """
    try:
        return build(loader(options["config"]), reactor)
    except (ConfigError, TLSConfigError) as e:
        print(f"viworks: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
