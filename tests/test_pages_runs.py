"""Runs: the history from the store, export (JSON with the trajectory and config, candidates CSV with formulas
neutralised, never the key), delete with confirmation, resume through a worker, and the replay projection."""

from __future__ import annotations

import csv
import io
import json

import pytest
from streamlit.testing.v1 import AppTest

from optimizers.export import candidate_rows
from optimizers.result import stored_result
from tests.stub_server import StubServer
from tests.test_pages_compare import spy_downloads
from tests.test_pages_inspect import EDITED, INITIAL, ProtegiScript, make_baseline_run, make_protegi_run, make_runner
from tests.test_pages_inspect import scripted as _scripted
from ui import replay as R

SECRET = "sk-test-secret-key-123"


@pytest.fixture(scope="module")
def runs_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    db = tmp / "runs.sqlite"
    with StubServer(_scripted(ProtegiScript())) as stub:
        runner, store = make_runner(stub, db)
        ids = {"baseline": make_baseline_run(runner, tmp, initial="Say positive or negative."),
               "protegi": make_protegi_run(runner, tmp)}
    return {"db": db, "store": store, "ids": ids}


@pytest.fixture
def fresh_db(tmp_path):
    with StubServer(_scripted(lambda r: "?")) as stub:
        runner, store = make_runner(stub, tmp_path / "runs.sqlite")
        a = make_baseline_run(runner, tmp_path)
        b = make_baseline_run(runner, tmp_path, initial="Another instruction.")
    return {"db": tmp_path / "runs.sqlite", "store": store, "ids": [a, b]}


def open_page(monkeypatch, db, api_key: str | None = None, **query) -> AppTest:
    import streamlit as st

    st.cache_data.clear()
    monkeypatch.setenv("PROMPTOPT_DB", str(db))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never called: no embedded model either
    at = AppTest.from_file("../pages/5_Runs.py", default_timeout=30)
    if api_key:
        at.session_state["api_key"] = api_key
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def test_runs_lists_history_with_scores(monkeypatch, runs_db):
    store, ids = runs_db["store"], runs_db["ids"]
    at = open_page(monkeypatch, runs_db["db"])
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["run"]) == [ids["protegi"], ids["baseline"]]  # newest first
    assert list(table["optimizer"]) == ["protegi", "baseline"]
    assert list(table["status"]) == ["done", "done"]
    for rid, best in zip(table["run"], table["best test"]):
        assert best == stored_result(store.get_run(rid)).best_test
    assert table["calls"].iloc[0] == store.get_run(ids["protegi"])["result"]["calls"]
    assert at.selectbox(key="runs_pick").value == ids["protegi"]
    assert f"?run={ids['protegi']}" in [c.value for c in at.code]  # the shareable link


def test_export_json_and_csv_neutralise_formulas_and_never_hold_the_key(monkeypatch, runs_db):
    store, rid = runs_db["store"], runs_db["ids"]["protegi"]
    got = spy_downloads(monkeypatch)
    at = open_page(monkeypatch, runs_db["db"], api_key=SECRET, run=rid)
    assert not at.exception and not at.error
    js, csv_text = got["Run JSON (config + full trajectory)"], got["Candidates CSV"]
    data = json.loads(js)
    assert data["run"]["id"] == rid and data["run"]["config"]["optimizer"] == "protegi"
    assert len(data["events"]) == store.event_count(rid)
    assert [e["kind"] for e in data["events"]][0] == "run_started"
    assert SECRET not in js and SECRET not in csv_text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["candidate_id"] for r in rows] == [c["candidate_id"] for c in candidate_rows(store, rid)]
    edited = [r for r in rows if r["origin"] == "gradient_edit"]
    assert edited and all(r["text"] == "'" + EDITED for r in edited)
    assert not any(r["text"].startswith(("=", "+", "-", "@")) for r in rows)


