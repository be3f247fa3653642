"""The run store: runs, their config and examples, every event, candidates, scores, per-example predictions and
sweeps. It is the single source of truth: the CLI, the pages, export, replay and resume read it.

One schema behind two databases (as MLflow's tracking store does): a SQLite file by default (WAL mode, so readers in
other processes never block the worker), or PostgreSQL when PROMPTOPT_DB is a postgresql:// URL, so workers on other
machines write where the dashboard reads. Every write is its own committed transaction, and an event is committed
before anything can show it. PostgreSQL credentials come from the environment (PGPASSWORD, ~/.pgpass, PGUSER):
a URL with a password is refused, so it never reaches a log, an error message or an export.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .data import Example, Splits
from .events import CandidateProposed, CandidateScored, Event, parse_event
from .status import RunStatus


def default_db() -> Path | str:
    """PROMPTOPT_DB (a file, or a postgresql:// URL), else the user's default SQLite file."""
    env = os.environ.get("PROMPTOPT_DB")
    if env and is_postgres(env):
        return env
    return Path(env or Path.home() / ".local" / "share" / "promptopt" / "runs.sqlite")


def is_postgres(location: str | os.PathLike) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class StoreError(RuntimeError):
    """The store cannot be opened (a PostgreSQL server that is down, a bad URL): one clear message, nothing lost."""


def _pg_location(url: str) -> str:
    """The URL as shown (it has no password: one is refused)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.password:
        raise StoreError("PROMPTOPT_DB holds a password: give the URL without it and the password in PGPASSWORD "
                         "(or ~/.pgpass), so it never reaches a log or an error message")
    return url

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    heartbeat REAL,
    status TEXT NOT NULL,          -- a RunStatus (never crashed: that is observed, see status.py)
    reason TEXT,
    optimizer TEXT NOT NULL,
    data_name TEXT,
    seed INTEGER,
    config TEXT NOT NULL,          -- full RunConfig JSON (no secrets)
    result TEXT,                   -- result JSON once finished
    stop_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    live TEXT                      -- the worker's spend so far, between events (JSON; progress, not books)
);
CREATE TABLE IF NOT EXISTS examples (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    example_id TEXT NOT NULL,
    split TEXT NOT NULL,
    position INTEGER NOT NULL,
    fields TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (run_id, example_id)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL,
    oi INTEGER,                    -- index in the optimizer's own event stream (NULL for the engine's events)
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS candidates (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    candidate_id TEXT NOT NULL,
    text TEXT NOT NULL,
    parents TEXT NOT NULL,
    origin TEXT NOT NULL,
    step INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, candidate_id)
);
CREATE TABLE IF NOT EXISTS scores (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    candidate_id TEXT NOT NULL,
    split TEXT NOT NULL,
    purpose TEXT NOT NULL,
    step INTEGER NOT NULL,
    n INTEGER NOT NULL,
    score REAL NOT NULL,
    ci_low REAL,
    ci_high REAL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    candidate_id TEXT NOT NULL,
    example_id TEXT NOT NULL,
    split TEXT NOT NULL,
    raw TEXT NOT NULL,
    pred TEXT,
    gold TEXT NOT NULL,
    correct INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    PRIMARY KEY (run_id, candidate_id, example_id)
);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT,
    created REAL,
    spec TEXT
);
CREATE TABLE IF NOT EXISTS sweep_cells (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    cell TEXT NOT NULL,
    run_id TEXT,
    PRIMARY KEY (sweep_id, cell)
);
CREATE INDEX IF NOT EXISTS events_kind ON events(run_id, kind);
CREATE INDEX IF NOT EXISTS scores_cand ON scores(run_id, candidate_id);
"""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


class _Pg:
    """A PostgreSQL connection that takes the SQLite dialect the store is written in: `?` placeholders, INSERT OR
    IGNORE / OR REPLACE, REAL timestamps (as double precision), rows readable by name and by position."""

    _UPSERT = {"predictions": "(run_id, candidate_id, example_id)"}

    def __init__(self, url: str):
        import psycopg

        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10, row_factory=_pg_rows)
        except psycopg.OperationalError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StoreError(f"cannot reach the PostgreSQL store {url}: {reason}") from None

    @staticmethod
    def translate(sql: str) -> str:
        q = sql.replace("?", "%s").replace(" REAL", " DOUBLE PRECISION")
        if "INSERT OR IGNORE INTO" in q:
            q = q.replace("INSERT OR IGNORE INTO", "INSERT INTO") + " ON CONFLICT DO NOTHING"
        elif "INSERT OR REPLACE INTO" in q:
            table = q.split("INSERT OR REPLACE INTO", 1)[1].split()[0]
            cols = _COLUMNS[table]
            q = (q.replace("INSERT OR REPLACE INTO", "INSERT INTO") + f" ON CONFLICT {_Pg._UPSERT[table]} DO UPDATE "
                 "SET " + ", ".join(f"{c}=EXCLUDED.{c}" for c in cols))
        return q.replace("CAST(example_id AS INTEGER)",
                         "(CASE WHEN example_id ~ '^[0-9]{1,18}$' THEN example_id::bigint ELSE 0 END)")  # as SQLite's CAST

    def execute(self, sql: str, args: Any = ()):
        return self.conn.execute(self.translate(sql), tuple(args) if args else None)

    def executemany(self, sql: str, rows: Iterable[Any]):
        rows = list(rows)
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(self.translate(sql), rows)

    def executescript(self, script: str) -> None:
        script = "\n".join(line.split("--", 1)[0] for line in script.splitlines())  # comments may hold a ';'
        for stmt in script.split(";"):
            if stmt.strip():
                self.conn.execute(self.translate(stmt))

    def close(self) -> None:
        self.conn.close()


