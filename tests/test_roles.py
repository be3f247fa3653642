"""A model and an endpoint per role: each role's requests reach its own server (real HTTP, two scripted stubs) with its
own model and key, from the Runner, the CLI and a spawned worker; the environment's say in each role; old stored
configs (one base_url, task_model, optimizer_model) load and run; the Inspect page says which model wrote what."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import optimizers.methods  # noqa: F401  (registers the optimizers)
from optimizers import backend as B
from optimizers.config import DataConfig, RoleEndpoint, RunConfig, stored_roles
from optimizers.runner import Runner, spawn_worker
from optimizers.store import Store
from tests.conftest import TOY_TASK, toy_task_answer
from tests.stub_server import StubServer
from tests.test_runner import splits

ROOT = Path(__file__).resolve().parent.parent
OLD_RUN = ROOT / "tests" / "stored" / "run-0.1.0.json"
TASK_KEY, OPT_KEY = "sk-task-role-0001", "sk-optimizer-role-0002"
OPRO_PARAMS = {"num_search_steps": 2, "num_generated_instructions": 2}


def optimizer_answer(req) -> str:
    return "<START>Classify the sentiment of the review.<END>"


def role_stubs(task_model: str = "stub-task", opt_model: str = "stub-opt", keys: bool = True):
    """One stub per role, each answering only its own model's requests (any other model is a 500)."""

    def only(model, answer):
        def respond(req):
            if req.get("model") != model:
                raise RuntimeError(f"this server serves {model}, not {req.get('model')}")
            return answer(req)

        return respond

    return (StubServer(only(task_model, toy_task_answer), models=[task_model], api_key=TASK_KEY if keys else None),
            StubServer(only(opt_model, optimizer_answer), models=[opt_model], api_key=OPT_KEY if keys else None))


def config(tmp_path: Path, task: RoleEndpoint, optimizer: RoleEndpoint) -> RunConfig:
    return RunConfig(optimizer="opro", params=OPRO_PARAMS, initial_prompt="Classify the text.", task=TOY_TASK,
                     data=DataConfig(name="toy", input_cols=["text"], label_col="label"), task_endpoint=task,
                     optimizer_endpoint=optimizer, cache_dir=str(tmp_path / "cache"))


def assert_served(stub: StubServer, model: str, key: str | None) -> None:
    reqs = stub.chat_requests()
    assert reqs, f"no request reached the {model} server"
    assert {r["model"] for r in reqs} == {model}
    if key:
        assert {r["_headers"]["authorization"] for r in reqs} == {f"Bearer {key}"}


# --- the Runner -----------------------------------------------------------------------------------------------------

def test_each_role_reaches_its_own_server_with_its_model_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_PATIENCE", "1")
    store = Store(tmp_path / "runs.sqlite")
    runner = Runner(store, api_key=TASK_KEY, optimizer_api_key=OPT_KEY)
    t, o = role_stubs()
    with t, o:
        cfg = config(tmp_path, RoleEndpoint(base_url=t.base_url, model="stub-task"),
                     RoleEndpoint(base_url=o.base_url, model="stub-opt"))
        rid = runner.create(cfg, splits())
        res = runner.execute(rid)
        assert res.status == "done", res.reason
        assert_served(t, "stub-task", TASK_KEY)
        assert_served(o, "stub-opt", OPT_KEY)
    started = store.last_event(rid, "run_started")
    assert {r: (s.model, s.endpoint) for r, s in started.roles.items()} == {
        "task": ("stub-task", t.base_url), "optimizer": ("stub-opt", o.base_url)}
    assert {ev.model for _, ev in store.events(rid, kinds=["meta_prompt"])} == {"stub-opt"}
    stored = store.get_run(rid)["config"]
    assert stored["task_endpoint"] == {"base_url": t.base_url, "model": "stub-task"}
    assert stored["optimizer_endpoint"] == {"base_url": o.base_url, "model": "stub-opt"}


def test_roles_on_one_server_share_its_endpoint(monkeypatch):
    """Same URL and key: one Endpoint, so its concurrency limit counts both roles' requests."""
    b = B.open_role_backends(RoleEndpoint(base_url="http://127.0.0.1:9/v1", model="a"),
                             RoleEndpoint(model="b"), task_key="k")
    assert b.task.endpoint is b.optimizer.endpoint and (b.task.model, b.optimizer.model) == ("a", "b")
    other = B.open_role_backends(RoleEndpoint(base_url="http://127.0.0.1:9/v1", model="a"),
                                 RoleEndpoint(model="b"), task_key="k", optimizer_key="k2")
    assert other.task.endpoint is not other.optimizer.endpoint  # its own key: its own client
    assert len(other.endpoints()) == 2


