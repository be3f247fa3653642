"""Demonstrations: a prompt carries them as a fenced section; the task renders them as turns or inline in either
layout; fixed demos and every searched set come from train only (never dev or test); a demo search runs alone or
after an instruction optimizer inside the run's hard cap, and the report scores the best prompt with its demos."""

from __future__ import annotations

import json
import random
import re

import pytest

from optimizers import methods  # noqa: F401  (registers)
from optimizers.backend import Backend
from optimizers.budget import Budget
from optimizers.config import DataConfig, RunConfig
from optimizers.data import Example, Splits
from optimizers.estimate import dry_run
from optimizers.llm import Endpoint
from optimizers.methods.demos import DemoParams
from optimizers.prepare import prepare_task
from optimizers.prompt import DEMO_MARK, Demo, draw_demos, instruction_of, join_prompt, split_prompt
from optimizers.runner import Runner
from optimizers.store import Store
from tests.conftest import TOY_TASK, toy_examples
from tests.e2e.conftest import E2EResponder
from tests.stub_server import StubServer

DEMOS = [Demo("a", {"text": "slow page"}, "normal"), Demo("b", {"text": "site down"}, "urgent")]


def test_a_prompt_with_demos_round_trips_and_a_plain_prompt_is_unchanged():
    text = join_prompt("Is it urgent?", DEMOS)
    assert DEMO_MARK in text and split_prompt(text) == ("Is it urgent?", DEMOS)
    assert instruction_of(text) == "Is it urgent?"
    assert split_prompt("  Answer.\n") == ("  Answer.\n", [])  # sent exactly as given
    assert join_prompt("Answer.", []) == "Answer."


def test_a_malformed_demo_section_is_an_error_not_text():
    with pytest.raises(ValueError, match="demonstration 1"):
        split_prompt(f"Answer.\n\n{DEMO_MARK}\nnot json")
    with pytest.raises(ValueError, match="fields and label"):
        split_prompt(f"Answer.\n\n{DEMO_MARK}\n" + json.dumps({"id": "x", "label": "a"}))


def _task(**kw):
    return TOY_TASK.model_copy(update=kw)


def test_layouts_and_styles_render_as_documented():
    ex = Example("e", {"text": "loved it"}, "positive")
    p = join_prompt("Classify.", [Demo("d1", {"text": "awful"}, "negative")])
    assert _task().messages("Classify.", ex) == [
        {"role": "user", "content": "Classify.\n\nText: loved it\nAnswer:"}]
    assert _task(layout="system").messages("Classify.", ex) == [
        {"role": "system", "content": "Classify."}, {"role": "user", "content": "Text: loved it\nAnswer:"}]
    assert _task(layout="system").messages(p, ex) == [
        {"role": "system", "content": "Classify."}, {"role": "user", "content": "Text: awful\nAnswer:"},
        {"role": "assistant", "content": "negative"}, {"role": "user", "content": "Text: loved it\nAnswer:"}]
    assert _task(demo_style="inline").messages(p, ex) == [
        {"role": "user", "content": "Classify.\n\nText: awful\nAnswer: negative\n\nText: loved it\nAnswer:"}]
    assert _task(layout="system", demo_style="inline").messages(p, ex) == [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "Text: awful\nAnswer: negative\n\nText: loved it\nAnswer:"}]
    # user layout, turns: the instruction stays in every user turn
    msgs = _task().messages(p, ex)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert all(m["content"].startswith("Classify.") for m in msgs if m["role"] == "user")


def test_a_prompts_own_demos_replace_the_tasks_fixed_ones():
    ex = Example("e", {"text": "loved it"}, "positive")
    fixed = _task(layout="system", demos=[{"id": "f", "fields": {"text": "boring"}, "label": "negative"}])
    assert "boring" in json.dumps(fixed.messages("Classify.", ex))
    own = fixed.messages(join_prompt("Classify.", [Demo("o", {"text": "superb"}, "positive")]), ex)
    assert "superb" in json.dumps(own) and "boring" not in json.dumps(own)


