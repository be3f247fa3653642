"""Exports of a stored run: JSON with the full trajectory and config, CSV of candidates and of predictions.

CSV cells that a spreadsheet would execute (=, +, -, @ at the start) are neutralised with a leading apostrophe:
prompts and model outputs are untrusted text.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .store import Store

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # + full-width forms


def safe_cell(value: Any) -> Any:
    """Spreadsheets also run a formula after leading blanks and its full-width spellings."""
    if isinstance(value, str) and (value.startswith(_FORMULA_START)
                                   or value.lstrip(" \t\r\n").startswith(_FORMULA_START)):
        return "'" + value
    return value


def run_json(store: Store, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r}")
    return {
        "run": {k: v for k, v in run.items() if k not in ("worker_pid",)},
        "candidates": candidate_rows(store, run_id),
        "events": [{"seq": seq, **ev.model_dump(mode="json")} for seq, ev in store.events(run_id)],
    }


def candidate_rows(store: Store, run_id: str) -> list[dict[str, Any]]:
    """One row per candidate: text, lineage, and its latest score on each split (with n and CI)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for s in store.scores(run_id):
        key = (s["candidate_id"], s["split"])
        prev = latest.get(key)
        if prev is None or s["purpose"] == "report" or s["n"] >= prev["n"]:
            latest[key] = s
    rows = []
    for c in store.candidates(run_id):
        row: dict[str, Any] = {"candidate_id": c["candidate_id"], "step": c["step"], "origin": c["origin"],
                               "parents": " ".join(c["parents"]), "words": len(c["text"].split()), "text": c["text"]}
        for split in ("minibatch", "train", "dev", "test"):
            s = latest.get((c["candidate_id"], split))
            row[f"{split}_score"] = None if s is None else round(s["score"], 4)
            row[f"{split}_n"] = None if s is None else s["n"]
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: safe_cell(v) for k, v in r.items()})
    return buf.getvalue()


def to_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2, default=str)
