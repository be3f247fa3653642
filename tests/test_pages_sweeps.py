"""Sweeps page: a finished sweep (run against the scripted stub) renders its cells, leaderboard, knob effects and the
same downloads as `sweep-report`; `?sweep=<id>` opens it; a bad sweep names its line and starts nothing; the form
writes a sweep that checks and starts; the sweep file a start writes holds no key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from optimizers.leaderboard import leaderboard
from optimizers.store import Store
from optimizers.sweep import check, parse, run_sweep, sweep_id
from tests.conftest import OPT_MODEL, TASK_MODEL
from tests.stub_server import StubServer
from tests.test_pages_compare import spy_downloads
from tests.test_sweep import responder, wait_for_cells

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-sweep-secret-key-4711"

GRID = """\
name: page-two-by-two
data: [sentiment]
optimizers:
  demos: {{k: 2, trials: 2}}
  opro: {{num_generated_instructions: 2, num_search_steps: 1}}
seeds: [0, 1]
task_models: [{task}]
optimizer_models: [{opt}]
base_url: {url}
split: {{max_train: 8, max_dev: 6, max_test: 6}}
budget: {{max_calls: 60}}
max_total: {{max_calls: 400}}
parallel: 2
"""


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp, StubServer(responder) as stub:
        mp.setenv("PROMPTOPT_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("OPENAI_API_KEY", "test-key")
        spec, lines = parse(GRID.format(task=TASK_MODEL, opt=OPT_MODEL, url=stub.base_url))
        store = Store(tmp / "runs.sqlite")
        sid = run_sweep(store, spec, check(spec, lines))
    return {"db": tmp / "runs.sqlite", "store": store, "sid": sid}


def open_page(monkeypatch, db: Path, api_key: str | None = None, **query) -> AppTest:
    import streamlit as st

    st.cache_data.clear()
    monkeypatch.setenv("PROMPTOPT_DB", str(db))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never called by the page
    at = AppTest.from_file("../pages/6_Sweeps.py", default_timeout=60)
    if api_key:
        at.session_state["api_key"] = api_key
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


@pytest.fixture
def spawned(monkeypatch):
    """spawn_sweep_worker replaced by a recorder: what would have started, and nothing starts."""
    calls = []

    def fake(db_path, sweep_file, **kw):
        calls.append({"db": db_path, "file": sweep_file, **kw})

        class Proc:
            pid = 4242

        return Proc()

    monkeypatch.setattr("optimizers.runner.spawn_sweep_worker", fake)
    return calls


def test_a_finished_sweep_shows_cells_leaderboard_knobs_and_downloads(monkeypatch, finished_sweep):
    store, sid = finished_sweep["store"], finished_sweep["sid"]
    got = spy_downloads(monkeypatch)
    at = open_page(monkeypatch, finished_sweep["db"])
    assert not at.exception and not at.error
    assert at.selectbox(key="sw_pick_None").value == sid  # the only sweep, opened at once
    assert at.query_params["sweep"] == [sid] or at.query_params["sweep"] == sid
    cells = at.dataframe[0].value
    assert len(cells) == 4 and set(cells["optimizer"]) == {"demos", "opro"} and set(cells["seed"]) == {0, 1}
    assert set(cells["status"]) <= {"done", "budget"} and cells["test"].notna().all()
    assert (cells["calls"] > 0).all() and cells["best so far"].notna().all()
    assert [r for _, r in store.sweep_cells(sid)] == list(cells["run"])
    assert any("4 of 4 runs finished" in (p.proto.text or "") for p in at.get("progress"))
    board = at.dataframe[1].value
    rows = leaderboard(store, sid)
    assert len(board) == 2 and list(board["configuration"]) == [r.config for r in rows]
    assert list(board["seeds"]) == ["2/2", "2/2"]
    assert list(board["test mean"]) == pytest.approx([r.test_mean for r in rows])
    knobs = at.dataframe[2].value
    assert list(knobs["knob"]) == ["optimizer", "optimizer"] and set(knobs["value"]) == {"demos", "opro"}
    assert list(knobs["runs"]) == [2, 2]
    assert len(at.get("plotly_chart")) == 2  # the leaderboard's bars and the knob plot
    # the downloads are what `sweep-report --format csv / json` prints
    env = {**os.environ, "PROMPTOPT_DB": str(finished_sweep["db"])}
    for fmt, label in (("csv", "Leaderboard CSV"), ("json", "Leaderboard + knobs JSON")):
        r = subprocess.run([sys.executable, "-m", "optimizers", "sweep-report", sid, "--format", fmt], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.replace("\r\n", "\n").strip() == got[label].replace("\r\n", "\n").strip()
    assert [e["knob"] for e in json.loads(got["Leaderboard + knobs JSON"])["knobs"]] == ["optimizer", "optimizer"]
    # a run of the grid opens on Optimize / Inspect (AppTest runs the page alone: the links degrade to captions)
    assert at.selectbox(key="sw_open_run").value in set(cells["run"])
    assert any("Inspect step by step" in c.value and "run=" in c.value for c in at.caption)


def test_a_share_link_opens_its_sweep_and_a_wrong_one_says_so(monkeypatch, finished_sweep):
    sid = finished_sweep["sid"]
    at = open_page(monkeypatch, finished_sweep["db"], sweep=sid)
    assert not at.exception and not at.error
    assert at.selectbox(key=f"sw_pick_{sid}").value == sid
    assert f"?sweep={sid}" in [c.value for c in at.code]
    assert not at.expander[0].proto.expanded  # the launcher folds away when a sweep is opened
    at = open_page(monkeypatch, finished_sweep["db"], sweep="s000000000")
    assert [e.value for e in at.error] == ["The link names a sweep that is not in this store."]
    assert at.selectbox(key="sw_pick_None").value == sid


BAD = "data: [support_triage]\noptimizers:\n  demos: {k: [4, 8]}\n  sgd: {}\nbudget: {max_calls: 60}\n"


def test_a_bad_sweep_names_its_line_and_starts_nothing(monkeypatch, tmp_path, spawned):
    at = open_page(monkeypatch, tmp_path / "runs.sqlite")
    assert not at.exception and not at.error
    assert any("No sweeps yet" in i.value for i in at.info)
    at.text_area(key="sw_text").set_value(BAD).run()
    at.button(key="sw_check").click().run()
    assert [e.value for e in at.error] == ["the sweep, line 4: unknown optimizer 'sgd'; choose from "
                                           + at.error[0].value.split("choose from ")[1]]
    at.button(key="sw_start").click().run()
    assert not at.exception and len(at.error) == 1 and "line 4: unknown optimizer 'sgd'" in at.error[0].value
    assert spawned == [] and Store(tmp_path / "runs.sqlite").list_sweeps() == []
    assert not (tmp_path / "sweeps").exists()  # no sweep file either
    at.text_area(key="sw_text").set_value("data: [support_triage\n").run()
    at.button(key="sw_check").click().run()
    assert "line 2: not valid YAML or JSON" in at.error[0].value and spawned == []


def test_the_example_checks_and_the_form_writes_a_sweep_that_starts(monkeypatch, tmp_path, spawned):
    at = open_page(monkeypatch, tmp_path / "runs.sqlite", api_key=SECRET)
    example = at.text_area(key="sw_text").value
    spec, lines = parse(example)
    assert [c.optimizer for c in check(spec, lines)].count("demos") == 4  # k 4 and 8, two seeds
    assert spec.base_url == "http://127.0.0.1:9/v1"  # where the sidebar points
    at.button(key="sw_check").click().run()
    assert not at.error and at.success[0].value.startswith("6 runs (3 configurations x 2 seeds)")
    # the form: one data set, two optimizers with their defaults, three seeds
    at.selectbox(key="sw_form_data").set_value("sentiment")
    at.multiselect(key="sw_form_opts").set_value(["baseline", "opro"])
    at.number_input(key="sw_form_seeds").set_value(3)
    at.number_input(key="sw_form_calls").set_value(100)
    at.number_input(key="sw_form_total").set_value(600)
    at.number_input(key="sw_form_parallel").set_value(3)
    at.button[[b.label for b in at.button].index("Write the sweep")].click().run()
    text = at.text_area(key="sw_text").value
    assert text != example
    raw = yaml.safe_load(text)
    assert raw["data"] == ["sentiment"] and raw["optimizers"] == {"baseline": {}, "opro": {}}
    assert raw["seeds"] == [0, 1, 2] and raw["budget"] == {"max_calls": 100} and raw["max_total"] == {"max_calls": 600}
    assert raw["parallel"] == 3
    at.button(key="sw_check").click().run()
    assert not at.error and at.success[0].value.startswith("6 runs (2 configurations x 3 seeds)")
    at.button(key="sw_start").click().run()
    assert not at.exception and not at.error
    spec, _ = parse(text)
    sid = sweep_id(spec)
    assert len(spawned) == 1 and spawned[0]["api_key"] == SECRET  # the key goes to the worker's environment only
    assert Path(spawned[0]["file"]).read_text() == text and SECRET not in text
    assert at.query_params["sweep"] in (sid, [sid])
    assert any(f"Starting sweep {sid}" in i.value for i in at.info)  # until the worker stores it


def test_a_sweep_started_for_real_runs_in_a_worker_without_writing_the_key(monkeypatch, tmp_path):
    with StubServer(responder, api_key=SECRET) as stub:  # refuses any other key
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        at = open_page(monkeypatch, tmp_path / "runs.sqlite", api_key=SECRET)
        text = GRID.format(task=TASK_MODEL, opt=OPT_MODEL, url=stub.base_url).replace("seeds: [0, 1]", "seeds: [0]")
        at.text_area(key="sw_text").set_value(text).run()
        at.button(key="sw_start").click().run()
        assert not at.exception and not at.error
        spec, _ = parse(text)
        sid = sweep_id(spec)
        store = Store(tmp_path / "runs.sqlite")
        assert wait_for_cells(store, sid, 120) == ["done", "done"], (tmp_path / "sweeps" / f"{sid}.log").read_text()
        at = open_page(monkeypatch, tmp_path / "runs.sqlite", api_key=SECRET, sweep=sid)
        assert not at.exception and len(at.dataframe[1].value) == 2
    for p in tmp_path.rglob("*"):  # the store, its WAL, the cache, the sweep file and its log
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_a_sweep_whose_worker_is_gone_stops_polling_and_continues_with_the_same_spec(monkeypatch, tmp_path, spawned):
    import sqlite3

    from ui.sweeps import state

    spec, lines = parse(GRID.format(task=TASK_MODEL, opt=OPT_MODEL, url="http://127.0.0.1:9/v1"))
    cells = check(spec, lines)
    sid = sweep_id(spec)
    db = tmp_path / "runs.sqlite"
    Store(db).create_sweep(sid, spec.name, spec.model_dump(mode="json"), [c.key for c in cells])
    rows = [{"run": None, "status": "not started", "updated": None}] * 4
    assert state(rows, since=1000.0, now=1010.0) == "running"  # its worker is still creating the runs
    assert state(rows, since=1000.0, now=2000.0) == "stalled"
    assert state([{"run": "r", "status": "running", "updated": 0}], 0, now=1e9) == "running"
    assert state([{"run": "r", "status": "failed", "updated": 0}], 0, now=1e9) == "ended"
    with sqlite3.connect(db) as c:  # the worker died long ago, before it made a run
        c.execute("UPDATE sweeps SET created = created - 1000")
    at = open_page(monkeypatch, db, sweep=sid)
    assert not at.exception and not at.error
    assert any("written nothing for a while" in w.value for w in at.warning)
    assert any("0 of 4 runs finished" in (p.proto.text or "") for p in at.get("progress"))
    at.button(key="sw_continue").click().run()
    assert not at.exception and not at.error
    assert len(spawned) == 1
    assert "sw_continue" not in [b.key for b in at.button]  # polls for the new worker: no second one to start
    again, _ = parse(Path(spawned[0]["file"]).read_text())
    assert sweep_id(again) == sid  # the same sweep: the worker continues it


def test_cells_on_a_ray_cluster_from_the_page_a_dead_head_is_one_message(monkeypatch, tmp_path, spawned):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    at = open_page(monkeypatch, tmp_path / "runs.sqlite", api_key=SECRET)
    at.radio(key="sw_executor").set_value("on a Ray cluster").run()
    at.text_input(key="sw_ray_address").set_value("127.0.0.1:9").run()
    at.button(key="sw_start").click().run()
    assert not at.exception and "cannot reach the Ray head at 127.0.0.1:9" in at.error[0].value
    assert spawned == [] and Store(tmp_path / "runs.sqlite").list_sweeps() == []
    at.text_input(key="sw_ray_address").set_value("").run()  # none: the worker starts a local cluster
    at.button(key="sw_start").click().run()
    assert not at.exception and not at.error
    assert len(spawned) == 1 and spawned[0]["executor"] == "ray" and spawned[0]["address"] is None
    at.radio(key="sw_executor").set_value("on this machine").run()
    at.button(key="sw_start").click().run()
    assert len(spawned) == 2 and spawned[1]["executor"] == "local"


def test_on_the_embedded_model_a_sweep_runs_one_cell_at_a_time_by_default_and_the_check_says_why():
    from ui.sweeps import EXAMPLE, grid_summary, runs_at_once, sweep_yaml

    assert runs_at_once({}) == 1 and runs_at_once({"base_url": "http://127.0.0.1:9/v1"}) == EXAMPLE["parallel"] > 1
    embedded = sweep_yaml(**{**EXAMPLE, "parallel": 2})
    assert "evict each other's cached prompt prefix" in grid_summary(embedded)
    assert "evict" not in grid_summary(sweep_yaml(**{**EXAMPLE, "parallel": 1}))
    on_endpoint = sweep_yaml(**{**EXAMPLE, "parallel": 2}, endpoints={"base_url": "http://127.0.0.1:9/v1"})
    assert "evict" not in grid_summary(on_endpoint)
