"""Compare: scores, 95% CIs, McNemar against the first prompt, the disagreement filter, paging, confusion matrices
and the export, on a scripted task model whose answers are known in advance; then the page end to end."""

from __future__ import annotations

import csv
import io
import json

import pytest
from streamlit.testing.v1 import AppTest

from optimizers import metrics
from optimizers.config import DataConfig, SplitConfig
from optimizers.evaluate import Evaluator
from optimizers.llm import LLM, Endpoint, Meter, ResponseCache
from optimizers.prepare import PreparedTask
from tests.conftest import TASK_MODEL, TOY_TASK, last_user, toy_examples
from tests.stub_server import StubServer
from tests.test_pages_inspect import INITIAL, make_baseline_run, make_runner, scripted, toy_splits
from ui import compare as C

GOOD, PLAIN, FORMULA = "Judge the sentiment.", INITIAL, "Answer with a formula."
FORMULA_REPLY = '=HYPERLINK("http://x","click")'


def task_answer(req) -> str:
    """Known answers: 'sentiment' in the instruction -> always right; 'formula' -> an unparseable formula (always
    wrong); otherwise 'positive' (right on exactly the positive half of a balanced set)."""
    text = last_user(req)
    instruction, review = text.split("\n\nText:")[0].lower(), text.split("Text:")[-1].lower()
    if "formula" in instruction:
        return FORMULA_REPLY
    if "sentiment" in instruction:
        neg = any(w in review for w in ("hated", "dull", "mess", "boring", "awful", "tedious"))
        return "negative" if neg else "positive"
    return "positive"


def spy_downloads(monkeypatch) -> dict:
    """Captures the data handed to every download button (AppTest does not keep the files)."""
    from streamlit.delta_generator import DeltaGenerator

    got: dict = {}
    orig = DeltaGenerator.download_button

    def spy(self, label, data, *a, **kw):
        got[label] = data
        return orig(self, label, data, *a, **kw)

    monkeypatch.setattr(DeltaGenerator, "download_button", spy)
    return got


@pytest.fixture
def scored(tmp_path):
    test = toy_examples(10, seed=2, start=201)
    with StubServer(task_answer) as stub:
        ep = Endpoint(stub.base_url, "k", max_retries=0, max_concurrency=4)
        ev = Evaluator(LLM(ep, TASK_MODEL, meter=Meter(), cache=ResponseCache(tmp_path / "cache")), TOY_TASK)
        prompts = [GOOD, PLAIN, FORMULA]
        results = C.score_prompts(ev, prompts, test)
    return prompts, results, test


def test_scores_cis_and_mcnemar_against_the_first_prompt(scored):
    prompts, results, test = scored
    rows = C.summary_rows(prompts, results)
    assert [r["prompt"] for r in rows] == ["P1", "P2", "P3"]
    assert [r["score"] for r in rows] == [1.0, 0.5, 0.0]
    for r, k in zip(rows, (10, 5, 0)):
        assert (r["ci_low"], r["ci_high"]) == pytest.approx(metrics.wilson(k, 10))
        assert r["n"] == 10 and r["correct"] == k
    assert rows[0]["p_value"] is None
    # P1 alone right on the 5 negatives: exact two-sided binomial 2 * 0.5**5
    assert (rows[1]["only_first_right"], rows[1]["only_this_right"]) == (5, 0)
    assert rows[1]["p_value"] == pytest.approx(0.0625) and rows[1]["significant"] is False
    assert rows[2]["p_value"] == pytest.approx(2 * 0.5**10) and rows[2]["significant"] is True
    assert rows[2]["p_value"] == metrics.mcnemar(results[0].correct, results[2].correct)["p_value"]


def test_matrix_disagreement_filter_and_paging(scored):
    prompts, results, test = scored
    two = C.matrix_rows(test, results[:2])
    assert [r["example_id"] for r in two] == [e.id for e in test]
    assert two[0]["gold"] == test[0].label and two[0]["input"] == test[0].fields["text"]
    differ = C.filter_rows(two, "correctness differs")
    assert [r["example_id"] for r in differ] == [e.id for e in test if e.label == "negative"]
    assert all(r["P1 correct"] and not r["P2 correct"] for r in differ)
    assert C.filter_rows(two, "predictions differ") == differ
    assert C.filter_rows(two, "all wrong") == []
    assert C.filter_rows(two, "all") == two
    last_two = C.matrix_rows(test, results[1:])
    assert [r["example_id"] for r in C.filter_rows(last_two, "all wrong")] == [e.id for e in test
                                                                              if e.label == "negative"]
    with pytest.raises(ValueError):
        C.filter_rows(two, "nonsense")
    page, n = C.page_rows(two, 3, size=4)
    assert n == 3 and [r["example_id"] for r in page] == [e.id for e in test[8:]]
    assert C.page_rows(two, 99, size=4)[0] == page and C.page_rows([], 1)[1] == 1


