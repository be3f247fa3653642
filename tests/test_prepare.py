"""One data-preparation path (optimizers/prepare.py): each rule tested once here, and the CLI, the Data page and the
Optimize page all go through it (they used to differ: the CLI allowed an empty train split, did not score exact
extraction by exact_match, and the dashboard refused the empty initial prompt OPRO can start from)."""

from __future__ import annotations

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import optimizers.methods  # noqa: F401  (registers the optimizers)
import optimizers.prepare
from optimizers import cli
from optimizers.base import REGISTRY
from optimizers.data import BUNDLED, DataError
from optimizers.prepare import default_template, guess_label_col, prepare_task
from tests.test_cli import cli as run_cli
from tests.test_cli import toy_csv  # noqa: F401  (fixture)
from tests.test_pages_optimize import env, small_data  # noqa: F401  (env: fixture)


def table(n: int = 24) -> pd.DataFrame:
    return pd.DataFrame({"review": [f"review {i}" for i in range(n)], "stars": ["5", "1"] * (n // 2),
                         "sentiment": ["pos", "neg"] * (n // 2)})


def test_a_bundled_set_brings_its_task_and_an_argument_overrides_it():
    b = BUNDLED["sentiment"]
    p = prepare_task("sentiment")
    assert (p.name, p.task.template, p.task.labels, p.initial_prompt) == (b.name, b.template, b.labels,
                                                                          b.initial_prompt)
    assert p.data_config.source == "bundled:sentiment" and p.data_config.input_cols == b.input_cols
    assert prepare_task("sentiment", initial_prompt="Judge it.").initial_prompt == "Judge it."
    assert prepare_task("sentiment", labels=["positive", "negative", "mixed"]).task.labels[-1] == "mixed"


def test_the_label_set_is_given_else_found_in_the_data():
    assert prepare_task(table(), input_cols=["review"], label_col="sentiment").task.labels == ["neg", "pos"]
    assert prepare_task(table(), input_cols=["review"], label_col="sentiment", labels=["pos", "neg"]).task.labels \
        == ["pos", "neg"]
    assert prepare_task(table(), input_cols=["review"], label_col="stars", extraction="number").task.labels is None


def test_exact_extraction_is_scored_by_exact_match_unless_a_metric_is_given():
    kw = dict(input_cols=["review"], label_col="sentiment", extraction="exact")
    assert prepare_task(table(), **kw).task.metric == "exact_match"
    assert prepare_task(table(), **kw, metric="accuracy").task.metric == "accuracy"
    assert prepare_task(table(), input_cols=["review"], label_col="sentiment").task.metric == "accuracy"


def test_an_empty_train_split_is_an_error():
    with pytest.raises(DataError, match="train split is empty"):
        prepare_task(table(), input_cols=["review"], label_col="sentiment", split={"train": 0, "dev": 0.5,
                                                                                   "test": 0.5})


def test_an_empty_initial_prompt_is_kept_and_only_an_optimizer_that_allows_it_runs_from_it():
    p = prepare_task(table(), input_cols=["review"], label_col="sentiment", initial_prompt="  ")
    assert p.initial_prompt == ""
    assert p.run_config(REGISTRY["opro"]).initial_prompt == ""
    with pytest.raises(DataError, match="initial prompt is empty"):
        p.run_config(REGISTRY["protegi"])
    assert p.run_config(REGISTRY["protegi"], initial_prompt=" Judge. ").initial_prompt == "Judge."
    assert [n for n, c in REGISTRY.items() if c.allows_empty_prompt] == ["opro"]


def test_every_problem_is_named_at_once():
    with pytest.raises(DataError) as e:
        prepare_task(table(), input_cols=["review"], label_col="sentiment", template="no placeholders",
                     split={"train": "half"})
    assert len(e.value.problems) == 2
    assert any("{prompt}" in p for p in e.value.problems) and any(p.startswith("split train") for p in e.value.problems)
    p = prepare_task(table(), input_cols=["review", "stars"], label_col="sentiment", split={"seed": 3, "max_test": 4})
    assert p.task.template == default_template(["review", "stars"], p.task.labels) and p.warnings == []
    assert len(p.splits.test) == 4 and p.split_config.seed == 3 and len(p.examples) == 24
    assert guess_label_col(["text", "Label"]) == "Label" and guess_label_col(["a", "b"]) == "b"


# --- every caller goes through it -----------------------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = optimizers.prepare.prepare_task

    def prepare(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(optimizers.prepare, "prepare_task", prepare)
    return calls


def test_the_cli_and_the_data_page_prepare_through_it(spy, toy_csv, monkeypatch, tmp_path):  # noqa: F811
    assert cli.main(["run", "--data", str(toy_csv), "--input-col", "text", "--label-col", "label", "--optimizer",
                     "protegi", "--initial-prompt", "", "--db", str(tmp_path / "runs.sqlite")]) == 2
    assert spy[-1]["extraction"] == "label" and spy[-1]["initial_prompt"] == ""
    import streamlit as st

    st.cache_data.clear()  # the Data page caches what it prepared
    monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
    at = AppTest.from_file("../pages/1_Data.py", default_timeout=30).run()
    assert not at.exception and spy[-1]["name"] == "sentiment"


def test_the_cli_follows_the_rules(toy_csv, tmp_path):  # noqa: F811
    cli_env = {"PROMPTOPT_DB": str(tmp_path / "runs.sqlite"), "PROMPTOPT_CACHE_DIR": str(tmp_path / "cache")}
    base = ["run", "--data", str(toy_csv), "--input-col", "text", "--label-col", "label", "--base-url",
            "http://127.0.0.1:9/v1"]
    r = run_cli(*base, "--optimizer", "protegi", "--initial-prompt", "", env=cli_env)
    assert r.returncode == 2 and "initial prompt is empty" in r.stderr
    r = run_cli(*base, "--optimizer", "baseline", "--initial-prompt", "x", "--train", "0", "--dev", "0.5", "--test", "0.5",
                env=cli_env)
    assert r.returncode == 2 and "train split is empty" in r.stderr


def test_the_optimize_page_follows_the_empty_prompt_rule(env):  # noqa: F811
    env["spawn"].execute = False
    at = AppTest.from_file("../pages/2_Optimize.py", default_timeout=30)
    at.session_state["po_data"] = small_data()
    at.run()
    at.text_area(key="opt_prompt.sentiment").set_value("")
    at.button(key="opt_start").click().run()
    assert any("initial prompt is empty" in e.value for e in at.error)  # ProTeGi needs one
    assert env["store"].list_runs() == []
    at.selectbox(key="opt_name").set_value("opro").run()
    at.button(key="opt_start").click().run()
    assert not at.exception and [e.value for e in at.error] == []
    [run] = env["store"].list_runs()
    assert run["optimizer"] == "opro" and run["config"]["initial_prompt"] == ""