class _PgRow(dict):
    """A row by column name (like sqlite3.Row) and by position."""

    def __init__(self, names: list[str], values: tuple):
        super().__init__(zip(names, values, strict=True))
        self._values = values

    def __getitem__(self, key):
        return self._values[key] if isinstance(key, int) else super().__getitem__(key)


def _pg_rows(cursor):
    names = [c.name for c in cursor.description or []]
    return lambda values: _PgRow(names, values)


_COLUMNS = {"predictions": ["raw", "pred", "gold", "correct", "cached", "finish_reason", "prompt_tokens",
                            "completion_tokens", "split"]}


class Store:
    def __init__(self, path: str | os.PathLike | None = None):
        location = path if path else default_db()
        self.postgres = is_postgres(location)
        self._local = threading.local()
        if self.postgres:
            self.url = str(location)
            self.path = _pg_location(self.url)  # shown in messages; never a password (refused)
        else:
            self.path = Path(location)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(SCHEMA)  # executescript manages its own transaction
        if self.postgres:
            self._conn().execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS live TEXT")
            return
        cols = {r["name"] for r in self._conn().execute("PRAGMA table_info(runs)")}
        if "live" not in cols:  # a store made before live progress: add the column (old rows read as no progress)
            self._conn().execute("ALTER TABLE runs ADD COLUMN live TEXT")

    @property
    def local_dir(self) -> Path:
        """A folder on this machine for what is not in the store (worker logs, sweep files)."""
        if self.postgres:
            d = Path(os.environ.get("PROMPTOPT_HOME") or Path.home() / ".local" / "share" / "promptopt")
        else:
            d = self.path.parent
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- connections --------------------------------------------------------------------------------------------
    def _conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.postgres:
                c = _Pg(self.url)
            else:
                c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                c.row_factory = sqlite3.Row
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
                c.execute("PRAGMA foreign_keys=ON")
                c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
        return c

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        c = self._conn()
        if self.postgres:
            with c.conn.transaction():
                yield c
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # --- sweeps (optimizers.sweep): which run is which cell of a grid ---------------------------------------------
    def create_sweep(self, sweep_id: str, name: str, spec: dict[str, Any], cells: list[str]) -> None:
        """Store the sweep and its cells once; again (the same file run again) changes nothing."""
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO sweeps (id, name, created, spec) VALUES (?,?,?,?)",
                      (sweep_id, name, time.time(), _dumps(spec)))
            c.executemany("INSERT OR IGNORE INTO sweep_cells (sweep_id, position, cell, run_id) VALUES (?,?,?,NULL)",
                          [(sweep_id, i, cell) for i, cell in enumerate(cells)])

    def get_sweep(self, sweep_id: str) -> dict[str, Any] | None:
        r = self._conn().execute("SELECT * FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        return {**dict(r), "spec": json.loads(r["spec"])} if r else None

    def list_sweeps(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT s.id, s.name, s.created, COUNT(c.cell) AS cells FROM sweeps s LEFT JOIN "
                                    "sweep_cells c ON c.sweep_id = s.id GROUP BY s.id ORDER BY s.created DESC")
        return [dict(r) for r in rows]

    def sweep_cells(self, sweep_id: str) -> list[tuple[str, str | None]]:
        """(cell key, run id or None) in grid order."""
        rows = self._conn().execute("SELECT cell, run_id FROM sweep_cells WHERE sweep_id=? ORDER BY position",
                                    (sweep_id,))
        return [(r["cell"], r["run_id"]) for r in rows]

    def sweep_run(self, sweep_id: str, cell: str) -> str | None:
        r = self._conn().execute("SELECT run_id FROM sweep_cells WHERE sweep_id=? AND cell=?", (sweep_id, cell))
        row = r.fetchone()
        return row["run_id"] if row else None

    def set_sweep_run(self, sweep_id: str, cell: str, run_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE sweep_cells SET run_id=? WHERE sweep_id=? AND cell=?", (run_id, sweep_id, cell))

    # --- runs ---------------------------------------------------------------------------------------------------
    def create_run(self, config: dict[str, Any], *, optimizer: str, seed: int, data_name: str | None,
                   splits: Splits | None = None) -> str:
        run_id = uuid.uuid4().hex[:10]
        now = time.time()
        with self._tx() as c:
            c.execute("INSERT INTO runs (id, created, updated, status, optimizer, data_name, seed, config) "
                      "VALUES (?,?,?,?,?,?,?,?)", (run_id, now, now, RunStatus.CREATED.value, optimizer, data_name, seed,
                                                   _dumps(config)))
            if splits is not None:
                rows = [(run_id, ex.id, name, i, _dumps(ex.fields), ex.label)
                        for name in ("train", "dev", "test") for i, ex in enumerate(getattr(splits, name))]
                c.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?)", rows)
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        r = self._conn().execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._run_dict(r) if r else None

    def find_run(self, prefix: str) -> dict[str, Any] | None:
        rows = self._conn().execute("SELECT * FROM runs WHERE id LIKE ?", (prefix + "%",)).fetchall()
        return self._run_dict(rows[0]) if len(rows) == 1 else None

    @staticmethod
    def _run_dict(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        d["status"] = RunStatus(d["status"])
        d["config"] = json.loads(d["config"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        d["live"] = json.loads(d["live"]) if d.get("live") else None
        return d

    def list_runs(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        return [self._run_dict(r) for r in rows]

    def set_status(self, run_id: str, status: RunStatus | str, reason: str | None = None, *,
                   worker_pid: int | None = None) -> None:
        status = RunStatus(status)
        if status is RunStatus.CRASHED:
            raise ValueError("crashed is observed from a running run, never stored")
        with self._tx() as c:
            c.execute("UPDATE runs SET status=?, reason=?, updated=?, heartbeat=?, worker_pid=COALESCE(?, worker_pid)"
                      " WHERE id=?", (status.value, reason, time.time(), time.time(), worker_pid, run_id))

    def heartbeat(self, run_id: str, live: dict[str, Any] | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET heartbeat=?, live=COALESCE(?, live) WHERE id=?",
                      (time.time(), _dumps(live) if live is not None else None, run_id))

    def set_result(self, run_id: str, result: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET result=?, updated=? WHERE id=?", (_dumps(result), time.time(), run_id))

    def set_budget(self, run_id: str, budget: dict[str, Any]) -> None:
        """Change a stored run's budget (e.g. raise it to resume a run that reached it); the rest stays as run."""
        with self._tx() as c:
            row = c.execute("SELECT config FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run {run_id!r}")
            cfg = json.loads(row[0])
            cfg["budget"] = {**cfg.get("budget", {}), **budget}
            c.execute("UPDATE runs SET config=?, updated=? WHERE id=?", (_dumps(cfg), time.time(), run_id))

    def request_stop(self, run_id: str, stop: bool = True) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET stop_requested=? WHERE id=?", (int(stop), run_id))

    def stop_requested(self, run_id: str) -> bool:
        r = self._conn().execute("SELECT stop_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(r and r[0])

    def delete_run(self, run_id: str) -> None:
        with self._tx() as c:
            for t in ("predictions", "scores", "candidates", "events", "examples"):
                c.execute(f"DELETE FROM {t} WHERE run_id=?", (run_id,))
            c.execute("DELETE FROM runs WHERE id=?", (run_id,))
            c.execute("UPDATE sweep_cells SET run_id=NULL WHERE run_id=?", (run_id,))  # its sweep makes it again

    # --- examples -----------------------------------------------------------------------------------------------
    def load_splits(self, run_id: str) -> Splits:
        rows = self._conn().execute("SELECT * FROM examples WHERE run_id=? ORDER BY split, position",
                                    (run_id,)).fetchall()
        parts: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
        for r in rows:
            parts[r["split"]].append(Example(r["example_id"], json.loads(r["fields"]), r["label"]))
        return Splits(parts["train"], parts["dev"], parts["test"])

    # --- events -------------------------------------------------------------------------------------------------
    def append_event(self, run_id: str, event: Event, predictions: Iterable[dict[str, Any]] = (),
                     stream_index: int | None = None) -> int:
        """Store one event (and the projections the pages query) in a single transaction; returns its seq."""
        with self._tx() as c:
            if self.postgres:  # writers of one run queue here (SQLite's BEGIN IMMEDIATE already serialises them)
                c.execute("SELECT id FROM runs WHERE id=? FOR UPDATE", (run_id,))
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id=?", (run_id,)).fetchone()[0]
            c.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                      (run_id, seq, event.kind, event.step, event.ts, event.model_dump_json(), stream_index))
            if isinstance(event, CandidateProposed):
                c.execute("INSERT OR IGNORE INTO candidates VALUES (?,?,?,?,?,?,?)",
                          (run_id, event.candidate_id, event.text, _dumps(event.parents), event.origin, event.step,
                           seq))
            elif isinstance(event, CandidateScored):
                c.execute("INSERT INTO scores VALUES (?,?,?,?,?,?,?,?,?,?)",
                          (run_id, seq, event.candidate_id, event.split, event.purpose, event.step, event.n,
                           event.score, event.ci_low, event.ci_high))
                c.executemany(
                    "INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(run_id, event.candidate_id, p["example_id"], event.split, p["raw"], p["pred"], p["gold"],
                      int(p["correct"]), int(p["cached"]), p.get("finish_reason"), p.get("prompt_tokens"),
                      p.get("completion_tokens")) for p in predictions])
            c.execute("UPDATE runs SET heartbeat=?, updated=? WHERE id=?", (time.time(), time.time(), run_id))
        return seq

    def events(self, run_id: str, after: int = 0, kinds: Iterable[str] | None = None,
               limit: int | None = None) -> list[tuple[int, Event]]:
        q = "SELECT seq, data FROM events WHERE run_id=? AND seq>?"
        args: list[Any] = [run_id, after]
        if kinds:
            kinds = list(kinds)
            q += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        q += " ORDER BY seq"
        if limit:
            q += f" LIMIT {int(limit)}"
        return [(r[0], parse_event(r[1])) for r in self._conn().execute(q, args).fetchall()]

    def stream_kinds(self, run_id: str) -> list[str]:
        """Kinds of the optimizer's stored events in stream order: what a resumed run must replay."""
        rows = self._conn().execute("SELECT kind FROM events WHERE run_id=? AND oi IS NOT NULL ORDER BY oi",
                                    (run_id,)).fetchall()
        return [r[0] for r in rows]

    def event_count(self, run_id: str) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM events WHERE run_id=?", (run_id,)).fetchone()[0]

    def last_event(self, run_id: str, kind: str) -> Event | None:
        r = self._conn().execute("SELECT data FROM events WHERE run_id=? AND kind=? ORDER BY seq DESC LIMIT 1",
                                 (run_id, kind)).fetchone()
        return parse_event(r[0]) if r else None

    # --- projections --------------------------------------------------------------------------------------------
    def candidates(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM candidates WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["parents"] = json.loads(d["parents"])
            out.append(d)
        return out

    def scores(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM scores WHERE run_id=? AND seq>? ORDER BY seq",
                                    (run_id, after)).fetchall()
        return [dict(r) for r in rows]

    def predictions(self, run_id: str, candidate_id: str | None = None, split: str | None = None,
                    limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM predictions WHERE run_id=?", [run_id]
        if candidate_id:
            q += " AND candidate_id=?"
            args.append(candidate_id)
        if split:
            q += " AND split=?"
            args.append(split)
        q += " ORDER BY candidate_id, CAST(example_id AS INTEGER), example_id"
        if limit:
            q += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        return [dict(r) for r in self._conn().execute(q, args).fetchall()]
