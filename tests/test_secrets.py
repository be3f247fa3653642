"""Secrets and exposure: an API key (the task role's or the optimizer role's) given to the CLI, the Runner, a spawned
worker or the dashboard never reaches the store (and its WAL), the response cache, result.json, exports, logs, stdout/stderr, stored error messages, the run's
reason, a worker's command line, or any element of a rendered page except its own password field; and no page or
inspector renders text as HTML except constant strings. (Loopback binding: tests/test_local_model.py.)"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimizers import export, methods  # noqa: F401  (registers the optimizers)
from optimizers.config import DataConfig, RoleEndpoint, RunConfig
from optimizers.runner import Runner, spawn_worker
from optimizers.store import Store
from tests.conftest import TOY_TASK, scripted
from tests.stub_server import StubServer
from tests.test_runner import splits

ROOT = Path(__file__).resolve().parent.parent
MIDDLE = "Qx7vMIDDLEk3yZ9w"
SECRET = f"sk-proj-{MIDDLE}tail0042"
OPT_MIDDLE = "Rw2uOPTMIDDLEj8pL4"
OPT_SECRET = f"sk-opt-{OPT_MIDDLE}tail0077"  # the optimizer role's key, for its own endpoint
NEEDLES = (SECRET, MIDDLE, OPT_SECRET, OPT_MIDDLE)
OPRO_PARAMS = {"num_search_steps": 2, "num_generated_instructions": 2}


def opt_reply(req):
    return "<START>Classify the sentiment of the review.<END>"


def echo_key(req):
    """A server that quotes the Authorization header back in its error (some proxies do)."""
    if req.get("model") == "stub-opt":
        raise RuntimeError(f"invalid header {req['_headers'].get('authorization')}")
    return "positive"


def assert_clean(blob: str | bytes, where: str) -> None:
    for n in NEEDLES:
        needle = n.encode() if isinstance(blob, bytes) else n
        assert needle not in blob, f"the API key (or its middle part) leaked into {where}"


def grep_tree(root: Path) -> list[Path]:
    """Every file under root (the db, its -wal and -shm, the cache, result.json, logs), each checked."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        assert_clean(p.read_bytes(), str(p))
    return files


def check_store(store: Store, run_id: str) -> dict:
    run = store.get_run(run_id)
    assert_clean(json.dumps(run, default=str), "the run row")
    assert_clean(run.get("reason") or "", "the run's reason")
    for _, ev in store.events(run_id, kinds=["error"]):
        assert_clean(ev.message, "an Error event")
    assert_clean(export.to_json(export.run_json(store, run_id)), "the JSON export")
    assert_clean(export.to_csv(export.candidate_rows(store, run_id)), "the CSV export")
    assert_clean(export.to_csv(store.predictions(run_id)), "the predictions CSV")
    return run


def config(base_url: str, tmp_path: Path, optimizer_base_url: str | None = None, **kw) -> RunConfig:
    return RunConfig(optimizer=kw.pop("optimizer", "opro"), params=kw.pop("params", OPRO_PARAMS),
                     initial_prompt="Classify the text.", task=TOY_TASK,
                     data=DataConfig(name="toy", input_cols=["text"], label_col="label"),
                     task_endpoint=RoleEndpoint(base_url=base_url, model="stub-task"),
                     optimizer_endpoint=RoleEndpoint(base_url=optimizer_base_url, model="stub-opt"),
                     cache_dir=str(tmp_path / "cache"), **kw)


def test_runconfig_has_no_key_field():
    assert not any("key" in f.lower() for f in RunConfig.model_fields)
    assert not any("key" in f.lower() for f in RoleEndpoint.model_fields)


# --- the CLI ----------------------------------------------------------------------------------------------------------

def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optimizers", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    p = tmp_path / "toy.csv"
    rows = ["text,label"] + [f"\"Review {i}: {'loved it' if i % 2 == 0 else 'hated it'}.\","
                             f"{'positive' if i % 2 == 0 else 'negative'}" for i in range(24)]
    p.write_text("\n".join(rows) + "\n")
    return p


