"""What mypy finds in the modules pyproject.toml lists as not yet clean (`make mypy-pending`).

    python etc/mypy_pending.py            # errors per pending module, then the errors
    python etc/mypy_pending.py --quiet    # only the counts

``make lint`` runs mypy with pyproject.toml's settings, where the modules not yet clean
have ``ignore_errors = true``: they are checked but cannot fail the build. This runs
mypy once more with that override left out, and says which modules of the list are
clean already (remove them from it: from then on ``make lint`` keeps them clean).
Exit status 1 while the list names a module that has no error left.
"""

from __future__ import annotations

import os
import sys
import tempfile
import tomllib
from collections import Counter
from typing import Any

from mypy import api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load() -> tuple[dict[str, Any], list[str]]:
    """pyproject's [tool.mypy] without the not-yet-clean override, and that list."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)["tool"]["mypy"]
    pending = [o for o in config.get("overrides", []) if o.get("ignore_errors")]
    config["overrides"] = [o for o in config.get("overrides", []) if not o.get("ignore_errors")]
    return config, [module for o in pending for module in _modules(o)]


def _modules(override: dict[str, Any]) -> list[str]:
    module = override["module"]
    return [module] if isinstance(module, str) else list(module)


def to_ini(config: dict[str, Any]) -> str:
    """The same settings as a mypy INI file (mypy reads TOML only from pyproject.toml)."""
    sections = [("mypy", {k: v for k, v in config.items() if k != "overrides"})]
    for override in config.get("overrides", []):
        options = {k: v for k, v in override.items() if k != "module"}
        sections.append(("mypy-" + ",".join(_modules(override)), options))
    lines = []
    for name, options in sections:
        lines.append(f"[{name}]")
        for key, value in options.items():
            if isinstance(value, list):
                value = ",".join(map(str, value))
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def module_of(path: str) -> str:
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def main(argv: list[str]) -> int:
    config, pending = load()
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as f:
        f.write(to_ini(config))
    try:
        os.chdir(ROOT)
        out, err, _ = api.run(["--config-file", f.name])
    finally:
        os.unlink(f.name)
    sys.stderr.write(err)
    errors = [line for line in out.splitlines() if ": error: " in line]
    counts = Counter(module_of(line.split(":", 1)[0]) for line in errors)
    clean = [m for m in pending if not any(_within(name, m) for name in counts)]
    for module in pending:
        found = sum(n for name, n in counts.items() if _within(name, module))
        print(f"{found:5d}  {module}" + ("  (clean: remove it from the list)" if not found else ""))
    elsewhere = {
        name: n for name, n in counts.items() if not any(_within(name, m) for m in pending)
    }
    for name, n in sorted(elsewhere.items()):
        print(f"{n:5d}  {name}  (not in the list: `make lint` fails on it)")
    if "--quiet" not in argv:
        print("\n".join(errors))
    return 1 if clean else 0


def _within(name: str, pattern: str) -> bool:
    """Whether module ``name`` is matched by an override's ``pattern`` (``a.b`` or ``a.*``)."""
    if pattern.endswith(".*"):
        base = pattern[:-2]
        return name == base or name.startswith(base + ".")
    return name == pattern


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
