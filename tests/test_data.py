"""Loading, validating and splitting user data: every format, every bad input gets a clear message naming the row
and column, and splits are seeded and stratified."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizers.data import (
    BUNDLED,
    DataError,
    Example,
    build_examples,
    load_bundled,
    read_table,
    render_template,
    split_examples,
    template_placeholders,
)

CSV = "text,label\nI loved it,positive\nawful,negative\nfine film,positive\n"


def test_formats_all_read_as_strings(tmp_path):
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "a.tsv").write_text(CSV.replace(",", "\t"))
    (tmp_path / "semi.csv").write_text(CSV.replace(",", ";"))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "label": lab, "n": 1}) for t, lab in
                                                [("x", "a"), ("y", "b")]))
    (tmp_path / "a.json").write_text(json.dumps([{"text": "x", "label": 1}, {"text": "y", "label": 0}]))
    (tmp_path / "bbh.json").write_text(json.dumps({"canary": "c", "examples": [{"input": "q", "target": "Yes"}]}))
    pd.DataFrame({"text": ["x", "y"], "label": ["a", "b"]}).to_excel(tmp_path / "a.xlsx", index=False)
    pd.DataFrame({"text": ["x", "y"], "label": ["a", "b"]}).to_parquet(tmp_path / "a.parquet")
    for name in ("a.csv", "a.tsv", "semi.csv"):
        df = read_table(tmp_path / name)
        assert list(df.columns) == ["text", "label"] and len(df) == 3, name
    assert read_table(tmp_path / "a.jsonl")["n"].tolist() == ["1", "1"]
    assert read_table(tmp_path / "a.json")["label"].tolist() == ["1", "0"]
    assert read_table(tmp_path / "bbh.json").columns.tolist() == ["input", "target"]
    assert read_table(tmp_path / "a.xlsx")["text"].tolist() == ["x", "y"]
    assert read_table(tmp_path / "a.parquet")["label"].tolist() == ["a", "b"]


@pytest.mark.parametrize("encoding,data", [
    ("utf-8-sig", "text,label\ncafé crème,positive\nnaïve,negative\n"),
    ("utf-16", "text,label\ncafé crème,positive\nnaïve,negative\n"),
    ("cp1252", "text,label\ncafé crème,positive\nnaïve,negative\n"),
])
def test_encodings(encoding, data):
    df = read_table(data.encode(encoding), "x.csv")
    assert df.columns.tolist() == ["text", "label"]
    assert df["text"].tolist()[0] == "café crème"


@pytest.mark.parametrize("data,name,message", [
    (b"", "e.csv", "empty"),
    (b"   \n\n", "e.csv", "empty"),
    (b"text,label\n", "h.csv", "only a header"),
    (b"text,label\nok,a\ntoo,many,cells\n", "r.csv", "rows 2"),
    (bytes(range(256)) * 20, "junk.csv", "binary"),
    (b"text,label\nhello\x00world,a\n", "nul.csv", "NUL"),
    (b"text,text\na,b\n", "d.csv", "duplicated column"),
    (b"[1, 2", "bad.json", "not valid JSON"),
    (b'{"text": "a"}\n{oops\n', "bad.jsonl", "line 2"),
    (b"PK\x03\x04garbage", "fake.xlsx", "XLSX"),
])
def test_bad_files_get_clear_messages(data, name, message):
    with pytest.raises(DataError) as e:
        read_table(data, name)
    assert message in str(e.value) and name in str(e.value)


def test_size_and_row_limits():
    with pytest.raises(DataError, match="larger than"):
        read_table(b"text,label\n" + b"x,y\n" * 1000, "big.csv", max_bytes=100)
    with pytest.raises(DataError, match="more than the limit"):
        read_table(b"text,label\n" + b"x,y\n" * 50, "rows.csv", max_rows=10)


def test_build_examples_validation_lists_every_problem():
    df = pd.DataFrame({"text": ["a", "b", "", "d"], "label": ["x", "", "y", " "]})
    with pytest.raises(DataError) as e:
        build_examples(df, ["txt"], "label")
    assert "'txt'" in str(e.value) and "'text'" in str(e.value)  # names what exists
    with pytest.raises(DataError) as e:
        build_examples(df, ["text"], "label")
    msg = str(e.value)
    assert "empty in rows 2, 4" in msg and "every input column is empty in rows 3" in msg
    with pytest.raises(DataError, match="also an input"):
        build_examples(df, ["text", "label"], "label")
    many = pd.DataFrame({"text": [str(i) for i in range(60)], "label": [str(i) for i in range(60)]})
    with pytest.raises(DataError, match="60 distinct"):
        build_examples(many, ["text"], "label", max_labels=50)
    exs, _ = build_examples(many, ["text"], "label", max_labels=None)
    assert len(exs) == 60


def test_label_spelling_merged_and_duplicates_dropped():
    df = pd.DataFrame({"text": ["a", "b", "c", "a", "e"], "label": ["Positive", " positive", "Positive", "Positive",
                                                                    "negative"]})
    exs, warnings = build_examples(df, ["text"], "label")
    assert {e.label for e in exs} == {"Positive", "negative"}
    assert any("merged as 'Positive'" in w for w in warnings)
    assert any("duplicate" in w and "rows 4" in w for w in warnings)
    assert [e.id for e in exs] == ["1", "2", "3", "5"]


def _exs(n_pos=30, n_neg=10):
    return [Example(str(i), {"t": f"x{i}"}, "p" if i < n_pos else "n") for i in range(n_pos + n_neg)]


def test_split_is_seeded_and_stratified():
    exs = _exs()
    s = split_examples(exs, seed=1)
    assert s.sizes() == {"train": 20, "dev": 10, "test": 10}
    for part in (s.train, s.dev, s.test):
        c = Counter(e.label for e in part)
        assert abs(c["p"] / len(part) - 0.75) <= 1 / len(part) + 1e-9
    assert {e.id for e in s.train} | {e.id for e in s.dev} | {e.id for e in s.test} == {e.id for e in exs}
    assert split_examples(exs, seed=1).train == s.train
    assert split_examples(exs, seed=2).train != s.train
    capped = split_examples(exs, seed=1, max_train=8, max_test=4)
    assert len(capped.train) == 8 and len(capped.test) == 4
    assert Counter(e.label for e in capped.train) == {"p": 6, "n": 2}
    with pytest.raises(DataError, match="sum to 1"):
        split_examples(exs, train=0.5, dev=0.5, test=0.5)


def test_template_rendering_leaves_foreign_braces():
    t = "{prompt}\nInput: {text}\nJSON: {\"k\": 1} {unknown}"
    assert template_placeholders(t) == ["prompt", "text", "unknown"]
    out = render_template(t, {"text": "has {prompt} inside"}, "Do {it}")
    assert out == "Do {it}\nInput: has {prompt} inside\nJSON: {\"k\": 1} {unknown}"


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_sets_load(name):
    df, b = load_bundled(name)
    exs, _ = build_examples(df, b.input_cols, b.label_col)
    assert sorted({e.label for e in exs}) == sorted(b.labels)
    assert "{prompt}" in b.template and all("{" + c + "}" in b.template for c in b.input_cols)
    assert len(exs) >= 50


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_loader(data):
    try:
        df = read_table(data, "fuzz.csv")
    except DataError:
        return
    assert isinstance(df, pd.DataFrame) and len(df) >= 1
