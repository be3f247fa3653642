"""The optimization methods, apart from the engine they run on: each module is one paper's optimizer over
`base.Context`, and importing this package registers them all (no method imports another)."""

from . import ape, baseline, demos, gpo, opro, pe2, protegi  # noqa: F401
