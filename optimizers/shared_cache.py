"""The response cache in PostgreSQL, so it can be shared by machines: a run resumed on another node (a Ray task
retried after its node died) replays every answer the first node got, and pays only for what was in flight.

Chosen by giving a postgresql:// URL as the cache location (`--cache-dir`, a sweep's `cache_dir:`, or
PROMPTOPT_CACHE_DB): the same interface as optimizers.llm.ResponseCache (answers by key, and the journal of requests
in flight that a killed process leaves for the resumed run to bill). diskcache stays the default: it is SQLite
underneath, fast on a local disk and unsafe on a network filesystem, hence a database for the shared case.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .budget import Claim, Counters
from .store import _Pg, _pg_location

SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_responses (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS llm_inflight (token TEXT PRIMARY KEY, run_id TEXT NOT NULL, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS llm_inflight_run ON llm_inflight(run_id)
"""


class PgResponseCache:
    def __init__(self, url: str):
        self.url = url
        self.directory = _pg_location(url)  # what is shown (no password: one is refused)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> _Pg:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = _Pg(self.url)
        return c

    # --- answers --------------------------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        r = self._conn().execute("SELECT value FROM llm_responses WHERE key=?", (key,)).fetchone()
        return json.loads(r[0]) if r else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._conn().execute("INSERT INTO llm_responses (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                             "value=EXCLUDED.value", (key, json.dumps(value, default=str)))

    def store(self, key: str, value: dict[str, Any], tokens: Sequence[str] = ()) -> None:
        """A reply into the cache, then its tries out of the journal (ResponseCache.store)."""
        self.set(key, value)
        for t in tokens:
            self.answered(t)

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # --- requests in flight (see ResponseCache) ----------------------------------------------------------------------
    def _put(self, token: str, entry: dict[str, Any]) -> None:
        self._conn().execute("INSERT INTO llm_inflight (token, run_id, entry) VALUES (?, ?, ?) ON CONFLICT (token) DO "
                             "UPDATE SET entry=EXCLUDED.entry", (token, token.split(":", 1)[0], json.dumps(entry)))

    def sent(self, run_id: str, claim: Claim) -> str:
        token = f"{run_id}:{uuid.uuid4().hex}"
        self._put(token, {"role": claim.role, "model": claim.model, "tokens": claim.upper.tokens,
                          "cost": claim.upper.cost})
        return token

    def billed(self, token: str, role: str, model: str, counters: Counters, at: float) -> None:
        self._put(token, {"role": role, "model": model, "tokens": counters.tokens, "cost": counters.cost,
                          "billed_at": at})

    def answered(self, token: str) -> None:
        self._conn().execute("DELETE FROM llm_inflight WHERE token=?", (token,))

    def orphans(self, run_id: str, recorded_until: float) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT token, entry FROM llm_inflight WHERE run_id=?", (run_id,)).fetchall()
        out, now = [], time.time()
        for token, raw in ((r[0], r[1]) for r in rows):
            entry = json.loads(raw)
            if entry.get("billed_at") is None:
                entry = {**entry, "billed_at": now}
                self._put(token, entry)
            elif float(entry["billed_at"]) <= recorded_until:
                self.answered(token)
                continue
            out.append(entry)
        return out
