"""The benchmark scripts keep working: bench_optimizers over real HTTP to the scripted stub (each run pays for its own
calls), and run_all's report merges PromptOpt's and DSPy's rows into one table and a plot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import last_user
from tests.stub_server import StubServer

ROOT = Path(__file__).resolve().parent.parent
INITIAL = "Classify the sentiment of the review."  # the bundled sentiment set's initial prompt


def _gold(text: str) -> str | None:
    from optimizers.data import load_bundled

    df, _ = load_bundled("sentiment")
    return next((lab for t, lab in zip(df["text"], df["label"]) if str(t) in text), None)


def _respond(req: dict) -> str:
    if req.get("model") == "stub-task":
        if "ALWAYS POSITIVE" in last_user(req):  # instructions that change answers: the paired test sees them
            return "positive"
        if "ORACLE" in last_user(req):
            return _gold(last_user(req)) or "negative"
        return "positive" if "loved" in last_user(req) or "great" in last_user(req) else "negative"
    return "<START>Decide whether the review is positive or negative.<END> <INS>Say if the review is positive.</INS>"


def test_bench_optimizers_table_and_each_run_pays_for_its_own_calls(tmp_path: Path):
    out = tmp_path / "sentiment" / "promptopt"  # run_all's layout: <out>/<task>/promptopt
    env = {**os.environ, "PROMPTOPT_CACHE_DIR": str(tmp_path / "shared-cache"), "OPENAI_API_KEY": "sk-bench-secret"}
    with StubServer(_respond) as stub:
        r = subprocess.run([sys.executable, "bench/bench_optimizers.py", "--tasks", "sentiment", "--optimizers",
                            "opro,protegi", "--max-calls", "60", "--base-url", stub.base_url, "--model", "stub-task",
                            "--optimizer-model", "stub-opt", "--out", str(out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        task_reqs = [json.dumps(q["messages"]) for q in stub.chat_requests() if q.get("model") == "stub-task"]
        t = subprocess.run([sys.executable, "bench/bench_trajectory.py", str(out), "--base-url", stub.base_url,
                            "--model", "stub-task"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert t.returncode == 0, t.stderr
        (tmp_path / "sentiment" / "dspy.json").write_text(json.dumps([
            {"task": "sentiment", "optimizer": "DSPy COPRO", "final": "Say ALWAYS POSITIVE.", "best": {"score": 0.5},
             "initial": {"score": 0.5}},
            {"task": "sentiment", "optimizer": "DSPy MIPROv2 (0-shot)", "final": "Answer as the ORACLE would.",
             "best": {"score": 1.0}, "initial": {"score": 0.5}}]))
        pair_argv = [sys.executable, "bench/bench_paired.py", str(tmp_path / "sentiment"), "--base-url",
                     stub.base_url, "--model", "stub-task"]
        pr = subprocess.run(pair_argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert pr.returncode == 0, pr.stderr
        first = json.loads((tmp_path / "sentiment" / "paired.json").read_text())
        pr2 = subprocess.run(pair_argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert pr2.returncode == 0, pr2.stderr
        again = json.loads((tmp_path / "sentiment" / "paired.json").read_text())
    rows = json.loads((out / "summary.json").read_text())
    assert [x["optimizer"] for x in rows] == ["opro", "protegi"]
    for x in rows:
        assert x["status"] in ("done", "budget") and 0 < x["calls"] <= 60
        assert 0 < x["wall"] < x["wall_process"]  # the optimization's time, without process start and report
        assert x["initial"]["n"] == 16 and x["best"]["n"] == 16  # sentiment's test split, scored for both prompts
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| sentiment |")]
    assert len(table) == 2 and "split caps train 126 / dev 63 / test 126" in r.stdout
    # Both runs scored the initial prompt on training examples themselves: with one shared response cache the
    # second run would have got those answers for free, outside its budget.
    initial_reqs = Counter(m for m in task_reqs if INITIAL in m)
    assert initial_reqs and max(initial_reqs.values()) >= 2
    assert {p.name for p in (out / "cache").iterdir()} == {"sentiment-opro", "sentiment-protegi"}
    assert not (tmp_path / "shared-cache").exists()
    # the test-split trajectory starts at the initial prompt's and ends at the best prompt's test score, and re-scoring
    # those two costs nothing (each run's own cache holds them)
    traj = {x["optimizer"]: x for x in json.loads((out / "trajectory.json").read_text())}
    for x in rows:
        pts = traj[x["optimizer"]]["points"]
        assert pts[0][0] <= pts[-1][0] <= x["calls"]
        assert pts[0][1] == x["initial"]["score"] and pts[-1][1] == x["best"]["score"]
        assert traj[x["optimizer"]]["scoring_calls"] <= 16 * max(len(pts) - 2, 0)
    # paired test, initial vs best on the same test examples: PromptOpt's runs re-read their own caches (no calls),
    # and the counts agree with the two scores
    from scipy.stats import binomtest

    pairs = {(x["tool"], x["optimizer"]): x for x in first}
    for x in rows:
        p = pairs[("PromptOpt", {"opro": "OPRO", "protegi": "ProTeGi"}[x["optimizer"]])]
        assert p["n"] == 16 and p["initial"] == x["initial"]["score"] and p["best"] == x["best"]["score"]
        assert p["scoring_calls"] == 0
        assert p["gained"] - p["lost"] == round((p["best"] - p["initial"]) * 16)
    # "always positive" changes the answer on every review the stub called negative: gained on the positive ones,
    # lost on the negative ones
    d = pairs[("DSPy", "COPRO")]
    assert d["scoring_calls"] == 32
    o = pairs[("DSPy", "MIPROv2 (0-shot)")]  # right on every review: gains what the initial prompt got wrong
    assert (o["best"], o["gained"], o["lost"]) == (1.0, round((1 - o["initial"]) * 16), 0) and o["gained"] > 0
    assert o["scoring_calls"] == 16  # the initial prompt's answers are already in the cache
    assert o["p_value"] == pytest.approx(binomtest(0, o["gained"], 0.5).pvalue)
    assert d["gained"] > 0 and d["lost"] > 0 and d["gained"] - d["lost"] == round((d["best"] - d["initial"]) * 16)
    assert d["p_value"] == pytest.approx(binomtest(d["lost"], d["gained"] + d["lost"], 0.5).pvalue)
    assert d["best_top_answer"] == ["positive", 1.0] and d["majority_share"] == 0.5  # 8 of 16 test reviews
    assert [x["scoring_calls"] for x in again] == [0] * len(again)
    assert "not the same test split" not in pr.stdout  # the split rebuilt for DSPy's rows is the one it was scored on  # DSPy's re-scoring is cached too
    assert f"| {d['lost']} | {d['p_value']:.3f} | negative (1.00) / positive (1.00) | 0.500 | 32 |" in pr.stdout
    assert "sk-bench-secret" not in t.stdout + t.stderr + pr.stdout + pr.stderr
    assert "sk-bench-secret" not in r.stdout + r.stderr + (out / "summary.json").read_text()


def test_run_all_report_merges_promptopt_and_dspy_rows(tmp_path: Path):
    out = tmp_path / "results"
    (out / "sentiment" / "promptopt").mkdir(parents=True)
    s = {"score": 0.75, "ci": [0.5, 0.9], "n": 16}
    b = {"score": 0.875, "ci": [0.64, 0.97], "n": 16}
    (out / "sentiment" / "promptopt" / "summary.json").write_text(json.dumps([
        {"task": "sentiment", "optimizer": "opro", "initial": s, "best": b, "selection": [0.7, 0.8],
         "selection_split": "train", "calls": 300, "tokens": 12345, "cache_hits": 3, "calls_to_90": 120, "wall": 99.0,
         "status": "budget", "best_prompt": "Say whether | the review is positive.", "knobs": {}},
        {"task": "sentiment", "optimizer": "gpo", "status": "error", "reason": "endpoint down"}]))
    (out / "sentiment" / "dspy.json").write_text(json.dumps([
        {"task": "sentiment", "optimizer": "DSPy COPRO", "knobs": {"breadth": 2}, "selection": [0.7, "train"],
         "usage": {"calls": 280, "prompt_tokens": 9000, "completion_tokens": 1000, "refused": 4, "repeats": 10},
         "wall": 200.0, "status": "budget", "reason": "", "final": "Classify it.", "n_test": 16,
         "initial": {"score": 0.75, "ci": [0.5, 0.9]}, "best": {"score": 0.75, "ci": [0.5, 0.9]}}]))
    (out / "sentiment" / "paired.json").write_text(json.dumps([
        {"task": "sentiment", "tool": "PromptOpt", "optimizer": "OPRO", "n": 16, "initial": 0.75, "best": 0.875,
         "gained": 3, "lost": 1, "p_value": 0.625}]))
    (out / "sentiment" / "paired.md").write_text("| task | tool |\n|---|---|\n| sentiment | PromptOpt-paired-row |\n")
    (out / "engine.md").write_text("| examples | calls/s |\n|---:|---:|\n| 100 | 91 |\n")
    r = subprocess.run([sys.executable, "bench/run_all.py", "--out", str(out), "--tasks", "sentiment",
                        "--report-only", "--dspy-python", sys.executable], cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    rep = (out / "REPORT.md").read_text()
    lines = [ln for ln in rep.splitlines() if ln.startswith("| sentiment |") and "paired-row" not in ln]
    assert len(lines) == 3
    assert lines[0].startswith("| sentiment | PromptOpt | OPRO | 0.750 [0.50, 0.90] | 0.875 [0.64, 0.97] | 16 | "
                               "+3 / -1 (p=0.62) | 0.700 -> 0.800 (train) | 300 | 12,345 | 120 / ? | 99 | budget | Say whether \\| the")
    assert "| GPO | error: endpoint down |" in lines[1]
    assert lines[2].startswith("| sentiment | DSPy | COPRO | 0.750 [0.50, 0.90] | 0.750 [0.50, 0.90] | 16 | - | "
                               "0.700 (train) | 280 | 10,000 | - / - | 200 | budget (4 refused) | Classify it. |")
    assert "| task (n test) | initial | OPRO | DSPy COPRO |" in rep  # the overview: one line per task
    assert "| sentiment (16) | 0.750 | 0.875 (+2) | 0.750 |" in rep
    assert "## Paired tests and answer bias" in rep and "| sentiment | PromptOpt-paired-row |" in rep
    assert "## Engine overhead and throughput (`engine.md`)" in rep and "| 100 | 91 |" in rep
    assert (out / "effectiveness.html").stat().st_size > 100_000  # plotly.js inlined: opens offline
    if shutil.which("chromium") or Path("/usr/bin/chromium").exists():
        png = (out / "effectiveness.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000 and "![test accuracy](effectiveness.png)" in rep
    else:
        pytest.skip("no chromium: the PNG is not rendered (the HTML plot is checked above)")


def test_dspy_forwarder_counts_caps_and_passes_the_output_cap_as_max_tokens():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_dspy import CallCounter, start_forwarder
    finally:
        sys.path.remove(str(ROOT / "bench"))
    import urllib.error
    import urllib.request

    counter = CallCounter()
    with StubServer(lambda req: "True") as stub:
        fwd, url = start_forwarder(stub.base_url, counter)
        try:
            counter.reset(2)
            body = {"model": "m", "messages": [{"role": "user", "content": "Q"}], "max_completion_tokens": 32,
                    "temperature": 0}

            def post():
                req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                return urllib.request.urlopen(req, timeout=30)

            assert json.loads(post().read())["choices"][0]["message"]["content"] == "True"
            post()
            with pytest.raises(urllib.error.HTTPError) as e:
                post()  # the third call is past the cap of 2
            assert e.value.code == 429
        finally:
            fwd.shutdown()
        sent = stub.chat_requests()
    assert len(sent) == 2 and all(q["max_tokens"] == 32 and "max_completion_tokens" not in q for q in sent)
    snap = counter.snapshot()
    assert snap["calls"] == 2 and snap["refused"] == 1 and snap["repeats"] == 1


def test_gains_rows_are_paired_against_answering_the_train_majority_label_always():
    """A best prompt that answers the majority label to everything must read as no gain over that constant."""
    sys.path.insert(0, str(ROOT / "bench"))
    from types import SimpleNamespace

    from bench_gain import constant_answer, vs_constant

    from optimizers.data import Example

    train = [Example(str(i), {"q": "x"}, lab) for i, lab in enumerate(["(A)", "(B)", "(B)", "(C)", "(B)"])]
    test = [Example(f"t{i}", {"q": "x"}, lab) for i, lab in enumerate(["(B)"] * 4 + ["(A)"] * 6)]
    prepared = SimpleNamespace(task=SimpleNamespace(labels=["(A)", "(B)", "(C)"]),
                               splits=SimpleNamespace(train=train, test=test))
    label, const = constant_answer(prepared)
    assert label == "(B)" and sum(const.values()) == 4
    always_b = {e.id: e.label == "(B)" for e in test}
    assert vs_constant(always_b, prepared) == "0.400: 0 / 0, p 1"
    all_right = {e.id: True for e in test}
    assert vs_constant(all_right, prepared) == "0.400: 6 / 0, p 0.031"


def test_gains_table_flags_an_arm_whose_initial_answers_show_another_build(tmp_path, monkeypatch):
    """At temperature 0 the initial prompt's test answers fingerprint the task model's build: an arm recorded on
    another build is marked, one or two differing replies (seen between machines on one build) are not."""
    sys.path.insert(0, str(ROOT / "bench"))
    import argparse

    import bench_gain

    from optimizers.base import candidate_id

    a = argparse.Namespace(task="bbh_disambiguation_qa", max_train=126, max_dev=40, max_test=126)
    test_ids = [e.id for e in bench_gain._prepared(a).splits.test]
    initial = "Which option is the antecedent of the pronoun? Answer (A), (B) or (C)."

    def record(arm: str, differ: int) -> None:
        init = {i: [False, "(A)" if n < differ else "(B)"] for n, i in enumerate(test_ids)}
        rec = {"run_id": arm, "status": "done", "initial_prompt": initial, "best_prompt": initial,
               "best_id": candidate_id(initial), "calls": 1, "wall_time_s": 60.0,
               "initial_test": init, "best_test": init}
        (tmp_path / "gain-x" / f"{arm}.json").write_text(json.dumps(rec))

    (tmp_path / "gain-x").mkdir()
    monkeypatch.setattr(bench_gain, "RECORDS", tmp_path)
    for arm, differ in (("baseline", 0), ("demos", 0), ("gpo", 1), ("opro", 20)):
        record(arm, differ)
    text = bench_gain.table(a, ["baseline", "demos", "gpo", "opro"], tmp_path / "runs" / "gain-x")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "opro †" in rows and "gpo" in rows and "gpo †" not in rows
    assert f"on opro (20 of {len(test_ids)})" in text


def test_an_expert_arm_is_tested_against_the_initial_prompt_as_the_baseline_arm_scored_it(tmp_path, monkeypatch):
    """An expert arm's own run scores only the expert instruction (it is that run's initial prompt); its row pairs
    those answers with the baseline arm's answers of the real initial prompt, on the same test examples."""
    sys.path.insert(0, str(ROOT / "bench"))
    import argparse

    import bench_gain

    from optimizers.base import candidate_id

    a = argparse.Namespace(task="helpdesk_queues", max_train=126, max_dev=40, max_test=126)
    test_ids = [e.id for e in bench_gain._prepared(a).splits.test]
    assert bench_gain.expert_prompt("helpdesk_queues", "expert3").startswith("Queues: atlas = accounts")

    def record(arm: str, prompt: str, right: int) -> None:
        answers = {i: [n < right, "atlas"] for n, i in enumerate(test_ids)}
        rec = {"run_id": arm, "status": "done", "initial_prompt": prompt, "best_prompt": prompt,
               "best_id": candidate_id(prompt), "calls": 160, "wall_time_s": 60.0,
               "proposals": {"proposed": {}, "rejected": {}},
               "initial_test": answers, "best_test": answers}
        (tmp_path / "gain-x" / f"{arm}.json").write_text(json.dumps(rec))

    (tmp_path / "gain-x").mkdir()
    monkeypatch.setattr(bench_gain, "RECORDS", tmp_path)
    record("baseline", "Which queue?", 40)
    record("expert1", bench_gain.expert_prompt("helpdesk_queues", "expert1"), 70)
    text = bench_gain.table(a, ["baseline", "expert1", "expert2"], tmp_path / "runs" / "gain-x")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| arm")}
    n = len(test_ids)
    assert rows["expert1"][3] == f"{40 / n:.3f}" and rows["expert1"][4].startswith(f"{70 / n:.3f}")
    assert rows["expert1"][5] == "30 / 0" and "hand-written" in rows["expert1"][9]
    assert rows["expert2"][1] == "not run (or not finished)"


