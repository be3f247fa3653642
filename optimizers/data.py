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
# Limits for one uploaded file. Rows: every example costs model calls and runs cap their splits at a few thousand
# examples, so 100,000 rows is already far more than a run can use; a bigger file is almost always a mistake (a log,
# an export of the wrong table) and parsing a million rows into a per-session frame stalls the dashboard. Reading
# stops at the first row past the limit, so an oversized file is rejected in about the time it takes to read the
# limit. XLSX: a workbook is a zip whose members are checked (declared sizes and compression ratio) before anything
# is unpacked.
MAX_BYTES = 200 * 2**20
MAX_ROWS = 100_000
MAX_UNPACKED = 500 * 2**20  # all XLSX members together, uncompressed
MAX_RATIO = 100  # an XLSX member larger than 1 MB may expand at most this much (real sheets: about 5-20x)
_FORMATS = "a text table (CSV, TSV, JSON, JSONL), an XLSX workbook or a Parquet file"
_SIGNATURES = [  # (magic bytes, what it is); zip (PK) and Parquet (PAR1) are handled by the readers
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Excel .xls workbook (or a password-protected one): save it "
                                          "as .xlsx or CSV"),
    (b"%PDF", "a PDF document"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"), (b"\x1f\x8b", "a gzip archive: unpack it first"), (b"BZh", "a bzip2 archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"), (b"Rar!", "a RAR archive"), (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "a program (ELF)"), (b"MZ", "a Windows program"),
]


