"""ProTeGi against the scripted stub (real HTTP): the gradient/edit/paraphrase expansion, the cap per parent, the beam
and the bandits (unit-tested on fake reward tables), rejections, the budget and seed determinism."""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections import Counter, defaultdict

import pytest

from optimizers.base import candidate_id
from optimizers.llm import Budget, BudgetExceeded
from optimizers.methods.protegi import (
    EDIT_PROMPT,
    GRADIENT_PROMPT,
    PARAPHRASE_PROMPT,
    ProTeGi,
)
from optimizers.methods.strategies import (
    brute_force,
    choose_ucb,
    sr_schedule,
    successive_halving,
    successive_rejects,
    ucb_bandit,
    ucb_values,
)
from tests.conftest import OPT_MODEL, TASK_MODEL, kinds, last_user, make_ctx, scripted, toy_examples
from tests.stub_server import StubReply, StubServer

INITIAL = "Classify the text."
SMALL = dict(rounds=2, beam_size=2, minibatch_size=8, n_gradients=2, errors_per_gradient=2, gradients_per_error=1,
             steps_per_gradient=1, mc_samples_per_step=1, max_expansion_factor=8, eval_rounds=3,
             eval_prompts_per_round=3, samples_per_eval=4)


def purpose_of(text: str) -> str:
    if "reasons why the prompt" in text:
        return "gradient"
    if "new prompts are:" in text:
        return "edit"
    if text.startswith("Write a variation"):
        return "paraphrase"
    return "?"


def current_prompt(text: str) -> str:
    if purpose_of(text) == "paraphrase":
        return text.split("Input: ", 1)[1].rsplit("\n\nOutput:", 1)[0]
    return text.split('My current prompt is:\n"', 1)[1].split('"\n\nBut with', 1)[0]


class Optimizer:
    """A scripted optimizer model: numbered critiques, edits that add 'sentiment', paraphrases that reword."""

    def __init__(self, edit=None, paraphrase=None, gradient=None):
        self.n = Counter()
        self.lock = threading.Lock()
        self.edit, self.paraphrase, self.gradient = edit, paraphrase, gradient

    def __call__(self, req):
        text = last_user(req)
        kind = purpose_of(text)
        with self.lock:
            self.n[kind] += 1
            i = self.n[kind]
        if kind == "gradient":
            return self.gradient(text, i) if self.gradient else f"<START>it never mentions the sentiment ({i})<END>"
        if kind == "edit":
            return self.edit(text, i) if self.edit else f"<START>Label the sentiment of the review, take {i}.<END>"
        if kind == "paraphrase":
            if self.paraphrase:
                return self.paraphrase(text, i)
            return f"Output: {current_prompt(text)} (reworded {i})"
        return "?"


def run(opt_reply=None, *, seed=0, budget=None, train=None, initial=INITIAL, **params):
    """Run to the end (or the budget); returns (events, stub requests, error or None, ctx)."""
    opt_reply = opt_reply or Optimizer()
    with StubServer(scripted(opt_reply)) as stub:
        ctx = make_ctx(stub, train=train or toy_examples(16), dev=toy_examples(8, seed=1, start=100),
                       initial_prompt=initial, seed=seed, budget=budget)
        events, err = [], None
        try:
            for ev in ProTeGi(ctx, {**SMALL, **params}).run():
                events.append(ev)
        except BudgetExceeded as e:
            err = e
        return events, list(stub.chat_requests()), err, ctx


def metas(events, purpose):
    return [e for e in events if e.kind == "meta_prompt" and e.purpose == f"protegi.{purpose}"]


def wrong_ids(events, cand_id):
    """Example ids the candidate got wrong, from its scored events (train)."""
    out = {}
    for e in kinds(events, "candidate_scored"):
        if e.candidate_id == cand_id and e.split == "train":
            out.update(zip(e.example_ids, e.correct, strict=True))
    return {i for i, ok in out.items() if not ok}, {i for i, ok in out.items() if ok}


