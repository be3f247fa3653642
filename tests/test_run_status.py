"""One run status (optimizers/status.py) for the store, the engine and the pages: a running run whose worker is gone
or silent is crashed on every page, both pages offer Resume for the same statuses, and a worker that scores for a
long time without an event still beats."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from optimizers.runner import Runner
from optimizers.status import STALE_S, RunStatus, observed_status
from optimizers.store import Store
from tests.conftest import scripted
from tests.stub_server import StubServer
from tests.test_pages_inspect import make_runner, run_config, toy_splits


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stored_run(store: Store, tmp_path, status: str, *, pid: int | None = None, silent_for: float = 0.0) -> str:
    rid = Runner(store).create(run_config(tmp_path), toy_splits())
    store.set_status(rid, status, worker_pid=pid)
    if silent_for:
        with store._tx() as c:
            c.execute("UPDATE runs SET heartbeat=?, updated=? WHERE id=?",
                      (time.time() - silent_for, time.time() - silent_for, rid))
    return rid


def test_observed_status_judges_a_running_run_by_its_worker_and_its_heartbeat():
    now = time.time()
    alive = {"status": "running", "heartbeat": now, "updated": now, "worker_pid": os.getpid()}
    assert observed_status(alive, now) is RunStatus.RUNNING
    assert observed_status({**alive, "worker_pid": None}, now) is RunStatus.RUNNING
    assert observed_status({**alive, "worker_pid": dead_pid()}, now) is RunStatus.CRASHED
    assert observed_status({**alive, "heartbeat": now - STALE_S - 1}, now) is RunStatus.CRASHED
    assert observed_status({**alive, "status": "paused", "worker_pid": dead_pid()}, now) is RunStatus.PAUSED
    assert {s for s in RunStatus if s.resumable} == {"stopped", "paused", "failed", "crashed"}
    assert {s for s in RunStatus if s.ok} == {"done", "budget", "stopped"}


def test_the_store_speaks_run_status_and_never_stores_crashed(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    rid = stored_run(store, tmp_path, "paused")
    assert store.get_run(rid)["status"] is RunStatus.PAUSED
    with pytest.raises(ValueError):
        store.set_status(rid, RunStatus.CRASHED)
    with pytest.raises(ValueError):
        store.set_status(rid, "exploded")


def test_a_long_silent_step_is_not_judged_crashed(tmp_path, monkeypatch):
    """Every request takes 0.15 s and the step scores 8 dev examples before its next event: without the worker's
    heartbeat the run would look silent for longer than the (here shortened) stale limit."""
    monkeypatch.setattr("optimizers.runner.HEARTBEAT_S", 0.05)
    monkeypatch.setattr("optimizers.status.STALE_S", 0.4)
    with StubServer(scripted(lambda r: "<START>Judge the sentiment.<END>"), latency=0.15) as stub:
        runner, store = make_runner(stub, tmp_path / "runs.sqlite")
        rid = runner.create(run_config(tmp_path), toy_splits())
        seen: set[RunStatus] = set()
        live_before_first_step: list[int] = []
        done = threading.Event()

        def watch() -> None:
            reader = Store(store.path)
            while not done.is_set():
                run = reader.get_run(rid)
                seen.add(observed_status(run))
                if run.get("live") and not reader.last_event(rid, "step_done"):
                    live_before_first_step.append(run["live"]["calls"])
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            assert runner.execute(rid).status == "done"
        finally:
            done.set()
            watcher.join()
    assert RunStatus.RUNNING in seen and RunStatus.CRASHED not in seen
    # the beats carry the spend so far: progress shows while the first step still scores, and it grows
    assert live_before_first_step and max(live_before_first_step) > min(live_before_first_step) >= 0


# --- the pages agree ------------------------------------------------------------------------------------------------


@pytest.fixture
def pages(tmp_path, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never called

    def open_page(page: str, rid: str) -> AppTest:
        st.cache_data.clear()
        at = AppTest.from_file(f"../pages/{page}", default_timeout=30)
        at.query_params["run"] = rid
        return at.run()

    return Store(tmp_path / "runs.sqlite"), open_page


def has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)


@pytest.mark.parametrize("status,kw", [
    ("stopped", {}), ("paused", {}), ("failed", {}), ("budget", {}), ("done", {}),
    ("running", {"pid": "dead"}), ("running", {"silent_for": STALE_S + 60}),
])
def test_optimize_and_runs_pages_offer_resume_for_the_same_statuses(pages, tmp_path, status, kw):
    store, open_page = pages
    pid = dead_pid() if kw.get("pid") == "dead" else os.getpid()
    rid = stored_run(store, tmp_path, status, pid=pid, silent_for=kw.get("silent_for", 0.0))
    expected = observed_status(store.get_run(rid))
    optimize, runs = open_page("2_Optimize.py", rid), open_page("5_Runs.py", rid)
    assert not optimize.exception and not runs.exception
    assert has_button(optimize, "opt_resume") == has_button(runs, "runs_resume") == expected.resumable
    assert has_button(optimize, "opt_continue") == (expected is RunStatus.BUDGET)


def test_a_stale_heartbeat_is_a_crash_on_both_pages(pages, tmp_path):
    """The worker's process still exists (this one), but it has not beaten for longer than STALE_S: it hangs."""
    store, open_page = pages
    rid = stored_run(store, tmp_path, "running", pid=os.getpid(), silent_for=STALE_S + 60)
    optimize, runs = open_page("2_Optimize.py", rid), open_page("5_Runs.py", rid)
    assert any("crashed" in e.value for e in optimize.error)
    assert not has_button(optimize, "opt_stop")
    assert runs.dataframe[0].value["status"].iloc[0] == "crashed"
    assert runs.metric[0].value == "crashed"