def _rows_phrase(rows: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def _utf16_without_bom(data: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when mostly-ASCII text has a NUL in every other byte."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    z_even, z_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if z_odd > 0.4 and z_even < 0.05:
        return "utf-16-le"
    if z_even > 0.4 and z_odd < 0.05:
        return "utf-16-be"
    return None


def _control_fraction(sample: str | bytes) -> float:
    chars = sample if isinstance(sample, str) else sample.decode("latin-1")
    bad = sum(1 for ch in chars if ord(ch) < 32 and ch not in "\t\r\n\f")
    return bad / max(len(chars), 1)


def _decode(data: bytes, name: str) -> str:
    for magic, what in _SIGNATURES:
        if data.startswith(magic):
            raise DataError(f"{name}: this is {what}, not {_FORMATS}")
    bom = {b"\xef\xbb\xbf": "utf-8-sig", b"\xff\xfe\x00\x00": "utf-32", b"\x00\x00\xfe\xff": "utf-32",
           b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16"}
    enc = next((e for b, e in bom.items() if data.startswith(b)), None) or _utf16_without_bom(data)
    if enc:
        try:
            text = data.decode(enc)
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: the file starts like {enc.upper()} text but byte {e.start} is not valid "
                            f"{enc.upper()}: the file may be truncated or corrupt") from None
    else:
        if _control_fraction(data[:4096]) > 0.05:
            raise DataError(f"{name}: the file looks binary, not a text table: upload {_FORMATS}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = _decode_legacy(data, name)
    text = text.lstrip("\ufeff")
    if _control_fraction(text[:4096]) > 0.05:
        raise DataError(f"{name}: the file looks binary, not a text table: upload {_FORMATS}")
    if "\x00" in text:
        lines = [i for i, ln in enumerate(text.splitlines(), 1) if "\x00" in ln]
        raise DataError(f"{name}: NUL bytes on line(s) {_rows_phrase(lines)}: the file is corrupt or not plain "
                        "text; remove them and upload again")
    return text


def _decode_legacy(data: bytes, name: str) -> str:
    best = from_bytes(data.replace(b"\x00", b"")[: 2**20]).best()
    if best is None:
        raise DataError(f"{name}: could not detect the text encoding: it is not UTF-8 and looks binary")
    enc = best.encoding
    if enc in ("cp1250", "cp1252", "iso8859_1", "iso8859_2", "iso8859_15", "latin_1", "mac_roman"):
        # short samples make Western single-byte guesses unreliable: Excel's Western default is the likeliest
        enc = "cp1252"
    for candidate in (enc, best.encoding, "latin-1"):
        try:
            return data.decode(candidate)
        except UnicodeDecodeError:
            continue
    raise DataError(f"{name}: could not decode the text (it is not UTF-8, and not {best.encoding} either)")


def _cell(v: object) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _frame(records: list, name: str, what: str = "record", numbers: list[int] | None = None) -> pd.DataFrame:
    if not records:
        raise DataError(f"{name}: no rows")
    bad = [(numbers[i] if numbers else i + 1) for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        kinds = sorted({type(r).__name__ for r in records if not isinstance(r, dict)})
        raise DataError(f"{name}: expected a list of objects (one per example), but {what}(s) {_rows_phrase(bad)} "
                        f"are {'/'.join(kinds)}, not objects")
    cols = list(dict.fromkeys(k for r in records for k in r))
    return pd.DataFrame([[_cell(r.get(c)) for c in cols] for r in records], columns=cols, dtype=object)


def _pick_delimiter(text: str) -> str:
    """The candidate that splits the header into most columns consistently across the first records (quote-aware)."""
    head = text[:65536]
    best, best_score = ",", (0, 0)
    for d in (",", "\t", ";", "|"):
        try:
            recs = []
            for r in csv.reader(io.StringIO(head, newline=""), delimiter=d):
                if any(c.strip() for c in r):
                    recs.append(len(r))
                if len(recs) >= 50:
                    break
        except csv.Error:
            continue
        if not recs or recs[0] < 2:
            continue
        score = (sum(n == recs[0] for n in recs[1:]), recs[0])
        if score > best_score:
            best, best_score = d, score
    return best


def _read_delimited(text: str, name: str, sep: str | None, max_rows: int) -> pd.DataFrame:
    if not text.strip():
        raise DataError(f"{name}: the file is empty")
    hint = re.match(r"[ \t]*sep=(.)[ \t]*\r?\n", text)  # Excel's "sep=;" first line
    if hint:
        sep, text = hint.group(1), "\n" + text[hint.end():]  # keep line numbers: the hint was line 1
    sep = sep or _pick_delimiter(text)
    rows: list[list[str]] = []
    lines: list[int] = []  # file line where each row starts

    def parse(strict: bool) -> None:
        rows.clear()
        lines.clear()
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=strict)
        start = 1
        try:
            for r in reader:
                if any(c.strip() for c in r):
                    rows.append(r)
                    lines.append(start)
                    if len(rows) > max_rows + 1:
                        raise DataError(f"{name}: more than the limit of {max_rows:,} rows (stopped reading at "
                                        f"line {start}); split the file or sample it")
                start = reader.line_num + 1
        except csv.Error as e:
            if strict and "unexpected end of data" not in str(e):
                parse(strict=False)  # tolerate stray quotes inside cells, as spreadsheets do
                return
            if "unexpected end of data" in str(e):
                raise DataError(f"{name}: a quoted cell starting on line {start} is never closed (missing \")") \
                    from None
            raise DataError(f"{name}: line {start} is malformed ({e})") from None

    parse(strict=True)
    if not rows:
        raise DataError(f"{name}: the file is empty")
    header = [c.strip() for c in rows[0]]
    body, body_lines = rows[1:], lines[1:]
    # trailing delimiters (a, b,) make an unnamed, empty last column: drop it
    while len(header) > 1 and header[-1] == "" and all(len(r) < len(header) or not r[len(header) - 1].strip()
                                                       for r in body):
        header.pop()
        body = [r[: len(header)] if len(r) == len(header) + 1 else r for r in body]
    if not body:
        raise DataError(f"{name}: only a header row, no examples")
    ragged = [i for i, r in enumerate(body) if len(r) != len(header)]
    if ragged:
        first = body[ragged[0]]
        hint = ""
        other = [d for d in (",", ";", "\t", "|") if d != sep and d in "".join(first)]
        if len(first) < len(header) and other:
            hint = f"; line {body_lines[ragged[0]]} seems to use {other[0]!r} instead (mixed delimiters?)"
        elif len(first) > len(header):
            hint = f"; a cell that contains {sep!r} must be quoted"
        raise DataError(f"{name}: rows {_rows_phrase([i + 1 for i in ragged])} (file lines "
                        f"{_rows_phrase([body_lines[i] for i in ragged])}) have a different number of cells than "
                        f"the header ({len(header)} columns, delimiter {sep!r}; line {body_lines[ragged[0]]} has "
                        f"{len(first)}){hint}")
    if len(body) > max_rows:
        raise DataError(f"{name}: {len(body):,} rows is more than the limit of {max_rows:,}")
    return pd.DataFrame(body, columns=header, dtype=object)


def read_table(source: str | os.PathLike | bytes | BinaryIO, filename: str | None = None, *,
               max_bytes: int = MAX_BYTES, max_rows: int = MAX_ROWS) -> pd.DataFrame:
    """CSV/TSV/TXT, JSONL, JSON (records, or BIG-Bench Hard's {"examples": [...]}), XLSX, Parquet; all cells strings.

    Every problem is a DataError whose message names the file and, where it can, the line, row or column."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = filename or path.name
        if not path.is_file():
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
    if data[:2] == b"PK" and ext in ("", ".xlsx", ".xlsm"):
        df = _read_xlsx(data, name, max_rows)
    elif ext in (".xlsx", ".xlsm"):
        what = "an old-style .xls workbook" if data.startswith(b"\xd0\xcf\x11\xe0") else "a text file" if \
            _control_fraction(data[:4096]) < 0.05 else "something else"
        raise DataError(f"{name}: not a valid XLSX workbook (it is {what}); check the file and its extension")
    elif data[:4] == b"PAR1" and ext in ("", ".parquet"):
        df = _read_parquet(data, name, max_rows)
    elif ext == ".parquet":
        raise DataError(f"{name}: not a Parquet file (no PAR1 header); check the file and its extension")
    else:
        if data[:2] == b"PK" or data[:4] == b"PAR1":
            kind = "a zip archive or XLSX workbook" if data[:2] == b"PK" else "a Parquet file"
            raise DataError(f"{name}: this is {kind}, not {ext or 'text'}; check the extension")
        text = _decode(data, name)
        stripped = text.lstrip()
        if stripped[:15].lower().startswith(("<!doctype html", "<html")):
            raise DataError(f"{name}: this is a web page (HTML), not a table: download the raw file instead")
        if ext == ".jsonl" or (ext not in (".csv", ".tsv", ".txt", ".json") and stripped.startswith("{")
                               and "\n{" in stripped):
            df = _read_jsonl(text, name, max_rows)
        elif ext == ".json" or (ext not in (".csv", ".tsv", ".txt") and stripped.startswith(("[", "{"))):
            df = _read_json(text, name)
        else:
            df = _read_delimited(text, name, "\t" if ext == ".tsv" else None, max_rows)
    if len(df) > max_rows:
        raise DataError(f"{name}: {len(df):,} rows is more than the limit of {max_rows:,}")
    cols = [str(c).strip().lstrip("\ufeff").strip() for c in df.columns]
    dups = [c for c in dict.fromkeys(cols) if cols.count(c) > 1]
    if dups:
        raise DataError([f"{name}: duplicated column name {c!r} (columns "
                         f"{' and '.join(str(i + 1) for i, x in enumerate(cols) if x == c)}): rename one of them"
                         for c in dups])
    if any(c == "" for c in cols):
        raise DataError(f"{name}: a column has no name (column {cols.index('') + 1})")
    df.columns = cols
    if len(df) == 0:
        raise DataError(f"{name}: only a header row, no examples")
    return df.astype(object).where(df.notna(), "").astype(str).reset_index(drop=True)


def _no_duplicate_keys(where: str, name: str):
    def hook(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        dups = sorted({k for k in keys if keys.count(k) > 1})
        if dups:
            raise DataError(f"{name}: {where} has the key {dups[0]!r} more than once (a duplicated column)")
        return dict(pairs)
    return hook


def _read_jsonl(text: str, name: str, max_rows: int = MAX_ROWS) -> pd.DataFrame:
    recs, numbers = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line, object_pairs_hook=_no_duplicate_keys(f"line {i}", name)))
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: line {i} is not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise DataError(f"{name}: line {i} is nested too deeply") from None
        numbers.append(i)
        if len(recs) > max_rows:
            raise DataError(f"{name}: more than the limit of {max_rows:,} rows (stopped reading at line {i})")
    return _frame(recs, name, "line", numbers)


def _read_json(text: str, name: str) -> pd.DataFrame:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys("a record", name))
    except json.JSONDecodeError as e:
        raise DataError(f"{name}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise DataError(f"{name}: the JSON is nested too deeply") from None
    if isinstance(obj, dict):
        for key in ("examples", "data", "rows", "records"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
        else:
            raise DataError(f"{name}: expected a list of records or an object with an 'examples' list; the object "
                            f"has keys {', '.join(map(repr, list(obj)[:10])) or '(none)'}")
    if not isinstance(obj, list):
        raise DataError(f"{name}: expected a list of records, got a JSON {type(obj).__name__}")
    return _frame(obj, name)


def _read_parquet(data: bytes, name: str, max_rows: int) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        if pf.metadata.num_rows > max_rows:
            raise DataError(f"{name}: {pf.metadata.num_rows:,} rows is more than the limit of {max_rows:,}")
        df = pf.read().to_pandas()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{name}: not a readable Parquet file ({type(e).__name__}): is it truncated?") from None
    return df.astype(object).where(df.notna(), "").map(_cell)


def _read_xlsx(data: bytes, name: str, max_rows: int) -> pd.DataFrame:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DataError(f"{name}: not a valid XLSX workbook (a damaged or truncated zip)") from None
    names = {i.filename for i in infos}
    if "xl/workbook.xml" not in names:
        raise DataError(f"{name}: a zip archive but not an XLSX workbook (no xl/workbook.xml)")
    # declared sizes are what zipfile (and so openpyxl) will unpack at most, so checking them up front is enough
    total = sum(i.file_size for i in infos)
    if total > MAX_UNPACKED:
        raise DataError(f"{name}: the workbook unpacks to {total // 2**20:,} MB (limit {MAX_UNPACKED // 2**20} MB): "
                        "refusing to open it (zip bomb guard)")
    for i in infos:
        if i.file_size > 2**20 and i.file_size > MAX_RATIO * max(i.compress_size, 1):
            raise DataError(f"{name}: {i.filename} expands {i.file_size // max(i.compress_size, 1):,}x "
                            f"(to {i.file_size // 2**20:,} MB): refusing to open it (zip bomb guard)")
    import openpyxl

    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as e:
        raise DataError(f"{name}: could not read the workbook ({type(e).__name__}: {str(e)[:100]})") from None
    try:
        if not wb.worksheets:
            raise DataError(f"{name}: the workbook has no sheets")
        rows: list[list[str]] = []
        for n, r in enumerate(wb.worksheets[0].iter_rows(values_only=True), 1):
            cells = [_cell(v) for v in r]
            if any(c.strip() for c in cells):
                rows.append(cells)
                if len(rows) > max_rows + 1:
                    raise DataError(f"{name}: more than the limit of {max_rows:,} rows (stopped reading at "
                                    f"sheet row {n})")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{name}: could not read the first sheet ({type(e).__name__}: {str(e)[:100]})") from None
    finally:
        wb.close()
    if not rows:
        raise DataError(f"{name}: the first sheet is empty")
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    while width > 1 and all(not r[width - 1].strip() for r in rows):  # unused trailing columns
        width -= 1
        rows = [r[:width] for r in rows]
    if len(rows) == 1:
        raise DataError(f"{name}: the first sheet has no data rows (only a header)")
    return pd.DataFrame(rows[1:], columns=[c.strip() for c in rows[0]], dtype=object)


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
    rows = [tuple(str(v) for v in r) for r in df[list(input_cols)].itertuples(index=False, name=None)]
    label_list = labels.tolist()
    no_input = [i + 1 for i, r in enumerate(rows) if all(not v.strip() for v in r)]
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
    for i, (r, raw_label) in enumerate(zip(rows, label_list, strict=True)):
        fields = dict(zip(input_cols, r, strict=True))
        lab = canon[raw_label]
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
    BundledSet("support_triage", "Support-ticket triage (house rule)", DATA_DIR / "support_triage.csv", ["text"],
               "label", ["urgent", "normal"], "{prompt}\n\nTicket: {text}\nLabel:",
               "Is this support ticket urgent? Answer urgent or normal.", "written for PromptOpt", "CC0-1.0",
               "Urgent only when the customer is blocked (cannot work, log in, pay, ship, reach data), whatever "
               "the tone: a rule the initial prompt leaves unsaid. Generated by data/make_support_triage.py."),
    BundledSet("listing_moderation", "Marketplace message moderation (house rule)",
               DATA_DIR / "listing_moderation.csv", ["text"], "label", ["remove", "keep"],
               "{prompt}\n\nMessage: {text}\nLabel:",
               "Should this marketplace message be removed? Answer remove or keep.", "written for PromptOpt",
               "CC0-1.0", "Remove only when the message takes the deal off the platform (contact details, another "
               "app, payment outside checkout), whatever the tone: a rule the initial prompt leaves unsaid. "
               "Generated by data/make_listing_moderation.py. No headroom on the embedded 1.5B (it answers remove "
               "to nearly all, measured): for endpoint models."),
    BundledSet("product_reviews", "Product reviews for a catalogue (house rule)", DATA_DIR / "product_reviews.csv",
               ["text"], "label", ["positive", "negative"], "{prompt}\n\nReview: {text}\nLabel:",
               "Is this review positive or negative? Answer positive or negative.", "written for PromptOpt",
               "CC0-1.0", "The label is the verdict on the product itself; delivery, packaging, the seller and "
               "service do not count, however loud: a rule the initial prompt leaves unsaid. Two reviews in three "
               "are mixed. Generated by data/make_product_reviews.py. No headroom on the embedded 1.5B (any complaint "
               "makes it answer negative, measured): for endpoint models."),
    BundledSet("request_routing", "Helpdesk request routing (house rule)", DATA_DIR / "request_routing.csv",
               ["text"], "label", ["finance", "tech"], "{prompt}\n\nRequest: {text}\nLabel:",
               "Which team should handle this request? Answer finance or tech.", "written for PromptOpt", "CC0-1.0",
               "Tech owns software and devices, including paying for them (invoices, renewals, licences); finance "
               "gets money for everything else: a rule the initial prompt leaves unsaid. Generated by "
               "data/make_request_routing.py. No headroom on the embedded 1.5B (it answers finance to all, "
               "measured): for endpoint models."),
    BundledSet("helpdesk_queues", "Helpdesk queues (code names)", DATA_DIR / "helpdesk_queues.csv", ["text"],
               "label", ["atlas", "cobalt", "juniper"], "{prompt}\n\nTicket: {text}\nQueue:",
               "Which queue should handle this ticket? Answer atlas, cobalt or juniper.", "written for PromptOpt",
               "CC0-1.0", "Three queues with code names: atlas handles access (sign-in, users, roles), cobalt money "
               "(charges, invoices, plans), juniper the product (bugs, how-to, features). The initial prompt names "
               "the queues and leaves their remits unsaid; the labelled examples carry them. Generated by "
               "data/make_helpdesk_queues.py. Headroom on the embedded 1.5B: stating the remits lifts it from 0.30 "
               "to 0.60 (measured)."),
    BundledSet("bbh_disambiguation_qa", "BIG-Bench Hard: disambiguation QA", DATA_DIR / "bbh_disambiguation_qa.json",
               ["input"], "target", ["(A)", "(B)", "(C)"], _QA,
               "Which option is the antecedent of the pronoun? Answer (A), (B) or (C).",
               "BIG-Bench Hard (suzgunmirac/BIG-Bench-Hard)", "MIT",
               "Who does the pronoun refer to, or is it ambiguous? 250 rows: split train 0.4 / dev 0.2 / test 0.4 "
               "for 100 test examples."),
]}


def load_bundled(name: str) -> tuple[pd.DataFrame, BundledSet]:
    if name not in BUNDLED:
        raise DataError(f"no bundled set {name!r}; choose one of {', '.join(BUNDLED)}")
    b = BUNDLED[name]
    return read_table(b.path), b
