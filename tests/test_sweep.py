"""Sweeps against the scripted stub (real HTTP): a bad file gets one message naming its line before any call; a grid
runs as ordinary stored runs with a leaderboard; running the file again pays nothing; a killed CLI sweep continues
where it stopped without paying twice; one concurrency limit per endpoint holds across the runs at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from optimizers.leaderboard import knob_effects, leaderboard, markdown
from optimizers.store import Store
from optimizers.sweep import SweepError, check, expand, parse, run_sweep, sweep_id
from tests.conftest import OPT_MODEL, TASK_MODEL
from tests.stub_server import StubServer

ROOT = Path(__file__).resolve().parent.parent

GRID = """\
name: two-by-two
data: [sentiment]
optimizers:
  demos: {{k: [2, 4], trials: 2}}
  opro: {{num_generated_instructions: 2, num_search_steps: 1}}
seeds: [0, 1]
task_models: [{task}]
optimizer_models: [{opt}]
base_url: {url}
split: {{max_train: 8, max_dev: 6, max_test: 6}}
budget: {{max_calls: 60}}
max_total: {{max_calls: 400}}
parallel: 2
concurrency: {{{url}: {conc}}}
"""


def wait_for_cells(store, sid: str, timeout: float) -> list[str]:
    """The statuses of a sweep's runs once every one has ended (or the timeout passed): for sweeps a worker runs."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        cells = store.sweep_cells(sid) if store.get_sweep(sid) else []
        if cells and all(rid and store.get_run(rid)["status"] in ("done", "budget", "failed") for _, rid in cells):
            break
        time.sleep(0.5)
    return [store.get_run(rid)["status"] if rid else None for _, rid in store.sweep_cells(sid)]


def task_reply(req) -> str:
    text = req["messages"][-1]["content"].lower()
    return "positive" if any(w in text for w in ("loved", "great", "wonderful", "delight", "superb")) else "negative"


def responder(req):
    if req.get("model") == TASK_MODEL:
        return task_reply(req)
    n = sum(1 for _ in req["messages"])
    return f"<INS>Decide whether the review is positive or negative, variant {n}.</INS>"


def grid(stub: StubServer, conc: int = 2) -> str:
    return GRID.format(task=TASK_MODEL, opt=OPT_MODEL, url=stub.base_url, conc=conc)


# --- bad files: one clear message naming the line, before any call -------------------------------------------------
BAD = [
    ("optimizers:\n  sgd: {}\n", 2, "unknown optimizer 'sgd'"),
    ("optimizers:\n  demos:\n    kk: [1, 2]\n", 3, "demos has no knob 'kk'"),
    ("optimizers:\n  demos:\n    k:\n      - 2\n      - many\n", 5, "demos.k = 'many'"),
    ("optimizers:\n  demos: {k: []}\n", 2, "empty list"),
    ("optimizers:\n  demos: {k: [2, 4]}\nseeds: [0, 1, 2]\nmax_total:\n  max_calls: 300\n", 5,
     "6 runs x 60 (calls per run) = 360 is over the sweep's cap of 300"),
]


@pytest.mark.parametrize("body, line, words", BAD)
def test_a_bad_sweep_file_gets_one_message_naming_its_line(body, line, words):
    with StubServer(responder) as stub:
        text = f"data: [sentiment]\nbase_url: {stub.base_url}\nbudget: {{max_calls: 60}}\n" + body
        line += 3  # the body starts on line 4
        with pytest.raises(SweepError) as e:
            spec, lines = parse(text, "grid.yaml")
            check(spec, lines, "grid.yaml")
        msg = str(e.value)
        assert f"grid.yaml, line {line}:" in msg and words in msg, msg
        assert "\n" not in msg
        assert stub.chat_requests() == []


def test_unknown_settings_and_broken_yaml_name_their_line():
    with pytest.raises(SweepError, match=r"line 3: seed: unknown setting"):
        parse("data: [sentiment]\noptimizers: {demos: {}}\nseed: 3\nbudget: {max_calls: 5}\n", "f")
    with pytest.raises(SweepError, match=r"line 2: not valid YAML"):
        parse("data: [sentiment\noptimizers: {demos: {}}\n", "f")
    with pytest.raises(SweepError, match="budget: required"):
        parse("data: [sentiment]\noptimizers: {demos: {}}\n", "f")
    spec, lines = parse("data: [nope]\noptimizers: {demos: {}}\nbudget: {max_calls: 5}\n", "f")
    with pytest.raises(SweepError, match="line 1: data: unknown bundled set 'nope'"):
        check(spec, lines, "f")
    # a JSON file is read the same way
    spec, lines = parse(json.dumps({"data": ["sentiment"], "optimizers": {"demos": {"k": [2, 3]}},
                                    "seeds": [0, 1], "budget": {"max_calls": 10}}), "f.json")
    assert len(check(spec, lines)) == 4


def test_the_grid_is_the_product_of_every_axis():
    spec, lines = parse("data: [sentiment, bbh_navigate]\noptimizers:\n  demos: {k: [2, 4], trials: [1, 2, 3]}\n"
                        "  baseline: {}\nseeds: [0, 1]\ntask_models: [a, b]\nbudget: {max_calls: 10}\n")
    cells = check(spec, lines)
    assert len(cells) == 2 * (2 * 3 + 1) * 2 * 2
    assert len({c.key for c in cells}) == len(cells)
    assert {c.config_key for c in cells if c.seed == 0} == {c.config_key for c in cells}