def test_cli_run_export_and_failure_never_show_the_key(tmp_path, toy_csv):
    env = {"PROMPTOPT_CACHE_DIR": str(tmp_path / "cache"), "PROMPTOPT_DB": str(tmp_path / "runs.sqlite"),
           "OPENAI_API_KEY": SECRET, "PROMPTOPT_PATIENCE": "1"}
    common = ["--data", str(toy_csv), "--input-col", "text", "--label-col", "label",
              "--template", "{prompt}\n\nText: {text}\nAnswer:", "--optimizer", "opro",
              "--initial-prompt", "Classify the text.", "--model", "stub-task", "--optimizer-model", "stub-opt",
              "--param", "num_search_steps=2", "--param", "num_generated_instructions=2", "--json"]
    outputs = []
    with StubServer(scripted(opt_reply), api_key=SECRET) as stub:
        r = cli("run", *common, "--base-url", stub.base_url, "--out", str(tmp_path / "out"), env=env)
        assert r.returncode == 0, r.stderr
        outputs += [r.stdout, r.stderr]
        res = json.loads((tmp_path / "out" / "result.json").read_text())
        assert res["status"] == "done" and res["calls"] > 0
        # the key really went to the server (it refuses any other)
        assert stub.chat_requests()[0]["_headers"]["authorization"] == f"Bearer {SECRET}"
        for args in (["export", res["run_id"]], ["export", res["run_id"], "--format", "csv"],
                     ["show", res["run_id"]], ["runs", "--json"]):
            e = cli(*args, env=env)
            assert e.returncode == 0, e.stderr
            outputs += [e.stdout, e.stderr]
    # a server that refuses this key (401), and one that quotes the key back in its error
    with StubServer(scripted(opt_reply), api_key="sk-some-other-key-000") as other:
        r = cli("run", *common, "--base-url", other.base_url, "--out", str(tmp_path / "out401"), env=env)
        outputs += [r.stdout, r.stderr]
        assert "refused the API key" in r.stdout + r.stderr + (tmp_path / "out401" / "result.json").read_text()
    with StubServer(scripted(echo_key, lambda r: "positive")) as echo:
        r = cli("run", *common, "--base-url", echo.base_url, "--out", str(tmp_path / "outecho"), env=env)
        outputs += [r.stdout, r.stderr]
        assert "invalid header Bearer ***" in r.stdout + r.stderr + (tmp_path / "outecho" / "result.json").read_text()
    # the optimizer role on an endpoint of its own with a key of its own; then that endpoint refusing the key, and
    # quoting it back
    opt_env = {**env, "PROMPTOPT_OPTIMIZER_API_KEY": OPT_SECRET}
    with StubServer(scripted(opt_reply), api_key=SECRET) as task_stub, \
            StubServer(scripted(opt_reply), api_key=OPT_SECRET) as opt_stub:
        r = cli("run", *common, "--base-url", task_stub.base_url, "--optimizer-base-url", opt_stub.base_url,
                "--out", str(tmp_path / "outopt"), env=opt_env)
        assert r.returncode == 0, r.stderr
        outputs += [r.stdout, r.stderr]
        assert {q["_headers"]["authorization"] for q in task_stub.chat_requests()} == {f"Bearer {SECRET}"}
        assert {q["_headers"]["authorization"] for q in opt_stub.chat_requests()} == {f"Bearer {OPT_SECRET}"}
        assert {q["model"] for q in opt_stub.chat_requests()} == {"stub-opt"}
        with StubServer(scripted(opt_reply), api_key="sk-some-other-key-000") as refusing:
            r = cli("run", *common, "--base-url", task_stub.base_url, "--optimizer-base-url", refusing.base_url,
                    "--out", str(tmp_path / "outopt401"), env=opt_env)
            outputs += [r.stdout, r.stderr]
            assert "PROMPTOPT_OPTIMIZER_API_KEY" in (tmp_path / "outopt401" / "result.json").read_text()
        with StubServer(scripted(echo_key, lambda r: "positive")) as echo:
            r = cli("run", *common, "--base-url", task_stub.base_url, "--optimizer-base-url", echo.base_url,
                    "--out", str(tmp_path / "outoptecho"), env=opt_env)
            outputs += [r.stdout, r.stderr]
            assert "invalid header Bearer ***" in (tmp_path / "outoptecho" / "result.json").read_text()
    # and a dead endpoint
    r = cli("run", *common, "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "outdead"), env=env)
    outputs += [r.stdout, r.stderr]
    for i, o in enumerate(outputs):
        assert_clean(o, f"CLI output #{i}")
    files = grep_tree(tmp_path)
    names = {p.name for p in files}
    assert "runs.sqlite" in names and "result.json" in names
    assert any("cache" in p.parts for p in files)
    store = Store(tmp_path / "runs.sqlite")
    runs = store.list_runs()
    assert len(runs) == 7 and {r["status"] for r in runs} >= {"done", "failed", "paused"}
    for run in runs:
        check_store(store, run["id"])


# --- in process -------------------------------------------------------------------------------------------------------

def test_runner_in_process_never_stores_or_logs_the_key(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROMPTOPT_PATIENCE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)
    store = Store(tmp_path / "runs.sqlite")
    runner = Runner(store, api_key=SECRET)
    results = []
    with StubServer(scripted(opt_reply), api_key=SECRET) as stub:
        ok = runner.execute(runner.create(config(stub.base_url, tmp_path), splits()))
        assert ok.status == "done"
        results.append(ok)
    with StubServer(scripted(opt_reply), api_key="sk-some-other-key-000") as other:  # 401: failed
        bad = runner.execute(runner.create(config(other.base_url, tmp_path), splits()))
        assert bad.status == "failed" and "refused the API key" in bad.reason
        results.append(bad)
    with StubServer(scripted(echo_key, lambda r: "positive")) as echo:  # the key quoted back: paused
        quoted = runner.execute(runner.create(config(echo.base_url, tmp_path), splits()))
        assert quoted.status == "paused" and "invalid header Bearer ***" in quoted.reason  # quoted, redacted
        results.append(quoted)
    down = runner.execute(runner.create(config("http://127.0.0.1:9/v1", tmp_path), splits()))  # nothing listening
    assert down.status == "paused"
    results.append(down)
    # the optimizer role's own endpoint and key: used there only, and redacted when that endpoint quotes it
    two = Runner(store, api_key=SECRET, optimizer_api_key=OPT_SECRET)
    with StubServer(scripted(opt_reply), api_key=SECRET) as task_stub, \
            StubServer(scripted(opt_reply), api_key=OPT_SECRET) as opt_stub:
        both = two.execute(two.create(config(task_stub.base_url, tmp_path, opt_stub.base_url), splits()))
        assert both.status == "done" and opt_stub.chat_requests()
        assert {q["_headers"]["authorization"] for q in opt_stub.chat_requests()} == {f"Bearer {OPT_SECRET}"}
        assert {q["_headers"]["authorization"] for q in task_stub.chat_requests()} == {f"Bearer {SECRET}"}
        results.append(both)
        with StubServer(scripted(echo_key, lambda r: "positive")) as echo:
            quoted_opt = two.execute(two.create(config(task_stub.base_url, tmp_path, echo.base_url), splits()))
            assert quoted_opt.status == "paused" and "invalid header Bearer ***" in quoted_opt.reason
            results.append(quoted_opt)
    for res in results:
        assert_clean(res.model_dump_json(), "a run result")
        run = check_store(store, res.run_id)
        assert run["status"] == res.status
        if res.status != "done":
            assert store.events(res.run_id, kinds=["error"]), "the error path was not exercised"
    assert_clean(caplog.text, "the log")
    for ep in two.backends(RunConfig(**store.get_run(both.run_id)["config"])).endpoints():
        assert_clean(repr(ep), "repr(Endpoint)")
    grep_tree(tmp_path)
    assert (tmp_path / "runs.sqlite").exists()


def _wait(proc: subprocess.Popen, timeout: float = 90) -> int:
    t0 = time.monotonic()
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("the worker did not finish")
        time.sleep(0.1)
    return proc.returncode


def test_spawned_worker_gets_the_key_by_environment_only(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("PROMPTOPT_PATIENCE", "1")
    monkeypatch.setenv("PROMPTOPT_AUTO_RESUME_S", "0")
    db = tmp_path / "runs.sqlite"
    store = Store(db)
    runner = Runner(store)
    seen_popen: list = []
    real_popen = subprocess.Popen

    def spy(args, *a, **kw):
        seen_popen.append((list(args), kw.get("env") or {}))
        return real_popen(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", spy)
    with StubServer(scripted(opt_reply), api_key=SECRET) as stub, \
            StubServer(scripted(opt_reply), api_key=OPT_SECRET) as opt_stub, \
            StubServer(scripted(opt_reply), api_key="sk-some-other-key-000") as other:
        good = runner.create(config(stub.base_url, tmp_path, opt_stub.base_url), splits())
        refused = runner.create(config(other.base_url, tmp_path), splits())
        for rid, name in ((good, "good.log"), (refused, "refused.log")):
            proc = spawn_worker(str(db), rid, api_key=SECRET, optimizer_api_key=OPT_SECRET,
                                log_path=str(tmp_path / name))
            assert _wait(proc) == 0, (tmp_path / name).read_text()
            for arg in proc.args:
                assert_clean(str(arg), "the worker's command line")
        assert stub.chat_requests()[0]["_headers"]["authorization"] == f"Bearer {SECRET}"
        assert opt_stub.chat_requests()[0]["_headers"]["authorization"] == f"Bearer {OPT_SECRET}"
    assert len(seen_popen) == 2
    for args, env in seen_popen:
        assert_clean(" ".join(map(str, args)), "the Popen args")
        # the environment is how they get there
        assert env.get("OPENAI_API_KEY") == SECRET and env.get("PROMPTOPT_OPTIMIZER_API_KEY") == OPT_SECRET
    assert store.get_run(good)["status"] == "done"
    assert store.get_run(refused)["status"] == "failed"
    assert "refused the API key" in (tmp_path / "refused.log").read_text() + (store.get_run(refused)["reason"] or "")
    for rid in (good, refused):
        check_store(store, rid)
    files = grep_tree(tmp_path)
    assert {"good.log", "refused.log", "runs.sqlite"} <= {p.name for p in files}


# --- the dashboard ----------------------------------------------------------------------------------------------------

PAGES = ["../app.py", "../pages/1_Data.py", "../pages/2_Optimize.py", "../pages/3_Inspect.py", "../pages/4_Compare.py",
         "../pages/5_Runs.py", "../pages/6_Sweeps.py"]


def _walk(node):
    yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for c in children.values():
            yield from _walk(c)


@pytest.fixture
def dash_env(tmp_path, monkeypatch):
    with StubServer(scripted(opt_reply), api_key=SECRET) as stub, \
            StubServer(scripted(opt_reply), api_key=OPT_SECRET) as opt_stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("PROMPTOPT_OPTIMIZER_BASE_URL", opt_stub.base_url)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("PROMPTOPT_TASK_MODEL", "stub-task")
        monkeypatch.setenv("PROMPTOPT_OPTIMIZER_MODEL", "stub-opt")
        monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("PROMPTOPT_PATIENCE", "1")
        store = Store(tmp_path / "runs.sqlite")
        runner = Runner(store, api_key=SECRET, optimizer_api_key=OPT_SECRET)
        rid = runner.create(config(stub.base_url, tmp_path, opt_stub.base_url), splits())
        assert runner.execute(rid).status == "done"
        yield {"stub": stub, "opt_stub": opt_stub, "store": store, "run_id": rid}


@pytest.mark.parametrize("page", PAGES, ids=[Path(p).stem for p in PAGES])
def test_pages_never_show_the_key(page, dash_env, tmp_path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(page, default_timeout=60)
    fields = {"_w_api_key": SECRET, "_w_optimizer_api_key": OPT_SECRET}
    at.session_state["api_key"] = SECRET
    at.session_state["optimizer_api_key"] = OPT_SECRET
    for k, v in fields.items():
        at.session_state[k] = v
    if "Inspect" in page or "Optimize" in page:
        at.query_params["run"] = dash_env["run_id"]
    if "Sweeps" in page:  # a stored sweep whose one cell is the run: its cells, leaderboard and downloads drawn
        cell = json.dumps({"data": "toy", "optimizer": "opro", "params": OPRO_PARAMS, "seed": 0,
                           "task_model": "stub-task", "optimizer_model": "stub-opt"}, sort_keys=True)
        dash_env["store"].create_sweep("s0123456789", "keys", {}, [cell])
        dash_env["store"].set_sweep_run("s0123456789", cell, dash_env["run_id"])
        at.query_params["sweep"] = "s0123456789"
    at.run()
    assert not at.exception, at.exception
    if "Sweeps" in page:
        assert not at.error and len(at.dataframe) >= 2  # the cells and the leaderboard
    for k, v in fields.items():  # each field keeps its own key: the only place it may be
        assert [t.value for t in at.text_input if t.key == k] == [v]
    checked = 0
    for root in (at.main, at.sidebar):
        for node in _walk(root):
            if getattr(node, "key", None) in fields:
                continue
            proto = getattr(node, "proto", None)
            blob = (str(proto) if proto is not None else "") + repr(getattr(node, "value", ""))
            for attr in ("body", "label", "help", "placeholder"):
                blob += str(getattr(node, attr, "") or "")
            assert_clean(blob, f"{page}: {type(node).__name__}")
            checked += 1
    assert checked > 5
    # the keys were used: each stub (which refuses anything else) served its role, Home listed each one's models
    assert any(r.get("_headers", {}).get("authorization") == f"Bearer {SECRET}" for r in dash_env["stub"].requests)
    opt_requests = dash_env["opt_stub"].requests
    assert any(r.get("_headers", {}).get("authorization") == f"Bearer {OPT_SECRET}" for r in opt_requests)
    if page == "../app.py":
        assert any(r["_path"].endswith("/models") and r["_headers"].get("authorization") == f"Bearer {OPT_SECRET}"
                   for r in opt_requests)
    grep_tree(tmp_path)


# --- HTML rendering ---------------------------------------------------------------------------------------------------

UI_SOURCES = sorted([ROOT / "app.py", *(ROOT / "pages").glob("*.py"), *(ROOT / "ui").glob("*.py")])
HTML_CALLS = {"html"}  # st.html / components.html render their argument as HTML


def _is_constant_text(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):  # an f-string is constant only without placeholders
        return all(isinstance(v, ast.Constant) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_constant_text(node.left) and _is_constant_text(node.right)
    return False


def html_sinks(path: Path) -> list[tuple[int, bool]]:
    """(line, constant) for every call that renders HTML: unsafe_allow_html=<not False>, st.html, components.html."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        unsafe = any(k.arg == "unsafe_allow_html" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                     for k in node.keywords)
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if unsafe or name in HTML_CALLS:
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg in ("body", "html")),
                                                      None)
            out.append((node.lineno, arg is not None and _is_constant_text(arg)))
    return out


def test_html_is_only_ever_rendered_from_constant_strings():
    assert len(UI_SOURCES) >= 10
    bad = [f"{p.relative_to(ROOT)}:{line}" for p in UI_SOURCES for line, const in html_sinks(p) if not const]
    assert not bad, f"HTML rendered from non-constant text at {bad}"


def test_the_html_check_catches_untrusted_text(tmp_path):
    p = tmp_path / "sample.py"
    p.write_text("import streamlit as st\nx = input()\nst.markdown('<b>hi</b>', unsafe_allow_html=True)\n"
                 "st.markdown(f'<b>{x}</b>', unsafe_allow_html=True)\nst.markdown(x, unsafe_allow_html=False)\n"
                 "st.html(x)\nst.write(x)\n")
    assert html_sinks(p) == [(3, True), (4, False), (6, False)]


# --- the shared store, the shared cache and a Ray cluster -------------------------------------------------------------
def pg_dump_text(url: str) -> str:
    """Every row of every table of the database, as text."""
    import psycopg

    out = []
    with psycopg.connect(url, autocommit=True) as c:
        tables = [r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")]
        for t in tables:
            out += [r[0] for r in c.execute(f"SELECT row_to_json(x)::text FROM {t} x")]
    assert len(tables) >= 8 and out
    return "\n".join(out)


@pytest.mark.slow
def test_a_ray_sweep_into_postgres_never_stores_or_logs_the_key(tmp_path, pg_url):
    pytest.importorskip("ray")
    with StubServer(scripted(opt_reply, lambda r: "positive"), api_key=SECRET) as stub:
        f = tmp_path / "grid.yaml"
        f.write_text(f"data: [sentiment]\noptimizers: {{opro: {{num_search_steps: 1, num_generated_instructions: 2}}}}"
                     f"\nseeds: [0, 1]\ntask_models: [stub-task]\noptimizer_models: [stub-opt]\nbase_url: {stub.base_url}"
                     f"\nsplit: {{max_train: 6, max_dev: 4, max_test: 4}}\nbudget: {{max_calls: 40}}\n"
                     f"cache_dir: {pg_url}\n")
        ray_tmp = Path("/tmp/ray")  # Ray's own session folder (logs of every worker)
        before = set(ray_tmp.glob("session_*")) if ray_tmp.exists() else set()
        env = {**os.environ, "OPENAI_API_KEY": SECRET, "PROMPTOPT_DB": pg_url,
               "PROMPTOPT_HOME": str(tmp_path / "home")}
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run([sys.executable, "-m", "optimizers", "sweep", str(f), "--executor", "ray", "--json"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert stub.chat_requests() and all(q["_headers"]["authorization"] == f"Bearer {SECRET}"
                                            for q in stub.chat_requests())  # the key was used, by every node
    assert_clean(r.stdout + r.stderr, "the sweep's output")
    assert_clean(pg_dump_text(pg_url), "the PostgreSQL store and shared cache")
    sessions = (set(ray_tmp.glob("session_*")) - before) if ray_tmp.exists() else set()
    assert sessions, "the sweep started no Ray session"
    for s in sessions:
        for p in s.rglob("*"):
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 50_000_000:
                assert_clean(p.read_bytes(), f"Ray's file {p}")