def test_drawn_demos_are_balanced_and_from_the_pool_only():
    pool = toy_examples(20, seed=4)
    demos = draw_demos(pool, 6, random.Random(0))
    assert len(demos) == 6 and {d.id for d in demos} <= {e.id for e in pool}
    labels = [d.label for d in demos]
    assert labels.count("positive") == labels.count("negative") == 3
    assert draw_demos(pool, 6, random.Random(0)) == demos  # seeded
    assert len(draw_demos(pool[:3], 8, random.Random(0))) == 3


def test_fixed_demos_are_drawn_from_train_never_dev_or_test():
    for seed in range(5):
        p = prepare_task("support_triage", split={"seed": seed, "max_train": 40, "max_dev": 20, "max_test": 20},
                         demos=8, layout="system")
        train = {e.id for e in p.splits.train}
        held_out = {e.id for e in p.splits.dev + p.splits.test}
        ids = {d["id"] for d in p.task.demos}
        assert len(ids) == 8 and ids <= train and not ids & held_out
        assert p.task.layout == "system"


def test_the_default_template_names_the_label_set():
    import pandas as pd

    df = pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": ["yes", "no"] * 6})
    p = prepare_task(df, input_cols=["text"], label_col="label", initial_prompt="Answer.")
    assert p.task.template.endswith("Answer (no or yes):")


# --- runs over real HTTP to a scripted server -----------------------------------------------------------------------
class DemoResponder(E2EResponder):
    """A task model that is right far more often when the request shows demonstrations (assistant turns or inline
    answers), as the 1.5B model measurably is; records every task request."""

    def __init__(self) -> None:
        super().__init__()
        self.task_requests: list[dict] = []

    def __call__(self, req):
        if req.get("model") == "stub-task":
            with self.lock:
                self.task_requests.append(req)
            msgs = req["messages"]
            text = msgs[-1]["content"]
            shown = sum(m["role"] == "assistant" for m in msgs)
            gold = "positive" if any(w in text.lower() for w in ("loved", "wonderful", "delight", "great", "superb",
                                                                   "moving")) else "negative"
            right = (hash(text) % 100) < (90 if shown else 50)
            return gold if right else ("negative" if gold == "positive" else "positive")
        return super().__call__(req)


def _splits() -> Splits:
    return Splits(toy_examples(12, start=1), toy_examples(10, seed=1, start=101), toy_examples(10, seed=2, start=201))


def _run(tmp_path, optimizer: str, budget: Budget, demo_search: dict | None, responder: DemoResponder,
         report_splits: tuple[str, ...] = ("test",), params: dict | None = None,
         execute=lambda runner, store, rid: runner.execute(rid)):
    """One run over real HTTP to the scripted server; `execute` drives it (a crash, then a resume)."""
    task = _task(layout="system")
    cfg = RunConfig(optimizer=optimizer, params=params or {}, initial_prompt="Classify the text.", task=task,
                    data=DataConfig(name="toy", input_cols=["text"], label_col="label"), seed=5,
                    task_endpoint={"model": "stub-task"}, optimizer_endpoint={"model": "stub-opt"},
                    budget=budget, max_concurrency=2, cache_dir=str(tmp_path / "cache"), demo_search=demo_search,
                    report_splits=list(report_splits))
    with StubServer(responder) as stub:
        def backend(c):
            return Backend(Endpoint(stub.base_url, "k", max_retries=1, patience=5, max_concurrency=2, timeout=5),
                           False, "stub-task", "stub")

        store = Store(tmp_path / "runs.sqlite")
        runner = Runner(store, backend_factory=backend)
        rid = runner.create(cfg, _splits())
        res = execute(runner, store, rid)
        billed = stub.billed
    return res, store, rid, billed


def _demo_ids(req: dict) -> set[str]:
    """The example ids whose texts appear as demonstration turns in a request (toy texts are unique per id)."""
    by_text = {f"Text: {e.fields['text']}\nAnswer:": e.id for e in _splits().train + _splits().dev + _splits().test}
    msgs = req["messages"]
    return {by_text.get(m["content"], "?") for i, m in enumerate(msgs[:-1])
            if m["role"] == "user" and i + 1 < len(msgs) and msgs[i + 1]["role"] == "assistant"}


