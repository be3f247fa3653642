"""The Inspect page on real stored runs: a ProTeGi run made by the Runner against the scripted stub (errors shown,
gradients, edits, paraphrases, selection, rejections, raw exchanges), a GPO-like run with stored Retrieval / EditBudget
events (retrieved trajectory, budget by cosine decay, measured edit distances), and the generic fallback.

The run builders here are shared by the Compare and Runs page tests."""

from __future__ import annotations

import itertools
import json
import math
import threading

import pytest
from streamlit.testing.v1 import AppTest

import optimizers.methods  # noqa: F401  (registers protegi and baseline)
from optimizers.backend import Backend
from optimizers.base import candidate_id
from optimizers.config import DataConfig, RunConfig
from optimizers.data import Splits
from optimizers.events import (
    CandidateProposed,
    CandidateRejected,
    CandidateScored,
    EditBudget,
    Retrieval,
    RunFinished,
    RunStarted,
    Selection,
    StepDone,
)
from optimizers.llm import Endpoint
from optimizers.runner import Runner
from optimizers.store import Store
from tests.conftest import TOY_TASK, last_user, scripted, toy_examples
from tests.stub_server import StubServer
from ui import inspectors as I

INITIAL = "Classify the text."
CRITIQUE = "it never mentions the sentiment"
EDITED = "=Label the sentiment of the review."  # starts with "=": a formula once in a spreadsheet
PROTEGI_PARAMS = dict(rounds=2, beam_size=2, minibatch_size=8, n_gradients=2, errors_per_gradient=2,
                      gradients_per_error=1, steps_per_gradient=1, mc_samples_per_step=1, max_expansion_factor=8,
                      eval_rounds=3, eval_prompts_per_round=3, samples_per_eval=4)
GPO_STEPS, B_MAX, B_MIN = 3, 20, 5
HTMLISH = "<b>Decide</b> the sentiment of the review."


def toy_splits() -> Splits:
    return Splits(toy_examples(16, start=1), toy_examples(8, seed=1, start=101), toy_examples(10, seed=2, start=201))


class ProtegiScript:
    """Optimizer model for ProTeGi: one critique, one (formula-looking) edit, numbered paraphrases."""

    def __init__(self) -> None:
        self.n = itertools.count(1)
        self.lock = threading.Lock()

    def __call__(self, req):
        text = last_user(req)
        with self.lock:
            i = next(self.n)
        if "reasons why" in text:
            return f"<START>{CRITIQUE}<END>"
        if text.startswith("Write a variation"):
            return f"Output: Decide the sentiment of the review, variant {i}."
        return f"<START>{EDITED}<END>"


def make_runner(stub: StubServer, db) -> tuple[Runner, Store]:
    store = Store(db)

    def backend(cfg):
        ep = Endpoint(stub.base_url, "k", max_retries=0, patience=1.0, max_concurrency=4)
        return Backend(ep, False, "stub-task", ep.base_url)

    return Runner(store, backend_factory=backend), store


def run_config(tmp_path, optimizer: str = "baseline", params: dict | None = None, **kw) -> RunConfig:
    return RunConfig(optimizer=optimizer, params=params or {}, initial_prompt=kw.pop("initial_prompt", INITIAL),
                     task=TOY_TASK, data=DataConfig(name="toy", input_cols=["text"], label_col="label"),
                     optimizer_model="stub-opt", cache_dir=str(tmp_path / "cache"), **kw)


def make_protegi_run(runner: Runner, tmp_path) -> str:
    rid = runner.create(run_config(tmp_path, "protegi", PROTEGI_PARAMS), toy_splits())
    assert runner.execute(rid).status == "done"
    return rid


def make_baseline_run(runner: Runner, tmp_path, initial: str = INITIAL) -> str:
    rid = runner.create(run_config(tmp_path, "baseline", initial_prompt=initial), toy_splits())
    assert runner.execute(rid).status == "done"
    return rid


def cosine_budget(t: int, total: int = GPO_STEPS) -> int:
    return round(B_MIN + 0.5 * (B_MAX - B_MIN) * (1 + math.cos(math.pi * t / total)))


