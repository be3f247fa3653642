"""Labelled examples from user files: read any common table format, validate with messages that name the row and
column, and split train/dev/test with a seed (stratified by label), so a run's data is reproducible."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from charset_normalizer import from_bytes

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w .-]*)\}")


class DataError(ValueError):
    """A user-facing problem with an uploaded file; the message names the file, row and column."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Example:
    id: str
    fields: dict[str, str]
    label: str


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    stratified: bool = True

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


# --- reading ------------------------------------------------------------------------------------------------------
def _rows_phrase(rows: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data and not (data.startswith((b"\xff\xfe", b"\xfe\xff"))):
        # UTF-16 without BOM shows NULs too; anything else with NUL bytes is binary or corrupt
        best = from_bytes(data).best()
        if best is None or not best.encoding.startswith("utf_16"):
            raise DataError(f"{name}: the file contains NUL bytes: it looks binary, not a text table")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="strict")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    best = from_bytes(data).best()
    if best is None:
        raise DataError(f"{name}: could not detect the text encoding (is it a binary file?)")
    text = str(best)
    if best.encoding.startswith(("cp125", "iso8859", "latin")):
        # short samples make single-byte guesses unreliable; Excel's Western default is the likeliest
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            pass
    if "\x00" in text:
        raise DataError(f"{name}: the file contains NUL characters")
    return text


def _check_printable(text: str, name: str) -> None:
    sample = text[:4096]
    bad = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\r\n")
    if sample and bad / len(sample) > 0.05:
        raise DataError(f"{name}: the file looks binary, not a text table")


def _frame(records: list[dict], name: str) -> pd.DataFrame:
    if not records:
        raise DataError(f"{name}: no rows")
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{name}: expected a list of objects (one per example)")
    df = pd.DataFrame.from_records(records)
    return df.astype(object).where(df.notna(), "").astype(str)


def _read_delimited(text: str, name: str, sep: str | None, max_rows: int) -> pd.DataFrame:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{name}: the file is empty")
    if sep is None:
        try:
            sep = csv.Sniffer().sniff("\n".join(lines[:50]), delimiters=",;\t|").delimiter
        except csv.Error:
            sep = ","
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    try:
        rows = [r for r in reader if any(c.strip() for c in r)]
    except csv.Error as e:
        raise DataError(f"{name}: malformed CSV ({e})") from None
    if not rows:
        raise DataError(f"{name}: no rows could be read (unbalanced quotes?)")
    header = [c.strip() for c in rows[0]]
    body = rows[1:]
    if not body:
        raise DataError(f"{name}: only a header row, no examples")
    if len(body) > max_rows:
        raise DataError(f"{name}: {len(body):,} rows is more than the limit of {max_rows:,}")
    ragged = [i + 1 for i, r in enumerate(body) if len(r) != len(header)]
    if ragged:
        raise DataError(f"{name}: rows {_rows_phrase(ragged)} have a different number of cells than the header "
                        f"({len(header)} columns, delimiter {sep!r})")
    return pd.DataFrame(body, columns=header, dtype=str)


