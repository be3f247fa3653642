"""Data page: a bundled set loads and saves po_data; an uploaded CSV is mapped into a template with a live preview; a
bad file or a bad mapping shows every problem as st.error naming the row and column, never an exception."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

PAGE = "../pages/1_Data.py"

GOOD_CSV = ("review,stars,sentiment\n"
            + "".join(f"\"Great film number {i}, loved it\",5,pos\n" for i in range(12))
            + "".join(f"\"Dull film number {i}, hated it\",1,neg\n" for i in range(12))).encode()


@pytest.fixture(autouse=True)
def _db(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.radio(key="data_source").set_value("Upload a file").run()
    at.file_uploader(key="data_upload").upload(name, data, "text/csv").run()
    return at


def test_bundled_set_loads_and_saves_po_data():
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    assert at.selectbox(key="data_bundled").value == "sentiment"
    assert "Review:" in at.code[0].value and "Classify the sentiment" in at.code[0].value  # rendered example
    assert at.get("plotly_chart")  # label distribution
    caps = [n for n in at.number_input if n.key and n.key.startswith("cap_train")]
    caps[0].set_value(20).run()
    at.button(key="data_use").click().run()
    assert not at.exception and errors(at) == []
    po = at.session_state["po_data"]
    assert po.name == "sentiment" and len(po.splits.train) == 20
    assert po.task.labels == ["negative", "positive"]
    assert po.data_config.label_col == "label" and po.split_config.max_train == 20
    from optimizers.metrics import resolution

    n = len(po.splits.dev)  # a small dev split says how coarse its scores are, before a run pays for them
    assert 0 < n < 100 and any(f"On {n} dev examples" in i.value and f"±{resolution(n):.0%}" in i.value
                               for i in at.info)


def test_upload_good_csv_maps_columns_and_previews_template():
    at = upload(AppTest.from_file(PAGE, default_timeout=30).run(), "reviews.csv", GOOD_CSV)
    assert not at.exception and errors(at) == []
    assert "24 rows, 3 columns" in " ".join(s.value for s in at.subheader)
    label = [s for s in at.selectbox if s.key and s.key.startswith("data_label_")][0]
    inputs = [m for m in at.multiselect if m.key and m.key.startswith("data_inputs_")][0]
    assert label.value == "sentiment"  # no column is named like a label: the last column
    assert inputs.value == ["review", "stars"]
    inputs.set_value(["review"]).run()
    tmpl = [t for t in at.text_area if t.key and t.key.startswith("data_template_")][0]
    tmpl.set_value("{prompt}\n\nReview: {review}\nSentiment:").run()
    assert not at.exception
    assert "Review: Great film number 0, loved it\nSentiment:" in at.code[0].value  # live preview of row 1
    at.button(key="data_use").click().run()
    po = at.session_state["po_data"]
    assert po.name == "reviews" and po.task.labels == ["neg", "pos"]
    assert sum(po.splits.sizes().values()) == 24


def test_bad_file_shows_problems_not_a_traceback():
    bad = b"text,label\n\"fine\",pos\n\"two\",neg,extra\n\"three\",pos\n"
    at = upload(AppTest.from_file(PAGE, default_timeout=30).run(), "bad.csv", bad)
    assert not at.exception
    msgs = " ".join(errors(at))
    assert "bad.csv" in msgs and "rows 2" in msgs
    assert "po_data" not in at.session_state


def test_bad_mapping_names_rows_and_columns():
    data = b"text,label\nhello,pos\n,neg\nworld,\nagain,neg\nmore,pos\n"
    at = upload(AppTest.from_file(PAGE, default_timeout=30).run(), "gaps.csv", data)
    assert not at.exception
    msgs = errors(at)
    assert any("'label' is empty in rows 3" in m for m in msgs), msgs
    assert any("every input column is empty in rows 2" in m for m in msgs), msgs
    assert not [b for b in at.button if b.key == "data_use"]  # nothing to save until it is fixed


def test_template_without_an_input_column_is_an_error():
    at = upload(AppTest.from_file(PAGE, default_timeout=30).run(), "reviews.csv", GOOD_CSV)
    [s for s in at.selectbox if s.key and s.key.startswith("data_label_")][0].set_value("sentiment").run()
    tmpl = [t for t in at.text_area if t.key and t.key.startswith("data_template_")][0]
    tmpl.set_value("{prompt}\n\nReview:").run()
    assert not at.exception
    assert any("does not use the input column" in w.value for w in at.warning)
    assert any("template" in m for m in errors(at))


def test_binary_upload_is_a_message():
    at = upload(AppTest.from_file(PAGE, default_timeout=30).run(), "data.csv", b"PK\x03\x04garbage\x00\x01")
    assert not at.exception
    assert any("data.csv" in m for m in errors(at))


def test_layout_and_fixed_demonstrations_reach_the_task_from_train_only():
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    next(r for r in at.radio if r.key and r.key.startswith("layout_")).set_value("system").run()
    next(n for n in at.number_input if n.key and n.key.startswith("demos_")).set_value(4).run()
    assert not at.exception and not errors(at)
    at.button(key="data_use").click().run()
    po = at.session_state["po_data"]
    assert po.task.layout == "system" and po.task.demo_style == "turns"
    train = {e.id for e in po.splits.train}
    assert len(po.task.demos) == 4 and {d["id"] for d in po.task.demos} <= train
    # the page shows the messages one example gets: the instruction as system message, demos as turns
    shown = [json.loads(j.value) if isinstance(j.value, str) else j.value for j in at.json]
    assert shown and shown[0][0]["role"] == "system" and [m["role"] for m in shown[0][1:3]] == ["user", "assistant"]