def test_gains_rows_count_what_the_optimizer_wrote_from_the_runs_events(tmp_path):
    """Each arm's record says how many instructions its optimizer proposed and why the rest were rejected, read from
    the run's stored events (a real SQLite store): the table's reason for a kept initial prompt."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_gain import proposal_counts, proposals_cell

    from optimizers.events import CandidateProposed, CandidateRejected
    from optimizers.store import Store

    store = Store(tmp_path / "runs.sqlite")
    rid = store.create_run({}, optimizer="gpo", seed=0, data_name="x")
    events = [CandidateProposed(step=0, candidate_id="c0", text="Classify.", origin="initial"),
              CandidateProposed(step=1, candidate_id="c1", text="Classify it.", origin="generated"),
              CandidateRejected(step=1, text="Sure! ...", reason="chat_reply", origin="generated"),
              CandidateRejected(step=1, text="Q: ...", reason="echoes_example", origin="generated"),
              CandidateRejected(step=2, text="Q: ...", reason="echoes_example", origin="generated"),
              CandidateProposed(step=3, candidate_id="c2", text="Classify.\n\n<<demonstrations>>", origin="demos")]
    for ev in events:
        store.append_event(rid, ev)
    counts = proposal_counts(store, rid)
    assert counts == {"proposed": {"generated": 1, "demos": 1},
                      "rejected": {"echoes_example": 2, "chat_reply": 1}}
    assert proposals_cell({"proposals": counts}) == "1 / 3 (2 echoes_example, 1 chat_reply); 1 demo sets"
    assert proposals_cell({}) == ""  # a record written before the count: blank, not zero


def test_seeds_table_reads_each_seeds_records_and_pairs_the_arms_per_seed(tmp_path, monkeypatch):
    """Seed 0 is gain-<task>, seed N gain-<task>-s<N>; each cell is tested against the initial prompt, and the arms
    against each other within a seed (never across seeds)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_gain
    import bench_seeds

    ids = [str(i) for i in range(20)]

    def record(folder: str, arm: str, right: int) -> None:
        init = {i: [n < 10, "a" if n < 10 else "b"] for n, i in enumerate(ids)}  # 0.5
        best = {i: [n < right, "x"] for n, i in enumerate(ids)}
        (tmp_path / folder).mkdir(exist_ok=True)
        rec = {"run_id": arm, "status": "done", "initial_prompt": "p", "best_prompt": "q", "best_id": "c",
               "calls": 1, "wall_time_s": 1.0, "initial_test": init, "best_test": best}
        (tmp_path / folder / f"{arm}.json").write_text(json.dumps(rec))

    monkeypatch.setattr(bench_gain, "RECORDS", tmp_path)
    record("gain-t", "demos", 20)    # 10 gained / 0 lost: p = 0.002
    record("gain-t", "gpo", 10)      # the initial prompt's answers: no gain
    record("gain-t-s2", "demos", 12)  # 2 / 0: not significant
    (tmp_path / "gain-t-sx").mkdir()  # not a seed folder
    assert bench_seeds.seeds_of("t") == [0, 2]
    text = bench_seeds.table(["t"], ["demos", "gpo"])
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()}
    assert "1.000 (10 / 0, p 0.002)" in rows[("t", "demos")] and "0.600 (2 / 0, p 0.5)" in rows[("t", "demos")]
    assert rows[("t", "demos")].rstrip().endswith("| 0.800 | 1 of 2 |")
    assert "not run" in rows[("t", "gpo")] and rows[("t", "gpo")].rstrip().endswith("| 0.500 | 0 of 1 |")
    assert "| t | 0 | demos vs gpo | 10 / 0 | 0.002 |" in text
    assert "| t | 2 | demos vs gpo" not in text  # gpo has no seed-2 record


