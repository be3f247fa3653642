"""Optimize page: the form is built from an optimizer's Params, Start creates the run in the store and launches it
(here spawn_worker is replaced by an in-process Runner.execute against the scripted stub), stop / resume, the
embedded server's URL handed to workers; ui/charts.py on a real ProTeGi run; ui/diff.py."""

from __future__ import annotations

import os
import re

import pytest
from streamlit.testing.v1 import AppTest

from optimizers.backend import Backend
from optimizers.config import RunConfig
from optimizers.llm import Budget, Endpoint
from optimizers.prepare import PreparedTask, prepare_task
from optimizers.runner import Runner
from optimizers.store import Store
from tests.stub_server import StubServer
from ui import charts
from ui.diff import diff_stats, render_markers, word_diff
from ui.params_form import field_kind, parse_field_text

PAGE = "../pages/2_Optimize.py"
SMALL_PROTEGI = {"rounds": 2, "beam_size": 2, "minibatch_size": 8, "n_gradients": 1, "mc_samples_per_step": 1,
                 "max_expansion_factor": 3, "eval_rounds": 2, "eval_prompts_per_round": 3, "samples_per_eval": 4}
_NEG = re.compile(r"\b(not|bad|boring|worst|awful|terrible|dull|disappoint\w*|waste|never|poor|hate\w*)\b", re.I)