def make_gpo_like_run(store: Store, tmp_path, optimizer: str = "gpo") -> tuple[str, dict]:
    """A run whose events are what GPO stores: retrieval of the trajectory, a cosine-decayed edit budget with every
    generated prompt measured against it (one over budget and not accepted), the chosen candidate."""
    cfg = run_config(tmp_path, "baseline").model_dump(mode="json")
    cfg["optimizer"] = optimizer
    rid = store.create_run(cfg, optimizer=optimizer, seed=0, data_name="toy", splits=toy_splits())
    put = lambda ev: store.append_event(rid, ev)  # noqa: E731
    put(RunStarted(optimizer=optimizer, params={}, seed=0))
    cur_text, cur = INITIAL, candidate_id(INITIAL)
    put(CandidateProposed(step=0, candidate_id=cur, text=INITIAL, origin="initial"))
    put(CandidateScored(step=0, candidate_id=cur, split="dev", n=8, score=0.5, purpose="selection"))
    put(StepDone(step=0, best_id=cur, best_score=0.5, best_split="dev", beam=[cur]))
    expect: dict[int, dict] = {}
    trajectory = [(cur, INITIAL, 0.5)]
    for t in range(1, GPO_STEPS + 1):
        budget = cosine_budget(t)
        retrieved = [{"candidate_id": c, "text": x, "score": s, "relevance": round(1 / (1 + k), 3)}
                     for k, (c, x, s) in enumerate(reversed(trajectory))]
        put(Retrieval(step=t, current_id=cur, rule="relevance", similarity="lexical", retrieved=retrieved))
        near = HTMLISH if t == 1 else f"Decide the sentiment of the review, step {t}."
        far = " ".join(f"word{j}" for j in range(budget + 5))
        d_near, d_far = I.word_distance(cur_text, near), I.word_distance(cur_text, far)
        near_id = candidate_id(near)
        measured = [{"candidate_id": near_id, "text": near, "distance_words": d_near, "within_budget": d_near <= budget,
                     "accepted": True},
                    {"candidate_id": None, "text": far, "distance_words": d_far, "within_budget": False,
                     "accepted": False}]
        put(CandidateRejected(step=t, text=far, reason="over_budget", parents=[cur], origin="generated"))
        put(CandidateProposed(step=t, candidate_id=near_id, text=near, parents=[cur], origin="generated",
                              info={"budget_words": budget, "distance_words": d_near}))
        put(EditBudget(step=t, budget_words=budget, schedule="cosine", measured=measured))
        score = 0.5 + 0.1 * t
        put(CandidateScored(step=t, candidate_id=near_id, split="dev", n=8, score=score, purpose="selection"))
        put(Selection(step=t, method="gpo", estimates=[{"candidate_id": near_id, "mean": score, "n": 8}],
                      survivors=[near_id]))
        put(StepDone(step=t, best_id=near_id, best_score=score, best_split="dev", beam=[near_id]))
        expect[t] = {"budget": budget, "retrieved": retrieved, "current": cur, "chosen": near_id, "near": near,
                     "d_near": d_near, "d_far": d_far}
        trajectory.append((near_id, near, score))
        cur_text, cur = near, near_id
    put(RunFinished(status="done", best_id=cur))
    store.set_status(rid, "done")
    return rid, expect


@pytest.fixture(scope="module")
def runs_db(tmp_path_factory):
    """One store for the module: a ProTeGi run, a baseline run, a GPO-like run and an unknown optimizer's run."""
    tmp = tmp_path_factory.mktemp("inspect")
    db = tmp / "runs.sqlite"
    with StubServer(scripted(ProtegiScript())) as stub:
        runner, store = make_runner(stub, db)
        ids = {"protegi": make_protegi_run(runner, tmp), "baseline": make_baseline_run(runner, tmp)}
    ids["gpo"], gpo_expect = make_gpo_like_run(store, tmp)
    ids["mystery"], _ = make_gpo_like_run(store, tmp, optimizer="mystery")
    return {"db": db, "store": store, "ids": ids, "gpo": gpo_expect}


def open_page(monkeypatch, db, **query) -> AppTest:
    import streamlit as st

    st.cache_data.clear()
    monkeypatch.setenv("PROMPTOPT_DB", str(db))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    at = AppTest.from_file("../pages/3_Inspect.py", default_timeout=30)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def codes(at) -> list[str]:
    return [c.value for c in at.code]


def markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def frames(at, *cols):
    return [d.value for d in at.dataframe if all(c in d.value.columns for c in cols)]


def assert_no_html(at) -> None:
    for m in at.markdown:
        assert not m.proto.allow_html


# --- pure projections -----------------------------------------------------------------------------------------------

def test_protegi_view_groups_edits_and_paraphrases_by_gradient(runs_db):
    store, rid = runs_db["store"], runs_db["ids"]["protegi"]
    events = store.events(rid)
    assert I.steps_of(events) == [0, 1, 2]
    v = I.protegi_view(I.events_at(events, 1))
    grads = [ev for _, ev in events if ev.kind == "gradient" and ev.step == 1]
    assert [g["gradient_id"] for g in v["gradients"]] == [g.gradient_id for g in grads]
    assert all(g["critique"] == CRITIQUE and g["errors"] for g in v["gradients"])
    edits = [ev for _, ev in events if ev.kind == "candidate_proposed" and ev.origin == "gradient_edit"
             and ev.step == 1]
    assert edits and edits[0].text == EDITED
    owner = next(g for g in v["gradients"] if g["gradient_id"] == edits[0].info["gradient_id"])
    assert [e["candidate_id"] for e in owner["edits"]] == [edits[0].candidate_id]
    assert {p["candidate_id"] for p in v["paraphrases"]} == {
        ev.candidate_id for _, ev in events if ev.kind == "candidate_proposed" and ev.origin == "paraphrase"
        and ev.step == 1}
    sel = [ev for _, ev in events if ev.kind == "selection" and ev.step == 1][0]
    assert [r["candidate_id"] for r in v["selections"][0]["rows"] if r["survivor"]] == sel.survivors
    assert {r["reason"] for r in v["rejected"]} == {"duplicate"}  # the second gradient's edit repeats the first


def test_budget_series_and_gpo_view(runs_db):
    store, rid, expect = runs_db["store"], runs_db["ids"]["gpo"], runs_db["gpo"]
    events = store.events(rid)
    assert [(s["step"], s["budget_words"]) for s in I.budget_series(events)] == [
        (t, cosine_budget(t)) for t in range(1, GPO_STEPS + 1)]
    assert [s["budget_words"] for s in I.budget_series(events)] == sorted(
        [s["budget_words"] for s in I.budget_series(events)], reverse=True)  # decays
    v = I.gpo_view(I.events_at(events, 2), I.candidate_texts(events))
    assert v["current_id"] == expect[2]["current"]
    assert v["retrievals"][0]["retrieved"] == expect[2]["retrieved"]
    [c] = v["candidates"]
    assert c["candidate_id"] == expect[2]["chosen"] and c["distance_words"] == expect[2]["d_near"]
    assert c["selected"] and c["accepted"]
    assert [m["distance_words"] for m in v["not_accepted"]] == [expect[2]["d_far"]]


# --- the page -------------------------------------------------------------------------------------------------------