@pytest.mark.parametrize("optimizer,demo_search", [("demos", None), ("gpo", {"k": 4, "trials": 3}),
                                                   ("protegi", {"k": 2, "trials": 2})])
def test_demo_search_picks_demos_from_train_only_and_the_report_uses_them(tmp_path, optimizer, demo_search):
    responder = DemoResponder()
    res, store, rid, billed = _run(tmp_path, optimizer, Budget(max_calls=400), demo_search, responder)
    train = {e.id for e in _splits().train}
    for req in responder.task_requests:
        assert _demo_ids(req) <= train, _demo_ids(req)  # never a dev or test example as a demonstration
    proposed = [e for _, e in store.events(rid, kinds=["candidate_proposed"]) if e.origin == "demos"]
    assert proposed, "the demo search proposed no set"
    for e in proposed:
        assert set(e.info["demo_ids"]) <= train and split_prompt(e.text)[1]
    # demonstrations help this model: the best prompt carries them and the report scored it with them on test
    assert split_prompt(res.best_prompt)[1], res.best_prompt
    assert res.scores["best"]["test"].score > res.scores["initial"]["test"].score
    test_ids = {e.fields["text"] for e in _splits().test}
    report_with_demos = [r for r in responder.task_requests if any(t in r["messages"][-1]["content"] for t in test_ids)
                         and any(m["role"] == "assistant" for m in r["messages"])]
    assert len(report_with_demos) == len(_splits().test)
    assert billed <= 400 and res.calls == billed


def test_the_demo_search_stays_inside_a_tight_cap_and_the_estimate_is_close(tmp_path):
    cap = 90
    res, _, _, billed = _run(tmp_path, "gpo", Budget(max_calls=cap), {"k": 4, "trials": 2}, DemoResponder())
    assert billed <= cap and res.calls == billed
    assert "test" in res.scores["best"]
    est = dry_run("gpo", {}, _task(layout="system"), _splits(), "Classify the text.", seed=5,
                  budget=Budget(max_calls=cap), report_splits=["test"], demo_search={"k": 4, "trials": 2})
    assert est.calls <= cap and abs(est.calls - billed) <= 0.15 * billed, (est.calls, billed)


def test_demo_search_without_dev_is_a_clear_failure(tmp_path):
    with StubServer(DemoResponder()) as stub:
        cfg = RunConfig(optimizer="demos", params={}, initial_prompt="Classify.", task=TOY_TASK,
                        data=DataConfig(name="toy", input_cols=["text"], label_col="label"),
                        task_endpoint={"model": "stub-task"}, cache_dir=str(tmp_path / "c"))
        store = Store(tmp_path / "runs.sqlite")
        runner = Runner(store, backend_factory=lambda c: Backend(Endpoint(stub.base_url, "k"), False, "stub-task",
                                                                 "stub"))
        sp = _splits()
        rid = runner.create(cfg, Splits(sp.train, [], sp.test))
        res = runner.execute(rid)
    assert res.status == "failed" and re.search("needs a dev split", res.reason)