# --- defaults ----------------------------------------------------------------------------------------------------

def test_defaults_are_the_papers():
    d = ProTeGi.defaults()
    assert {k: d[k] for k in ("rounds", "beam_size", "minibatch_size", "n_gradients", "errors_per_gradient",
                              "gradients_per_error", "steps_per_gradient", "mc_samples_per_step",
                              "max_expansion_factor", "reject_on_errors", "evaluator", "eval_rounds",
                              "eval_prompts_per_round", "samples_per_eval", "c", "temperature")} == {
        "rounds": 6, "beam_size": 4, "minibatch_size": 64, "n_gradients": 4, "errors_per_gradient": 4,
        "gradients_per_error": 1, "steps_per_gradient": 1, "mc_samples_per_step": 2, "max_expansion_factor": 8,
        "reject_on_errors": False, "evaluator": "ucb", "eval_rounds": 8, "eval_prompts_per_round": 8,
        "samples_per_eval": 32, "c": 1.0, "temperature": 0.7}
    helps = ProTeGi.param_help()
    assert all(helps[k] for k in ProTeGi.Params.model_fields if k not in ("max_prompt_words", "optimizer_max_tokens"))
    with pytest.raises(ValueError):
        ProTeGi.Params(evaluator="thompson")
    for tpl, keys in ((GRADIENT_PROMPT, ("{prompt}", "{error_string}", "{num_feedbacks}", "<START>", "<END>")),
                      (EDIT_PROMPT, ("{prompt}", "{error_string}", "{gradient}", "{steps_per_gradient}", "<START>")),
                      (PARAPHRASE_PROMPT, ("{prompt}", "Input:", "Output:"))):
        assert all(k in tpl.template for k in keys)


# --- expansion ---------------------------------------------------------------------------------------------------

def test_step0_scores_initial_on_train_then_gradients_show_only_errors():
    events, reqs, err, ctx = run(rounds=1)
    assert err is None
    first = kinds(events, "candidate_proposed")[0]
    assert first.origin == "initial" and first.text == INITIAL
    scored0 = [e for e in kinds(events, "candidate_scored") if e.step == 0]
    assert len(scored0) == 1 and scored0[0].n == len(ctx.train) and scored0[0].split == "train"
    assert kinds(events, "step_done")[0].step == 0
    init = first.candidate_id
    wrong, right = wrong_ids(events, init)
    assert wrong and right  # the initial prompt answers 'positive' always: negatives are wrong
    grads = kinds(events, "gradient")
    gmetas = metas(events, "gradient")
    assert len(grads) == len(gmetas) == SMALL["n_gradients"]  # one beam prompt in round 1
    for g, m in zip(grads, gmetas, strict=True):
        assert g.parent_id == init and m.ref == g.gradient_id
        assert 1 <= len(g.errors) <= SMALL["errors_per_gradient"]
        assert len({e["id"] for e in g.errors}) == len(g.errors)
        sent = m.messages[-1]["content"]
        shown_ids = set(re.findall(r"Review (\d+):", sent))
        assert shown_ids == {e["id"] for e in g.errors}
        assert shown_ids <= wrong  # only examples the current prompt got wrong
        assert sent.count("## Example") == len(g.errors) <= SMALL["errors_per_gradient"]
        for e in g.errors:
            assert e["gold"] == "negative" and e["prediction"] == "positive"
            assert f'Text: "{e["input"]}"\nLabel: negative\nPrediction: positive' in sent
        assert f'"{INITIAL}"' in sent and g.critique.startswith("it never mentions the sentiment")
        assert m.params["temperature"] == 0.7
    # the minibatch the errors came from is one of `minibatch_size` train examples
    mb = [e for e in kinds(events, "candidate_scored") if e.purpose == "minibatch"]
    assert all(e.n <= SMALL["minibatch_size"] for e in mb)


