"""The home page renders with an empty store, scores a bundled set through the scripted stub endpoint, lists the
endpoint's models, and Quick start creates a small demo search on the bundled triage set and opens it on Optimize."""

from streamlit.testing.v1 import AppTest

from optimizers.data import build_examples, load_bundled, split_examples
from tests.stub_server import StubServer
from tests.test_pages_optimize import env  # noqa: F401  (fixture)


def test_home_renders_and_scores(monkeypatch, tmp_path):
    with StubServer(lambda r: "positive") as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("PROMPTOPT_TASK_MODEL", "stub-task")
        monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
        at = AppTest.from_file("../app.py", default_timeout=60).run()
        assert not at.exception
        assert "No runs yet" in " ".join(m.value for m in at.markdown)
        assert "stub-task" in " ".join(c.value for c in at.caption)  # models found via /v1/models
        at.slider[0].set_value(6)
        at.button(key="home_score").click().run()
        assert not at.exception
        df, b = load_bundled("sentiment")
        test = split_examples(build_examples(df, b.input_cols, b.label_col)[0], seed=0).test[:6]
        expected = sum(e.label == "positive" for e in test) / 6  # the stub always answers "positive"
        assert at.metric[0].value == f"{expected:.2f}"
        assert len(stub.chat_requests()) == 6


def test_home_warms_the_embedded_model_in_the_background_and_never_waits(monkeypatch, tmp_path):
    """Home starts the embedded server the roles need in a background thread (so Quick start finds it loaded) and
    renders without waiting for it; with PROMPTOPT_LAZY_MODEL=1, or an endpoint configured, nothing starts."""
    import threading
    import time

    from ui import session

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("PROMPTOPT_LAZY_MODEL", raising=False)
    monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
    monkeypatch.setattr(session, "_warming", {})
    release, started = threading.Event(), []

    def slow_start(model=None, n_threads=None, together=()):
        started.append((model, n_threads, tuple(together)))
        release.wait(20)  # a model that takes long to load

    monkeypatch.setattr("optimizers.local_model.shared_server", slow_start)
    t0 = time.monotonic()
    at = AppTest.from_file("../app.py", default_timeout=30).run()
    assert not at.exception and time.monotonic() - t0 < 15
    assert "loading in the background" in " ".join(m.value for m in at.markdown)
    for _ in range(100):
        if started:
            break
        time.sleep(0.05)
    from optimizers.backend import embedded_threads, plan_roles
    from optimizers.config import RoleEndpoint

    assert started == [("qwen2.5-coder-1.5b", embedded_threads(plan_roles(RoleEndpoint(), RoleEndpoint())), ())]
    at.run()  # a rerun does not start a second one
    assert len(started) == 1
    release.set()

    monkeypatch.setattr(session, "_warming", {})
    monkeypatch.setenv("PROMPTOPT_LAZY_MODEL", "1")
    at = AppTest.from_file("../app.py", default_timeout=30).run()
    assert not at.exception and len(started) == 1
    assert "not started" in " ".join(m.value for m in at.markdown)
    monkeypatch.delenv("PROMPTOPT_LAZY_MODEL")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    at = AppTest.from_file("../app.py", default_timeout=30).run()
    assert len(started) == 1


def test_quick_start_runs_and_opens_optimize(env):  # noqa: F811
    at = AppTest.from_file("../app.py", default_timeout=60).run()
    at.button(key="home_quick").click().run()
    assert not at.exception, at.exception
    runs = env["store"].list_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run["optimizer"] == "demos" and run["data_name"] == "support_triage"
    assert run["config"]["budget"]["max_calls"] == 180 and run["config"]["params"] == {"k": 6, "trials": 2}
    assert run["config"]["task"]["layout"] == "system"
    sizes = env["store"].load_splits(run["id"]).sizes()
    assert sizes == {"train": 48, "dev": 12, "test": 60}
    assert at.session_state["po_data"].name == "support_triage"
    assert run["status"] in ("done", "budget")
    # switched to the Optimize page with ?run=<id>
    assert any(run["id"] in s.value for s in at.subheader)