def test_the_inspect_page_shows_each_demo_set_and_its_dev_score(tmp_path, monkeypatch):
    from tests.test_pages_inspect import frames, markdown, open_page

    res, store, rid, _ = _run(tmp_path, "gpo", Budget(max_calls=400), {"k": 3, "trials": 2}, DemoResponder())
    demo_steps = sorted({e.step for _, e in store.events(rid, kinds=["candidate_proposed"]) if e.origin == "demos"})
    at = open_page(monkeypatch, tmp_path / "runs.sqlite", run=rid, step=str(demo_steps[0]))
    assert not at.exception and not at.error
    md = markdown(at)
    assert "Demonstration sets tried" in [h.value for h in at.subheader] and "on dev" in md
    # each set's dev macro-F1 (what a tie on the score goes by) is shown beside its score, as the event stored it
    scored = {e.candidate_id: e for _, e in store.events(rid, kinds=["candidate_scored"]) if e.split == "dev"}
    shown = [e for _, e in store.events(rid, kinds=["candidate_proposed"]) if e.origin == "demos"
             and e.step == demo_steps[0]]
    assert shown and all(f"macro-F1 {scored[e.candidate_id].macro_f1:.3f}" in md for e in shown)
    best = {e.best_id for _, e in store.events(rid, kinds=["step_done"]) if e.step == demo_steps[0]}
    assert ("the best so far, kept" in md) == any(e.candidate_id in best for e in shown)
    sets = frames(at, "train example", "text", "label")
    train = {e.id for e in _splits().train}
    assert sets and len(sets[0]) == 3 and set(sets[0]["train example"]) <= train
    # the Runs page shows the best prompt's instruction and its demonstrations as a table, not as JSON text
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PROMPTOPT_DB", str(tmp_path / "runs.sqlite"))
    at = AppTest.from_file("../pages/5_Runs.py", default_timeout=30)
    at.query_params["run"] = rid
    at.run()
    assert not at.exception
    assert not any(DEMO_MARK in c.value for c in at.code)
    assert any(split_prompt(res.best_prompt)[0] == c.value for c in at.code)


def test_a_cut_reply_without_an_answer_is_asked_again_longer_and_its_last_answer_read(tmp_path):
    """A prompt that makes the model reason first: 32 tokens end before the answer; with reasoning_max_tokens the
    request is repeated with room to finish, and the answer is the label mentioned last."""
    from optimizers.evaluate import Evaluator
    from optimizers.llm import LLM, Meter

    reasoning = ("Let me think. The review could be read as negative at first, but the words are warm, "
                 "so overall the answer is positive")

    def reply(req):
        from tests.stub_server import StubReply

        if req["max_tokens"] <= 32:
            return StubReply("Let me think. The review could be read as", finish_reason="length")
        return reasoning

    ex = Example("e1", {"text": "loved it"}, "positive")
    with StubServer(reply) as stub:
        ep = Endpoint(stub.base_url, "k", max_retries=0)
        plain = Evaluator(LLM(ep, "stub-task", meter=Meter()), TOY_TASK).predict("Think first.", ex)
        assert plain.pred is None and len(stub.chat_requests()) == 1
        task = TOY_TASK.model_copy(update={"reasoning_max_tokens": 256})
        pr = Evaluator(LLM(ep, "stub-task", meter=Meter()), task).predict("Think first.", ex)
        assert pr.pred == "positive" and pr.correct  # the last label mentioned, not "negative" (the first)
        assert [r["max_tokens"] for r in stub.chat_requests()[1:]] == [32, 256]


# --- the demo search that follows by default (embedded), sized to the cap ----------------------------------------
def test_the_default_follows_instruction_optimizers_on_the_embedded_model_only():
    from optimizers.methods.demos import follows_by_default

    labels = ["positive", "negative"]
    assert follows_by_default("gpo", labels, False, True) == {"fit_budget": True}
    assert all(follows_by_default(o, labels, False, True) for o in ("ape", "protegi", "opro", "pe2"))
    assert follows_by_default("gpo", labels, False, False) is None  # an endpoint: demonstrations cost tokens
    assert follows_by_default("gpo", labels, True, True) is None  # the task carries fixed demonstrations
    assert follows_by_default("gpo", None, False, True) is None  # no label set (exact match, regex)
    assert follows_by_default("demos", labels, False, True) is None and follows_by_default("baseline", labels,
                                                                                            False, True) is None


