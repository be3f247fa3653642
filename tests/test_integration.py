"""Mechanics against the real embedded llama.cpp server with the small SmolLM2 model (accuracy is not the point:
the model answers 'positive' to almost everything). Every registered optimizer runs a tiny budget end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from optimizers import methods  # noqa: E402,F401
from optimizers.base import REGISTRY  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("integration")
    e = {**os.environ, "PROMPTOPT_MODEL": os.environ.get("PROMPTOPT_TEST_MODEL", "smollm2-135m"),
         "PROMPTOPT_CACHE_DIR": str(d / "cache"), "PROMPTOPT_DB": str(d / "runs.sqlite")}
    e.pop("OPENAI_BASE_URL", None)
    models = Path.home() / ".cache" / "promptopt" / "models"
    if models.exists():  # reuse assembled models; the response cache stays per test run
        (d / "cache").mkdir(exist_ok=True)
        os.symlink(models, d / "cache" / "models")
    return e


def cli(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "optimizers", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_eval_on_embedded_model_then_zero_calls(env):
    args = ["eval", "--data", "sentiment", "--split", "test", "--limit", "6", "--json"]
    r1 = cli(env, *args)
    assert r1.returncode == 0, r1.stderr
    o1 = json.loads(r1.stdout.strip().splitlines()[-1])
    assert o1["embedded"] and o1["n"] == 6 and o1["calls"] == 6 and 0.0 <= o1["score"] <= 1.0
    assert o1["completion_tokens"] > 0
    o2 = json.loads(cli(env, *args).stdout.strip().splitlines()[-1])
    assert o2["calls"] == 0 and o2["cache_hits"] == 6 and o2["score"] == o1["score"]


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.__module__.startswith("optimizers.")))
def test_each_optimizer_runs_on_embedded_model(env, tmp_path, name):
    out = tmp_path / "out"
    r = cli(env, "run", "--data", "sentiment", "--optimizer", name, "--max-train", "6", "--max-dev", "4",
            "--max-test", "4", "--max-calls", "40", "--seed", "1", "--param", "optimizer_max_tokens=160",
            "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "result.json").read_text())
    assert res["optimizer"] == name and res["status"] in ("done", "budget")
    assert res["optimization_usage"]["calls"] <= 40
    assert res["scores"]["best"]["test"]["n"] == 4
    exported = json.loads(cli(env, "export", res["run_id"]).stdout)
    kinds = {e["kind"] for e in exported["events"]}
    assert {"run_started", "candidate_proposed", "candidate_scored", "run_finished"} <= kinds


def test_a_model_per_role_on_one_swapping_embedded_server(env, tmp_path):
    """Task: SmolLM2 by its bundled name; optimizer: the same weights by file path, so another alias. One llama.cpp
    child serves both (it swaps the model a request names): every optimizer request names the optimizer's alias, and
    that one child answered every request of the run, no second child started."""
    from optimizers.local_model import model_alias, model_path

    smol_file = str(model_path("smollm2-135m"))
    opt_alias = model_alias(smol_file)
    assert opt_alias != "smollm2-135m"
    out = tmp_path / "out"
    t0 = time.time()
    r = cli(env, "run", "--data", "sentiment", "--optimizer", "opro", "--model", "smollm2-135m",
            "--optimizer-model", smol_file, "--max-train", "6", "--max-dev", "4", "--max-test", "4",
            "--max-calls", "30", "--seed", "2", "--param", "optimizer_max_tokens=120", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "result.json").read_text())
    assert res["status"] in ("done", "budget")
    events = json.loads(cli(env, "export", res["run_id"]).stdout)["events"]
    started = next(e for e in events if e["kind"] == "run_started")
    assert started["roles"] == {"task": {"model": "smollm2-135m", "endpoint": "embedded llama.cpp"},
                                "optimizer": {"model": opt_alias, "endpoint": "embedded llama.cpp"}}
    asked = [e for e in events if e["kind"] == "meta_prompt"]
    assert asked and {e["model"] for e in asked} == {opt_alias}
    logs = Path(env["PROMPTOPT_CACHE_DIR"]) / "models" / "logs"
    alone = logs / f"server-{opt_alias}.log"  # (the models folder, logs included, is shared with earlier runs)
    assert not alone.exists() or alone.stat().st_mtime < t0  # no child of the optimizer's own started
    log = logs / f"server-smollm2-135m+{opt_alias}.log"
    text = log.read_text(errors="replace")
    assert "POST /v1/completions" in text  # the start's one-token probe, a plain completion outside the run's count
    posts = text.count("POST /v1/chat/completions")
    assert posts == res["calls"] > sum(not e["cached"] for e in asked) > 0  # the task's requests and the optimizer's


def test_gpo_retrieves_by_embeddings_from_the_embedded_server(env, tmp_path):
    """The embedded server serves /v1/embeddings (pooled per text), so GPO's relevance retrieval is by embeddings,
    not the lexical fallback: with similarity=embeddings a missing endpoint would fail the run."""
    out = tmp_path / "out"
    r = cli(env, "run", "--data", "sentiment", "--optimizer", "gpo", "--max-train", "6", "--max-dev", "4",
            "--max-test", "4", "--max-calls", "60", "--seed", "2", "--param", "optimizer_max_tokens=120",
            "--param", "similarity=embeddings", "--param", "epochs=3", "--param", "rule_start=0", "--no-then-demos",
            "--out", str(out), "--json")  # the budget for GPO's steps, whose retrieval this is about
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "result.json").read_text())
    assert res["status"] in ("done", "budget"), res["reason"]
    events = json.loads(cli(env, "export", res["run_id"]).stdout)["events"]
    sims = {e["similarity"] for e in events if e["kind"] == "retrieval" and e["similarity"] != "none"}
    assert sims and all(s.startswith("embeddings:") for s in sims), sims

