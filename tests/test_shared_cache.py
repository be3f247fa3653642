"""The response cache's contract on a local folder and in a shared PostgreSQL database (a real server): answers by
key, and the journal of requests in flight; and a run on one "machine" answered entirely from what another machine
paid for, when both use the shared cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizers.budget import Amount, Claim, Counters
from optimizers.llm import ResponseCache, open_cache
from optimizers.shared_cache import PgResponseCache
from tests.stub_server import StubServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["folder", "postgres"])
def cache(request, tmp_path):
    if request.param == "folder":
        c = open_cache(str(tmp_path / "cache"))
        assert isinstance(c, ResponseCache)
    else:
        c = open_cache(request.getfixturevalue("pg_url"))
        assert isinstance(c, PgResponseCache)
    yield c
    c.close()


def test_answers_and_the_in_flight_journal(cache):
    assert cache.get("k") is None
    cache.set("k", {"text": "positive", "usage": {"prompt_tokens": 3}, "embedding": [0.5, 0.25]})
    cache.set("k", {"text": "negative"})  # a key's answer replaced
    assert cache.get("k") == {"text": "negative"}
    claim = Claim(role="task", model="m", upper=Amount(calls=1, tokens=40, cost=0.0), prompt_bound=30, max_completion=10)
    a, b, c = cache.sent("run1", claim), cache.sent("run1", claim), cache.sent("run2", claim)
    cache.answered(a)  # cached: out of the journal
    cache.billed(b, "task", "m", Counters(calls=1, prompt_tokens=10, completion_tokens=2), at=100.0)
    got = cache.orphans("run1", recorded_until=50.0)
    assert [(e["tokens"], e["billed_at"]) for e in got] == [(12, 100.0)]  # billed after the snapshot: still owed
    assert cache.orphans("run1", recorded_until=150.0) == []  # a snapshot covers it: gone
    left = cache.orphans("run2", recorded_until=0.0)
    assert len(left) == 1 and left[0]["tokens"] == 40 and left[0]["billed_at"] > 0  # in flight: worst case
    assert c


def test_a_run_on_another_machine_pays_nothing_from_the_shared_cache(pg_url, tmp_path):
    with StubServer(lambda r: "positive") as stub:
        def run(machine: str) -> dict:
            env = {**os.environ, "OPENAI_API_KEY": "k", "PROMPTOPT_CACHE_DIR": str(tmp_path / machine),
                   "PROMPTOPT_DB": str(tmp_path / f"{machine}.sqlite")}
            r = subprocess.run([sys.executable, "-m", "optimizers", "run", "--data", "sentiment", "--optimizer",
                                "demos", "--param", "trials=2", "--param", "k=2", "--base-url", stub.base_url,
                                "--model", "stub", "--max-train", "8", "--max-dev", "6", "--max-test", "6",
                                "--max-calls", "60", "--cache-dir", pg_url, "--json"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
            return json.loads(r.stdout.strip().splitlines()[-1])

        first = run("machine-a")
        paid = len(stub.chat_requests())
        second = run("machine-b")  # its own store and local cache folder; the shared cache answers everything
        assert first["calls"] == paid > 0 and second["calls"] == 0
        assert second["cache_hits"] == first["calls"] + first["cache_hits"]  # every request answered by the cache
        assert len(stub.chat_requests()) == paid
        assert second["best_prompt"] == first["best_prompt"]
