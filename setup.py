"""Packaging for viworks.

``twisted.plugins`` is listed explicitly: it is a namespace directory without ``__init__.py``
(one there would shadow Twisted's own package) so ``find_packages`` does not see it, and
listing it installs ``twisted/plugins/viworks_plugins.py`` into site-packages where twistd
looks for plugins.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    text = (HERE / "viworks" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("__version__ not found in viworks/__init__.py")
    return match.group(1)


setup(
    name="viworks",
    version=read_version(),
    description="ViWorkS control plane: a backend and gateway agents over mutual-TLS WebSockets",
    packages=find_packages(include=["viworks", "viworks.*"]) + ["twisted.plugins"],
    # The web console's static files (served at /ui/; no Node.js needed to install or run).
    package_data={
        "viworks.console": [
            "static/*.html",
            "static/*.css",
            "static/js/*.js",
            "static/js/pages/*.js",
            "static/vendor/*.mjs",
            "static/vendor/*.css",
            "static/vendor/*.json",
            "static/vendor/licenses/*.LICENSE",
        ]
    },
    python_requires=">=3.11",
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "txaio",
        "klein>=24.8",
        "werkzeug>=3,<4",
        "pyopenssl>=24",
        "service-identity>=24",
        "cryptography>=42",
        "attrs",
        "treq>=24",
        "psycopg[binary]>=3.1",
        "prometheus-client>=0.17",
        # Agent-announced patterns: linear-time matching (viworks.schema).
        "google-re2>=1.1",
        # The bus between backend replicas (viworks.backend.cluster.redisbus: its own
        # connections around the 1.6 protocol classes).
        "txredisapi>=1.6",
    ],
    extras_require={
        # playwright drives the system's Chromium in tests/test_console_browser.py
        # (never `playwright install`: no browser is downloaded).
        "test": ["ruff", "hypothesis", "playwright"],
    },
    entry_points={
        "console_scripts": ["viworks=viworks.cli:main"],
    },
    zip_safe=False,
)