def test_selection_rules_pick_by_full_dev_with_a_margin_and_the_oracle_by_test():
    """The run's pick (best on its subset) against the best on all of dev, the same kept only with a net margin over
    the initial prompt, and the best on test: each rule's cell is its candidate's test score against the initial."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_selection

    def cand(cid, sel, dev_right, test_right):
        return {"id": cid, "origin": "x", "text": cid, "selection": sel, "selection_n": 4,
                "dev": {str(i): i < dev_right for i in range(10)}, "test": {str(i): i < test_right for i in range(20)}}

    rec = {"out": "gain-t-s1", "arm": "gpo", "run_id": "r", "best_id": "lucky", "init_id": "init", "top": 2,
           "candidates": [cand("init", 0.25, 4, 8), cand("lucky", 0.75, 4, 6), cand("solid", 0.5, 7, 18)]}
    p = bench_selection.picks(rec, margin=2)
    assert [p[r]["id"] for r in p] == ["lucky", "solid", "solid", "solid"]
    assert [c["id"] for c in bench_selection.picks(rec, margin=4).values()] == ["lucky", "solid", "init", "solid"]
    text = bench_selection.table([rec], 2)
    assert "| gain-t-s1/gpo | lucky (run's pick) | 0.750 (4) | 0.400 | 0.300 | 0 / 2, p 0.5 |" in text
    assert "| gain-t-s1/gpo | lucky 0.300 (0 / 2, p 0.5) | solid 0.900 (10 / 0, p 0.002) |" in text
    assert "| mean test gain over the initial (pt) | -10.0 | +50.0 | +50.0 | +50.0 |" in text


def test_selection_by_dev_macro_f1_prefers_the_prompt_that_reads_both_labels():
    """On 10 dev examples (6 'a', 4 'b'), a prompt answering 'a' always is right 6 times; one that reads both labels
    and is right 6 times too (4 'a', 2 'b') wins on macro-F1, accuracy breaking ties."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_selection

    golds = {str(i): "a" if i < 6 else "b" for i in range(10)}

    def cand(cid, preds, test_right):
        return {"id": cid, "origin": "x", "text": cid, "selection": 0.5, "selection_n": 10,
                "dev": {i: preds[int(i)] == golds[i] for i in golds}, "dev_pred": dict(zip(golds, preds)),
                "test": {str(i): i < test_right for i in range(20)}}

    favourite = cand("fav", ["a"] * 10, 10)
    reader = cand("reader", ["a", "a", "a", "a", "b", "b", "b", "b", "a", "a"], 14)
    rec = {"out": "o", "arm": "demos", "run_id": "r", "best_id": "fav", "init_id": "fav", "top": 1,
           "labels": ["a", "b"], "golds": {"dev": golds}, "candidates": [favourite, reader]}
    assert bench_selection.dev_f1(rec, favourite) < bench_selection.dev_f1(rec, reader)
    p = bench_selection.picks(rec, margin=2)
    assert p["full dev"]["id"] == "fav" and p["dev macro-F1"]["id"] == "reader"