def test_errors_per_gradient_caps_the_examples_shown():
    events, *_ = run(rounds=1, minibatch_size=16, errors_per_gradient=3, n_gradients=3)
    for g, m in zip(kinds(events, "gradient"), metas(events, "gradient"), strict=True):
        assert len(g.errors) == 3 and m.messages[-1]["content"].count("## Example") == 3


def test_one_random_minibatch_per_round_shared_by_the_beam():
    # edits never help here (every prompt answers 'positive'), so each beam prompt errs on the minibatch's negatives
    never_better = Optimizer(edit=lambda t, i: f"<START>Classify the text, take {i}.<END>")
    firsts = []
    for seed in range(3):
        events, *_ = run(never_better, seed=seed, rounds=2, minibatch_size=6, n_gradients=2, errors_per_gradient=6)
        for step in (1, 2):
            grads = [g for g in kinds(events, "gradient") if g.step == step]
            assert len({g.parent_id for g in grads}) == (1 if step == 1 else 2)
            shown = {frozenset(e["id"] for e in g.errors) for g in grads}
            assert len(shown) == 1  # one minibatch per round, shared by every beam prompt
            assert len(next(iter(shown))) <= 6
            if step == 1:
                firsts.append(next(iter(shown)))
    assert len(set(firsts)) > 1  # a random sample, not the first examples


def test_edits_contain_the_reason_and_the_errors():
    events, *_ = run(rounds=1)
    grads = {g.gradient_id: g for g in kinds(events, "gradient")}
    edits = metas(events, "edit")
    assert len(edits) == len(grads)
    for m in edits:
        g = grads[m.ref]
        sent = m.messages[-1]["content"]
        assert f"the problem with this prompt is that {g.critique}" in sent
        for e in g.errors:
            assert e["input"] in sent
        assert "1 different improved prompts" in sent and m.params["temperature"] == 0.7
    props = [e for e in kinds(events, "candidate_proposed") if e.origin == "gradient_edit"]
    assert props and all(p.info["gradient_id"] in grads for p in props)
    assert all(p.parents == [grads[p.info["gradient_id"]].parent_id] for p in props)


def test_placeholders_inside_the_prompt_reach_the_edit_request_unchanged():
    """The prompt is filled in before the reason: a "{gradient}" in the prompt text is the user's, not a slot."""
    braced = 'Classify the text; never write "{gradient}", {error_string} or {steps_per_gradient}.'
    events, *_ = run(rounds=1, initial=braced)
    edits = metas(events, "edit")
    assert edits and all(current_prompt(m.messages[-1]["content"]) == braced for m in edits)
    assert all(current_prompt(m.messages[-1]["content"]) == braced for m in metas(events, "gradient"))


def test_paraphrases_of_new_prompts_and_of_the_parent():
    events, *_ = run(rounds=1, mc_samples_per_step=2)
    paras = metas(events, "paraphrase")
    sources = Counter(current_prompt(m.messages[-1]["content"]) for m in paras)
    edits = [e for e in kinds(events, "candidate_proposed") if e.origin == "gradient_edit"]
    assert sources[INITIAL] == 2  # the parent itself is paraphrased too
    for e in edits:
        assert sources[e.text] == 2
    assert sum(sources.values()) == 2 * (len(edits) + 1)
    proposed = [e for e in kinds(events, "candidate_proposed") if e.origin == "paraphrase"]
    assert len(proposed) == len(paras)
    assert all(p.text.endswith(")") and "Output:" not in p.text for p in proposed)  # the label is stripped
    by_text = {e.text: e.info["gradient_id"] for e in edits}
    for p in proposed:
        src = p.text.rsplit(" (reworded", 1)[0]
        assert p.info["gradient_id"] == by_text.get(src)  # None for paraphrases of the parent
        assert p.info["source"] == candidate_id(src)