def read_table(source: str | os.PathLike | bytes | BinaryIO, filename: str | None = None, *,
               max_bytes: int = 200 * 2**20, max_rows: int = 1_000_000) -> pd.DataFrame:
    """CSV/TSV/TXT, JSONL, JSON (records, or BIG-Bench Hard's {"examples": [...]}), XLSX, Parquet; all cells strings."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = filename or path.name
        if not path.exists():
            raise DataError(f"{name}: no such file")
        if path.stat().st_size > max_bytes:
            raise DataError(f"{name}: the file is larger than {max_bytes // 2**20} MB")
        data = path.read_bytes()
    elif isinstance(source, bytes):
        data, name = source, filename or "upload"
    else:
        data, name = source.read(max_bytes + 1), filename or getattr(source, "name", "upload")
    if len(data) > max_bytes:
        raise DataError(f"{name}: the file is larger than {max_bytes // 2**20} MB")
    if not data.strip():
        raise DataError(f"{name}: the file is empty")
    ext = Path(str(name)).suffix.lower()
    if ext in (".xlsx", ".xlsm") or (not ext and data[:2] == b"PK"):
        df = _read_xlsx(data, name, max_rows)
    elif ext == ".parquet" or data[:4] == b"PAR1":
        try:
            df = pd.read_parquet(io.BytesIO(data)).astype(str)
        except Exception as e:
            raise DataError(f"{name}: not a readable Parquet file ({type(e).__name__})") from None
    else:
        if data[:2] == b"PK" or data[:4] == b"PAR1":
            raise DataError(f"{name}: this is a binary (zip/parquet) file, not {ext or 'text'}; check the extension")
        text = _decode(data, name)
        _check_printable(text, name)
        stripped = text.lstrip()
        if ext == ".jsonl" or (ext not in (".csv", ".tsv", ".txt", ".json") and stripped.startswith("{")
                               and "\n{" in stripped):
            df = _read_jsonl(text, name)
        elif ext == ".json" or stripped.startswith(("[", "{")):
            df = _read_json(text, name)
        else:
            df = _read_delimited(text, name, "\t" if ext == ".tsv" else None, max_rows)
    if len(df) > max_rows:
        raise DataError(f"{name}: {len(df):,} rows is more than the limit of {max_rows:,}")
    cols = [str(c).strip() for c in df.columns]
    dups = sorted({c for c in cols if cols.count(c) > 1})
    if dups:
        raise DataError(f"{name}: duplicated column names: {', '.join(map(repr, dups))}")
    if any(c == "" for c in cols):
        raise DataError(f"{name}: a column has no name (column {cols.index('') + 1})")
    df.columns = cols
    if len(df) == 0:
        raise DataError(f"{name}: only a header row, no examples")
    return df.fillna("").astype(str)


def _read_jsonl(text: str, name: str) -> pd.DataFrame:
    recs = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: line {i} is not valid JSON ({e.msg})") from None
    return _frame(recs, name)


def _read_json(text: str, name: str) -> pd.DataFrame:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(obj, dict):
        for key in ("examples", "data", "rows", "records"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
        else:
            raise DataError(f"{name}: expected a list of records or an object with an 'examples' list")
    if not isinstance(obj, list):
        raise DataError(f"{name}: expected a list of records")
    return _frame(obj, name)


def _read_xlsx(data: bytes, name: str, max_rows: int) -> pd.DataFrame:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        total = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile:
        raise DataError(f"{name}: not a valid XLSX workbook") from None
    if total > 500 * 2**20 or total > 200 * max(len(data), 1):
        raise DataError(f"{name}: the workbook unpacks to {total // 2**20} MB: refusing (zip bomb guard)")
    try:
        df = pd.read_excel(io.BytesIO(data), sheet_name=0, dtype=str, engine="openpyxl")
    except Exception as e:
        raise DataError(f"{name}: could not read the workbook ({type(e).__name__})") from None
    if df.empty:
        raise DataError(f"{name}: the first sheet has no data rows")
    return df.fillna("")


# --- examples ---------------------------------------------------------------------------------------------------
def build_examples(df: pd.DataFrame, input_cols: list[str], label_col: str, *, max_labels: int | None = 50,
                   drop_duplicates: bool = True) -> tuple[list[Example], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    cols = list(df.columns)
    missing = [c for c in [*input_cols, label_col] if c not in cols]
    if not input_cols:
        problems.append("choose at least one input column")
    if missing:
        problems.append(f"column(s) {', '.join(map(repr, missing))} not found; the file has: "
                        f"{', '.join(map(repr, cols))}")
    if label_col in input_cols:
        problems.append(f"the label column {label_col!r} is also an input column")
    if problems:
        raise DataError(problems)
    labels = df[label_col].astype(str).map(lambda s: s.strip())
    empty = [i + 1 for i, v in enumerate(labels) if not v]
    if empty:
        problems.append(f"label column {label_col!r} is empty in rows {_rows_phrase(empty)}")
    no_input = [i + 1 for i in range(len(df)) if all(not str(df[c].iloc[i]).strip() for c in input_cols)]
    if no_input:
        problems.append(f"every input column is empty in rows {_rows_phrase(no_input)}")
    # labels differing only in case or spaces are one label: keep the most frequent spelling
    spellings: dict[str, Counter] = defaultdict(Counter)
    for v in labels:
        if v:
            spellings[re.sub(r"\s+", " ", v).lower()][v] += 1
    canon = {}
    for cnt in spellings.values():
        best = cnt.most_common(1)[0][0]
        if len(cnt) > 1:
            warnings.append(f"labels {', '.join(map(repr, cnt))} differ only in case or spaces: merged as {best!r}")
        for v in cnt:
            canon[v] = best
    n_labels = len(spellings)
    if max_labels is not None and n_labels > max_labels:
        problems.append(f"label column {label_col!r} has {n_labels} distinct values (more than {max_labels}): is it "
                        "the right column? For free-text answers use exact-match extraction")
    if problems:
        raise DataError(problems)
    examples, seen, dup_rows = [], {}, []
    for i in range(len(df)):
        fields = {c: str(df[c].iloc[i]) for c in input_cols}
        lab = canon[labels.iloc[i]]
        key = (tuple(fields.values()), lab)
        if drop_duplicates and key in seen:
            dup_rows.append(i + 1)
            continue
        seen[key] = i
        examples.append(Example(str(i + 1), fields, lab))
    if dup_rows:
        warnings.append(f"dropped {len(dup_rows)} duplicate example(s): rows {_rows_phrase(dup_rows)}")
    if len(examples) < 2:
        raise DataError(f"only {len(examples)} usable example(s): need at least 2")
    small = sorted(lab for lab, n in Counter(e.label for e in examples).items() if n < 3)
    if small and max_labels is not None:
        warnings.append(f"label(s) {', '.join(map(repr, small))} have fewer than 3 examples")
    return examples, warnings


def _take(rng: random.Random, items: list[Example], cap: int | None, stratify: bool) -> list[Example]:
    if cap is None or len(items) <= cap:
        return items
    if not stratify:
        return sorted(rng.sample(items, cap), key=items.index)
    by: dict[str, list[Example]] = defaultdict(list)
    for e in items:
        by[e.label].append(e)
    out: list[Example] = []
    quotas = {lab: cap * len(v) / len(items) for lab, v in by.items()}
    counts = {lab: int(q) for lab, q in quotas.items()}
    rest = cap - sum(counts.values())
    for lab in sorted(quotas, key=lambda lab: quotas[lab] - counts[lab], reverse=True)[:rest]:
        counts[lab] += 1
    for lab, v in by.items():
        out += v[: counts[lab]]
    order = {id(e): i for i, e in enumerate(items)}
    return sorted(out, key=lambda e: order[id(e)])


def split_examples(examples: list[Example], *, train: float = 0.5, dev: float = 0.25, test: float = 0.25,
                   seed: int = 0, stratify: bool = True, max_train: int | None = None, max_dev: int | None = None,
                   max_test: int | None = None) -> Splits:
    if min(train, dev, test) < 0 or abs(train + dev + test - 1.0) > 1e-6:
        raise DataError(f"split fractions must be >= 0 and sum to 1 (got {train} + {dev} + {test})")
    rng = random.Random(seed)
    counts = Counter(e.label for e in examples)
    strat = stratify and all(n >= 3 for n in counts.values())
    parts: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    groups = [[e for e in examples if e.label == lab] for lab in sorted(counts)] if strat else [list(examples)]
    for g in groups:
        g = list(g)
        rng.shuffle(g)
        n = len(g)
        n_dev = round(n * dev)
        n_test = round(n * test)
        if n >= 3:
            n_dev = max(n_dev, 1) if dev > 0 else 0
            n_test = max(n_test, 1) if test > 0 else 0
        n_train = max(n - n_dev - n_test, 0)
        parts["train"] += g[:n_train]
        parts["dev"] += g[n_train:n_train + n_dev]
        parts["test"] += g[n_train + n_dev:]
    for k in parts:
        rng.shuffle(parts[k])
    return Splits(_take(rng, parts["train"], max_train, strat), _take(rng, parts["dev"], max_dev, strat),
                  _take(rng, parts["test"], max_test, strat), stratified=strat)


# --- templates ----------------------------------------------------------------------------------------------------
def template_placeholders(template: str) -> list[str]:
    return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(template)))


def render_template(template: str, fields: Mapping[str, str], prompt: str) -> str:
    """Only {prompt} and known {column} names are replaced, in one pass: braces in data and prompts stay as they are."""
    values = {"prompt": prompt, **fields}
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


# --- bundled sets -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundledSet:
    name: str
    title: str
    path: Path
    input_cols: list[str]
    label_col: str
    labels: list[str]
    template: str
    initial_prompt: str
    source: str
    licence: str
    description: str


_QA = "{prompt}\n\nQ: {input}\nA:"
BUNDLED: dict[str, BundledSet] = {b.name: b for b in [
    BundledSet("sentiment", "Movie and product review sentiment", DATA_DIR / "sentiment.csv", ["text"], "label",
               ["positive", "negative"], "{prompt}\n\nReview: {text}\nSentiment:",
               "Classify the sentiment of the review.", "written for PromptOpt", "CC0-1.0",
               "Short reviews, balanced positive/negative, some negation and sarcasm."),
    BundledSet("ethos", "ETHOS hate speech (offensive content)", DATA_DIR / "ethos.csv", ["text"], "label",
               ["Yes", "No"], "# Task\n{prompt}\n\n# Output format\nAnswer Yes or No as labels\n\n# Prediction\n"
               "Text: {text}\nLabel:", "Is the following text hate speech?", "ETHOS via ProTeGi (microsoft/LMOps)",
               "GPL-3.0", "Binary hate speech (score >= 0.5 is Yes), as binarised by ProTeGi."),
    BundledSet("liar", "LIAR political statements", DATA_DIR / "liar.jsonl", ["text"], "label", ["Yes", "No"],
               "# Task\n{prompt}\n\n# Output format\nAnswer Yes or No as labels\n\n# Prediction\nText: {text}\nLabel:",
               "Determine whether the Statement is a lie (Yes) or not (No) based on the Context and other information.",
               "LIAR (Wang 2017) via ProTeGi (microsoft/LMOps)", "research data set (see data/README.md)",
               "Is the statement a lie? 600 rows sampled from ProTeGi's copy."),
    BundledSet("bbh_navigate", "BIG-Bench Hard: navigate", DATA_DIR / "bbh_navigate.json", ["input"], "target",
               ["Yes", "No"], _QA, "Answer Yes or No.", "BIG-Bench Hard (suzgunmirac/BIG-Bench-Hard)", "MIT",
               "Do the moves return to the start?"),
    BundledSet("bbh_boolean_expressions", "BIG-Bench Hard: boolean expressions",
               DATA_DIR / "bbh_boolean_expressions.json", ["input"], "target", ["True", "False"], _QA,
               "Evaluate the boolean expression. Answer True or False.",
               "BIG-Bench Hard (suzgunmirac/BIG-Bench-Hard)", "MIT", "Evaluate a boolean expression."),
    BundledSet("bbh_snarks", "BIG-Bench Hard: snarks", DATA_DIR / "bbh_snarks.json", ["input"], "target",
               ["(A)", "(B)"], _QA, "Which statement is sarcastic? Answer (A) or (B).",
               "BIG-Bench Hard (suzgunmirac/BIG-Bench-Hard)", "MIT", "Pick the sarcastic statement."),
]}


def load_bundled(name: str) -> tuple[pd.DataFrame, BundledSet]:
    if name not in BUNDLED:
        raise DataError(f"no bundled set {name!r}; choose one of {', '.join(BUNDLED)}")
    b = BUNDLED[name]
    return read_table(b.path), b