def test_inspect_protegi_step_shows_errors_gradients_edits_selection(monkeypatch, runs_db):
    store, rid = runs_db["store"], runs_db["ids"]["protegi"]
    at = open_page(monkeypatch, runs_db["db"], run=rid, step="1")
    assert not at.exception and not at.error
    assert at.selectbox[0].value == rid
    assert at.select_slider[0].value == 1
    events = store.events(rid)
    grads = [ev for _, ev in events if ev.kind == "gradient" and ev.step == 1]
    heads = [s.value for s in at.subheader]
    assert f"Textual gradients ({len(grads)})" in heads
    # the errors shown to the model, exactly as stored with each gradient
    err_frames = frames(at, "id", "input", "gold", "prediction")
    assert len(err_frames) == len(grads)
    for df, g in zip(err_frames, grads):
        assert df.to_dict("records") == [{k: e[k] for k in ("id", "input", "gold", "prediction")} for e in g.errors]
        assert all(e["gold"] != e["prediction"] for e in g.errors)  # errors, not successes
    shown = codes(at)
    assert shown.count(CRITIQUE) == len(grads)
    assert EDITED in shown  # the edited prompt the gradient produced
    # paraphrases and the selection (the beam)
    para = frames(at, "candidate_id", "gradient_id", "source")[0]
    assert len(para) == sum(1 for _, ev in events if ev.kind == "candidate_proposed" and ev.origin == "paraphrase"
                            and ev.step == 1)
    sel = [ev for _, ev in events if ev.kind == "selection" and ev.step == 1][0]
    sdf = frames(at, "candidate_id", "survivor", "mean", "n")[0]
    assert list(sdf[sdf["survivor"]]["candidate_id"]) == sel.survivors
    assert "ucb" in sdf.columns and set(sdf["candidate_id"]) == {e["candidate_id"] for e in sel.estimates}
    rej = frames(at, "reason", "origin", "text")[0]
    assert list(rej["reason"]) == ["duplicate"]
    # raw exchanges: every request of the step, reply as sent back
    metas = [ev for _, ev in events if ev.kind == "meta_prompt" and ev.step == 1]
    assert f"Raw exchanges with the optimizer model ({len(metas)})" in [e.label for e in at.expander]
    assert shown.count(f"<START>{CRITIQUE}<END>") == len(grads)
    assert_no_html(at)


def test_inspect_step_slider_moves_to_another_step(monkeypatch, runs_db):
    rid = runs_db["ids"]["protegi"]
    at = open_page(monkeypatch, runs_db["db"], run=rid, step="1")
    at.select_slider[0].set_value(0).run()
    assert not at.exception
    assert "Textual gradients (0)" in [s.value for s in at.subheader]
    assert "Step 0 done" in markdown(at)


def test_inspect_gpo_like_run_shows_retrieval_and_budget(monkeypatch, runs_db):
    rid, expect = runs_db["ids"]["gpo"], runs_db["gpo"][1]
    at = open_page(monkeypatch, runs_db["db"], run=rid, step="1")
    assert not at.exception and not at.error
    md = markdown(at)
    assert f"Current prompt `{expect['current']}`, rule `relevance`, similarity `lexical`" in md
    ret = frames(at, "candidate_id", "score", "relevance", "text")[0]
    assert ret.to_dict("records") == expect["retrieved"]
    assert f"Budget at this step: **{expect['budget']} words** (schedule `cosine`)" in md
    meas = frames(at, "distance_words", "within_budget", "accepted")
    assert [expect["d_near"], expect["d_far"]] == list(meas[0]["distance_words"])
    chart = at.get("plotly_chart")
    assert len(chart) == 1
    spec = json.loads(chart[0].proto.spec)
    assert spec["data"][0]["y"] == [cosine_budget(t) for t in range(1, GPO_STEPS + 1)]
    cands = frames(at, "candidate_id", "distance_words", "selected")[0]
    assert cands.to_dict("records")[0]["candidate_id"] == expect["chosen"]
    assert bool(cands["selected"].iloc[0]) and cands["distance_words"].iloc[0] == expect["d_near"]
    # the generated text with markup is shown as data, never as markdown / HTML
    assert HTMLISH in set(cands["text"]) and HTMLISH not in md
    assert_no_html(at)


def test_unknown_optimizer_opens_with_generic_view(monkeypatch, runs_db):
    rid, expect = runs_db["ids"]["mystery"], runs_db["gpo"]
    at = open_page(monkeypatch, runs_db["db"], run=rid, step="2")
    assert not at.exception and not at.error
    heads = [s.value for s in at.subheader]
    assert "Retrieved trajectory" in heads and "Candidates proposed" in heads and "Selection" in heads
    assert f"Budget at this step: **{expect[2]['budget']} words** (schedule `cosine`)" in markdown(at)


def test_baseline_run_by_selectbox_and_bad_link(monkeypatch, runs_db):
    ids = runs_db["ids"]
    at = open_page(monkeypatch, runs_db["db"], run="nonexistent")
    assert not at.exception
    assert any("not in this store" in e.value for e in at.error)
    at.selectbox[0].set_value(ids["baseline"]).run()
    assert not at.exception
    assert at.query_params["run"] == [ids["baseline"]] or at.query_params["run"] == ids["baseline"]
    assert "Step 0 done" in markdown(at)
    assert INITIAL in codes(at)