def test_delete_needs_confirmation(monkeypatch, fresh_db):
    store, (a, b) = fresh_db["store"], fresh_db["ids"]
    at = open_page(monkeypatch, fresh_db["db"], run=a)
    assert at.button(key="runs_delete").disabled  # nothing can be deleted before the confirmation
    assert store.get_run(a) is not None
    at.checkbox(key=f"runs_sure_{a}").check().run()
    assert not at.button(key="runs_delete").disabled
    at.button(key="runs_delete").click().run()
    assert not at.exception
    assert store.get_run(a) is None and store.events(a) == [] and store.candidates(a) == []
    assert store.get_run(b) is not None
    assert any(f"Deleted run {a}" in s.value for s in at.success)
    assert list(at.dataframe[0].value["run"]) == [b]


def test_resume_spawns_a_worker_with_the_session_key(monkeypatch, fresh_db):
    import optimizers.runner as runner_mod

    store, (a, _) = fresh_db["store"], fresh_db["ids"]
    store.set_status(a, "stopped", "stopped by the user")
    calls = []

    class Proc:
        pid = 4242

    def fake_spawn(db_path, run_id, **kw):
        calls.append((db_path, run_id, kw))
        return Proc()

    monkeypatch.setattr(runner_mod, "spawn_worker", fake_spawn)
    at = open_page(monkeypatch, fresh_db["db"], api_key=SECRET, run=a)
    at.button(key="runs_resume").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [(db_path, run_id, kw)] = calls
    assert run_id == a and db_path == str(fresh_db["db"]) and kw["api_key"] == SECRET
    assert any(f"Resumed run {a}" in s.value for s in at.success)
    assert SECRET not in json.dumps(store.get_run(a), default=str)


def test_replay_state_up_to_event_k_holds_exactly_the_stored_candidates(runs_db):
    store, rid = runs_db["store"], runs_db["ids"]["protegi"]
    events = store.events(rid)
    stored = store.candidates(rid)
    for k in [s for s, _ in events]:
        st_k = R.state_at(events, k)
        assert [c["candidate_id"] for c in st_k["candidates"]] == [c["candidate_id"] for c in stored
                                                                  if c["seq"] <= k]
        assert len(st_k["scores"]) == len([s for s in store.scores(rid) if s["seq"] <= k])
        assert st_k["last"][0] == k
    bounds = R.step_boundaries(events)
    assert bounds == [s for s, ev in events if ev.kind == "step_done"] + [events[-1][0]]
    assert R.next_seq(events, 0) == bounds[0] and R.next_seq(events, events[-1][0]) is None
    fig = R.score_figure(R.state_at(events, bounds[1]))
    best_line = [t for t in fig.data if t.name == "best so far"][0]
    assert list(best_line.x) == [0, 1]


def test_replay_on_the_page_slider_and_play(monkeypatch, runs_db):
    store, rid = runs_db["store"], runs_db["ids"]["protegi"]
    events = store.events(rid)
    at = open_page(monkeypatch, runs_db["db"], run=rid)
    assert not at.exception
    slider = at.select_slider(key=f"replay_{rid}_pos")
    assert slider.value == events[0][0]
    k = [s for s, ev in events if ev.kind == "candidate_proposed"][3]  # the 4th candidate's event
    slider.set_value(k).run()
    assert not at.exception
    shown = list(at.dataframe[1].value["candidate_id"])
    assert shown == [c["candidate_id"] for c in store.candidates(rid) if c["seq"] <= k] and len(shown) == 4
    # play: one tick advances to the next step boundary (no model call: the stub is not even running)
    at.button(key=f"replay_{rid}_play").click().run()
    assert not at.exception
    nxt = R.next_seq(events, k)
    assert at.select_slider(key=f"replay_{rid}_pos").value == nxt
    assert events[[s for s, _ in events].index(nxt)][1].kind == "step_done"
    assert f"Event #{nxt}: step_done" in " ".join(c.value for c in at.caption)
    assert INITIAL in list(at.dataframe[1].value["text"])
