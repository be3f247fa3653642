"""The CLI contract: `--json` prints one JSON object as the last stdout line; bad input exits non-zero with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import scripted, toy_task_answer
from tests.stub_server import StubServer

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "optimizers", *args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def toy_csv(tmp_path: Path) -> Path:
    p = tmp_path / "toy.csv"
    rows = ["text,label"]
    for i in range(40):
        rows.append(f"\"Review {i}: {'loved it' if i % 2 == 0 else 'hated it'}.\",{'positive' if i % 2 == 0 else 'negative'}")
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.fixture
def env(tmp_path: Path):
    return {"PROMPTOPT_CACHE_DIR": str(tmp_path / "cache"), "PROMPTOPT_DB": str(tmp_path / "runs.sqlite"),
            "OPENAI_API_KEY": "sk-cli-secret-123456"}


def test_eval_json_and_second_run_is_free(toy_csv, env):
    with StubServer(lambda r: toy_task_answer(r)) as stub:
        args = ["eval", "--data", str(toy_csv), "--input-col", "text", "--label-col", "label",
                "--template", "{prompt}\n\nText: {text}\nAnswer:", "--prompt", "Classify the sentiment.",
                "--split", "all", "--base-url", stub.base_url, "--model", "stub-task", "--json"]
        r1 = cli(*args, env=env)
        assert r1.returncode == 0, r1.stderr
        out1 = json.loads(r1.stdout.strip().splitlines()[-1])
        assert out1["score"] == 1.0 and out1["n"] == 40 and out1["calls"] == 40 and out1["cache_hits"] == 0
        assert out1["prompt_tokens"] > 0 and out1["completion_tokens"] > 0
        r2 = cli(*args, env=env)
        out2 = json.loads(r2.stdout.strip().splitlines()[-1])
        assert out2["calls"] == 0 and out2["cache_hits"] == 40 and out2["score"] == 1.0
        assert len(stub.chat_requests()) == 40


def test_eval_limit_and_split(toy_csv, env):
    with StubServer(lambda r: "positive") as stub:
        r = cli("eval", "--data", str(toy_csv), "--input-col", "text", "--label-col", "label", "--prompt", "Go.",
                "--split", "test", "--limit", "5", "--base-url", stub.base_url, "--json", env=env)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["n"] == 5 and out["split"] == "test"


@pytest.mark.parametrize("args,message", [
    (["--data", "nope.csv", "--input-col", "text", "--label-col", "label"], "no such file"),
    (["--input-col", "txt", "--label-col", "label"], "txt"),
    (["--input-col", "text", "--label-col", "label", "--template", "no placeholder"], "{prompt}"),
])
def test_bad_input_exits_with_one_line(toy_csv, env, args, message):
    if "--data" not in args:
        args = ["--data", str(toy_csv), *args]
    r = cli("eval", *args, "--prompt", "x", "--base-url", "http://127.0.0.1:9/v1", env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr


def test_dead_endpoint_is_one_line_and_key_never_printed(toy_csv, env):
    r = cli("eval", "--data", str(toy_csv), "--input-col", "text", "--label-col", "label", "--prompt", "x",
            "--base-url", "http://127.0.0.1:9/v1", "--limit", "1", env={**env, "PROMPTOPT_PATIENCE": "1"})
    assert r.returncode != 0
    assert "sk-cli-secret" not in r.stderr + r.stdout


def test_run_writes_result_and_store_commands(toy_csv, env, tmp_path):
    def opt(req):
        return "<START>Classify the sentiment of the review.<END>"

    with StubServer(scripted(opt)) as stub:
        out = tmp_path / "out"
        r = cli("run", "--data", str(toy_csv), "--input-col", "text", "--label-col", "label",
                "--template", "{prompt}\n\nText: {text}\nAnswer:", "--optimizer", "baseline",
                "--initial-prompt", "Classify the text.", "--base-url", stub.base_url, "--model", "stub-task",
                "--optimizer-model", "stub-opt", "--seed", "3", "--max-calls", "50", "--out", str(out), "--json",
                env=env)
        assert r.returncode == 0, r.stderr
        res = json.loads((out / "result.json").read_text())
        for k in ("optimizer", "initial_prompt", "best_prompt", "scores", "calls", "cache_hits", "prompt_tokens",
                  "completion_tokens", "seed", "config"):
            assert k in res
        assert res["seed"] == 3 and set(res["scores"]["initial"]) == {"train", "dev", "test"}
        assert "sk-cli-secret" not in (out / "result.json").read_text()
        last = json.loads(r.stdout.strip().splitlines()[-1])
        assert last["run_id"] == res["run_id"]
        rid = res["run_id"]
        runs = json.loads(cli("runs", "--json", env=env).stdout)
        assert [x["id"] for x in runs] == [rid]
        assert rid in cli("show", rid[:6], env=env).stdout
        exp = json.loads(cli("export", rid, env=env).stdout)
        assert exp["run"]["id"] == rid and exp["events"][0]["kind"] == "run_started"
        csv_text = cli("export", rid, "--format", "csv", env=env).stdout
        assert csv_text.splitlines()[0].startswith("candidate_id,")
        db = Path(env["PROMPTOPT_DB"]).read_bytes()
        assert b"sk-cli-secret" not in db
        before = len(stub.requests)
        r2 = cli("resume", rid, "--json", env=env)
        res2 = json.loads(r2.stdout.strip().splitlines()[-1])
        # resuming a finished run replays from the cache: no new request, the run's totals unchanged
        assert r2.returncode == 0 and len(stub.requests) == before
        assert res2["optimization_usage"]["calls"] == res["optimization_usage"]["calls"]
        assert res2["report_usage"]["calls"] == res["report_usage"]["calls"] and res2["calls"] == res["calls"]


def test_unknown_optimizer(toy_csv, env):
    r = cli("run", "--data", str(toy_csv), "--input-col", "text", "--label-col", "label", "--optimizer", "sgd",
            "--initial-prompt", "x", env=env)
    assert r.returncode == 2 and "unknown" in r.stderr


def test_resume_with_a_larger_budget_continues_a_run_that_reached_it(toy_csv, env, tmp_path):
    def opt(req):
        n = req["messages"][-1]["content"].count("x")
        return f"<START>Classify the sentiment of the review{' x' * (n + 1)}.<END>"

    with StubServer(scripted(opt)) as stub:
        base = ["--data", str(toy_csv), "--input-col", "text", "--label-col", "label", "--template",
                "{prompt}\n\nText: {text}\nAnswer:", "--initial-prompt", "Classify the text.", "--base-url",
                stub.base_url, "--model", "stub-task", "--optimizer-model", "stub-opt"]
        r = cli("run", *base, "--optimizer", "gpo", "--param", "epochs=1", "--max-calls", "25", "--json", env=env)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["status"] == "budget" and res["optimization_usage"]["calls"] <= 25
        # the report holds most of 25 calls: said on stderr before the run spends them, with the way out
        assert "warning: the report (the initial and the best prompt on" in r.stderr and "--max-test" in r.stderr
        r2 = cli("resume", res["run_id"], "--max-calls", "2000", "--json", env=env)
        res2 = json.loads(r2.stdout.strip().splitlines()[-1])
        assert r2.returncode == 0 and res2["status"] == "done", r2.stderr
        from optimizers.store import Store

        assert Store(env["PROMPTOPT_DB"]).get_run(res["run_id"])["config"]["budget"]["max_calls"] == 2000
        assert res2["optimization_usage"]["calls"] > res["optimization_usage"]["calls"]


def test_preset_and_demo_flags_reach_the_stored_config(toy_csv, env):
    with StubServer(scripted(lambda req: "<START>Classify the sentiment of the review.<END>")) as stub:
        base = ["--data", str(toy_csv), "--input-col", "text", "--label-col", "label", "--initial-prompt",
                "Classify the text.", "--base-url", stub.base_url, "--model", "stub-task", "--optimizer-model",
                "stub-opt", "--layout", "system", "--demos", "2"]
        r = cli("run", *base, "--optimizer", "opro", "--preset", "paper (GPT scorer)", "--param", "num_search_steps=1",
                "--then-demos", "--demo-param", "trials=1", "--demo-param", "k=2", "--max-calls", "200", "--json",
                env=env)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout.strip().splitlines()[-1])
        from optimizers.store import Store

        cfg = Store(env["PROMPTOPT_DB"]).get_run(res["run_id"])["config"]
        assert cfg["params"]["old_instruction_score_threshold"] == 0.3 and cfg["params"]["num_search_steps"] == 1
        assert cfg["demo_search"] == {"trials": 1, "k": 2}
        assert cfg["task"]["layout"] == "system" and len(cfg["task"]["demos"]) == 2
        bad = cli("run", *base, "--optimizer", "opro", "--preset", "nope", env=env)
        assert bad.returncode == 2 and "has no preset 'nope'" in bad.stderr
        bad = cli("run", *base, "--optimizer", "opro", "--demo-param", "k=2", env=env)
        assert bad.returncode == 2 and "--then-demos" in bad.stderr
