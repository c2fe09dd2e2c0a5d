"""Copy the console's pinned libraries from console/node_modules into the package.

Run by ``make console-vendor`` after ``npm ci`` (console/package.json and
package-lock.json pin the versions). The browser loads the copies as ES modules
by relative path, so bare specifiers (``from "preact"``) are rewritten to the
vendored file names here; uPlot ships no minified ES module, so its minified
IIFE gets an ``export default``. Each package's licence is copied next to it
and VERSIONS.json records what was copied. Nothing here runs at install or run
time: the output is committed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "node_modules"
OUT = HERE.parent / "viworks" / "console" / "static" / "vendor"

# vendored file -> (npm package, file inside it)
FILES = {
    "preact.mjs": ("preact", "dist/preact.mjs"),
    "hooks.mjs": ("preact", "hooks/dist/hooks.mjs"),
    "signals-core.mjs": ("@preact/signals-core", "dist/signals-core.mjs"),
    "signals.mjs": ("@preact/signals", "dist/signals.mjs"),
    "htm.mjs": ("htm", "dist/htm.mjs"),
    "uplot.mjs": ("uplot", "dist/uPlot.iife.min.js"),
    "uplot.css": ("uplot", "dist/uPlot.min.css"),
}
# bare import specifier -> vendored file
SPECIFIERS = {
    "preact": "./preact.mjs",
    "preact/hooks": "./hooks.mjs",
    "@preact/signals-core": "./signals-core.mjs",
}
_IMPORT = re.compile(r"""(\bfrom\s*|\bimport\s*)(["'])([^"']+)\2""")


def rewrite_imports(name: str, text: str) -> str:
    """Bare specifiers -> relative paths; anything else not relative is an error."""

    def replace(match: re.Match[str]) -> str:
        keyword, quote, specifier = match.groups()
        if specifier.startswith("./"):
            return match.group(0)
        if specifier not in SPECIFIERS:
            raise SystemExit(f"{name}: unknown import {specifier!r}: add it to SPECIFIERS")
        return f"{keyword}{quote}{SPECIFIERS[specifier]}{quote}"

    return _IMPORT.sub(replace, text)


def module_of_iife(text: str) -> str:
    """uPlot's minified IIFE (``var uPlot=function(){...}();``) as an ES module."""
    if "var uPlot=" not in text:
        raise SystemExit("uplot: the IIFE build no longer defines `var uPlot`")
    return text.rstrip() + "\nexport default uPlot;\n"


def version_of(package: str) -> str:
    return json.loads((MODULES / package / "package.json").read_text())["version"]


def main() -> int:
    if not MODULES.is_dir():
        print("console/node_modules is missing: run `npm ci` in console/ first", file=sys.stderr)
        return 2
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "licenses").mkdir(parents=True)
    for name, (package, path) in FILES.items():
        text = (MODULES / package / path).read_text(encoding="utf-8")
        if name == "uplot.mjs":
            text = module_of_iife(text)
        elif name.endswith(".mjs"):
            text = rewrite_imports(name, text)
        # Source maps are not shipped: drop the comment pointing at one.
        text = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "\n", text)
        (OUT / name).write_text(text, encoding="utf-8")
    packages = sorted({package for package, _ in FILES.values()})
    for package in packages:
        licence = MODULES / package / "LICENSE"
        shutil.copyfile(
            licence, OUT / "licenses" / (package.lstrip("@").replace("/", "-") + ".LICENSE")
        )
    versions = {
        package: {
            "version": version_of(package),
            "files": sorted(n for n, (p, _) in FILES.items() if p == package),
        }
        for package in packages
    }
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n", encoding="utf-8")
    print(f"vendored {len(FILES)} files of {len(packages)} packages into {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