def test_confusion_and_export_neutralise_formulas(scored):
    prompts, results, test = scored
    conf = C.confusion_table(results[1], TOY_TASK.labels)
    assert conf["gold"] == ["positive", "negative"]
    assert conf["z"] == [[5, 0], [5, 0]]  # always "positive"
    conf3 = C.confusion_table(results[2], TOY_TASK.labels)
    assert conf3["pred"][-1] == "(none)" and [row[-1] for row in conf3["z"]] == [5, 5]
    assert C.confusion_figure(conf3, "P3").data[0].z is not None
    assert len(C.ci_figure(C.summary_rows(prompts, results)).data[0].x) == 3
    rows = C.matrix_rows(test, results)
    out = list(csv.DictReader(io.StringIO(C.export_csv(rows))))
    assert len(out) == 10 and all(r["P3 output"] == "'" + FORMULA_REPLY for r in out)
    js = json.loads(C.export_json(prompts, C.summary_rows(prompts, results), rows, {"data": "toy"}))
    assert [p["text"] for p in js["prompts"]] == prompts and len(js["examples"]) == 10
    assert C.validate_prompts([GOOD]) and C.validate_prompts([GOOD, GOOD]) and not C.validate_prompts([GOOD, PLAIN])


def test_prompt_choices_and_run_data(tmp_path):
    with StubServer(scripted(lambda r: "?")) as stub:
        runner, store = make_runner(stub, tmp_path / "runs.sqlite")
        rid = make_baseline_run(runner, tmp_path)
    choices = C.prompt_choices(store)
    assert [(c.run_id, c.which, c.text) for c in choices] == [(rid, "best", INITIAL)]  # best == initial: once
    task, test = C.run_test_data(store, rid)
    assert task == TOY_TASK and [e.id for e in test] == [e.id for e in toy_splits().test]
    with pytest.raises(ValueError, match="no run"):
        C.run_test_data(store, "nope")


def test_compare_page_scores_side_by_side(monkeypatch, tmp_path):
    import streamlit as st

    db = tmp_path / "runs.sqlite"
    with StubServer(scripted(lambda r: "?")) as stub:
        runner, _ = make_runner(stub, db)
        rid = make_baseline_run(runner, tmp_path)
    got = spy_downloads(monkeypatch)
    with StubServer(task_answer, api_key="test") as stub:  # answers only with the session's key
        st.cache_data.clear()
        monkeypatch.setenv("PROMPTOPT_DB", str(db))
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("PROMPTOPT_TASK_MODEL", TASK_MODEL)
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "llm-cache"))
        at = AppTest.from_file("../pages/4_Compare.py", default_timeout=30)
        at.session_state["api_key"] = "test"
        at.run()
        assert not at.exception and not at.error
        ms = at.multiselect(key="cmp_picked")
        assert len(ms.options) == 1 and ms.options[0].startswith(rid) and INITIAL in ms.options[0]
        ms.set_value([0])
        at.text_area(key="cmp_typed").input(GOOD)
        at.run()
        assert at.button(key="cmp_go").disabled is False
        at.button(key="cmp_go").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert len(stub.chat_requests()) == 20
        summary = at.dataframe[0].value
        assert list(summary["prompt"]) == ["P1", "P2"]
        assert list(summary["score"]) == [0.5, 1.0]  # P1 is the run's initial prompt ("positive" always)
        assert summary["p_value"].iloc[1] == pytest.approx(0.0625)
        assert "P2 does not differ significantly from P1" in " ".join(m.value for m in at.markdown)
        assert at.dataframe[1].value.shape[0] == 10
        at.radio(key="cmp_filter").set_value("correctness differs").run()
        negatives = [e.id for e in toy_splits().test if e.label == "negative"]
        assert list(at.dataframe[1].value["example_id"]) == negatives
        # a third prompt: the first two come from the response cache, only the new one is asked
        at.text_area(key="cmp_typed").input(f"{GOOD}\n---\n{FORMULA}")
        at.button(key="cmp_go").click().run()
        assert not at.exception and not at.error
        assert len(stub.chat_requests()) == 30
        summary = at.dataframe[0].value
        assert list(summary["score"]) == [0.5, 1.0, 0.0]
        assert summary["p_value"].iloc[2] == pytest.approx(0.0625)  # P1 alone right on the 5 positives
        assert list(at.dataframe[1].value["example_id"]) == [e.id for e in toy_splits().test]  # all differ now
        assert len(at.get("plotly_chart")) == 1 + 3  # the CI bars and a confusion matrix per prompt
        out = list(csv.DictReader(io.StringIO(got["Per-example matrix (CSV)"])))
        assert len(out) == 10 and all(r["P3 output"].startswith("'=") for r in out)
        assert "test" not in json.loads(got["Everything (JSON)"])["source"].values()


def test_compare_page_on_session_data(monkeypatch, tmp_path):
    """With no runs at all, the data loaded on the Data page (st.session_state["po_data"]) is the test set."""
    import streamlit as st

    with StubServer(task_answer) as stub:
        st.cache_data.clear()
        monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "empty.sqlite"))
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("PROMPTOPT_TASK_MODEL", TASK_MODEL)
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "llm-cache"))
        at = AppTest.from_file("../pages/4_Compare.py", default_timeout=30)
        at.session_state["po_data"] = PreparedTask(
            name="toy", task=TOY_TASK, examples=[], splits=toy_splits(), initial_prompt="", warnings=[],
            data_config=DataConfig(name="toy", input_cols=["text"], label_col="label"), split_config=SplitConfig())
        at.run()
        assert at.radio(key="cmp_source").value == "session"
        at.text_area(key="cmp_typed").input(f"{GOOD}\n---\n{PLAIN}").run()
        at.button(key="cmp_go").click().run()
        assert not at.exception and not at.error
        assert list(at.dataframe[0].value["score"]) == [1.0, 0.5]
        assert len(stub.chat_requests()) == 2 * len(toy_splits().test)