def stub_reply(req: dict) -> str:
    """Task model: 'positive' unless the instruction says 'carefully' (then a keyword rule); optimizer model: ProTeGi's
    gradient / edit / paraphrase requests get tagged answers."""
    text = req["messages"][-1]["content"]
    if req.get("model") == "stub-task":
        instruction, _, review = text.partition("Review:")
        if "carefully" in instruction.lower():
            return "negative" if _NEG.search(review) else "positive"
        return "positive"
    if "reasons" in text:
        return "<START>The prompt does not ask to read negations carefully.<END>"
    if "improved prompts" in text:
        return "<START>Classify the sentiment of the review carefully, minding negations.<END>"
    if "variation" in text:
        return "Carefully decide whether the review is positive or negative."
    return "<START>Classify the sentiment carefully.<END>"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A stub endpoint, a temp store and cache, and spawn_worker replaced by an in-process run (records its calls)."""
    with StubServer(stub_reply) as stub:
        db = tmp_path / "runs.sqlite"
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("PROMPTOPT_TASK_MODEL", "stub-task")
        monkeypatch.setenv("PROMPTOPT_OPTIMIZER_MODEL", "stub-opt")
        monkeypatch.setenv("PROMPTOPT_DB", str(db))
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("PROMPTOPT_PATIENCE", "2")
        calls: list[dict] = []

        def fake_spawn(db_path, run_id, *, api_key=None, optimizer_api_key=None, embedded=None, log_path=None):
            calls.append({"db": str(db_path), "run_id": run_id, "api_key": api_key,
                          "optimizer_api_key": optimizer_api_key, "embedded": embedded or {}})
            if fake_spawn.execute:
                Runner(Store(db_path), api_key=api_key, optimizer_api_key=optimizer_api_key).execute(run_id)

        fake_spawn.execute = True
        monkeypatch.setattr("optimizers.runner.spawn_worker", fake_spawn)
        yield {"stub": stub, "db": db, "calls": calls, "spawn": fake_spawn, "store": Store(db)}


def small_data() -> PreparedTask:
    return prepare_task("sentiment", split={"max_train": 16, "max_dev": 8, "max_test": 8})


def run_protegi(store: Store, stub: StubServer, tmp_path) -> str:
    po = small_data()

    def backend(cfg):
        ep = Endpoint(stub.base_url, "k", max_retries=0, patience=1.0, max_concurrency=2)
        return Backend(ep, False, "stub-task", ep.base_url)

    runner = Runner(store, backend_factory=backend)
    cfg = RunConfig(optimizer="protegi", params=SMALL_PROTEGI, initial_prompt=po.initial_prompt, task=po.task,
                    data=po.data_config, split=po.split_config, optimizer_model="stub-opt",
                    cache_dir=str(tmp_path / "cache"), budget=Budget(max_calls=1000))
    rid = runner.create(cfg, po.splits)
    runner.execute(rid)
    return rid


# --- the page -----------------------------------------------------------------------------------------------------


def test_form_is_built_from_the_params_with_paper_defaults(env):
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["po_data"] = small_data()
    at.run()
    assert not at.exception
    assert at.selectbox(key="opt_name").value == "protegi"
    from optimizers.methods.protegi import ProTeGi

    for name, f in ProTeGi.Params.model_fields.items():
        kind = field_kind(f.annotation)[0]
        widget = {"int": at.number_input, "float": at.number_input, "bool": at.checkbox,
                  "literal": at.selectbox}[kind](key=f"opt_params.protegi.{name}")
        assert widget.value == f.default, name
        assert (f.description or "") in (widget.help or ""), name
    assert at.selectbox(key="opt_params.protegi.evaluator").options == ["ucb", "ucb-e", "sr", "sh", "bf"]
    text = " ".join(m.value for m in at.markdown)
    assert "Estimate" in text and "300" in text  # the default call budget bounds the estimate
    # an edited value is validated and shown as a change from the defaults
    at.number_input(key="opt_params.protegi.rounds").set_value(2).run()
    assert "rounds=2" in " ".join(c.value for c in at.caption)


def test_without_data_offers_the_bundled_set(env):
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    at.button(key="opt_load_sample").click().run()
    assert at.session_state["po_data"].name == "sentiment"
    assert at.selectbox(key="opt_name").value == "protegi"


def test_start_creates_the_run_and_shows_it_live(env):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["po_data"] = small_data()
    at.session_state["api_key"] = "sk-session-only"
    at.run()
    for k, v in SMALL_PROTEGI.items():
        at.number_input(key=f"opt_params.protegi.{k}").set_value(v)
    at.number_input(key="opt_calls").set_value(400)
    at.run()
    at.button(key="opt_start").click().run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == []
    runs = env["store"].list_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run["optimizer"] == "protegi" and run["data_name"] == "sentiment"
    assert run["config"]["params"]["rounds"] == 2 and run["config"]["budget"]["max_calls"] == 400
    assert "sk-session-only" not in str(run["config"])  # the key never reaches the store
    assert env["calls"][0]["api_key"] == "sk-session-only" and env["calls"][0]["embedded"] == {}
    assert run["status"] == "done"
    assert at.query_params["run"] == [run["id"]] or at.query_params["run"] == run["id"]
    assert any("finished" in s.value for s in at.success)
    assert at.get("plotly_chart"), "the live chart is drawn"
    assert at.selectbox(key="opt_diff_pick").options  # candidates listed for the diff
    table = at.dataframe[-1].value
    assert {"candidate", "parent", "origin", "train", "words", "prompt"} <= set(table.columns)
    # pick a child candidate: its diff against the parent is plain text with markers
    child = table[table.parent != ""].candidate.iloc[0]
    at.selectbox(key="opt_diff_pick").set_value(child).run()
    assert any("{+" in c.value or "[-" in c.value for c in at.code)


def test_stop_and_resume(env):
    po = small_data()
    store = env["store"]
    cfg = RunConfig(optimizer="baseline", initial_prompt=po.initial_prompt, task=po.task,
                    data=po.data_config, split=po.split_config, optimizer_model="stub-opt")
    rid = Runner(store).create(cfg, po.splits)
    store.set_status(rid, "running", worker_pid=os.getpid())
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = rid
    at.run()
    assert not at.exception
    at.button(key="opt_stop").click().run()
    assert store.stop_requested(rid)
    store.set_status(rid, "paused", "endpoint down: connection refused")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = rid
    at.run()
    assert any("endpoint down" in w.value for w in at.warning)
    at.button(key="opt_resume").click().run()
    assert not at.exception
    assert env["calls"][-1]["run_id"] == rid
    assert store.get_run(rid)["status"] == "done"


def test_unknown_run_is_a_message(env):
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.query_params["run"] = "nosuchrun"
    at.run()
    assert not at.exception
    assert any("nosuchrun" in e.value for e in at.error)


def test_each_roles_embedded_server_is_passed_to_workers(env, monkeypatch):
    """Task 0.5B and optimizer 1.5B on the embedded backend: the page starts (here: fakes) one server for both models
    and hands each role that server under its own model; the run stores the models, not the server's port."""
    from optimizers.backend import Handoff

    monkeypatch.delenv("OPENAI_BASE_URL")
    from optimizers.local_model import threads_per_server

    models = ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    started: list[tuple[str, int, tuple]] = []

    def fake_server(model: str, n_threads: int | None = None, together=()):
        started.append((model, n_threads, tuple(together)))
        port = 9 + len(together)  # the port of the server for this set of models
        return type("FakeServer", (), {"base_url": f"http://127.0.0.1:{port}/v1", "model_alias": model})()

    monkeypatch.setattr("ui.session.embedded_server", fake_server)
    env["spawn"].execute = False
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["po_data"] = small_data()
    at.session_state["task_model"] = "qwen2.5-coder-0.5b"
    at.session_state["optimizer_model"] = "qwen2.5-coder-1.5b"
    at.run()
    at.button(key="opt_start").click().run()
    assert not at.exception
    assert env["calls"][-1]["embedded"] == {
        "task": Handoff("http://127.0.0.1:10/v1", "qwen2.5-coder-0.5b"),
        "optimizer": Handoff("http://127.0.0.1:10/v1", "qwen2.5-coder-1.5b")}
    # one server for both models, with every core
    assert sorted(set(started)) == [(m, threads_per_server(1), tuple(x for x in models if x != m)) for m in models]
    cfg = env["store"].list_runs()[0]["config"]
    assert cfg["task_endpoint"] == {"base_url": None, "model": "qwen2.5-coder-0.5b"}
    assert cfg["optimizer_endpoint"] == {"base_url": None, "model": "qwen2.5-coder-1.5b"}