# --- running ---------------------------------------------------------------------------------------------------
def test_a_sweep_runs_as_stored_runs_with_a_leaderboard_and_continues_for_free(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with StubServer(responder) as stub:
        spec, lines = parse(grid(stub))
        cells = check(spec, lines)
        assert len(cells) == 6  # demos k=2, k=4, opro; two seeds each
        store = Store(tmp_path / "runs.sqlite")
        sid = run_sweep(store, spec, cells)
        assert sid == sweep_id(spec)
        runs = [store.get_run(rid) for _, rid in store.sweep_cells(sid)]
        assert len(runs) == 6 and all(r["status"] in ("done", "budget") for r in runs)
        assert all(r["result"]["calls"] <= 60 for r in runs)  # each run inside its own cap
        assert {(r["optimizer"], r["seed"]) for r in runs} == {(o, s) for o in ("demos", "opro") for s in (0, 1)}
        rows = leaderboard(store, sid)
        assert len(rows) == 3 and all(r.seeds == 2 and r.runs == 2 for r in rows)
        assert all(r.test_low <= r.test_mean <= r.test_high for r in rows)
        assert all(r.p_value is not None and 0.0 <= r.p_value <= 1.0 for r in rows)
        assert "demos k=2 trials=2" in markdown(rows)
        eff = {(e["knob"], json.dumps(e["value"])): e for e in knob_effects(store, sid)}
        assert eff[("demos.k", "2")]["runs"] == 2 and eff[("optimizer", '"opro"')]["runs"] == 2
        paid = len(stub.chat_requests())
        # the same file again: every cell is finished, nothing is run or paid again
        again = run_sweep(store, spec, cells)
        assert again == sid and len(stub.chat_requests()) == paid
        assert [rid for _, rid in store.sweep_cells(sid)] == [r["id"] for r in runs]


class InFlight:
    """The responder, counting the requests being answered at once (inside the server, between receiving a request
    and sending its reply: a window inside the client's, so the count cannot exceed what the client let through)."""

    def __init__(self):
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, req):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.01)
            return responder(req)
        finally:
            with self.lock:
                self.now -= 1


def test_one_concurrency_limit_per_endpoint_is_shared_by_the_runs_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    for conc in (1, 3):
        counting = InFlight()
        with StubServer(counting) as stub:
            spec, lines = parse(grid(stub, conc).replace("parallel: 2", "parallel: 4"))
            store = Store(tmp_path / f"runs-{conc}.sqlite")
            run_sweep(store, spec, check(spec, lines))
            # 4 runs at once, each of which would keep 4 requests in flight alone: the endpoint's limit holds
            assert counting.most == conc, (conc, counting.most)


def test_a_killed_cli_sweep_continues_where_it_stopped_without_paying_twice(tmp_path):
    env = {**os.environ, "PROMPTOPT_CACHE_DIR": str(tmp_path / "cache"), "OPENAI_API_KEY": "test-key",
           "PROMPTOPT_DB": str(tmp_path / "runs.sqlite")}
    with StubServer(responder, latency=0.01) as stub:
        f = tmp_path / "grid.yaml"
        # one run at a time: which requests the shared response cache answers (the initial prompt's, shared by the
        # runs) is then the same in both sweeps, so the two can be compared request for request
        f.write_text(grid(stub).replace("parallel: 2", "parallel: 1"))
        # the uninterrupted sweep's requests, in a store and cache of its own
        ref = {**env, "PROMPTOPT_CACHE_DIR": str(tmp_path / "ref-cache"), "PROMPTOPT_DB": str(tmp_path / "ref.sqlite")}
        r = subprocess.run([sys.executable, "-m", "optimizers", "sweep", str(f), "--json"], cwd=ROOT, env=ref,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        needed = len(stub.chat_requests())
        expected = {row["config"]: row["test_mean"] for row in json.loads(r.stdout)["leaderboard"]}
        stub.requests.clear()
        p = subprocess.Popen([sys.executable, "-m", "optimizers", "sweep", str(f)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while len(stub.chat_requests()) < needed // 2 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert len(stub.chat_requests()) < needed  # killed mid-sweep
        r = subprocess.run([sys.executable, "-m", "optimizers", "sweep", str(f), "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        got = {row["config"]: row["test_mean"] for row in json.loads(r.stdout)["leaderboard"]}
        assert got == expected  # the same results as the uninterrupted sweep
        paid = len(stub.chat_requests())
        # only requests in flight at the kill are paid again (one run, two requests in flight)
        assert needed <= paid <= needed + 2, (needed, paid)


def test_sweep_report_cli_prints_csv_and_names_a_missing_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    db = tmp_path / "runs.sqlite"
    with StubServer(responder) as stub:
        spec, lines = parse(grid(stub).replace("seeds: [0, 1]", "seeds: [0]"))
        sid = run_sweep(Store(db), spec, check(spec, lines))
    env = {**os.environ, "PROMPTOPT_DB": str(db)}
    r = subprocess.run([sys.executable, "-m", "optimizers", "sweep-report", sid, "--format", "csv"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head, *body = r.stdout.strip().splitlines()
    assert head.startswith("config,seeds,runs,test_mean") and len(body) == 3
    r = subprocess.run([sys.executable, "-m", "optimizers", "sweep-report", "snope"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no sweep 'snope'" in r.stderr
    assert expand(spec)  # the spec is reusable


def test_threads_of_a_sweep_share_one_store_safely(tmp_path):
    """The runs of a sweep write one store from several threads; every cell's run keeps its own data."""
    store = Store(tmp_path / "runs.sqlite")
    errors = []

    def write(i):
        try:
            store.create_sweep("sx", "x", {}, [f"c{i}"])
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    ts = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(store.sweep_cells("sx")) == 8
