"""The home page renders with an empty store and scores a bundled set through the scripted stub endpoint."""

from streamlit.testing.v1 import AppTest

from optimizers.data import build_examples, load_bundled, split_examples
from tests.stub_server import StubServer


def test_home_renders_and_scores(monkeypatch, tmp_path):
    with StubServer(lambda r: "positive") as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("PROMPTOPT_TASK_MODEL", "stub-task")
        monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
        monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
        at = AppTest.from_file("../app.py", default_timeout=60).run()
        assert not at.exception
        assert "No runs yet" in " ".join(m.value for m in at.markdown)
        at.slider[0].set_value(6)
        at.button[0].click().run()
        assert not at.exception
        df, b = load_bundled("sentiment")
        test = split_examples(build_examples(df, b.input_cols, b.label_col)[0], seed=0).test[:6]
        expected = sum(e.label == "positive" for e in test) / 6  # the stub always answers "positive"
        assert at.metric[0].value == f"{expected:.2f}"
        assert len(stub.chat_requests()) == 6
