"""The folder cache's in-flight journal (optimizers/journal.py): what a killed process leaves in it is read back by
another process, a record cut short by the kill is skipped, and an idle run's file does not grow without end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import diskcache

from optimizers import journal
from optimizers.budget import Budget, Meter
from optimizers.llm import ResponseCache

ROOT = Path(__file__).resolve().parents[1]


def _claim():
    return Meter(Budget()).claim("task", "m", [{"role": "user", "content": "x" * 40}], 8)


def test_a_killed_process_leaves_its_requests_in_flight_for_the_next_one(tmp_path):
    """The writer is SIGKILLed with two requests journaled as sent and one answered: a fresh process sees the two."""
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from optimizers.budget import Budget, Meter
from optimizers.llm import ResponseCache
cache = ResponseCache({str(tmp_path / "c")!r})
claim = Meter(Budget()).claim("task", "m", [{{"role": "user", "content": "hello"}}], 8)
a, b, c = (cache.sent("run1", claim) for _ in range(3))
cache.answered(b)
cache.sent("run2", claim)
os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    got = ResponseCache(tmp_path / "c").orphans("run1", recorded_until=0.0)
    assert len(got) == 2 and all(e["role"] == "task" and e["billed_at"] > 0 for e in got)


def test_a_record_cut_short_is_skipped_and_the_others_stand(tmp_path):
    cache = ResponseCache(tmp_path / "c")
    tok = cache.sent("run1", _claim())
    (f,) = (tmp_path / "c" / "journal").glob("*.jsonl")
    with open(f, "a") as fh:
        fh.write('{"t": "run1:dead", "e": {"role": "ta')  # the kill came mid-write
    got = ResponseCache(tmp_path / "c")._inflight.entries("run1")
    assert list(got) == [tok]


def test_an_idle_runs_file_is_emptied_once_large(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "_COMPACT_BYTES", 2_000)
    cache = ResponseCache(tmp_path / "c")
    claim = _claim()
    for _ in range(40):
        cache.answered(cache.sent("run1", claim))
    (f,) = (tmp_path / "c" / "journal").glob("*.jsonl")
    assert f.stat().st_size <= 2_000 + 200  # emptied each time it passed the limit with nothing in flight
    keep = cache.sent("run1", claim)
    for _ in range(40):  # one request stays in flight: nothing may be dropped
        cache.answered(cache.sent("run1", claim))
    assert f.stat().st_size > 2_000
    assert list(cache._inflight.entries("run1")) == [keep]


def test_entries_of_the_older_sqlite_journal_are_moved_on_resume(tmp_path):
    """A run killed under a version that journaled in SQLite (the `inflight` folder) is still billed after upgrade."""
    old = diskcache.Cache(str(tmp_path / "c" / "inflight"))
    old.set("run1:abc", {"role": "task", "model": "m", "tokens": 30, "cost": 0.0})
    old.set("run9:def", {"role": "task", "model": "m", "tokens": 30, "cost": 0.0})
    old.close()
    cache = ResponseCache(tmp_path / "c")
    got = cache.orphans("run1", recorded_until=0.0)
    assert len(got) == 1 and got[0]["tokens"] == 30
    assert len(cache.orphans("run1", recorded_until=0.0)) == 1  # now in the file journal, until a snapshot covers it
    with diskcache.Cache(str(tmp_path / "c" / "inflight")) as left:
        assert list(left.iterkeys()) == ["run9:def"]


def test_records_are_one_json_object_a_line(tmp_path):
    cache = ResponseCache(tmp_path / "c")
    tok = cache.sent("run1", _claim())
    cache.answered(tok)
    (f,) = (tmp_path / "c" / "journal").glob("*.jsonl")
    recs = [json.loads(line) for line in f.read_text().splitlines()]
    assert recs[0]["t"] == tok and recs[0]["e"]["model"] == "m" and recs[1] == {"t": tok}