def test_max_expansion_factor_caps_children_per_parent():
    events, *_ = run(rounds=2, n_gradients=3, mc_samples_per_step=2, max_expansion_factor=3, beam_size=3)
    children = defaultdict(list)
    for e in kinds(events, "candidate_proposed"):
        if e.origin != "initial":
            children[(e.step, e.parents[0])].append(e)
    assert children and all(len(v) <= 3 for v in children.values())
    capped = [e for e in kinds(events, "candidate_rejected") if e.reason == "expansion_cap"]
    # 3 edits + (3 + 1) x 2 paraphrases = 11 usable proposals per parent -> 8 dropped
    assert len([e for e in capped if e.step == 1]) == 11 - 3
    # the beam: never more than beam_size, always drawn from the pool of that round
    for sd in kinds(events, "step_done"):
        assert 1 <= len(sd.beam) <= 3 and sd.best_id == sd.beam[0]
    for sel in kinds(events, "selection"):
        assert len(sel.survivors) <= 3
        assert set(sel.survivors) <= {e["candidate_id"] for e in sel.estimates}


def test_reject_on_errors_keeps_the_children_that_fix_the_parents_errors():
    # edits alternate between fixing the errors (mention sentiment) and not; paraphrases never fix them
    def edit(text, i):
        return f"<START>Say the sentiment, take {i}.<END>" if i % 2 else f"<START>Classify it, take {i}.<END>"

    events, *_ = run(Optimizer(edit=edit), rounds=1, n_gradients=4, max_expansion_factor=2, reject_on_errors=True,
                     minibatch_size=16)
    init = kinds(events, "candidate_proposed")[0].candidate_id
    wrong, _ = wrong_ids(events, init)
    on_errors = [e for e in kinds(events, "candidate_scored") if e.purpose == "reject_on_errors"]
    assert on_errors and all(set(e.example_ids) <= wrong and e.n <= 16 for e in on_errors)
    assert len(on_errors) <= 2 * 2  # at most 2 x cap proposals are scored
    survivors = kinds(events, "selection")[0].survivors
    pool = {e["candidate_id"] for e in kinds(events, "selection")[0].estimates} - {init}
    assert len(pool) == 2
    fixed = {e.candidate_id for e in on_errors if all(e.correct)}
    assert len(fixed) >= 2 and pool <= fixed  # the cap keeps the ones right on the parent's errors
    assert [e for e in kinds(events, "candidate_rejected") if e.reason == "fails_on_errors"]
    assert survivors


def test_beam_size_and_selection_estimates():
    events, *_ = run(rounds=3, beam_size=2)
    sels = kinds(events, "selection")
    assert [s.step for s in sels] == [1, 2, 3]
    sds = kinds(events, "step_done")
    for sel, sd in zip(sels, sds[1:], strict=True):
        assert len(sel.survivors) == 2 and sd.beam == sel.survivors and sel.method == "ucb"
        ests = {e["candidate_id"]: e for e in sel.estimates}
        assert all({"mean", "n", "ucb"} <= set(e) for e in ests.values())
        # survivors are the best by the bandit's empirical mean
        ranked = sorted(ests.values(), key=lambda e: -e["mean"])
        assert ests[sel.survivors[0]]["mean"] == ranked[0]["mean"]
        others = [e["mean"] for c, e in ests.items() if c not in sel.survivors]
        assert not others or min(ests[s]["mean"] for s in sel.survivors) >= max(others)
        n_pulled = sum(e["n"] for e in ests.values())
        assert n_pulled == SMALL["eval_rounds"] * min(SMALL["eval_prompts_per_round"], len(ests)) * SMALL[
            "samples_per_eval"]
    # parents come back into the pool: the previous beam is among the next round's arms
    for prev, sel in zip(sds[1:-1], sels[1:], strict=True):
        assert set(prev.beam) <= {e["candidate_id"] for e in sel.estimates}
    # the toy task model answers right when the instruction mentions sentiment: the search finds it
    best = sds[-1].best_id
    text = next(e.text for e in kinds(events, "candidate_proposed") if e.candidate_id == best)
    assert "sentiment" in text.lower()