def test_the_tie_census_keeps_the_earliest_or_a_strictly_higher_macro_f1():
    """bench_ties: among candidates tied at the top, tie_break=first keeps the earliest met; macro_f1 moves only to a
    strictly higher macro-F1 (equal ones, or one not read on every example, keep the earlier); the table counts a
    selection with one candidate at the top as no tie."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_ties

    tied = [{"id": "first", "f1": 0.30}, {"id": "same", "f1": 0.30}, {"id": "unread", "f1": None},
            {"id": "reader", "f1": 0.42}, {"id": "late", "f1": 0.42}]
    assert bench_ties.keeps(tied, "first") == "first"
    assert bench_ties.keeps(tied, "macro_f1") == "reader"
    assert bench_ties.keeps(tied[:3], "macro_f1") == "first"
    recs = [{"out": "gain-t-s1", "arm": "demos", "phases": {"demos": {"n": 40, "compared": 7, "top": 0.5,
                                                                      "tied": tied}}},
            {"out": "gain-t-s2", "arm": "gpo", "phases": {"gpo": {"n": 22, "compared": 5, "top": 0.4,
                                                                  "tied": [{"id": "alone", "f1": 0.2}]}}}]
    text = bench_ties.table(recs)
    assert "| gain-t-s1/demos | demos | 7 (40) | 0.500 | first 0.300, same 0.300, unread -, reader 0.420, late 0.420 | " \
           "first | reader (changed) |" in text
    assert "| gain-t-s2/gpo | gpo | 5 (22) | 0.400 | no tie | alone | alone |" in text
    assert "2 selections, 1 ending in a tie at the top, 1 where macro-F1 keeps another." in text
