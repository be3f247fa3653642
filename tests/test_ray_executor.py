"""Sweep cells on a real local Ray cluster (started here with ray.init, never a mock), writing to a real PostgreSQL
store: the runs finish and read back as the leaderboard; every endpoint's limit holds across the cluster; a worker
killed mid-run is retried and resumes the same run without paying twice; a head that is down is one message."""

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

ray = pytest.importorskip("ray")

from optimizers.leaderboard import leaderboard  # noqa: E402
from optimizers.ray_executor import run_sweep_on_ray  # noqa: E402
from optimizers.store import Store  # noqa: E402
from optimizers.sweep import check, parse  # noqa: E402
from tests.stub_server import StubServer  # noqa: E402
from tests.test_sweep import InFlight, grid, wait_for_cells  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster; its workers inherit this environment (the stub's key, the test cache)."""
    d = tmp_path_factory.mktemp("ray")
    old = {k: os.environ.get(k) for k in ("OPENAI_API_KEY", "PROMPTOPT_CACHE_DIR")}
    os.environ.update(OPENAI_API_KEY="test-key", PROMPTOPT_CACHE_DIR=str(d / "cache"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield d
    ray.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_a_sweep_on_ray_writes_postgres_and_the_limits_hold_cluster_wide(cluster, pg_url):
    counting = InFlight()
    with StubServer(counting) as stub:
        spec, lines = parse(grid(stub, conc=2).replace("parallel: 2", "parallel: 4"))
        cells = check(spec, lines)
        store = Store(pg_url)
        sid, peak = run_sweep_on_ray(store, pg_url, spec, cells)
        runs = [store.get_run(rid) for _, rid in store.sweep_cells(sid)]
        assert len(runs) == 6 and all(r["status"] in ("done", "budget") for r in runs)
        assert len({r["worker_pid"] for r in runs}) >= 2  # executed by Ray's worker processes, not here
        assert os.getpid() not in {r["worker_pid"] for r in runs}
        rows = leaderboard(store, sid)
        assert len(rows) == 3 and all(r.seeds == 2 for r in rows)
        # four runs at once on the cluster, one endpoint limited to 2 requests in flight: it held for all of them
        assert counting.most == 2 and peak == {stub.base_url.rstrip("/"): 2}


def test_a_killed_ray_worker_is_retried_and_resumes_without_paying_twice(cluster, pg_url, tmp_path):
    with StubServer(InFlight()) as stub:
        # the uninterrupted sweep's requests (its own store and cache)
        text = grid(stub).replace("parallel: 2", "parallel: 1").replace("seeds: [0, 1]", "seeds: [0]")
        spec, lines = parse(text)
        cells = check(spec, lines)
        ref_store = Store(tmp_path / "ref.sqlite")
        # each sweep its own response cache (stored in each run's config), so neither is paid for by the other
        spec_ref = spec.model_copy(update={"name": "ref", "cache_dir": str(tmp_path / "ref-cache")})
        sid, _ = run_sweep_on_ray(ref_store, str(tmp_path / "ref.sqlite"), spec_ref, cells)
        needed = len(stub.chat_requests())
        expected = {r.config: r.test_mean for r in leaderboard(ref_store, sid)}
        stub.requests.clear()

        store = Store(pg_url)
        # the shared cache in PostgreSQL: what a retry on another node would replay from
        spec2 = spec.model_copy(update={"name": "killed", "cache_dir": pg_url})

        out = {}
        t = threading.Thread(target=lambda: out.update(res=run_sweep_on_ray(store, pg_url, spec2, cells)))
        t.start()
        killed = None
        deadline = time.time() + 120
        while killed is None and time.time() < deadline:
            for r in store.list_runs():
                if r["status"] == "running" and r.get("worker_pid") and store.event_count(r["id"]) > 8:
                    os.kill(r["worker_pid"], signal.SIGKILL)  # the node's worker dies mid-run
                    killed = r["id"]
                    break
            time.sleep(0.02)
        t.join(300)
        assert killed is not None and "res" in out
        sid2, _ = out["res"]
        runs = [store.get_run(rid) for _, rid in store.sweep_cells(sid2)]
        assert all(r["status"] in ("done", "budget") for r in runs)
        assert len(store.events(killed, kinds=["run_started"])) == 2  # started, then resumed by Ray's retry
        assert {r.config: r.test_mean for r in leaderboard(store, sid2)} == expected
        paid = len(stub.chat_requests())
        assert needed <= paid <= needed + 2, (needed, paid)  # only what was in flight at the kill


def test_the_cli_runs_a_sweep_on_ray_into_postgres_and_the_dashboard_shows_it(pg_url, tmp_path):
    from streamlit.testing.v1 import AppTest

    with StubServer(InFlight()) as stub:
        f = tmp_path / "grid.yaml"
        f.write_text(grid(stub).replace("seeds: [0, 1]", "seeds: [0]"))
        env = {**os.environ, "PROMPTOPT_DB": pg_url, "OPENAI_API_KEY": "test-key",
               "PROMPTOPT_CACHE_DIR": str(tmp_path / "cache")}
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run([sys.executable, "-m", "optimizers", "sweep", str(f), "--executor", "ray", "--json"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        board = json.loads(r.stdout)["leaderboard"]
        assert len(board) == 3 and "most requests in flight at once, cluster-wide" in r.stderr
    runs = Store(pg_url).list_runs()
    assert len(runs) == 3
    os.environ["PROMPTOPT_DB"] = pg_url
    try:
        at = AppTest.from_file(str(ROOT / "pages" / "5_Runs.py"), default_timeout=60).run()
    finally:
        os.environ.pop("PROMPTOPT_DB")
    assert not at.exception
    shown = " ".join(str(df.value.to_csv()) for df in at.dataframe)
    assert all(r["id"] in shown for r in runs)


def test_a_ray_head_that_is_down_is_one_message_and_creates_no_run(tmp_path):
    f = tmp_path / "grid.yaml"
    f.write_text("data: [sentiment]\noptimizers: {baseline: {}}\nbudget: {max_calls: 10}\n")
    env = {**os.environ, "PROMPTOPT_DB": str(tmp_path / "runs.sqlite")}
    r = subprocess.run([sys.executable, "-m", "optimizers", "sweep", str(f), "--executor", "ray", "--address",
                        "127.0.0.1:9"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cannot reach the Ray head at 127.0.0.1:9" in r.stderr, r.stderr[-2000:]
    assert Store(tmp_path / "runs.sqlite").list_runs() == []


def test_the_sweeps_page_runs_its_cells_on_the_ray_cluster_into_postgres(cluster, pg_url, tmp_path, monkeypatch):
    """The dashboard's launch with `on a Ray cluster`: its worker joins the running cluster at the head's address,
    every cell is a stored run in PostgreSQL, and the page shows the leaderboard from there."""
    from streamlit.testing.v1 import AppTest

    address = ray.get_runtime_context().gcs_address
    with StubServer(InFlight()) as stub:
        monkeypatch.setenv("PROMPTOPT_DB", pg_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(cluster / "cache"))
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        text = grid(stub).replace("seeds: [0, 1]", "seeds: [0]").replace("name: ", "name: page-")
        at = AppTest.from_file(str(ROOT / "pages" / "6_Sweeps.py"), default_timeout=60).run()
        at.text_area(key="sw_text").set_value(text).run()
        at.radio(key="sw_executor").set_value("on a Ray cluster").run()
        at.text_input(key="sw_ray_address").set_value(address).run()
        at.button(key="sw_start").click().run()
        assert not at.exception and not at.error
        spec, _ = parse(text)
        from optimizers.sweep import sweep_id

        sid = sweep_id(spec)
        store = Store(pg_url)
        statuses = wait_for_cells(store, sid, 300)
        log = next(Path(store.local_dir).rglob(f"{sid}.log"), None)
        assert statuses == ["done"] * 3, log.read_text()[-3000:] if log else "no log"
        assert "cluster-wide" in log.read_text()  # the worker ran its cells on Ray and said so
        at = AppTest.from_file(str(ROOT / "pages" / "6_Sweeps.py"), default_timeout=60)
        at.query_params["sweep"] = sid
        at.run()
        assert not at.exception and len(at.dataframe[1].value) == 3
