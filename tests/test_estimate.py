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
    assert a.calls > 0 and a.calls == a.task_calls + a.optimizer_calls + a.report_calls
    assert a.capped or a.report_calls > 0  # a dry run past MAX_DRY_CALLS says "at least" and has no report
    assert a == dry_run(name, {}, TOY_TASK, SPLITS, "Classify the text.")
    cut = dry_run(name, {}, TOY_TASK, SPLITS, "Classify the text.", budget=Budget(max_calls=25))
    # the cap covers the report too: the optimization stops early enough to pay for it
    assert cut.calls <= 25 and bool(cut.stopped_by_budget or cut.report_skipped) == (a.calls > 25)
    assert cut.report_calls > 0


def test_baseline_is_one_call_per_selection_example_and_big_runs_are_capped():
    base = dry_run("baseline", {}, TOY_TASK, SPLITS, "x")
    assert base.task_calls == len(SPLITS.dev) and base.optimizer_calls == 0
    assert base.report_calls == len(SPLITS.train) + len(SPLITS.test)  # dev was scored already: the cache answers
    opro = dry_run("opro", {}, TOY_TASK, SPLITS, "x")  # 200 steps x 8 instructions x 16 train examples
    assert opro.capped and opro.calls == MAX_DRY_CALLS


def test_estimate_follows_the_parameters():
    small = dry_run("gpo", {"epochs": 1, "rule_start": 0}, TOY_TASK, SPLITS, "x")
    big = dry_run("gpo", {"epochs": 2, "rule_start": 0}, TOY_TASK, SPLITS, "x")  # the rule start is per run
    assert big.optimizer_calls == 2 * small.optimizer_calls


def test_a_cap_too_small_for_the_report_reports_test_first_and_says_what_it_left_out():
    est = dry_run("baseline", {}, TOY_TASK, SPLITS, "x", budget=Budget(max_calls=10))
    assert est.calls <= 10 and est.report_skipped == ["dev", "train"] and est.report_calls == len(SPLITS.test)
