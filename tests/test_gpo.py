"""GPO against the scripted stub (real HTTP): the word-budget schedules, the edit-distance measurement (flag vs
reject), relevance retrieval through the stub's /v1/embeddings and the lexical fallback, recency and importance,
the fixed demos, the 'best new candidate not chosen before' move, score reuse for duplicates, the number of steps,
every design-space knob by its effect on the meta-prompt, the budget and seed determinism."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import pytest
from rapidfuzz import fuzz

from optimizers.base import candidate_id
from optimizers.llm import Budget, BudgetExceeded
from optimizers.methods.gpo import GPO, step_size, steps_per_epoch, total_steps
from optimizers.similarity import Similarity, SimilarityError, cosine, lexical
from tests.conftest import OPT_MODEL, TASK_MODEL, kinds, last_user, make_ctx, scripted, toy_examples
from tests.stub_server import StubServer, _embed

INITIAL = "Classify the text, level 4."
SMALL = dict(epochs=1, batch_size=8, num_candidates=4, rule_start=0)  # the paper's mechanics (the rule start: test_rules.py)
_POS = ["loved it", "wonderful acting", "a delight", "great fun", "superb", "moving and warm"]


def level_task(req) -> str:
    """Task model whose accuracy the prompt sets: 'level k' answers the first k dev (and train) examples right."""
    text = last_user(req)
    instruction = text.split("\n\nText:")[0]
    review = text.split("Text:")[-1]
    m = re.search(r"level (\d+)", instruction)
    k = int(m.group(1)) if m else 0
    num = int(re.search(r"Review (\d+)", review).group(1))
    idx = num - 100 if num >= 100 else num - 1
    truth = "positive" if any(p in review for p in _POS) else "negative"
    if idx < k:
        return truth
    return "negative" if truth == "positive" else "positive"


def purpose_of(text: str) -> str:
    if text.startswith("Your task is to find the problems"):
        return "feedback"
    if text.startswith("Your task is to combine"):
        return "momentum"
    if text.startswith("Your task is to merge"):
        return "momentum_feedback"
    if text.startswith(("Your task is to write a prompt", "Your task is to revise")):
        return "generate"
    return "?"


class Opt:
    """A scripted optimizer model. `steps` maps step -> replies for that step's generate requests (cycled); by
    default each reply adds a word and a level to the current prompt."""

    def __init__(self, steps=None, per_step=4, feedback=None, momentum=None):
        self.steps, self.per_step = steps or {}, per_step
        self.feedback, self.momentum = feedback, momentum
        self.n = Counter()
        self.lock = threading.Lock()
        self.texts: list[tuple[str, str]] = []

    def __call__(self, req):
        text = last_user(req)
        kind = purpose_of(text)
        with self.lock:
            self.n[kind] += 1
            i = self.n[kind]
            self.texts.append((kind, text))
        if kind == "generate":
            step, j = (i - 1) // self.per_step + 1, (i - 1) % self.per_step
            if step in self.steps:
                replies = self.steps[step]
                return replies[j % len(replies)]
            return f"<START>Classify the text carefully {step}.{j}, level {(step + j) % 8}.<END>"
        if kind == "feedback":
            return self.feedback(text, i) if self.feedback else f"<START>it is vague about the label ({i})<END>"
        if kind == "momentum":
            return self.momentum(text, i) if self.momentum else f"<START>Merged instruction {i}, level 5.<END>"
        if kind == "momentum_feedback":
            return f"<START>merged problems {i}<END>"
        return "?"


class NoEmbeddings(StubServer):
    """The stub with /v1/embeddings unavailable (404), as on servers started without embeddings."""

    def _serve(self, h, path, body):
        if path.endswith("/embeddings"):
            return self._send(h, 404, {"error": {"message": "embeddings are not enabled"}})
        return super()._serve(h, path, body)


def run(opt=None, *, seed=0, budget=None, train=None, dev=None, initial=INITIAL, server=StubServer,
        task=level_task, **params):
    """Run to the end (or the budget); returns (events, all stub requests, error or None, ctx)."""
    opt = opt or Opt(per_step=params.get("num_candidates", SMALL["num_candidates"]))
    with server(scripted(opt, task)) as stub:
        ctx = make_ctx(stub, train=toy_examples(16) if train is None else train,
                       dev=toy_examples(8, seed=1, start=100) if dev is None else dev,
                       initial_prompt=initial, seed=seed, budget=budget)
        events, err = [], None
        try:
            for ev in GPO(ctx, {**SMALL, **params}).run():
                events.append(ev)
        except BudgetExceeded as e:
            err = e
        return events, list(stub.requests), err, ctx


def chat(reqs):
    return [r for r in reqs if r.get("_path", "").endswith("/chat/completions")]


def embed_reqs(reqs):
    return [r for r in reqs if r.get("_path", "").endswith("/embeddings")]


def metas(events, purpose="generate"):
    return [e for e in events if e.kind == "meta_prompt" and e.purpose == f"gpo.{purpose}"]


def meta_text(events, step, purpose="generate"):
    ms = [e for e in metas(events, purpose) if e.step == step]
    assert ms, f"no gpo.{purpose} request at step {step}"
    assert len({m.messages[-1]["content"] for m in ms}) == 1  # the same meta-prompt for every sample
    return ms[0].messages[-1]["content"]


def current_in(meta: str) -> str:
    return meta.split("The current prompt is:\n", 1)[1].split("\n\n", 1)[0]


def step_of(events, kind, step):
    return [e for e in kinds(events, kind) if e.step == step]


# --- defaults and schedules --------------------------------------------------------------------------------------

def test_defaults_are_the_papers():
    d = GPO.defaults()
    assert {k: d[k] for k in ("epochs", "batch_size", "num_candidates", "temperature", "format_data_num", "gradient",
                              "momentum_content", "momentum_selection", "momentum_k", "momentum_update",
                              "learning_rate", "decay", "initial_step_size", "final_step_size", "use_warmup",
                              "update_method", "over_budget", "keep_if_worse", "similarity", "embedding_model")} == {
        "epochs": 3, "batch_size": 8, "num_candidates": 8, "temperature": 1.0, "format_data_num": 3,
        "gradient": "none", "momentum_content": "para", "momentum_selection": "relevance", "momentum_k": 3,
        "momentum_update": "k-list", "learning_rate": "with", "decay": "cosine", "initial_step_size": 50,
        "final_step_size": 10, "use_warmup": False, "update_method": "generate_without", "over_budget": "flag",
        "keep_if_worse": False, "similarity": "auto", "embedding_model": None}
    helps = GPO.param_help()
    assert all(helps[k] for k in GPO.Params.model_fields)
    with pytest.raises(ValueError):
        GPO.Params(momentum_selection="random")
    with pytest.raises(ValueError, match="needs gradient='feedback'"):
        GPO.Params(momentum_content="feedback")
    GPO.Params(momentum_content="feedback", gradient="feedback")


def test_cosine_schedule_matches_the_paper():
    assert [step_size(t, 18) for t in range(1, 19)] == [49, 48, 47, 45, 42, 40, 36, 33, 30, 26, 23, 20, 17, 14,
                                                         12, 11, 10, 10]


def test_linear_fixed_and_warmup_schedules():
    lin = [step_size(t, 18, decay="linear") for t in range(1, 19)]
    assert lin == [int(50 - 40 / 18 * t) for t in range(1, 19)]
    assert lin[0] == 47 and lin[8] == 30 and lin[-1] == 10
    assert all(a >= b for a, b in zip(lin, lin[1:], strict=False))
    assert [step_size(t, 18, decay="fixed") for t in range(1, 19)] == [50] * 18
    # warm-up: int(50 t / 5) for t < 5, then the decay over (t - 5) / (18 - 5)
    warm = [step_size(t, 18, use_warmup=True, warmup_steps=5) for t in range(1, 19)]
    assert warm[:5] == [10, 20, 30, 40, 50] and warm[-1] == 10
    assert warm == [10, 20, 30, 40, 50, 49, 47, 44, 41, 37, 32, 27, 22, 18, 15, 12, 10, 10]
    assert [step_size(t, 18, decay="linear", use_warmup=True, warmup_steps=5) for t in (4, 5, 6, 18)] == \
        [40, 50, 46, 10]
    assert [step_size(t, 18, decay="fixed", use_warmup=True, warmup_steps=5) for t in (1, 4, 5, 18)] == \
        [10, 40, 50, 50]
    # warm-up off: warmup_steps is ignored
    assert [step_size(t, 18, warmup_steps=5) for t in range(1, 19)] == [step_size(t, 18) for t in range(1, 19)]


def test_steps_from_train_size():
    assert steps_per_epoch(48, 8) == 6 and total_steps(48, 8, 3) == 18  # BBH
    assert steps_per_epoch(100, 8) == 13 and total_steps(100, 8, 3) == 39  # GSM8K: remainder 4 -> +1
    assert steps_per_epoch(20, 8) == 3 and steps_per_epoch(19, 8) == 2  # remainder 4 counts, 3 does not
    assert steps_per_epoch(2, 8) == 1 and steps_per_epoch(0, 8) == 0  # ours: at least one step with data


@pytest.mark.parametrize("n_train,expected", [(20, 9), (19, 6)])
def test_run_takes_T_steps_with_the_scheduled_budgets(n_train, expected):
    events, reqs, err, _ = run(train=toy_examples(n_train), dev=toy_examples(2, seed=1, start=100), epochs=3,
                               num_candidates=1)
    assert err is None
    assert [e.step for e in kinds(events, "step_done")] == list(range(expected + 1))
    budgets = [e.budget_words for e in kinds(events, "edit_budget")]
    assert budgets == [step_size(t, expected) for t in range(1, expected + 1)]
    assert budgets[0] == step_size(1, expected) and budgets[-1] == 10
    assert [int(re.search(r"change up to (\d+) words", meta_text(events, t)).group(1))
            for t in range(1, expected + 1)] == budgets


def test_eighteen_steps_on_48_train_examples():
    events, _, err, _ = run(train=toy_examples(48), dev=toy_examples(1, seed=1, start=100), epochs=3,
                            num_candidates=1, format_data_num=1)
    assert err is None and len(kinds(events, "step_done")) == 19
    assert [e.budget_words for e in kinds(events, "edit_budget")] == [49, 48, 47, 45, 42, 40, 36, 33, 30, 26, 23,
                                                                      20, 17, 14, 12, 11, 10, 10]


# --- the default meta-prompt -------------------------------------------------------------------------------------

def test_default_meta_prompt_layout_and_eight_samples_at_temperature_one():
    events, reqs, err, ctx = run(num_candidates=8, opt=Opt(per_step=8))
    assert err is None
    gen = metas(events)
    assert len(gen) == 16 and all(m.params["temperature"] == 1.0 for m in gen)
    assert [r["temperature"] for r in chat(reqs) if r["model"] == OPT_MODEL] == [1.0] * 16
    meta = meta_text(events, 1)
    order = ["Your task is to write a prompt that will replace <Prompt>.",
             "Below are earlier prompts with their scores. Scores range from 0 to 100; a higher score means a "
             "better prompt.",
             f"Prompt: {INITIAL}\nScore: 50",
             f"The current prompt is:\n{INITIAL}",
             "The examples below show how the prompt is used: <Prompt> in each input is replaced by your prompt",
             "Input:\n<Prompt>\n\nText: Review",
             "Carefully analyse the previous prompts and their scores, and write a new improved prompt to replace "
             "<Prompt> in the task examples.",
             "You may change up to 30 words of the current prompt.",  # T = 2: 10 + 40 * 0.5 * (1 + cos(pi / 2))
             "Wrap the new prompt with <START> and <END>."]
    pos = [meta.find(s) for s in order]
    assert all(p >= 0 for p in pos), [s for s, p in zip(order, pos, strict=True) if p < 0]
    assert pos == sorted(pos)
    assert meta.count("Input:\n") == 3 and meta.count("\nOutput:\n") == 3  # format_data_num fixed demos
    assert meta.endswith("words of the current prompt.\n\nWrap the new prompt with <START> and <END>.")
    # step 0 scored the initial prompt on dev (the selection split), never on test or train
    s0 = step_of(events, "candidate_scored", 0)
    assert len(s0) == 1 and s0[0].split == "dev" and s0[0].n == 8 and s0[0].score == 0.5
    assert all(e.split == "dev" for e in kinds(events, "candidate_scored"))


def test_fixed_demos_identical_across_steps_and_drawn_from_train_only():
    train = toy_examples(24)
    events, _, err, ctx = run(train=train, epochs=2, num_candidates=2, opt=Opt(per_step=2))
    assert err is None
    demo_blocks = []
    for t in range(1, 7):
        meta = meta_text(events, t)
        demo_blocks.append(re.findall(r"Input:\n<Prompt>\n\nText: (Review \d+: [^\n]+)\nAnswer:\nOutput:\n(\w+)",
                                      meta))
    assert len(demo_blocks[0]) == 3 and all(b == demo_blocks[0] for b in demo_blocks)
    by_text = {ex.fields["text"]: ex.label for ex in train}
    assert all(text in by_text and by_text[text] == gold for text, gold in demo_blocks[0])
    dev_texts = {ex.fields["text"] for ex in ctx.dev}
    assert not any(text in dev_texts for text, _ in demo_blocks[0])


# --- edit budget ---------------------------------------------------------------------------------------------------

BUDGET_STEP1 = ["<START>Classify the text, level 3.<END>",   # distance 1 (4. -> 3.)
                "<START>Label the text, level 2.<END>",      # distance 2
                "<START>Label this review, level 6.<END>",    # distance 4: over a budget of 2
                "Sure! <START>Label this review now, level 1.<END>"]  # distance 5 (one insertion)


def test_edit_budget_measures_word_distances_and_flags_over_budget():
    opt = Opt(steps={1: BUDGET_STEP1})
    events, _, err, _ = run(opt, initial_step_size=3, final_step_size=1)
    assert err is None
    eb = step_of(events, "edit_budget", 1)[0]
    assert eb.budget_words == 2 and eb.schedule.startswith("cosine 3->1 over 2 steps")
    got = [(m["text"], m["distance_words"], m["within_budget"], m["accepted"]) for m in eb.measured]
    assert got == [("Classify the text, level 3.", 1, True, True), ("Label the text, level 2.", 2, True, True),
                   ("Label this review, level 6.", 4, False, True), ("Label this review now, level 1.", 5, False, True)]
    assert all(m["candidate_id"] == candidate_id(m["text"]) for m in eb.measured)
    # flagged (paper): the over-budget candidate is still proposed, scored and, as the best, chosen
    prop = {e.text: e for e in step_of(events, "candidate_proposed", 1)}
    assert prop["Label this review, level 6."].info["within_budget"] is False
    assert prop["Label this review, level 6."].info["distance_words"] == 4
    assert not [e for e in kinds(events, "candidate_rejected") if e.reason == "over_budget"]
    assert current_in(meta_text(events, 2)) == "Label this review, level 6."


def test_over_budget_reject_mode():
    opt = Opt(steps={1: BUDGET_STEP1})
    events, _, err, _ = run(opt, initial_step_size=3, final_step_size=1, over_budget="reject", regenerate=0)
    assert err is None
    rej = [e for e in kinds(events, "candidate_rejected") if e.reason == "over_budget"]
    assert sorted(e.text for e in rej if e.step == 1) == ["Label this review now, level 1.",
                                                           "Label this review, level 6."]
    eb = step_of(events, "edit_budget", 1)[0]
    assert [(m["distance_words"], m["accepted"]) for m in eb.measured] == [(1, True), (2, True), (4, False),
                                                                          (5, False)]
    proposed = {e.text for e in kinds(events, "candidate_proposed")}
    assert "Label this review, level 6." not in proposed
    scored_ids = {e.candidate_id for e in kinds(events, "candidate_scored")}
    assert candidate_id("Label this review, level 6.") not in scored_ids
    # the best within budget moves on: level 3 beats level 2
    assert current_in(meta_text(events, 2)) == "Classify the text, level 3."


def test_learning_rate_without_drops_the_budget_line():
    events, _, err, _ = run(learning_rate="without")
    assert err is None
    assert "You may change up to" not in meta_text(events, 1)
    eb = kinds(events, "edit_budget")
    assert all(e.budget_words is None and e.schedule == "none" for e in eb)
    assert all(m["within_budget"] for e in eb for m in e.measured)


@pytest.mark.parametrize("params,expected", [(dict(decay="fixed"), [50, 50]), (dict(decay="linear"), [30, 10]),
                                             (dict(use_warmup=True, warmup_steps=2), [25, 50]), (dict(), [30, 10])])
def test_decay_options_change_the_budget_line(params, expected):
    events, _, err, _ = run(**params, num_candidates=1, opt=Opt(per_step=1))
    assert err is None
    assert [e.budget_words for e in kinds(events, "edit_budget")] == expected, params
    assert f"You may change up to {expected[0]} words" in meta_text(events, 1)


# --- selection -----------------------------------------------------------------------------------------------------

SELECT_STEPS = {1: ["<START>Classify the text, level 2.<END>", "<START>Classify the text, level 3.<END>",
                    "<START>Classify the text, level 1.<END>", "<START>Classify the text, level 3.<END>"],
                2: [f"<START>{INITIAL}<END>", "<START>Sort the text, level 2.<END>",
                    "<START>Sort the text, level 1.<END>", "<START>Classify the text, level 2.<END>"]}


def test_moves_to_best_new_candidate_even_when_worse_and_never_back():
    events, _, err, _ = run(Opt(steps=SELECT_STEPS), regenerate=0)
    assert err is None
    # step 1: every candidate is worse than the initial 0.5; the best of them (level 3) becomes current anyway
    assert current_in(meta_text(events, 2)) == "Classify the text, level 3."
    sel = kinds(events, "selection")
    assert sel[0].survivors == [candidate_id("Classify the text, level 3.")]
    # the repeated 'level 3' within step 1 is one candidate
    assert [e.reason for e in step_of(events, "candidate_rejected", 1)] == ["duplicate"]
    # step 2: the initial prompt (0.5, chosen before) and 'level 2' from step 1 come back with their old scores;
    # the best not chosen before is 'Classify the text, level 2.' (0.25, first of the 0.25s in generation order)
    est = {e["candidate_id"]: e for e in sel[1].estimates}
    init_id = candidate_id(INITIAL)
    assert est[init_id]["mean"] == 0.5 and est[init_id]["chosen_before"] and est[init_id]["reused"]
    assert sel[1].survivors == [candidate_id("Sort the text, level 2.")] or \
        sel[1].survivors == [candidate_id("Classify the text, level 2.")]
    assert sel[1].survivors == [candidate_id("Sort the text, level 2.")]  # generation order: 'Sort' came first
    # duplicates reuse scores: no prompt is scored twice
    scored = Counter(e.candidate_id for e in kinds(events, "candidate_scored"))
    assert max(scored.values()) == 1
    eb2 = step_of(events, "edit_budget", 2)[0]
    assert [m["reused"] for m in eb2.measured] == [True, False, False, True]
    # best = the trajectory prompt with the best dev score: still the initial prompt
    done = kinds(events, "step_done")
    assert [d.best_id for d in done] == [init_id] * 3 and done[-1].best_score == 0.5
    assert done[1].beam == [candidate_id("Classify the text, level 3.")]
    assert done[2].beam == [candidate_id("Sort the text, level 2.")]


def test_keep_if_worse_keeps_the_current_prompt():
    events, _, err, _ = run(Opt(steps=SELECT_STEPS), keep_if_worse=True)
    assert err is None
    assert current_in(meta_text(events, 2)) == INITIAL
    assert kinds(events, "selection")[0].survivors == [candidate_id(INITIAL)]
    # a better candidate is still taken
    better = {1: ["<START>Classify the text, level 6.<END>", "<START>Classify the text, level 2.<END>"]}
    events, _, err, _ = run(Opt(steps=better, per_step=2), keep_if_worse=True, num_candidates=2)
    assert current_in(meta_text(events, 2)) == "Classify the text, level 6."
    assert kinds(events, "step_done")[-1].best_score == 0.75


def test_all_candidates_rejected_keeps_the_current_prompt():
    bad = {1: ["", f"<START>{INITIAL}<END>", "<START>   <END>"]}
    events, _, err, _ = run(Opt(steps=bad, per_step=3), num_candidates=3, regenerate=0)
    assert err is None
    assert Counter(e.reason for e in step_of(events, "candidate_rejected", 1)) == {"empty": 2, "unchanged": 1}
    assert current_in(meta_text(events, 2)) == INITIAL


def test_rejected_samples_are_replaced_so_the_step_has_candidates_to_score():
    """Ours: both samples of step 1 echo the current prompt (rejected); a second round of two new samples is drawn,
    proposed and scored; a step with nothing rejected draws no more than num_candidates."""
    good = ["<START>Classify the text, level 6.<END>", "<START>Label the text, level 5.<END>"]
    events, _, err, _ = run(Opt(steps={1: [f"<START>{INITIAL}<END>"] * 2 + good}, per_step=4), num_candidates=2)
    assert err is None
    assert [e.reason for e in step_of(events, "candidate_rejected", 1)] == ["unchanged", "duplicate"]
    proposed = [e.text for e in step_of(events, "candidate_proposed", 1)]
    assert proposed == ["Classify the text, level 6.", "Label the text, level 5."]
    scored = {e.candidate_id for e in step_of(events, "candidate_scored", 1)}
    assert {candidate_id(t) for t in proposed} <= scored
    gen = [m for m in kinds(events, "meta_prompt") if m.purpose == "gpo.generate"]
    assert sum(1 for m in gen if m.step == 1) == 4 and sum(1 for m in gen if m.step == 2) == 2


def test_no_new_rounds_at_temperature_zero_or_with_regenerate_off():
    for params in ({"temperature": 0.0}, {"regenerate": 0}):
        events, _, err, _ = run(Opt(steps={1: [f"<START>{INITIAL}<END>"] * 4}, per_step=4), num_candidates=2,
                                **params)
        assert err is None
        gen = [m for m in kinds(events, "meta_prompt") if m.purpose == "gpo.generate" and m.step == 1]
        assert len(gen) == 2 and not step_of(events, "candidate_proposed", 1)


def test_untagged_replies_parsed_and_chatter_rejected():
    replies = {1: ["Classify the sentiment of the text, level 5.",
                   "Here is the new prompt:\n<START>**classify** the text, level 6.<END>",
                   "I think a good prompt would be many things.\n\nFirst, ... \n\nSecond, ..."]}
    events, _, err, _ = run(Opt(steps=replies, per_step=3), num_candidates=3, regenerate=0)
    assert err is None
    prop = {e.text: e.info["parsed"] for e in step_of(events, "candidate_proposed", 1)}
    assert prop == {"Classify the sentiment of the text, level 5.": "untagged",
                    "Classify the text, level 6.": "tagged"}  # '**' removed, first letter capitalised
    assert [e.reason for e in step_of(events, "candidate_rejected", 1)] == ["no_tags"]


# --- retrieval ------------------------------------------------------------------------------------------------------

TRAJ = {1: ["<START>zeta eta theta iota, level 2.<END>"],
        2: ["<START>alpha beta kappa, level 3.<END>"],
        3: ["<START>alpha beta gamma lambda mu, level 5.<END>"],
        4: ["<START>alpha beta omega, level 1.<END>"]}
TRAJ_INIT = "alpha beta gamma delta, level 6."


def _traj_run(server=StubServer, **params):
    return run(Opt(steps=TRAJ, per_step=1), server=server, train=toy_examples(32), initial=TRAJ_INIT,
               num_candidates=1, **params)


def test_relevance_retrieval_uses_endpoint_embeddings():
    events, reqs, err, _ = _traj_run()
    assert err is None
    ret = kinds(events, "retrieval")
    assert [r.rule for r in ret] == ["relevance"] * 4
    assert all(r.similarity == f"embeddings:{OPT_MODEL}" for r in ret)
    # step 1: only the initial prompt exists; step 4: current = step 3's prompt, 3 earlier ones to pick 2 from
    assert [x["text"] for x in ret[0].retrieved] == [TRAJ_INIT]
    r4 = ret[3]
    cur = "Alpha beta gamma lambda mu, level 5."
    earlier = [TRAJ_INIT, "Zeta eta theta iota, level 2.", "Alpha beta kappa, level 3."]
    assert r4.current_id == candidate_id(cur) and r4.retrieved[0]["text"] == cur
    sims = {t: cosine(_embed(cur), _embed(t)) for t in earlier}
    expected = sorted(earlier, key=lambda t: -sims[t])[:2]
    assert [x["text"] for x in r4.retrieved[1:]] == expected
    assert expected == [TRAJ_INIT, "Alpha beta kappa, level 3."]  # most shared words first, the unrelated one out
    assert [x["relevance"] for x in r4.retrieved[1:]] == pytest.approx([sims[t] for t in expected])
    assert r4.retrieved[1]["relevance"] >= r4.retrieved[2]["relevance"]
    # shown in the meta-prompt in that order with their dev scores (0-100)
    meta = meta_text(events, 4)
    blocks = re.findall(r"Prompt: ([^\n]+)\nScore: (\d+)", meta)
    assert blocks == [(x["text"], str(round(x["score"] * 100))) for x in r4.retrieved]
    assert blocks[0] == (cur, "62")  # level 5 -> 5/8
    # embeddings: the optimizer model's name by default, each text embedded once (cached per text)
    ers = embed_reqs(reqs)
    assert ers and all(r["model"] == OPT_MODEL for r in ers)
    inputs = [t for r in ers for t in (r["input"] if isinstance(r["input"], list) else [r["input"]])]
    assert len(inputs) == len(set(inputs))


def test_embedding_model_name_is_configurable():
    events, reqs, err, _ = _traj_run(embedding_model="emb-small")
    assert err is None
    assert {r["model"] for r in embed_reqs(reqs)} == {"emb-small"}
    assert kinds(events, "retrieval")[-1].similarity == "embeddings:emb-small"


def test_lexical_fallback_when_embeddings_are_down():
    events, reqs, err, _ = _traj_run(server=NoEmbeddings)
    assert err is None
    ret = kinds(events, "retrieval")
    assert ret[-1].similarity == "lexical" and ret[-2].similarity == "lexical"
    assert len(embed_reqs(reqs)) == 1  # tried once, then lexical for the rest of the run
    cur = "Alpha beta gamma lambda mu, level 5."
    earlier = [TRAJ_INIT, "Zeta eta theta iota, level 2.", "Alpha beta kappa, level 3."]
    sims = {t: fuzz.token_set_ratio(cur, t) / 100 for t in earlier}
    expected = sorted(earlier, key=lambda t: -sims[t])[:2]
    assert [x["text"] for x in ret[-1].retrieved[1:]] == expected
    assert expected == [TRAJ_INIT, "Alpha beta kappa, level 3."]
    assert [x["relevance"] for x in ret[-1].retrieved[1:]] == pytest.approx([sims[t] for t in expected])
    # lexical by choice: no embedding request at all, same picks
    events2, reqs2, err, _ = _traj_run(similarity="lexical")
    assert err is None and not embed_reqs(reqs2)
    assert kinds(events2, "retrieval")[-1].retrieved == ret[-1].retrieved
    # embeddings required but unavailable: the run fails with a clear error
    with pytest.raises(SimilarityError):
        _traj_run(server=NoEmbeddings, similarity="embeddings")


def test_similarity_backend_unit():
    assert lexical("a b c", "c b a") == 1.0 and 0 <= lexical("a b", "x y") < 0.5
    assert cosine([1, 0], [0, 1]) == 0.0 and cosine([1, 1], [2, 2]) == pytest.approx(1.0)
    s = Similarity("lexical")
    assert s.similarities("a b", ["a b", "c"])[1] == "lexical"
    assert Similarity("auto").backend == "lexical"  # no endpoint: lexical
    with pytest.raises(SimilarityError):
        Similarity("embeddings")


def test_recency_and_importance_rules():
    events, reqs, err, _ = _traj_run(momentum_selection="recency")
    assert err is None and not embed_reqs(reqs)
    r4 = kinds(events, "retrieval")[3]
    assert r4.rule == "recency" and r4.similarity == "none"
    assert [x["text"] for x in r4.retrieved] == ["Alpha beta gamma lambda mu, level 5.",
                                                 "Alpha beta kappa, level 3.", "Zeta eta theta iota, level 2."]
    events, _, err, _ = _traj_run(momentum_selection="importance")
    ret = kinds(events, "retrieval")
    # top 3 by dev score over the trajectory: level 6 (initial), 5, 3; at step 2 the current (level 2) is included
    assert [x["text"] for x in ret[3].retrieved] == [TRAJ_INIT, "Alpha beta gamma lambda mu, level 5.",
                                                     "Alpha beta kappa, level 3."]
    assert [x["score"] for x in ret[3].retrieved] == [0.75, 0.625, 0.375]
    assert [x["text"] for x in ret[1].retrieved] == [TRAJ_INIT, "Zeta eta theta iota, level 2."]
    # k = 2 with relevance: the current and one other
    events, _, err, _ = _traj_run(momentum_k=2)
    assert len(kinds(events, "retrieval")[3].retrieved) == 2


# --- the other knobs, by their effect on the meta-prompt ----------------------------------------------------------

def test_momentum_none_shows_only_the_current_prompt():
    events, _, err, _ = run(momentum_content="none")
    assert err is None and not kinds(events, "retrieval")
    meta = meta_text(events, 2)
    assert "Below is the current prompt with its score." in meta and "earlier prompts" not in meta
    assert "Write a new improved prompt to replace <Prompt>" in meta and "Carefully analyse" not in meta


def test_update_method_edit_wording():
    events, _, err, _ = run(update_method="edit_without")
    assert err is None
    meta = meta_text(events, 1)
    assert meta.startswith("Your task is to revise the current prompt")
    assert "revise the current prompt into a new improved prompt" in meta
    assert meta.endswith("Wrap the revised prompt with <START> and <END>.")


def test_feedback_gradient_shown_with_generate_not_with_generate_without():
    events, reqs, err, ctx = run(gradient="feedback", update_method="generate")
    assert err is None
    fb = metas(events, "feedback")
    assert [m.step for m in fb] == [1, 2] and all(m.params["temperature"] == 0.0 for m in fb)
    grads = kinds(events, "gradient")
    assert [g.critique for g in grads] == ["It is vague about the label (1)", "It is vague about the label (2)"]
    # the critique lists the current prompt's wrong minibatch examples (level 4: train examples 1-4 are right)
    mb = [e for e in kinds(events, "candidate_scored") if e.purpose == "minibatch"]
    assert mb[0].split == "train" and mb[0].n == 8
    wrong = {i for i, ok in zip(mb[0].example_ids, mb[0].correct, strict=True) if not ok}
    assert {e["id"] for e in grads[0].errors} == wrong and wrong and all(int(i) > 4 for i in wrong)
    assert fb[0].messages[-1]["content"].count("Wrong prediction:") == len(wrong)
    meta = meta_text(events, 1)
    assert "Below are the problems with this prompt.\n\nIt is vague about the label (1)" in meta
    assert "and the problems above" in meta
    # the minibatches walk a once-shuffled train, sequentially: two steps cover all 16 examples
    ids = [set(e.example_ids) for e in mb]
    assert len(ids) == 2 and not ids[0] & ids[1] and len(ids[0] | ids[1]) == 16
    events, _, err, _ = run(gradient="feedback")  # generate_without: critique computed, not shown
    assert kinds(events, "gradient") and "problems with this prompt" not in meta_text(events, 1)


def test_feedback_momentum_shows_past_critiques():
    events, _, err, _ = run(gradient="feedback", update_method="generate", momentum_content="feedback",
                            momentum_selection="recency")
    assert err is None
    meta = meta_text(events, 2)
    assert "Below is the current prompt with its score." in meta  # no prompt list with feedback momentum
    crit = meta.split("Below are the problems with this prompt.\n\n", 1)[1]
    assert crit.startswith("It is vague about the label (2)\n\nIt is vague about the label (1)")
    ret = [r for r in kinds(events, "retrieval") if r.step == 2]
    assert ret and ret[0].retrieved[0]["content"] == "feedback"
    # real-time: the optimizer merges the previous and current critique (temperature 0)
    events, _, err, _ = run(gradient="feedback", update_method="generate", momentum_content="feedback",
                            momentum_update="real-time")
    assert err is None
    mm = metas(events, "momentum")
    assert [m.step for m in mm] == [2] and "it is vague about the label (1)" in mm[0].messages[-1]["content"].lower()
    assert "Below are the problems with this prompt.\n\nMerged problems 1" in meta_text(events, 2)


def test_real_time_para_momentum():
    events, _, err, _ = run(momentum_update="real-time")
    assert err is None
    m1 = meta_text(events, 1)
    assert f"Below is the previous prompt with its score. Scores range from 0 to 100; a higher score means a " \
           f"better prompt.\nPrompt: {INITIAL}\nScore: 50" in m1
    assert "Carefully analyse the previous prompt and its score" in m1
    mm = metas(events, "momentum")
    assert [m.step for m in mm] == [2] and mm[0].params["temperature"] == 0.0
    text = mm[0].messages[-1]["content"]
    step1_best = current_in(meta_text(events, 2))
    assert f"Prompt: {INITIAL}\nScore: 50" in text and f"Prompt: {step1_best}" in text
    # the merged prompt is scored on dev and shown instead of a list
    merged = candidate_id("Merged instruction 1, level 5.")
    assert any(e.candidate_id == merged and e.purpose == "momentum" and e.score == 0.625
               for e in kinds(events, "candidate_scored"))
    assert "Prompt: Merged instruction 1, level 5.\nScore: 62" in meta_text(events, 2)
    assert [r.rule for r in kinds(events, "retrieval")] == ["real-time", "real-time"]


def test_no_dev_split_scores_on_train():
    events, _, err, _ = run(dev=[])
    assert err is None
    assert {e.split for e in kinds(events, "candidate_scored")} == {"train"}
    assert all(d.best_split == "train" for d in kinds(events, "step_done"))


# --- budget and determinism ---------------------------------------------------------------------------------------

def test_budget_stops_the_run_within_the_call_limit():
    full, reqs_full, err, _ = run()
    assert err is None
    n = len(chat(reqs_full)) - 5
    events, reqs, err, _ = run(budget=Budget(max_calls=n))
    assert isinstance(err, BudgetExceeded)
    assert len(chat(reqs)) <= n
    assert kinds(events, "step_done") and len(kinds(events, "step_done")) < len(kinds(full, "step_done"))
    events, reqs, err, _ = run(budget=Budget(max_calls=12))
    assert isinstance(err, BudgetExceeded) and len(chat(reqs)) <= 12
    assert [d.step for d in kinds(events, "step_done")] == [0]


CUT_STEP = {1: ["<START>Classify the text, level 6.<END>", "<START>Classify the text, level 2.<END>",
                "<START>Classify the text, level 1.<END>", "<START>Classify the text, level 7.<END>"]}


@pytest.mark.parametrize("first, best", [("level 6", 0.75), ("level 2", 0.5)])
def test_a_step_cut_by_the_budget_keeps_a_better_candidate_it_scored(first, best):
    """Step 1 is cut while scoring its second candidate: the first one, scored on all of dev, is the best when it beats
    the trajectory (0.75 > the initial's 0.5) and is not when it does not (0.25)."""
    replies = {1: sorted(CUT_STEP[1], key=lambda r: first not in r)}
    # 8 dev calls for the initial prompt, 4 generate requests, 8 for the first candidate, 3 of the second's 8
    events, reqs, err, _ = run(Opt(steps=replies), budget=Budget(max_calls=23))
    assert isinstance(err, BudgetExceeded) and len(chat(reqs)) <= 23
    scored = [e for e in kinds(events, "candidate_scored") if e.step == 1]
    assert [e.candidate_id for e in scored] == [candidate_id(f"Classify the text, {first}.")]
    done = kinds(events, "step_done")
    assert done[-1].best_score == best
    assert done[-1].best_id == (candidate_id("Classify the text, level 6.") if best > 0.5 else candidate_id(INITIAL))
    assert not kinds(events, "selection")  # the cut step selected nothing: the trajectory did not move


def _trajectory(events, reqs):
    opt = [(r["messages"], r.get("seed"), r.get("temperature")) for r in chat(reqs) if r["model"] == OPT_MODEL]
    task = sorted(json.dumps(r["messages"]) for r in chat(reqs) if r["model"] == TASK_MODEL)
    return [e.text for e in kinds(events, "candidate_proposed")], opt, task


def test_same_seed_same_trajectory_other_seed_differs():
    a = _trajectory(*run(seed=7, gradient="feedback")[:2])
    b = _trajectory(*run(seed=7, gradient="feedback")[:2])
    assert a == b
    c = _trajectory(*run(seed=8, gradient="feedback")[:2])

    def demos(t):
        return [m[-1]["content"].split("The examples below", 1)[1] for m, _, _ in t[1]
                if m[-1]["content"].startswith("Your task is to write")]

    assert demos(a) and demos(a) != demos(c)  # the fixed demos are drawn with the seed
    assert [s for _, s, _ in a[1]] != [s for _, s, _ in c[1]]


# --- through the run engine -----------------------------------------------------------------------------------------

def test_runner_stores_a_gpo_run_and_resumes_by_replay(tmp_path):
    from optimizers.backend import Backend
    from optimizers.config import DataConfig, RunConfig
    from optimizers.data import Splits
    from optimizers.llm import Endpoint
    from optimizers.runner import Runner
    from optimizers.store import Store
    from tests.conftest import TOY_TASK

    with StubServer(scripted(Opt(per_step=2), level_task)) as stub:
        store = Store(tmp_path / "runs.sqlite")

        def backend(cfg):
            ep = Endpoint(stub.base_url, "k", max_retries=0, patience=1.0, max_concurrency=2)
            return Backend(ep, False, "stub-task", ep.base_url)

        runner = Runner(store, backend_factory=backend)
        cfg = RunConfig(optimizer="gpo", params={"epochs": 1, "num_candidates": 2, "rule_start": 0},
                        initial_prompt=INITIAL,
                        task=TOY_TASK, data=DataConfig(name="toy", input_cols=["text"], label_col="label"),
                        optimizer_model="stub-opt", cache_dir=str(tmp_path / "cache"), budget=Budget(max_calls=30))
        sp = Splits(toy_examples(16), toy_examples(8, seed=1, start=100), toy_examples(4, seed=2, start=200))
        rid = runner.create(cfg, sp)
        res = runner.execute(rid)
        assert res.status == "budget"
        n_before = len(stub.chat_requests())
        run_ = store.get_run(rid)
        conf = run_["config"]
        conf["budget"]["max_calls"] = 500
        with store._tx() as c:
            c.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(conf), rid))
        res2 = runner.execute(rid)
        assert res2.status == "done"
        ev_kinds = [e.kind for _, e in store.events(rid)]
        assert ev_kinds.count("step_done") == 3 and "retrieval" in ev_kinds and "edit_budget" in ev_kinds
        first = {str(r["messages"]) + str(r.get("seed")) + r["model"] for r in stub.chat_requests()[:n_before]}
        assert not any(str(r["messages"]) + str(r.get("seed")) + r["model"] in first
                       for r in stub.chat_requests()[n_before:])


