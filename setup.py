"""Packaging shim: the metadata, dependencies and package data are in pyproject.toml.

What stays here: the package list. ``twisted.plugins`` is a namespace directory
without ``__init__.py`` (one there would shadow Twisted's own package), so package
discovery does not see it; listing it installs ``twisted/plugins/viworks_plugins.py``
into site-packages, where twistd looks for plugins.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["viworks", "viworks.*"]) + ["twisted.plugins"])
