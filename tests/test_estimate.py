"""The dry-run estimate: the optimizer's own loop against an instant scripted model counts its calls."""

from __future__ import annotations

import pytest

from optimizers import methods  # noqa: F401
from optimizers.base import REGISTRY
from optimizers.data import Splits
from optimizers.estimate import MAX_DRY_CALLS, dry_run
from optimizers.llm import Budget
from tests.conftest import TOY_TASK, toy_examples

SPLITS = Splits(toy_examples(16), toy_examples(8, seed=1, start=100), toy_examples(8, seed=2, start=200))
NAMES = sorted(n for n, c in REGISTRY.items() if c.__module__.startswith("optimizers."))


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_has_a_deterministic_estimate_that_respects_the_budget(name):
    a = dry_run(name, {}, TOY_TASK, SPLITS, "Classify the text.")
    assert a.calls > 0 and a.calls == a.task_calls + a.optimizer_calls
    assert a == dry_run(name, {}, TOY_TASK, SPLITS, "Classify the text.")
    cut = dry_run(name, {}, TOY_TASK, SPLITS, "Classify the text.", budget=Budget(max_calls=25))
    assert cut.calls == min(25, a.calls) and cut.stopped_by_budget == (a.calls > 25)


def test_baseline_is_one_call_per_selection_example_and_big_runs_are_capped():
    assert dry_run("baseline", {}, TOY_TASK, SPLITS, "x").calls == len(SPLITS.dev)
    opro = dry_run("opro", {}, TOY_TASK, SPLITS, "x")  # 200 steps x 8 instructions x 16 train examples
    assert opro.capped and opro.calls == MAX_DRY_CALLS


def test_estimate_follows_the_parameters():
    small = dry_run("gpo", {"epochs": 1}, TOY_TASK, SPLITS, "x")
    big = dry_run("gpo", {"epochs": 2}, TOY_TASK, SPLITS, "x")
    assert big.optimizer_calls == 2 * small.optimizer_calls
