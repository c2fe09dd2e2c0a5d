"""What both twistd services share: turning config problems into one clean line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from viworks.config import ConfigError

T = TypeVar("T")


def load_config_or_exit(loader: Callable[[str], T], options: Any) -> T:
    """Load the config named by ``options["config"]``; on error print one line and exit 2.

    twistd would otherwise print a traceback (or its usage text) for a typo in a file.
    """
    try:
        return loader(options["config"])
    except ConfigError as e:
        print(f"viworks: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
