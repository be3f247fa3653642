"""Imports every optimizer so each registers itself; the CLI and pages import this one module."""

from . import baseline  # noqa: F401

for _name in ("ape", "protegi", "opro", "pe2", "gpo"):
    try:
        __import__(f"{__package__}.{_name}")
    except ModuleNotFoundError as _e:  # an optimizer still being written must not break the others
        if _e.name != f"{__package__}.{_name}":
            raise
