"""Crash and resume: a worker process killed with SIGKILL at random points leaves a consistent store, and resuming
finishes the run with exactly the uninterrupted run's result, paying again only for requests that were in flight.
Also: two runs at once in one store do not mix their data."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from optimizers.config import DataConfig, RunConfig
from optimizers.methods import protegi  # noqa: F401  (registers)
from optimizers.runner import Runner
from optimizers.store import Store
from tests.conftest import TOY_TASK, scripted
from tests.stub_server import StubServer
from tests.test_faults import PARAMS, opt_reply
from tests.test_runner import splits

CONCURRENCY = 2


def cfg(stub: StubServer, tmp_path, seed: int = 5) -> RunConfig:
    return RunConfig(optimizer="protegi", params=PARAMS, initial_prompt="Classify the text.", task=TOY_TASK,
                     data=DataConfig(name="toy", input_cols=["text"], label_col="label"), seed=seed,
                     base_url=stub.base_url, task_model="stub-task", optimizer_model="stub-opt",
                     max_concurrency=CONCURRENCY, cache_dir=str(tmp_path / "cache"))


def worker(db, run_id: str, stub: StubServer) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": "k", "PROMPTOPT_AUTO_RESUME_S": "0"}
    return subprocess.Popen([sys.executable, "-m", "optimizers", "worker", run_id, "--db", str(db)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def outcome(store: Store, run_id: str):
    steps = [(e.step, e.best_id, tuple(e.beam)) for _, e in store.events(run_id, kinds=["step_done"])]
    return steps, [c["text"] for c in store.candidates(run_id)], store.get_run(run_id)["result"]["best_prompt"]


def consistent(db) -> None:
    if not str(db).startswith("postgresql://"):
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
    store = Store(db)
    try:
        for r in store.list_runs():
            oi = [row[0] for row in store._conn().execute(
                "SELECT oi FROM events WHERE run_id=? AND oi IS NOT NULL ORDER BY seq", (r["id"],)).fetchall()]
            assert oi == list(range(len(oi))), "the optimizer's event stream has a gap or a repeat"
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_result(tmp_path, store_location):
    """On SQLite and on PostgreSQL (workers on other machines write there)."""
    with StubServer(scripted(opt_reply), latency=0.01) as ref:
        store = Store(tmp_path / "ref.sqlite")
        rid = Runner(store).create(cfg(ref, tmp_path / "ref"), splits())
        p = worker(store.path, rid, ref)
        assert p.wait(120) == 0
        expected = outcome(store, rid)
        needed = len(ref.chat_requests())
        total_events = store.event_count(rid)
    assert store.get_run(rid)["status"] == "done"

    rng = random.Random(1)
    kills = 0
    with StubServer(scripted(opt_reply), latency=0.01) as stub:
        db = store_location
        store = Store(db)
        rid = Runner(store).create(cfg(stub, tmp_path), splits())
        for target in sorted(rng.sample(range(5, total_events - 5), 3)):
            p = worker(db, rid, stub)
            while store.event_count(rid) < target and p.poll() is None:
                time.sleep(0.005)
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
            consistent(db)
            assert store.get_run(rid)["status"] == "running"  # what a crash leaves; resume takes it from here
        p = worker(db, rid, stub)
        assert p.wait(120) == 0
        consistent(db)
        assert store.get_run(rid)["status"] == "done"
        assert outcome(store, rid) == expected
        paid = len(stub.chat_requests())
        # only requests in flight at a kill are paid again (at most the concurrency limit per kill)
        assert needed <= paid <= needed + kills * CONCURRENCY
        assert len(store.events(rid, kinds=["run_started"])) == 1 + kills  # one per (re)start, the first streamed


def test_two_runs_at_once_do_not_mix(tmp_path):
    with StubServer(scripted(opt_reply)) as stub:
        db = tmp_path / "runs.sqlite"
        store = Store(db)
        runner = Runner(store)
        a = runner.create(cfg(stub, tmp_path / "a", seed=1), splits())
        b = runner.create(cfg(stub, tmp_path / "b", seed=2), splits())
        results = {}
        threads = [threading.Thread(target=lambda r=r: results.__setitem__(r, Runner(Store(db)).execute(r)))
                   for r in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results[a].status == results[b].status == "done"
        consistent(db)
        for rid in (a, b):
            other = b if rid == a else a
            cands = {c["candidate_id"] for c in store.candidates(rid)}
            for _, ev in store.events(rid, kinds=["candidate_scored", "step_done"]):
                assert ev.kind != "step_done" or ev.best_id in cands
                assert ev.kind != "candidate_scored" or ev.candidate_id in cands
            assert store.get_run(rid)["result"]["run_id"] == rid and store.get_run(other)["result"]["run_id"] == other
            assert store.get_run(rid)["result"]["seed"] == (1 if rid == a else 2)


def test_killing_the_app_does_not_stop_its_run(tmp_path):
    """The dashboard starts workers with spawn_worker (own session): SIGKILL of the app process leaves the run going."""
    with StubServer(scripted(opt_reply), latency=0.01) as stub:
        db = tmp_path / "runs.sqlite"
        store = Store(db)
        rid = Runner(store).create(cfg(stub, tmp_path), splits())
        app = subprocess.Popen([sys.executable, "-c", (
            "import sys, time\n"
            "from optimizers.runner import spawn_worker\n"
            "p = spawn_worker(sys.argv[1], sys.argv[2], api_key='k')\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n"), str(db), rid], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PROMPTOPT_AUTO_RESUME_S": "0"})
        worker_pid = int(app.stdout.readline())
        while store.event_count(rid) < 5:
            time.sleep(0.01)
        os.kill(app.pid, signal.SIGKILL)  # the app dies mid-run
        app.wait()
        deadline = time.time() + 120
        while store.get_run(rid)["status"] not in ("done", "failed", "paused") and time.time() < deadline:
            time.sleep(0.1)
        assert store.get_run(rid)["status"] == "done"
        try:
            os.waitpid(worker_pid, 0)
        except ChildProcessError:
            pass
        consistent(db)