def test_the_session_and_a_worker_build_the_same_embedded_endpoint(monkeypatch):
    """optimizers.backend builds the embedded endpoint; the dashboard no longer builds its own (it had other
    patience and timeouts than the worker's)."""
    from optimizers.backend import open_backend
    from ui import session

    class FakeServer:
        base_url, model_alias = "http://127.0.0.1:9/v1", "tiny-model"

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setattr(session, "embedded_server", lambda model, n_threads=None: FakeServer())
    monkeypatch.setenv("PROMPTOPT_EMBEDDED_URL", FakeServer.base_url)
    monkeypatch.setenv("PROMPTOPT_EMBEDDED_ALIAS", FakeServer.model_alias)
    ours, workers = session.backend(), open_backend()
    assert (ours.embedded, ours.model, ours.cache_id) == (True, workers.model, workers.cache_id)
    for attr in ("base_url", "max_concurrency", "patience", "llamacpp"):
        assert getattr(ours.endpoint, attr) == getattr(workers.endpoint, attr), attr
    assert ours.endpoint.client.timeout == workers.endpoint.client.timeout


# --- charts on a real run -----------------------------------------------------------------------------------------


def test_charts_project_a_real_protegi_run(env, tmp_path):
    store = env["store"]
    rid = run_protegi(store, env["stub"], tmp_path)
    points = charts.score_points(store, rid)
    assert not points.empty and set(points.split) <= {"train", "dev"}
    assert points.score.between(0, 1).all() and (points.n > 0).all()
    best = charts.best_so_far(store, rid)
    assert list(best.step) == [0, 1, 2]
    init = charts.initial_candidate(store, rid)
    ref = charts.initial_reference(points, init, "train")
    assert ref is not None
    fig = charts.score_figure(points, best, beam=charts.current_beam(store, rid), initial_score=ref)
    n_points = sum(len(t.x) for t in fig.data if t.name.startswith("candidates"))
    assert n_points == len(points)
    assert any(t.name.startswith("best so far") and list(t.y) == list(best.best_score) for t in fig.data)
    table = charts.candidate_table(store, rid, points)
    assert len(table) == len(store.candidates(rid))
    assert (table.words > 0).all()
    assert table["in beam"].sum() == len(charts.current_beam(store, rid))
    # the report's held-out test scores are in the table, not in the chart
    assert table["test (report)"].notna().any()
    sp = charts.spend(store, rid)
    u = store.last_event(rid, "usage")
    assert sp["used"]["calls"] == u.calls and sp["limits"]["calls"] == 1000
    assert 0 < sp["fraction"] <= 1