def test_no_example_is_scored_twice_for_a_candidate():
    events, reqs, _, ctx = run(rounds=3)
    pairs = Counter()
    for e in kinds(events, "candidate_scored"):
        for i in e.example_ids:
            pairs[(e.candidate_id, i)] += 1
    assert pairs and max(pairs.values()) == 1
    task_reqs = [r for r in reqs if r["model"] == TASK_MODEL]
    assert len(task_reqs) == sum(pairs.values())
    bandit = [e for e in kinds(events, "candidate_scored") if e.purpose == "bandit"]
    assert bandit  # the bandit scores on train and only what is not known yet
    assert all(e.split == "train" for e in bandit)


def test_no_errors_means_no_gradient_requests():
    events, *_ = run(rounds=1, initial="Tell the sentiment of the text.")
    assert not kinds(events, "gradient") and not metas(events, "gradient")
    paras = metas(events, "paraphrase")
    assert paras and all(current_prompt(m.messages[-1]["content"]) == "Tell the sentiment of the text."
                         for m in paras)


@pytest.mark.parametrize("evaluator", ["ucb-e", "sr", "sh", "bf"])
def test_other_evaluators_run_and_keep_the_beam(evaluator):
    events, _, err, _ = run(rounds=2, evaluator=evaluator)
    assert err is None
    sels = kinds(events, "selection")
    assert len(sels) == 2 and all(s.method == evaluator and len(s.survivors) <= 2 for s in sels)
    if evaluator in ("sr", "sh"):
        assert all("rank" in e for s in sels for e in s.estimates)
    if evaluator == "bf":
        for s in sels:
            ns = {e["n"] for e in s.estimates}
            assert len(ns) == 1  # every arm on the same sample


# --- rejections --------------------------------------------------------------------------------------------------

def test_bad_proposals_are_rejected_with_a_reason():
    replies = {
        1: "",  # empty
        2: "I think the prompt could be better.\n\nFor example it could mention more things.",  # untagged nonsense
        3: "<START>Mark each review by its sentiment.<END>",
        4: "<START>Mark each review by its sentiment.<END>",  # duplicate of 3
        5: f"<START>{INITIAL}<END>",  # unchanged
        6: StubReply("<START>Rate the sentiment of the review and then explain", "length"),  # truncated
    }

    def edit(text, i):
        return replies.get(i, f"<START>Decide the sentiment, version {i}.<END>")

    events, *_ = run(Optimizer(edit=edit, paraphrase=lambda t, i: "" if i == 1 else f"Reword {i}"), rounds=1,
                     n_gradients=6, minibatch_size=16)
    rej = kinds(events, "candidate_rejected")
    reasons = Counter((e.reason, e.origin) for e in rej)
    for r in ("empty", "no_tags", "duplicate", "unchanged", "truncated"):
        assert reasons[(r, "gradient_edit")] == 1, (r, reasons)
    assert reasons[("empty", "paraphrase")] == 1
    proposed = [e.text for e in kinds(events, "candidate_proposed")]
    assert proposed.count("Mark each review by its sentiment.") == 1
    assert all("For example" not in t for t in proposed)
    # rejected edits are not paraphrased; the accepted one is
    para_src = [current_prompt(m.messages[-1]["content"]) for m in metas(events, "paraphrase")]
    assert "Mark each review by its sentiment." in para_src and INITIAL in para_src
    assert "" not in para_src and not any(s.startswith("Rate the sentiment") for s in para_src)


def test_untagged_single_line_edit_is_accepted_and_gradient_fallback():
    events, *_ = run(Optimizer(edit=lambda t, i: f"Judge the sentiment of the review ({i}).",
                               gradient=lambda t, i: "The prompt is too vague."), rounds=1)
    grads = kinds(events, "gradient")
    assert grads and all(g.critique == "The prompt is too vague." for g in grads)
    edits = [e for e in kinds(events, "candidate_proposed") if e.origin == "gradient_edit"]
    assert len(edits) == len(grads) and all(e.info["parsed"] == "untagged" for e in edits)