def test_fit_to_calls_takes_at_most_half_of_what_the_report_leaves():
    from optimizers.methods.demos import fit_to_calls, fitted

    assert fit_to_calls({}, 1000, 40) == {"trials": 6}  # 7 x 40 = 280 <= 500: as asked
    # fewer sets first (2 x 40 <= 100), and up to the 6 asked for from what the optimizer leaves unspent
    assert fit_to_calls({"k": 4}, 200, 40) == {"k": 4, "trials": 1, "extend_to": 6}
    assert fit_to_calls({}, 60, 120) == {"trials": 1, "extend_to": 6, "max_dev": 15}  # then a dev subset: 2 x 15 <= 30
    assert fit_to_calls({}, 10, 120) == {"trials": 1, "extend_to": 6, "max_dev": 15}  # never below 15: the cap stops it
    assert fitted({"trials": 3}, 60, 120) == {"trials": 3}  # sized only when asked to
    assert fitted({"fit_budget": True}, None, 120) == {"fit_budget": True}  # no call cap: as asked


def test_a_fitted_search_is_stored_at_the_first_start_stays_inside_the_cap_and_scores_a_dev_subset(tmp_path):
    responder = DemoResponder()
    cap = 100  # the report on test takes 2 x 10: 80 left, of which the search gets half (40)
    res, store, rid, billed = _run(tmp_path, "gpo", Budget(max_calls=cap), {"fit_budget": True, "k": 4}, responder)
    assert billed <= cap and res.calls == billed
    started = [e for _, e in store.events(rid, kinds=["run_started"])]
    stored = started[0].demo_search  # every parameter, defaults included: a resume runs what the start ran
    assert {k: stored[k] for k in ("fit_budget", "k", "trials", "extend_to")} == {
        "fit_budget": True, "k": 4, "trials": 3, "extend_to": 6}  # (3 + 1) x 10 <= 40
    assert stored == DemoParams(**stored).model_dump() and stored["max_dev"] is None
    proposed = [e for _, e in store.events(rid, kinds=["candidate_proposed"]) if e.origin == "demos"]
    assert 1 <= len(proposed) <= 6
    est = dry_run("gpo", {}, _task(layout="system"), _splits(), "Classify the text.", seed=5,
                  budget=Budget(max_calls=cap), report_splits=["test"], demo_search={"fit_budget": True, "k": 4})
    assert est.calls <= cap


def _demo_steps(store, rid) -> int:
    """Demonstration sets the search drew (each one step: proposed, or rejected as a duplicate)."""
    return len({e.step for _, e in store.events(rid, kinds=["candidate_proposed", "candidate_rejected"])
                if e.origin == "demos"})


FITTED = {"fit_budget": True, "k": 4}


def test_calls_an_optimizer_leaves_unspent_go_to_more_demo_sets_inside_the_cap(tmp_path):
    """Baseline spends one dev pass of its half; the search, sized to 2 sets, draws sets while a whole one fits
    beside the report, up to the 6 asked for (before, the calls were left unused)."""
    cap = 80  # the report on test holds 2 x 10: 60 left, the search's half 30 = (2 + 1) x 10 dev calls
    res, store, rid, billed = _run(tmp_path, "baseline", Budget(max_calls=cap), FITTED, DemoResponder())
    started = next(e for _, e in store.events(rid, kinds=["run_started"]))
    assert started.demo_search["trials"] == 2 and started.demo_search["extend_to"] == 6
    assert _demo_steps(store, rid) > 2
    assert billed <= cap and res.calls == billed
    assert cap - billed < 10 + 10, "a whole set of 10 dev calls was still affordable beside the report"
    assert res.status.value == "done"


class _Crash(BaseException):
    """A process killed mid-run: nothing after it runs (no report), the run stays "running"."""


def test_a_run_killed_after_its_extra_demo_sets_resumes_to_the_uninterrupted_result(tmp_path):
    """On resume the meter starts at the run's latest total: replayed decisions to draw another set are read from
    the stored stream, not from that total (which would say no at once: the replay ended early and diverged)."""
    cap = 80
    whole, s1, r1, _ = _run(tmp_path / "a", "baseline", Budget(max_calls=cap), FITTED, DemoResponder())
    steps = _demo_steps(s1, r1)
    assert steps >= 4  # two planned sets, then sets from unspent calls

    def crash_then_resume(runner, store, rid):
        def crash_at_the_last_set(seq, ev):
            if ev.kind == "usage" and ev.step == steps + 1:  # its last set stored, and the spend after it
                raise _Crash()

        with pytest.raises(_Crash):
            runner.execute(rid, on_event=crash_at_the_last_set)
        assert store.get_run(rid)["status"] == "running"
        return runner.execute(rid)

    resumed, store, rid, billed = _run(tmp_path / "b", "baseline", Budget(max_calls=cap), FITTED, DemoResponder(),
                                       execute=crash_then_resume)
    assert resumed.status.value == "done", resumed.reason
    assert resumed.best_prompt == whole.best_prompt and resumed.scores == whole.scores
    assert _demo_steps(store, rid) == steps and billed <= cap


