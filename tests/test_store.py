"""The run store's contract, the same tests on SQLite and on a real PostgreSQL server: runs, examples, events and
their projections, sweeps; several processes writing one store at once; a down server or a URL with a password is
one clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizers.data import Example, Splits
from optimizers.events import CandidateProposed, CandidateScored, StepDone
from optimizers.status import RunStatus
from optimizers.store import Store, StoreError

ROOT = Path(__file__).resolve().parent.parent


def _splits() -> Splits:
    ex = [Example(str(i), {"text": f"t{i}"}, "a" if i % 2 else "b") for i in range(1, 13)]
    return Splits(ex[:6], ex[6:9], ex[9:])


def test_runs_round_trip(store_location):
    s = Store(store_location)
    rid = s.create_run({"optimizer": "gpo", "budget": {"max_calls": 10}}, optimizer="gpo", seed=3,
                       data_name="toy", splits=_splits())
    run = s.get_run(rid)
    assert run["status"] is RunStatus.CREATED and run["seed"] == 3 and run["config"]["optimizer"] == "gpo"
    assert s.find_run(rid[:5])["id"] == rid and [r["id"] for r in s.list_runs()] == [rid]
    s.set_status(rid, RunStatus.RUNNING, worker_pid=123)
    s.heartbeat(rid, {"calls": 4, "at": 1.5})
    run = s.get_run(rid)
    assert run["status"] is RunStatus.RUNNING and run["worker_pid"] == 123 and run["live"] == {"calls": 4, "at": 1.5}
    assert run["heartbeat"] > 1.7e9  # a full-precision timestamp (not a 4-byte float)
    s.set_budget(rid, {"max_calls": 20})
    assert s.get_run(rid)["config"]["budget"] == {"max_calls": 20}
    s.request_stop(rid)
    assert s.stop_requested(rid)
    s.set_result(rid, {"best_prompt": "p", "scores": {}})
    s.set_status(rid, RunStatus.DONE, "finished")
    assert s.get_run(rid)["result"]["best_prompt"] == "p" and s.get_run(rid)["reason"] == "finished"
    sp = s.load_splits(rid)
    assert sp.sizes() == {"train": 6, "dev": 3, "test": 3} and sp.train[0].fields == {"text": "t1"}
    with pytest.raises(ValueError):
        s.set_status(rid, RunStatus.CRASHED)


def test_events_and_their_projections(store_location):
    s = Store(store_location)
    rid = s.create_run({}, optimizer="x", seed=0, data_name=None)
    assert s.append_event(rid, CandidateProposed(step=0, candidate_id="c1", text="Do it.", origin="initial"),
                          stream_index=0) == 1
    s.append_event(rid, CandidateProposed(step=0, candidate_id="c1", text="Do it.", origin="initial"))  # once
    preds = [{"example_id": e, "raw": "a", "pred": "a", "gold": g, "correct": g == "a", "cached": False,
              "prompt_tokens": 3, "completion_tokens": 1} for e, g in (("10", "a"), ("2", "b"), ("x", "a"))]
    sc = CandidateScored(step=1, candidate_id="c1", split="dev", n=3, score=2 / 3, example_ids=["10", "2", "x"],
                         correct=[True, False, True], purpose="selection")
    s.append_event(rid, sc, preds, stream_index=1)
    s.append_event(rid, sc, [{**preds[1], "correct": True, "pred": "b"}], stream_index=2)  # a prediction replaced
    s.append_event(rid, StepDone(step=1, best_id="c1", best_score=2 / 3, best_split="dev"))
    assert s.event_count(rid) == 5 and [q for q, _ in s.events(rid)] == [1, 2, 3, 4, 5]
    assert [e.kind for _, e in s.events(rid, after=2, kinds=["candidate_scored"])] == ["candidate_scored"] * 2
    assert len(s.events(rid, limit=2)) == 2
    assert s.stream_kinds(rid) == ["candidate_proposed", "candidate_scored", "candidate_scored"]
    assert s.last_event(rid, "step_done").best_score == pytest.approx(2 / 3)
    assert [c["candidate_id"] for c in s.candidates(rid)] == ["c1"] and s.candidates(rid)[0]["parents"] == []
    assert [round(x["score"], 3) for x in s.scores(rid)] == [0.667, 0.667]
    got = s.predictions(rid, "c1", "dev")
    assert [p["example_id"] for p in got] == ["x", "2", "10"]  # numeric ids in number order (others count as 0)
    assert got[1]["pred"] == "b" and got[1]["correct"] == 1
    assert len(s.predictions(rid, limit=1, offset=1)) == 1
    s.delete_run(rid)
    assert s.get_run(rid) is None and s.event_count(rid) == 0 and s.predictions(rid) == []


def test_sweeps_keep_which_run_is_which_cell(store_location):
    s = Store(store_location)
    s.create_sweep("s1", "grid", {"name": "grid"}, ["a", "b"])
    s.create_sweep("s1", "grid", {"name": "grid"}, ["a", "b"])  # the same file again: nothing changes
    assert s.sweep_cells("s1") == [("a", None), ("b", None)]
    rid = s.create_run({}, optimizer="x", seed=0, data_name=None)
    s.set_sweep_run("s1", "a", rid)
    assert s.sweep_run("s1", "a") == rid and s.get_sweep("s1")["spec"] == {"name": "grid"}
    assert [(x["id"], x["cells"]) for x in s.list_sweeps()] == [("s1", 2)]
    s.delete_run(rid)  # the sweep makes that cell again
    assert s.sweep_run("s1", "a") is None


WRITER = """
import sys
from optimizers.events import CandidateProposed
from optimizers.store import Store
s = Store(sys.argv[1])
shared = sys.argv[2]
own = s.create_run({}, optimizer="x", seed=0, data_name=None)
for i in range(25):
    s.append_event(own, CandidateProposed(step=i, candidate_id=f"c{i}", text=f"p{i}", origin="x"))
    s.append_event(shared, CandidateProposed(step=i, candidate_id=f"{own}-{i}", text="q", origin="x"))
    s.heartbeat(shared, {"calls": i})
print(own)
"""


def test_several_processes_write_one_store_at_once(store_location):
    s = Store(store_location)
    shared = s.create_run({}, optimizer="x", seed=0, data_name=None)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store_location, shared], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    owns = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        owns.append(out.strip())
    for own in owns:
        assert [q for q, _ in s.events(own)] == list(range(1, 26))
    assert [q for q, _ in s.events(shared)] == list(range(1, 101))  # no seq taken twice, none lost
    assert len(s.candidates(shared)) == 100


def test_a_down_server_or_a_password_in_the_url_is_one_clear_message(pg_server):
    with pytest.raises(StoreError, match="cannot reach the PostgreSQL store postgresql://nobody@127.0.0.1:9/x"):
        Store("postgresql://nobody@127.0.0.1:9/x")
    with pytest.raises(StoreError, match="PGPASSWORD") as e:
        Store("postgresql://u:s3cret@127.0.0.1:9/x")
    assert "s3cret" not in str(e.value)
    env = {**os.environ, "PROMPTOPT_DB": "postgresql://nobody@127.0.0.1:9/x"}
    r = subprocess.run([sys.executable, "-m", "optimizers", "runs"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot reach the PostgreSQL store")
    assert len(r.stderr.strip().splitlines()) == 1
