"""The in-flight journal of a folder cache: which requests a run sent and has not yet had billed durably, so a run
killed mid-request is billed for them on resume.

An append-only file per run rather than a SQLite table: the journal is written twice a call (sent, then answered or
billed), and two SQLite transactions a call were a tenth of the engine's CPU at 300 calls/s (bench/bench_engine.py).
A record is one `os.write` to a file opened with O_APPEND, so it survives the process being killed the moment the
call returns (as a WAL commit without fsync does, which is what SQLite gave here); it does not survive a power cut,
which the SQLite journal with synchronous=NORMAL did not either.

Each line is JSON: {"t": token, "e": entry} puts an entry, {"t": token} removes it; the last line for a token wins.
A run's file is rewritten when its orphans are read (resume), and emptied when nothing of it is in flight."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

_COMPACT_BYTES = 1 << 20  # an idle run's file is emptied once it is this large


class _RunLog:
    """One run's file, shared by every cache object of this process that opens it (the live set must be one). The
    file is opened for each record, so a process holds no descriptor per run it ever journaled."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.live: set[str] = set(_replay(path))  # what this process knows is still in the file

    def write(self, token: str, entry: dict[str, Any] | None) -> None:
        rec = {"t": token} if entry is None else {"t": token, "e": entry}
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                if entry is None:
                    self.live.discard(token)
                    if not self.live and os.fstat(fd).st_size > _COMPACT_BYTES:
                        os.ftruncate(fd, 0)
                else:
                    self.live.add(token)
            finally:
                os.close(fd)

    def rewrite(self, entries: dict[str, dict[str, Any]]) -> None:
        """The file replaced by `entries` alone, atomically (a kill leaves the old file or the new one)."""
        with self.lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"t": t, "e": e}, separators=(",", ":")) + "\n"
                                   for t, e in entries.items()))
            os.replace(tmp, self.path)
            self.live = set(entries)


def _replay(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for raw in data.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # a line cut short by a kill mid-write: the record before it stands
        if not isinstance(rec, dict) or not isinstance(rec.get("t"), str):
            continue
        if isinstance(rec.get("e"), dict):
            out[rec["t"]] = rec["e"]
        else:
            out.pop(rec["t"], None)
    return out


_LOGS: dict[Path, _RunLog] = {}
_LOGS_LOCK = threading.Lock()


class Journal:
    """Tokens are `run_id:hex`; each run has its own file under `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._mine: dict[str, _RunLog] = {}

    def _log(self, run_id: str) -> _RunLog:
        log = self._mine.get(run_id)
        if log is None:
            name = hashlib.sha256(run_id.encode()).hexdigest()[:32] + ".jsonl"  # any run id is a safe file name
            path = (self.directory / name).resolve()
            with _LOGS_LOCK:
                log = _LOGS.get(path)
                if log is None:
                    log = _LOGS[path] = _RunLog(path)
            self._mine[run_id] = log
        return log

    @staticmethod
    def _run(token: str) -> str:
        return token.rsplit(":", 1)[0]

    def put(self, token: str, entry: dict[str, Any]) -> None:
        self._log(self._run(token)).write(token, entry)

    def delete(self, token: str) -> None:
        self._log(self._run(token)).write(token, None)

    def entries(self, run_id: str) -> dict[str, dict[str, Any]]:
        log = self._log(run_id)
        with log.lock:
            return _replay(log.path)

    def replace(self, run_id: str, entries: dict[str, dict[str, Any]]) -> None:
        self._log(run_id).rewrite(entries)