# --- the environment ------------------------------------------------------------------------------------------------

def plans(task: RoleEndpoint = RoleEndpoint(), optimizer: RoleEndpoint = RoleEndpoint()):
    p = B.plan_roles(task, optimizer)
    return (p["task"].base_url, p["task"].model), (p["optimizer"].base_url, p["optimizer"].model)


def test_the_environment_fills_what_the_run_left_open(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PROMPTOPT_TASK_MODEL", "PROMPTOPT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    # nothing set: both roles on the embedded default model (one server)
    assert plans() == ((None, "qwen2.5-coder-1.5b"), (None, "qwen2.5-coder-1.5b"))
    # embedded, a model per role: from the run, else from the environment
    assert plans(RoleEndpoint(model="smollm2-135m"), RoleEndpoint(model="qwen2.5-coder-1.5b")) == (
        (None, "smollm2-135m"), (None, "qwen2.5-coder-1.5b"))
    monkeypatch.setenv("PROMPTOPT_MODEL", "smollm2-135m")
    monkeypatch.setenv("PROMPTOPT_OPTIMIZER_MODEL_EMBEDDED", "qwen2.5-coder-1.5b")
    assert plans() == ((None, "smollm2-135m"), (None, "qwen2.5-coder-1.5b"))
    # one endpoint for both (OPENAI_BASE_URL): the optimizer model defaults to the task model
    monkeypatch.setenv("OPENAI_BASE_URL", "http://task/v1")
    monkeypatch.setenv("PROMPTOPT_TASK_MODEL", "t")
    assert plans() == (("http://task/v1", "t"), ("http://task/v1", "t"))
    monkeypatch.setenv("PROMPTOPT_OPTIMIZER_MODEL", "o")
    assert plans() == (("http://task/v1", "t"), ("http://task/v1", "o"))
    # the optimizer on an endpoint of its own
    monkeypatch.setenv("PROMPTOPT_OPTIMIZER_BASE_URL", "http://opt/v1")
    assert plans() == (("http://task/v1", "t"), ("http://opt/v1", "o"))
    assert plans(RoleEndpoint(base_url="http://a/v1", model="x"), RoleEndpoint(base_url="http://b/v1")) == (
        ("http://a/v1", "x"), ("http://b/v1", "o"))


def test_each_roles_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "env-task")
    same = B.plan_roles(RoleEndpoint(base_url="http://one/v1"), RoleEndpoint())
    apart = B.plan_roles(RoleEndpoint(base_url="http://one/v1"), RoleEndpoint(base_url="http://two/v1"))
    # the session's task key follows the optimizer onto the task's endpoint, never to another host
    assert B.role_keys(same, "session-task") == {"task": "session-task", "optimizer": "session-task"}
    assert B.role_keys(apart, "session-task") == {"task": "session-task", "optimizer": "env-task"}
    monkeypatch.setenv("PROMPTOPT_OPTIMIZER_API_KEY", "env-opt")
    assert B.role_keys(apart, "session-task") == {"task": "session-task", "optimizer": "env-opt"}
    assert B.role_keys(apart, "session-task", "session-opt")["optimizer"] == "session-opt"