def test_a_dev_subset_scores_the_instruction_and_each_set_on_the_same_examples(tmp_path):
    res, store, rid, _ = _run(tmp_path, "gpo", Budget(max_calls=400), {"k": 2, "trials": 2, "max_dev": 4},
                              DemoResponder())
    sets = {e.candidate_id for _, e in store.events(rid, kinds=["candidate_proposed"]) if e.origin == "demos"}
    events = [e for _, e in store.events(rid)]
    start = next(i for i, e in enumerate(events) if e.kind == "candidate_proposed" and e.origin == "demos") - 1
    scored = [e for e in events[start - 2:] if e.kind == "candidate_scored" and e.split == "dev"]
    assert sets and {e.candidate_id for e in scored} >= sets
    subsets = {tuple(sorted(e.example_ids)) for e in scored}
    assert len(subsets) == 1 and len(next(iter(subsets))) == 4  # the base and every set: the same 4 examples
    assert split_prompt(res.best_prompt)[1] or res.best_id not in sets


def test_an_optimizer_stopped_between_steps_hands_over_to_the_demo_search(tmp_path):
    """What the runner does when a new best's report no longer fits beside the demo search's held share: the
    optimizer is stopped there (Steps.stop) and the search runs on its share; before, the run ended without it."""
    from optimizers.budget import BudgetExceeded
    from optimizers.events import StepDone
    from optimizers.methods.demos import Steps, then_demo_search
    from optimizers.methods.gpo import GPO
    from tests.conftest import make_ctx

    released: list[bool] = []
    with StubServer(DemoResponder()) as stub:
        ctx = make_ctx(stub, train=_splits().train, dev=_splits().dev, initial_prompt="Classify the text.",
                       task=_task(layout="system"))
        last: list[StepDone] = []
        events = Steps(then_demo_search(GPO(ctx, {"epochs": 3, "num_candidates": 2, "rule_start": 0}), ctx,
                                        {"k": 2, "trials": 2}, lambda: last[-1] if last else None,
                                        lambda: released.append(True)))
        seen = []
        for ev in events:
            seen.append(ev)
            if isinstance(ev, StepDone):
                last.append(ev)
                if ev.step == 1 and not released:
                    events.stop(BudgetExceeded("the rest of the budget pays for the best prompt's report"))
    kinds_after = [e.kind for e in seen[seen.index(last[1]) + 1:]]
    assert released == [True]
    assert "edit_budget" not in kinds_after  # no GPO step after the stop
    demos = [e for e in seen if e.kind == "candidate_proposed" and e.origin == "demos"]
    assert len(demos) == 2 and all(e.step >= 2 for e in demos)


