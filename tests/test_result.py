"""The typed run result: its JSON is the result dict the CLI's `--json`, result.json and the store always had, a run
stored before it existed still loads, and the CLI and the pages show the best test score with one rounding."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from optimizers.config import RunConfig
from optimizers.result import SCORE_DIGITS, RunResult, stored_result
from optimizers.store import Store
from tests.conftest import scripted
from tests.stub_server import StubServer
from tests.test_cli import cli
from tests.test_pages_inspect import make_baseline_run, make_runner, toy_splits

OLD_RUN = Path(__file__).parent / "stored" / "run-0.1.0.json"  # config and result as stored by version 0.1.0
CONTRACT_KEYS = ["run_id", "status", "reason", "optimizer", "initial_prompt", "best_prompt", "best_id",
                 "best_selection_score", "selection_split", "scores", "paired", "report_error", "report_skipped", "calls",
                 "cache_hits", "prompt_tokens", "completion_tokens", "errors", "cost", "saved_tokens", "saved_cost",
                 "unmetered_calls", "optimization_usage", "report_usage", "by_role", "seed", "wall_time_s", "config",
                 "candidates", "version"]
USAGE_KEYS = ["calls", "cache_hits", "prompt_tokens", "completion_tokens", "errors", "cost", "saved_tokens",
              "saved_cost", "unmetered_calls"]


def contains(new, old) -> bool:
    """`new` keeps every key and value of `old` (fields added since have defaults)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and contains(new[k], v) for k, v in old.items())
    return new == old


def test_the_result_dumps_to_the_contract_dict(tmp_path):
    with StubServer(scripted(lambda r: "?")) as stub:
        runner, store = make_runner(stub, tmp_path / "runs.sqlite")
        rid = make_baseline_run(runner, tmp_path)
    stored = store.get_run(rid)["result"]
    assert list(stored) == CONTRACT_KEYS
    assert list(stored["scores"]["best"]["test"]) == ["score", "ci", "n"]
    assert list(stored["optimization_usage"]) == USAGE_KEYS
    assert stored_result(store.get_run(rid)).model_dump(mode="json") == stored


def old_run_in(db: Path, test_score: float | None = None) -> str:
    old = json.loads(OLD_RUN.read_text())
    if test_score is not None:
        old["result"]["scores"]["best"]["test"]["score"] = test_score
    store = Store(db)
    rid = store.create_run(old["config"], optimizer="baseline", seed=0, data_name="toy", splits=toy_splits())
    store.set_result(rid, {**old["result"], "run_id": rid})
    store.set_status(rid, "done")
    return rid


def test_a_run_stored_by_version_0_1_0_loads(tmp_path):
    rid = old_run_in(tmp_path / "runs.sqlite")
    run = Store(tmp_path / "runs.sqlite").get_run(rid)
    assert RunConfig(**run["config"]).optimizer == "baseline"
    res = stored_result(run)
    assert isinstance(res, RunResult) and res.status == "done" and res.scores["best"]["test"].n == 10
    assert contains(res.model_dump(mode="json"), run["result"])


def test_cli_and_pages_show_the_best_test_score_with_one_rounding(tmp_path, monkeypatch):
    """2/3 was 0.6666666666666666 in `runs --json` and 0.6667 on the Runs page."""
    import streamlit as st

    db = tmp_path / "runs.sqlite"
    old_run_in(db, test_score=2 / 3)
    shown = round(2 / 3, SCORE_DIGITS)
    env = {"PROMPTOPT_DB": str(db)}
    assert json.loads(cli("runs", "--json", env=env).stdout)[0]["best_test"] == shown
    assert f"best test {shown:.{SCORE_DIGITS}f}" in cli("runs", env=env).stdout
    monkeypatch.setenv("PROMPTOPT_DB", str(db))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    st.cache_data.clear()
    runs = AppTest.from_file("../pages/5_Runs.py", default_timeout=30).run()
    assert runs.dataframe[0].value["best test"].iloc[0] == shown
    assert runs.metric[2].value == f"{shown:.{SCORE_DIGITS}f}"
    inspect = AppTest.from_file("../pages/3_Inspect.py", default_timeout=30).run()
    assert inspect.metric[3].value == f"{shown:.{SCORE_DIGITS}f}"