def test_handed_off_servers_are_used_per_role_and_nothing_starts(monkeypatch):
    """A worker receives the app's embedded servers, one per role, and finds each role's by its model."""
    monkeypatch.setattr("optimizers.local_model.shared_server", lambda *a: pytest.fail("a server was started"))
    env = B.handoff_env({"task": B.Handoff("http://127.0.0.1:9/v1", "smollm2-135m"),
                         "optimizer": B.Handoff("http://127.0.0.1:10/v1", "qwen2.5-coder-1.5b")})
    assert env == {"PROMPTOPT_EMBEDDED_URL": "http://127.0.0.1:9/v1", "PROMPTOPT_EMBEDDED_ALIAS": "smollm2-135m",
                   "PROMPTOPT_OPTIMIZER_EMBEDDED_URL": "http://127.0.0.1:10/v1",
                   "PROMPTOPT_OPTIMIZER_EMBEDDED_ALIAS": "qwen2.5-coder-1.5b"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for task, opt in ((RoleEndpoint(), RoleEndpoint()),  # the defaults: each role's handed server
                      (RoleEndpoint(model="smollm2-135m"), RoleEndpoint(model="qwen2.5-coder-1.5b"))):
        b = B.open_role_backends(task, opt)
        assert (b.task.endpoint.base_url, b.task.model, b.task.cache_id) == (
            "http://127.0.0.1:9/v1", "smollm2-135m", "embedded:smollm2-135m")
        assert (b.optimizer.endpoint.base_url, b.optimizer.model) == ("http://127.0.0.1:10/v1", "qwen2.5-coder-1.5b")
        assert b.task.embedded and b.optimizer.embedded and b.optimizer.describe() == "embedded llama.cpp"
    # both roles on the model handed over for the task: one server, one endpoint
    b = B.open_role_backends(RoleEndpoint(model="smollm2-135m"), RoleEndpoint(model="smollm2-135m"))
    assert b.task.endpoint is b.optimizer.endpoint


def test_two_embedded_models_share_one_server_with_every_core(monkeypatch):
    """Two embedded models: one server started for both (the task's first), with all cores; each role names its own
    model and keeps its own cache identity, and both count against one concurrency limit."""
    from optimizers.local_model import _usable_cores

    monkeypatch.delenv("PROMPTOPT_THREADS", raising=False)
    one = B.plan_roles(RoleEndpoint(model="smollm2-135m"), RoleEndpoint())
    two = B.plan_roles(RoleEndpoint(model="smollm2-135m"), RoleEndpoint(model="qwen2.5-coder-1.5b"))
    assert B.embedded_threads(one) == B.embedded_threads(two) == _usable_cores()
    assert B.embedded_models(two) == ["smollm2-135m", "qwen2.5-coder-1.5b"] and B.embedded_models(one) == [
        "smollm2-135m"]
    monkeypatch.setenv("PROMPTOPT_THREADS", "3")
    assert B.embedded_threads(two) == 3
    started = []

    def start(model, threads, together=()):
        started.append((model, threads, tuple(together)))
        return type("S", (), {"base_url": "http://127.0.0.1:9/v1", "model_alias": model})()

    b = B.open_role_backends(RoleEndpoint(model="smollm2-135m"), RoleEndpoint(model="qwen2.5-coder-1.5b"),
                             start_embedded=start)
    assert set(started) == {("smollm2-135m", 3, ("qwen2.5-coder-1.5b",)), ("qwen2.5-coder-1.5b", 3, ("smollm2-135m",))}
    assert (b.task.model, b.task.cache_id, b.task.endpoint.cache_id) == ("smollm2-135m", "embedded:smollm2-135m",
                                                                         "embedded:smollm2-135m")
    assert (b.optimizer.model, b.optimizer.endpoint.cache_id) == ("qwen2.5-coder-1.5b", "embedded:qwen2.5-coder-1.5b")
    assert b.task.endpoint.base_url == b.optimizer.endpoint.base_url
    assert b.task.endpoint._sem is b.optimizer.endpoint._sem  # one server, one concurrency limit


def _wait(proc: subprocess.Popen, timeout: float = 120) -> int:
    t0 = time.monotonic()
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("the worker did not finish")
        time.sleep(0.1)
    return proc.returncode


def test_a_worker_uses_each_roles_handed_off_server(tmp_path, monkeypatch):
    """Two stubs stand in for the app's two embedded servers (task smollm2, optimizer 1.5B): the worker process sends
    each role's requests to its own, under that model's alias, and loads no model itself."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PROMPTOPT_PATIENCE", "1")
    monkeypatch.setenv("PROMPTOPT_AUTO_RESUME_S", "0")
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    db = tmp_path / "runs.sqlite"
    store = Store(db)
    t, o = role_stubs("smollm2-135m", "qwen2.5-coder-1.5b", keys=False)
    with t, o:
        rid = Runner(store).create(config(tmp_path, RoleEndpoint(model="smollm2-135m"),
                                          RoleEndpoint(model="qwen2.5-coder-1.5b")), splits())
        proc = spawn_worker(str(db), rid, embedded={"task": B.Handoff(t.base_url, "smollm2-135m"),
                                                    "optimizer": B.Handoff(o.base_url, "qwen2.5-coder-1.5b")},
                            log_path=str(tmp_path / "worker.log"))
        assert _wait(proc) == 0, (tmp_path / "worker.log").read_text()
        assert store.get_run(rid)["status"] == "done", (tmp_path / "worker.log").read_text()
        assert_served(t, "smollm2-135m", None)
        assert_served(o, "qwen2.5-coder-1.5b", None)


# --- the CLI --------------------------------------------------------------------------------------------------------

def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optimizers", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("how", ["flags", "environment"])
def test_cli_sends_each_role_to_its_endpoint(tmp_path, how):
    t, o = role_stubs()
    with t, o:
        env = {"PROMPTOPT_CACHE_DIR": str(tmp_path / "cache"), "PROMPTOPT_DB": str(tmp_path / "runs.sqlite"),
               "OPENAI_API_KEY": TASK_KEY, "PROMPTOPT_OPTIMIZER_API_KEY": OPT_KEY, "PROMPTOPT_PATIENCE": "1"}
        if how == "flags":
            roles = ["--base-url", t.base_url, "--model", "stub-task", "--optimizer-base-url", o.base_url,
                     "--optimizer-model", "stub-opt"]
        else:
            roles = []
            env.update(OPENAI_BASE_URL=t.base_url, PROMPTOPT_TASK_MODEL="stub-task",
                       PROMPTOPT_OPTIMIZER_BASE_URL=o.base_url, PROMPTOPT_OPTIMIZER_MODEL="stub-opt")
        r = cli("run", "--data", "sentiment", "--max-train", "8", "--max-dev", "4", "--max-test", "4",
                "--optimizer", "opro", "--param", "num_search_steps=2", "--param", "num_generated_instructions=2",
                *roles, "--json", env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert_served(t, "stub-task", TASK_KEY)
        assert_served(o, "stub-opt", OPT_KEY)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status"] == "done"


# --- old stored configs ---------------------------------------------------------------------------------------------

def test_an_old_stored_config_loads_as_role_endpoints():
    old = json.loads(OLD_RUN.read_text())["config"]
    assert {"base_url", "task_model", "optimizer_model"} <= set(old)
    cfg = RunConfig(**old)
    assert cfg.task_endpoint == RoleEndpoint() and cfg.optimizer_endpoint == RoleEndpoint(model="stub-opt")
    assert not {"base_url", "task_model", "optimizer_model"} & set(cfg.model_dump())
    assert stored_roles(old) == {"task": RoleEndpoint(), "optimizer": RoleEndpoint(model="stub-opt")}
    assert RunConfig(**cfg.model_dump(mode="json")) == cfg
    with pytest.raises(ValueError, match="not both"):
        RunConfig(**{**old, "task_endpoint": {"base_url": None, "model": None}})


def test_an_old_stored_config_runs_on_its_one_endpoint(tmp_path, monkeypatch):
    """Stored by 0.1.0: one base_url for both roles and two model names; it runs with both roles on that URL."""
    monkeypatch.setenv("PROMPTOPT_PATIENCE", "1")
    old = json.loads(OLD_RUN.read_text())["config"]
    store = Store(tmp_path / "runs.sqlite")
    with StubServer(lambda req: optimizer_answer(req) if req["model"] == "stub-opt" else toy_task_answer(req),
                    api_key=TASK_KEY) as stub:
        legacy = {**old, "optimizer": "opro", "params": OPRO_PARAMS, "base_url": stub.base_url,
                  "task_model": "stub-task", "optimizer_model": "stub-opt", "cache_dir": str(tmp_path / "cache")}
        rid = store.create_run(legacy, optimizer="opro", seed=0, data_name="toy", splits=splits())
        res = Runner(store, api_key=TASK_KEY).execute(rid)
        assert res.status == "done", res.reason
        models = {r["model"] for r in stub.chat_requests()}
        assert models == {"stub-task", "stub-opt"}
        # and the 0.1.0 config as it is (no base URL stored: OPENAI_BASE_URL, no task model: PROMPTOPT_TASK_MODEL)
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("PROMPTOPT_TASK_MODEL", "stub-task")
        rid2 = store.create_run({**old, "cache_dir": str(tmp_path / "cache")}, optimizer="baseline", seed=0,
                                data_name="toy", splits=splits())
        assert Runner(store, api_key=TASK_KEY).execute(rid2).status == "done"
    assert store.last_event(rid, "run_started").roles["optimizer"].model == "stub-opt"


# --- the Inspect page -----------------------------------------------------------------------------------------------

def test_inspect_says_which_model_wrote_what(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_PATIENCE", "1")
    monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the page itself calls nothing
    store = Store(tmp_path / "runs.sqlite")
    runner = Runner(store, api_key=TASK_KEY, optimizer_api_key=OPT_KEY)
    t, o = role_stubs()
    with t, o:
        rid = runner.create(config(tmp_path, RoleEndpoint(base_url=t.base_url, model="stub-task"),
                                   RoleEndpoint(base_url=o.base_url, model="stub-opt")), splits())
        assert runner.execute(rid).status == "done"
    at = AppTest.from_file("../pages/3_Inspect.py", default_timeout=60)
    at.query_params["run"] = rid
    at.run()
    assert not at.exception, at.exception
    text = "\n".join(x.value for x in at.text)
    assert f"Prompts written by the optimizer model stub-opt at {o.base_url}" in text
    assert f"Scores from the answers of the task model stub-task at {t.base_url}" in text
    assert "model: stub-opt" in text  # each raw exchange names its model