def test_a_tie_on_dev_goes_to_the_set_with_the_higher_macro_f1_unless_first_is_asked():
    """Two demo sets right on the same dev examples count: the one whose answers over-use one label has the lower
    macro-F1 and loses the tie under tie_break=macro_f1, the default (helpdesk_queues seed 2: three sets tied at 17 / 40, the
    earliest kept scored 0.417 on test, the best-F1 one 0.592); with tie_break=first the first drawn stays."""
    from optimizers.base import Candidate, Context
    from optimizers.evaluate import Evaluator
    from optimizers.methods.demos import DemoSearch

    class Nothing:
        max_concurrency, accepts_extras, model = 1, False, "x"

    dev = toy_examples(10, start=101)  # 5 positive, 5 negative, alternating
    ctx = Context(task=TOY_TASK, train=toy_examples(4), dev=dev, initial_prompt="Classify.",
                  evaluator=Evaluator(Nothing(), TOY_TASK), optimizer_llm=Nothing())

    def cand(cid: str, answers: list[str]) -> Candidate:
        c = Candidate(cid, cid, [], "demos", 1)
        c.preds["dev"] = {ex.id: a for ex, a in zip(dev, answers)}
        c.results["dev"] = {ex.id: a == ex.label for ex, a in zip(dev, answers)}
        return c

    fav = cand("fav", ["positive"] * 9 + ["negative"])  # 5 + 1 right: leans to positive
    reader = cand("reader", ["positive", "negative", "negative", "positive"] * 2 + ["positive", "negative"])  # 6 right
    scores = {"fav": 0.6, "reader": 0.6}
    assert sum(fav.results["dev"].values()) == sum(reader.results["dev"].values()) == 6
    by_f1 = DemoSearch(ctx, {"tie_break": "macro_f1"})
    assert reader.macro_f1("dev", dev, TOY_TASK.labels) > fav.macro_f1("dev", dev, TOY_TASK.labels)
    assert by_f1._better(reader, fav, scores, dev) and not by_f1._better(fav, reader, scores, dev)
    assert DemoSearch(ctx, {})._better(reader, fav, scores, dev)  # the default since session 25
    assert not DemoSearch(ctx, {"tie_break": "first"})._better(reader, fav, scores, dev)  # the first drawn stays
    assert by_f1._better(reader, fav, {"fav": 0.7, "reader": 0.6}, dev) is False  # a higher score still wins
    del reader.preds["dev"][dev[0].id]  # not scored on all of dev here: no tie-break
    assert reader.macro_f1("dev", dev, TOY_TASK.labels) is None and not by_f1._better(reader, fav, scores, dev)


def test_the_tie_census_reads_each_phase_of_a_stored_run(tmp_path):
    """bench/bench_ties.py on a real store: GPO's phase compares its trajectory on its selection examples, the demo
    search's phase its instruction and every set on dev; the top's macro-F1 comes from the answers stored there."""
    import sys
    from pathlib import Path

    from optimizers.metrics import macro_f1

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import bench_ties

    res, store, rid, _ = _run(tmp_path, "gpo", Budget(max_calls=400), {"k": 4, "trials": 3}, DemoResponder())
    phases = bench_ties.census(store, rid, ["positive", "negative"])
    assert set(phases) == {"gpo", "demos"}
    demos = phases["demos"]
    sets = [c["candidate_id"] for c in store.candidates(rid) if c["origin"] == "demos"]
    assert demos["n"] == len(_splits().dev) and demos["compared"] == len(set(sets)) + 1  # the instruction + each set
    base = next(c["parents"][0] for c in store.candidates(rid) if c["origin"] == "demos")
    dev_scores = {r["candidate_id"]: r["score"] for r in store.scores(rid) if r["split"] == "dev" and r["n"] == 10}
    assert demos["top"] == max(dev_scores[c] for c in [base, *sets])
    assert res.best_id in {c["id"] for c in demos["tied"]}  # the run kept one of the top
    for c in demos["tied"]:
        preds = store.predictions(rid, c["id"], "dev")
        assert len(preds) == 10 and c["f1"] == pytest.approx(
            macro_f1([p["pred"] for p in sorted(preds, key=lambda p: p["example_id"])],
                     [p["gold"] for p in sorted(preds, key=lambda p: p["example_id"])], ["positive", "negative"]))
        # the scored event carries the same figure (the Inspect page shows it beside the score)
        event = [e for _, e in store.events(rid, kinds=["candidate_scored"]) if e.candidate_id == c["id"]
                 and e.split == "dev" and e.n == 10][-1]
        assert event.macro_f1 == pytest.approx(c["f1"])
    gpo = phases["gpo"]
    assert gpo["compared"] >= 1 and gpo["tied"][0]["id"] in bench_ties.phase_members(store, rid)["gpo"]