# --- bandits on fake reward tables -------------------------------------------------------------------------------

def table_pull(table, log=None):
    """pull(arms, k): arm a answers right on the first round(mean*k) of k examples (deterministic)."""

    def pull(arms, k):
        if log is not None:
            log.append((list(arms), k))
        return [[j < round(table[a] * k) for j in range(k)] for a in arms]
        yield  # a generator like the optimizer's pull

    return pull


def drive(gen):
    try:
        while True:
            next(gen)
    except StopIteration as s:
        return s.value


def test_ucb_values_follow_the_formula():
    sums, counts = [9.0, 3.0, 0.0], [10, 4, 0]
    v = ucb_values(sums, counts, t=3, c=1.0, mode="ucb")
    assert v[0] == pytest.approx(0.9 + math.sqrt(math.log(3) / (10 + 1e-3)))
    assert v[1] == pytest.approx(0.75 + math.sqrt(math.log(3) / (4 + 1e-3)))
    assert v[2] == pytest.approx(math.sqrt(math.log(3) / 1e-3))
    ve = ucb_values(sums, counts, t=3, c=2.0, mode="ucb-e")
    assert ve[1] == pytest.approx(0.75 + 2.0 * math.sqrt(2.0 / (4 + 1e-3)))


def test_choose_ucb_crafted_case():
    rng = random.Random(0)
    # A: high mean, many pulls; B: lower mean, few pulls; C: lowest, few pulls; D: mid mean, many pulls
    sums, counts = [27.0, 10.0, 4.0, 60.0], [32, 16, 16, 96]
    # t = 1: ln 1 = 0, no bonus: pure means (0.84, 0.625, 0.25, 0.625 -> ties broken at random)
    arms, vals = choose_ucb(sums, counts, 1, 1, 1.0, "ucb", rng)
    assert arms == [0] and vals == pytest.approx([27 / 32, 10 / 16, 4 / 16, 60 / 96])
    # t = 50: bonuses sqrt(ln 50 / n): A 0.84 + 0.35 = 1.19, B 0.625 + 0.49 = 1.12, D 0.625 + 0.20, C 0.25 + 0.49
    arms, vals = choose_ucb(sums, counts, 50, 2, 1.0, "ucb", rng)
    exp = [s / n + math.sqrt(math.log(50) / (n + 1e-3)) for s, n in zip(sums, counts, strict=True)]
    assert vals == pytest.approx(exp)
    assert arms == sorted(sorted(range(4), key=lambda i: -exp[i])[:2]) == [0, 1]
    # a large c favours the less-pulled arms: C (n=16) overtakes D (n=96) although its mean is lower
    arms, _ = choose_ucb(sums, counts, 50, 3, 3.0, "ucb", rng)
    assert arms == [0, 1, 2]
    # nothing pulled yet: k distinct random arms
    arms, vals = choose_ucb([0.0] * 5, [0] * 5, 1, 3, 1.0, "ucb", rng)
    assert vals is None and len(set(arms)) == 3


def test_ucb_bandit_spends_its_pulls_on_the_best_arms():
    table = [0.2, 0.9, 0.5, 0.85, 0.1, 0.3]
    log = []
    res = drive(ucb_bandit(6, table_pull(table, log), rounds=12, per_round=2, samples=20, c=0.5, mode="ucb",
                           rng=random.Random(3)))
    assert len(log) == 12 and all(len(a) == 2 and k == 20 for a, k in log)
    assert sum(res.counts) == 12 * 2 * 20
    assert res.order()[:2] == [1, 3]
    assert res.counts[1] == max(res.counts) and res.counts[1] > res.counts[4]
    assert res.means()[1] == pytest.approx(0.9)
    assert res.ucb is not None and len(res.ucb) == 6
    # never-pulled arms score 0 (as in the official code)
    res2 = drive(ucb_bandit(6, table_pull(table), rounds=1, per_round=2, samples=10, c=1.0, mode="ucb",
                            rng=random.Random(0)))
    assert sorted(res2.means()).count(0.0) >= 4