def test_edit_with_critique_and_demo_count():
    events, _, err, _ = run(gradient="feedback", update_method="edit", num_candidates=1, opt=Opt(per_step=1))
    assert err is None
    meta = meta_text(events, 1)
    assert meta.startswith("Your task is to revise the current prompt")
    assert "Below are the problems with this prompt.\n\nIt is vague about the label (1)" in meta
    assert "Carefully analyse the previous prompts and their scores and the problems above, and revise" in meta
    events, _, err, _ = run(format_data_num=1, num_candidates=1, opt=Opt(per_step=1))
    assert meta_text(events, 1).count("\nOutput:\n") == 1
    events, _, err, _ = run(format_data_num=0, num_candidates=1, opt=Opt(per_step=1))
    meta = meta_text(events, 1)
    assert "\nOutput:\n" not in meta and "The examples below" not in meta


def test_the_trajectory_best_breaks_a_tie_by_selection_macro_f1_unless_first_is_asked():
    """The paper returns the trajectory prompt with the best score; between equals we keep the earliest, or with
    tie_break=macro_f1 the one whose answers on the same selection examples spread over the labels (helpdesk_queues
    seed 2: the initial prompt, answering juniper to all, tied at 8 / 22 with a prompt that read all three queues)."""
    from optimizers.base import Candidate, Context
    from optimizers.evaluate import Evaluator
    from optimizers.methods.gpo import _Entry
    from tests.conftest import TOY_TASK

    class Nothing:
        max_concurrency, accepts_extras, model = 1, False, "x"

    dev = toy_examples(10, start=101)  # 5 positive, 5 negative, alternating
    ctx = Context(task=TOY_TASK, train=toy_examples(4), dev=dev, initial_prompt="Classify.",
                  evaluator=Evaluator(Nothing(), TOY_TASK), optimizer_llm=Nothing())

    def entry(cid: str, answers: list[str], step: int) -> _Entry:
        c = Candidate(cid, cid, [], "generated", step)
        c.preds["dev"] = {ex.id: a for ex, a in zip(dev, answers)}
        right = sum(a == ex.label for ex, a in zip(dev, answers))
        return _Entry(c, right / len(dev), step)

    fav = entry("fav", ["positive"] * 9 + ["negative"], 0)  # 6 right, leaning to positive
    reader = entry("reader", ["positive", "negative", "negative", "positive"] * 2 + ["positive", "negative"], 2)
    worse = entry("worse", ["negative"] * 10, 1)
    for params, expected in (({"tie_break": "first"}, "fav"), (GPO.presets["paper"], "fav"), ({}, "reader")):
        gpo = GPO(ctx, params)
        gpo.split, gpo.eval_set, gpo.trajectory = "dev", dev, [fav, worse, reader]
        assert gpo.best().cand.id == expected
    gpo.trajectory = [worse, fav, entry("better", ["positive", "negative"] * 3 + ["negative"] * 4, 3), reader]
    assert gpo.best().cand.id == "better"  # more right: a higher score wins whatever its macro-F1
    del reader.cand.preds["dev"][dev[0].id]  # not read on the whole selection set: no tie-break
    gpo.trajectory = [fav, reader]
    assert gpo.best().cand.id == "fav"
