"""Imports every optimizer so each registers itself; the CLI and pages import this one module."""

from . import baseline, protegi  # noqa: F401