def test_running_means_accumulate_distinct_examples(env, tmp_path):
    store = env["store"]
    rid = run_protegi(store, env["stub"], tmp_path)
    points = charts.score_points(store, rid)
    init = charts.initial_candidate(store, rid)
    train = points[(points.candidate_id == init) & (points.split == "train")]
    assert train.iloc[0].n == 16  # step 0 scores the initial prompt on the whole train split
    assert train.iloc[0].score == pytest.approx(
        next(s["score"] for s in store.scores(rid) if s["candidate_id"] == init and s["purpose"] == "baseline"))


def test_dry_run_estimate_bounds_a_real_run_and_follows_the_budget(env, tmp_path):
    from optimizers.estimate import dry_run
    from optimizers.llm import Budget

    store = env["store"]
    rid = run_protegi(store, env["stub"], tmp_path)
    po = small_data()
    est = dry_run("protegi", SMALL_PROTEGI, po.task, po.splits, po.initial_prompt)
    usage = store.get_run(rid)["result"]["optimization_usage"]
    assert usage["calls"] + usage["cache_hits"] <= est.calls == est.task_calls + est.optimizer_calls + est.report_calls
    assert not est.stopped_by_budget and not est.capped and est.prompt_tokens > 0
    # 40 calls: below what ProTeGi's plan fits a complete search into (42 of 50 since the bandit pulls are stratified)
    cut = dry_run("protegi", SMALL_PROTEGI, po.task, po.splits, po.initial_prompt, budget=Budget(max_calls=40))
    assert cut.calls <= 40 and cut.stopped_by_budget  # the whole run, report included
    # the page shows it
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["po_data"] = po
    at.run()
    assert any("dry run" in m.value and "calls" in m.value for m in at.markdown)


# --- diff and form helpers ----------------------------------------------------------------------------------------


def test_word_diff_markers():
    old = "Classify the sentiment of the review."
    new = "Classify the sentiment of the review carefully, minding negations."
    assert render_markers(old, new) == "Classify the sentiment of the [-review.-] {+review carefully, minding negations.+}"
    assert render_markers(old, old) == old
    assert diff_stats(old, new) == {"removed": 1, "added": 4, "distance": 5}
    assert [c.op for c in word_diff("a b c", "a x c")] == ["equal", "removed", "added", "equal"]
    # untrusted text stays text: tags are neither escaped nor interpreted, just words
    assert render_markers("<b>x</b>", "<script>y</script>") == "[-<b>x</b>-] {+<script>y</script>+}"


def test_field_kinds_and_parsing():
    from typing import Literal, Optional

    assert field_kind(Literal["a", "b"]) == ("literal", False, ["a", "b"])
    assert field_kind(Optional[int]) == ("int", True, None)  # noqa: UP045
    assert field_kind(int | None) == ("int", True, None)
    assert field_kind(bool) == ("bool", False, None)
    assert field_kind(list[str])[0] == "json"
    assert parse_field_text("", "int") is None
    assert parse_field_text("12", "int") == 12
    assert parse_field_text("0.5", "float") == 0.5
    assert parse_field_text('["a"]', "json") == ["a"]


def test_a_run_that_reached_its_budget_continues_with_a_larger_one(env, tmp_path):
    po = small_data()
    store = env["store"]
    cfg = RunConfig(optimizer="protegi", params=SMALL_PROTEGI, initial_prompt=po.initial_prompt, task=po.task,
                    data=po.data_config, split=po.split_config, optimizer_model="stub-opt",
                    budget=Budget(max_calls=20))
    rid = Runner(store).create(cfg, po.splits)
    Runner(store).execute(rid)
    assert store.get_run(rid)["status"] == "budget"
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = rid
    at.run()
    assert not at.exception
    assert at.number_input(key="opt_more_calls").value == 40
    at.number_input(key="opt_more_calls").set_value(5000)
    at.button(key="opt_continue").click().run()
    assert not at.exception
    assert store.get_run(rid)["config"]["budget"]["max_calls"] == 5000
    assert env["calls"][-1]["run_id"] == rid
    assert store.get_run(rid)["status"] == "done"