def test_successive_rejects_eliminates_one_arm_per_phase():
    table = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2]
    log = []
    res = drive(successive_rejects(7, table_pull(table, log), keep=2, budget=400, rng=random.Random(0)))
    sched = sr_schedule(7, 2, 400)
    assert len(sched) == 5 and len(log) == 5 and [k for _, k in log] == sched
    # K = 5, logbar = 0.5 + 1/2 + 1/3 + 1/4 + 1/5; n_1 = (400 - 5) / (logbar * 5)
    logbar = 0.5 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5
    assert sched[0] == int((400 - 5) / (logbar * 5))
    assert [len(arms) for arms, _ in log] == [7, 6, 5, 4, 3]  # exactly one arm out per phase
    assert [h["rejected"] for h in res.history] == [2, 6, 4, 0, 3]  # worst first
    assert res.order()[:2] == [1, 5]
    assert res.ranks[2] < res.ranks[6] < res.ranks[4] < res.ranks[0] < res.ranks[3] < res.ranks[1] == res.ranks[5]
    assert sr_schedule(3, 4, 100) == []


def test_successive_halving_and_brute_force():
    table = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6]
    log = []
    res = drive(successive_halving(8, table_pull(table, log), keep=2, budget=480, rng=random.Random(0)))
    # round 1: 8 arms x floor(480 / (8 * 3)) = 20; below the mean (0.5125) go
    assert log[0] == (list(range(8)), 20)
    assert res.history[0]["rejected"] == [0, 2, 4, 6]
    assert all(len(a) >= 2 for a, _ in log)
    assert set(res.order()[:2]) == {1, 5}
    log = []
    res = drive(brute_force(5, table_pull(table, log), budget=100, n_examples=12))
    assert log == [([0, 1, 2, 3, 4], 12)] and res.order()[0] == 1


# --- budget and determinism --------------------------------------------------------------------------------------

def test_budget_stops_at_a_step_boundary():
    full, reqs_full, err, _ = run(rounds=2)
    assert err is None
    n = len(reqs_full) - 5
    events, reqs, err, _ = run(rounds=2, budget=Budget(max_calls=n))
    assert isinstance(err, BudgetExceeded)
    assert kinds(events, "step_done")  # at least step 0 was completed
    assert len(reqs) <= n
    assert len(kinds(events, "step_done")) < len(kinds(full, "step_done"))
    # a tight budget: stops inside round 1, nothing sent beyond it
    events, reqs, err, _ = run(rounds=2, budget=Budget(max_calls=30))
    assert isinstance(err, BudgetExceeded) and len(reqs) <= 30


def _trajectory(events, reqs):
    """Proposed texts and optimizer requests in order; task requests as a multiset (they run concurrently)."""
    opt = [(r["messages"], r.get("seed"), r.get("temperature")) for r in reqs if r["model"] == OPT_MODEL]
    task = sorted(json.dumps(r["messages"]) for r in reqs if r["model"] == TASK_MODEL)
    return [e.text for e in kinds(events, "candidate_proposed")], opt, task


def test_same_seed_same_trajectory_other_seed_differs():
    a = _trajectory(*run(seed=7)[:2])
    b = _trajectory(*run(seed=7)[:2])
    assert a == b
    c = _trajectory(*run(seed=8)[:2])
    # the sampled parts differ, not only the request seeds: the minibatch errors shown in the gradient prompts
    def shown(t):
        return [m[-1]["content"] for m, _, _ in t[1] if "reasons why" in m[-1]["content"]]

    assert shown(a) and shown(a) != shown(c)
