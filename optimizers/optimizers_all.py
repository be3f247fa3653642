"""Imports every optimizer so each registers itself; the CLI and pages import this one module."""

from . import ape, baseline, gpo, opro, pe2, protegi  # noqa: F401
