"""APE against the scripted stub (real HTTP): forward induction from train demos only, candidate hygiene, the
multistage filter on growing train subsets, the UCB option, the final dev evaluation, Monte-Carlo resampling,
likelihood scoring from top_logprobs, the budget and seed determinism."""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter, defaultdict

import pytest

from optimizers.backend import Backend
from optimizers.config import DataConfig, RunConfig
from optimizers.data import Example, Splits
from optimizers.likelihood import LikelihoodUnavailable, gold_logprob
from optimizers.llm import Budget, BudgetExceeded, Endpoint
from optimizers.methods.ape import (
    APE,
    INDUCE_PROMPT,
    RESAMPLE_PROMPT,
    clean_induced,
    is_echo,
)
from optimizers.methods.strategies import rank_arms, ucb1_values
from optimizers.runner import Runner
from optimizers.store import Store
from tests.conftest import (
    _POS,
    OPT_MODEL,
    TASK_MODEL,
    TOY_TASK,
    kinds,
    last_user,
    make_ctx,
    scripted,
    toy_examples,
    toy_task_answer,
)
from tests.stub_server import StubReply, StubServer

INITIAL = "Classify the text."
SMALL = dict(num_subsamples=2, num_demos=3, num_prompts_per_subsample=4, stage_samples=2, final_candidates=2,
             ucb_rounds=3, ucb_prompts_per_round=2, ucb_samples=3)


def is_induce(text: str) -> bool:
    return text.rstrip().endswith("The instruction was to")


def is_resample(text: str) -> bool:
    return text.startswith("Write a variation")


class Opt:
    """A scripted optimizer model: induction replies from `induce(i)` (i counts induction requests from 1)."""

    def __init__(self, induce=None, resample=None):
        self.n = Counter()
        self.lock = threading.Lock()
        self.induce = induce or (lambda i: f" classify the text, version {i}.")
        self.resample = resample or (lambda text, i: f"Output: {text.split('Input: ')[1].split(chr(10))[0]} v{i}")

    def __call__(self, req):
        text = last_user(req)
        kind = "induce" if is_induce(text) else "resample" if is_resample(text) else "?"
        with self.lock:
            self.n[kind] += 1
            i = self.n[kind]
        if kind == "induce":
            return self.induce(i)
        if kind == "resample":
            return self.resample(text, i)
        return "?"


def quality(req) -> int:
    """Graded task model: an instruction tagged [q=NN] answers example k right iff (k * 37) % 100 < NN."""
    text = last_user(req)
    m = re.search(r"\[q=(\d+)\]", text.split("\n\nText:")[0])
    q = int(m.group(1)) if m else 0
    k = int(re.search(r"Review (\d+):", text).group(1))
    pos = any(p in text.split("Text:")[-1].lower() for p in _POS)
    gold = "positive" if pos else "negative"
    wrong = "negative" if pos else "positive"
    return gold if (k * 37) % 100 < q else wrong


class NoLogprobsStub(StubServer):
    """An endpoint that ignores logprobs=True (many servers do)."""

    @staticmethod
    def _choice(body, text, finish, reply, chat):
        return {**StubServer._choice(body, text, finish, reply, chat), "logprobs": None}


def run(opt=None, *, task=None, seed=0, budget=None, train=None, dev=None, initial=INITIAL, server=StubServer,
        **params):
    """Run to the end (or the budget); returns (events, stub requests, error or None, ctx)."""
    opt = opt or Opt()
    responder = scripted(opt, task) if task else scripted(opt)
    with server(responder) as stub:
        ctx = make_ctx(stub, train=train if train is not None else toy_examples(16),
                       dev=dev if dev is not None else toy_examples(8, seed=1, start=100),
                       initial_prompt=initial, seed=seed, budget=budget)
        events, err = [], None
        try:
            for ev in APE(ctx, {**SMALL, **params}).run():
                events.append(ev)
        except BudgetExceeded as e:
            err = e
        return events, list(stub.chat_requests()), err, ctx


def metas(events, purpose):
    return [e for e in events if e.kind == "meta_prompt" and e.purpose == f"ape.{purpose}"]


def texts(events):
    return {e.candidate_id: e.text for e in kinds(events, "candidate_proposed")}


# --- defaults ----------------------------------------------------------------------------------------------------

def test_defaults_are_the_papers():
    d = APE.defaults()
    assert {k: d[k] for k in ("num_subsamples", "num_demos", "num_prompts_per_subsample", "temperature", "top_p",
                              "induce_max_tokens", "score_method", "evaluator", "ucb_rounds",
                              "ucb_prompts_per_round", "ucb_samples", "c", "mc_rounds")} == {
        "num_subsamples": 5, "num_demos": 5, "num_prompts_per_subsample": 50, "temperature": 0.9, "top_p": 0.9,
        "induce_max_tokens": 50, "score_method": "accuracy", "evaluator": "multistage", "ucb_rounds": 5,
        "ucb_prompts_per_round": 50, "ucb_samples": 50, "c": 1.0, "mc_rounds": 0}
    helps = APE.param_help()
    assert all(helps[k] for k in APE.Params.model_fields)
    with pytest.raises(ValueError):
        APE.Params(evaluator="bf")
    with pytest.raises(ValueError):
        APE.Params(keep_fraction=1.0)
    induce, resample = INDUCE_PROMPT.template, RESAMPLE_PROMPT.template
    assert "[full_DEMO]" not in induce and "{demos}" in induce and "friend" in induce
    assert induce.endswith("The instruction was to")
    assert "{instruction}" in resample and "semantic meaning" in resample


# --- induction ---------------------------------------------------------------------------------------------------

def test_induction_shows_only_train_demos_one_request_per_sample():
    events, reqs, err, ctx = run(num_subsamples=3, num_demos=4, num_prompts_per_subsample=5)
    assert err is None
    ind = metas(events, "induce")
    assert len(ind) == 3 * 5
    opt_reqs = [r for r in reqs if r["model"] == OPT_MODEL]
    assert len(opt_reqs) == 15
    train_ids = {ex.id for ex in ctx.train}
    dev_texts = [ex.fields["text"] for ex in ctx.dev]
    subsets = []
    for m in ind:
        sent = m.messages[-1]["content"]
        shown = set(re.findall(r"Review (\d+):", sent))
        assert len(shown) == 4 and shown <= train_ids  # train only, never dev
        assert not any(t in sent for t in dev_texts)
        assert sent.count("Input: ") == 4 and sent.count("Output: ") == 4
        assert sent.endswith("The instruction was to")
        assert m.params["temperature"] == 0.9 and m.params["top_p"] == 0.9 and m.params["max_tokens"] == 50
        subsets.append((m.ref, frozenset(shown)))
    # one demo subset per ref, num_prompts_per_subsample requests each, subsets drawn at random
    by_ref = defaultdict(set)
    for ref, s in subsets:
        by_ref[ref].add(s)
    assert len(by_ref) == 3 and all(len(v) == 1 for v in by_ref.values())
    assert Counter(ref for ref, _ in subsets) == {"s0": 5, "s1": 5, "s2": 5}
    assert len({next(iter(v)) for v in by_ref.values()}) > 1
    # each request has its own seed
    assert len({r.get("seed") for r in opt_reqs}) == 15
    props = [e for e in kinds(events, "candidate_proposed") if e.origin == "induced"]
    assert len(props) == 15
    assert [p.info["subset"] for p in props] == [i for i in range(3) for _ in range(5)]
    assert all(p.text[0].isupper() and p.parents == [] for p in props)
    # gold labels shown as outputs
    for m in ind:
        sent = m.messages[-1]["content"]
        for k in re.findall(r"Review (\d+):", sent):
            ex = next(e for e in ctx.train if e.id == k)
            assert f"Input: {ex.fields['text']}\nOutput: {ex.label}" in sent


def test_candidate_hygiene_and_rejections():
    replies = {
        1: "",  # empty
        2: "Input: Review 99: boring.\nOutput: negative",  # echoes the demo format
        3: "positive",  # echoes a demo output
        4: " label each review with its sentiment.",
        5: "Label each review with its sentiment.",  # duplicate of 4 after cleaning
        6: StubReply(" write a long answer that goes on and on", "length"),  # truncated
        7: StubReply(" tell the mood of the review.\n\nInput: Review 1: loved it.\nOutput: positive and",
                     "length"),  # cut at the echo: the part kept is complete
        8: f" {INITIAL[0].lower()}{INITIAL[1:]}",  # same as the initial prompt: duplicate
        9: 'Sure! The instruction was to "decide whether the review is positive or negative" Output: positive',
    }
    events, *_ = run(Opt(induce=lambda i: replies.get(i, f" answer item {i}.")), num_subsamples=1,
                     num_prompts_per_subsample=10, num_demos=4)
    rej = Counter(e.reason for e in kinds(events, "candidate_rejected"))
    assert rej == {"empty": 1, "echo": 2, "duplicate": 2, "truncated": 1}, rej
    induced = [e for e in kinds(events, "candidate_proposed") if e.origin == "induced"]
    got = [e.text for e in induced]
    assert got == ["Label each review with its sentiment.", "Tell the mood of the review.",
                   "Decide whether the review is positive or negative", "Answer item 10."]
    assert induced[1].info["parsed"] == "cut"
    # unit checks of the cleaner and the echo test
    assert clean_induced(" to sort the words.\nOutput: a b") == ("Sort the words.", "cut")
    ex = Example("1", {"text": "Review 1: loved it."}, "positive")
    assert is_echo("Positive.", [ex]) and is_echo("review 1: loved it", [ex]) and not is_echo("Say positive", [ex])


# --- multistage ----------------------------------------------------------------------------------------------------

QUALITIES = [10, 90, 30, 70, 50, 20, 80, 40, 60, 100]


def graded_opt():
    return Opt(induce=lambda i: f" follow rule {i} [q={QUALITIES[(i - 1) % len(QUALITIES)]}].")


def scored_by_stage(events):
    """(step, purpose) -> candidate -> {example id: correct}."""
    out = defaultdict(lambda: defaultdict(dict))
    for e in kinds(events, "candidate_scored"):
        out[e.purpose][e.candidate_id].update(zip(e.example_ids, e.correct, strict=True))
    return out


def test_multistage_keeps_the_top_fraction_on_growing_subsets():
    train = toy_examples(40)
    events, reqs, err, ctx = run(graded_opt(), task=quality, train=train, num_subsamples=2,
                                 num_prompts_per_subsample=5, stage_samples=3, stage_growth=2.0, keep_fraction=0.5,
                                 final_candidates=2)
    assert err is None
    sels = [s for s in kinds(events, "selection") if s.method == "multistage"]
    init = kinds(events, "candidate_proposed")[0].candidate_id
    # 10 induced + the initial prompt; alive: 11 -> 6 -> 3 -> 2, subsets 3 -> 6 -> 12 examples
    assert [len(s.estimates) for s in sels] == [11, 6, 3]
    assert [len(s.survivors) for s in sels] == [6, 3, 2]
    assert [s.step for s in sels] == [1, 2, 3]
    assert init in {e["candidate_id"] for e in sels[0].estimates}  # the initial prompt joins the pool
    train_seen: dict[str, dict[str, bool]] = defaultdict(dict)
    prev_subset: set[str] = set()
    prev_survivors = None
    for s in sels:
        stage = s.step
        ests = {e["candidate_id"]: e for e in s.estimates}
        if prev_survivors is not None:
            assert set(ests) == set(prev_survivors)  # only the survivors go on
        for e in kinds(events, "candidate_scored"):
            if e.purpose == f"stage{stage}":
                assert e.split == "train" and e.step == stage
                train_seen[e.candidate_id].update(zip(e.example_ids, e.correct, strict=True))
        subsets = {frozenset(train_seen[c]) for c in ests if c != init}
        assert len(subsets) == 1  # one shared subset per stage
        subset = next(iter(subsets))
        assert len(subset) == 3 * 2 ** (stage - 1)  # grows by stage_growth
        assert prev_subset < subset  # nested: new examples are added
        for cid, e in ests.items():
            vals = [train_seen[cid][k] for k in subset] if cid != init else None
            if vals is not None:
                assert e["mean"] == pytest.approx(sum(vals) / len(vals))
        keep = max(2, math.ceil(len(ests) * 0.5))
        assert len(s.survivors) == keep
        kept = [ests[c]["mean"] for c in s.survivors]
        dropped = [e["mean"] for c, e in ests.items() if c not in s.survivors]
        assert min(kept) >= max(dropped)  # the top fraction
        prev_subset, prev_survivors = subset, s.survivors
    # stage StepDones name the stage's best; then the finalists are scored on the full dev split
    sds = kinds(events, "step_done")
    assert [sd.step for sd in sds] == [0, 1, 2, 3, 4]
    assert sds[0].best_id == init and sds[0].best_split == "dev"
    final = [e for e in kinds(events, "candidate_scored") if e.purpose == "final"]
    assert {e.candidate_id for e in final} <= set(sels[-1].survivors) and all(e.split == "dev" for e in final)
    assert all(e.n == len(ctx.dev) for e in final if e.candidate_id != init)
    last = kinds(events, "selection")[-1]
    assert last.method == "final" and last.survivors[0] == sds[-1].best_id and sds[-1].best_split == "dev"
    # the best instruction (q=100 answers everything right) wins
    assert "[q=100]" in texts(events)[sds[-1].best_id]
    assert sds[-1].best_score == 1.0
    # no example is scored twice for a candidate on a split
    pairs = Counter((e.candidate_id, e.split, i) for e in kinds(events, "candidate_scored") for i in e.example_ids)
    assert max(pairs.values()) == 1
    assert len([r for r in reqs if r["model"] == TASK_MODEL]) == sum(pairs.values())


def test_no_dev_split_selects_on_train():
    events, _, err, ctx = run(graded_opt(), task=quality, dev=[], train=toy_examples(24), num_subsamples=1,
                              num_prompts_per_subsample=6)
    assert err is None
    sds = kinds(events, "step_done")
    assert sds[0].best_split == "train" and sds[-1].best_split == "train"
    final = [e for e in kinds(events, "candidate_scored") if e.purpose == "final"]
    assert final and all(e.split == "train" for e in final)
    assert not [e for e in kinds(events, "candidate_scored") if e.split == "dev"]


# --- UCB ---------------------------------------------------------------------------------------------------------

def test_ucb_option_spends_pulls_on_the_best_arms():
    qual = [5, 95, 10, 90, 15, 20, 25, 30]
    opt = Opt(induce=lambda i: f" follow rule {i} [q={qual[(i - 1) % len(qual)]}].")
    events, _, err, ctx = run(opt, task=quality, train=toy_examples(60), evaluator="ucb", num_subsamples=1,
                              num_prompts_per_subsample=8, ucb_rounds=10, ucb_prompts_per_round=2, ucb_samples=4,
                              c=0.3, final_candidates=2)
    assert err is None
    sels = [s for s in kinds(events, "selection") if s.method == "ucb"]
    assert [s.step for s in sels] == list(range(1, 11))
    counts = Counter()
    for e in kinds(events, "candidate_scored"):
        if e.purpose.startswith("stage"):
            assert e.split == "train" and e.n == 4
            counts[e.candidate_id] += 1
    for s in sels:
        assert sum(e["pulled"] for e in s.estimates) == 2
        assert all("ucb" in e for e in s.estimates) or s.step == 1
    by_text = {t: c for c, t in texts(events).items()}
    best2 = {by_text[t] for t in by_text if "[q=95]" in t or "[q=90]" in t}
    top2 = {c for c, _ in counts.most_common(2)}
    assert top2 == best2  # the bandit pulls the best arms most
    final = [e for e in kinds(events, "candidate_scored") if e.purpose == "final"]
    assert {e.candidate_id for e in final} == best2
    assert kinds(events, "step_done")[-1].best_id in best2


def test_ucb_never_evaluated_arms_rank_last():
    # the official quirk: 0 for an unpulled arm beats every negative log-likelihood; here it ranks last
    assert rank_arms([-1.5, None, -0.2, -3.0], [0.0] * 4) == [2, 0, 3, 1]
    v = ucb1_values([3.0, 1.0, 0.0], [4, 2, 0], 1.0)
    total = 6 + 3e-3
    assert v[0] == pytest.approx(0.75 + math.sqrt(math.log(total) / (4 + 1e-3)))
    assert v[2] == pytest.approx(math.sqrt(math.log(total) / 1e-3))


# --- likelihood ----------------------------------------------------------------------------------------------------

def lp_entry(tok, lp, alts):
    return {"token": tok, "logprob": lp, "bytes": None,
            "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in [(tok, lp)] + alts]}


def loglik_task(req):
    """Gold token ' Positive'/'neg' at -0.1 for 'sentiment' instructions, -2.5 for 'mood' ones, absent otherwise."""
    if not req.get("logprobs"):  # the run engine's report scores accuracy
        return toy_task_answer(req)
    assert req.get("top_logprobs") == 20 and req.get("max_tokens") == 1 and req.get("temperature") == 0
    text = last_user(req)
    instruction = text.split("\n\nText:")[0].lower()
    pos = any(p in text.split("Text:")[-1].lower() for p in _POS)
    gold_tok, other = (" Positive", "negative") if pos else ("neg", "POSITIVE")
    if "sentiment" in instruction:
        entry = lp_entry(gold_tok, -0.1, [(other, -2.4), ("The", -4.0)])
    elif "mood" in instruction:
        entry = lp_entry(other, -0.2, [(gold_tok, -2.5), ("The", -4.0)])
    else:
        entry = lp_entry("The", -0.3, [("I", -1.0)])
    return StubReply(entry["token"], "length", logprobs=[entry])


def test_likelihood_ranks_the_higher_gold_logprob_first():
    replies = {1: " tell the mood of the review.", 2: " judge the sentiment of the review.", 3: " do it now."}
    events, reqs, err, ctx = run(Opt(induce=lambda i: replies[i]), task=loglik_task, score_method="likelihood",
                                 num_subsamples=1, num_prompts_per_subsample=3, final_candidates=2, stage_samples=4)
    assert err is None
    scored = kinds(events, "candidate_scored")
    assert scored and all(e.metric == "log_likelihood" for e in scored)
    by_text = texts(events)
    final = {by_text[e.candidate_id]: e for e in scored if e.purpose == "final"}
    assert set(final) == {"Judge the sentiment of the review.", "Tell the mood of the review."}
    assert final["Judge the sentiment of the review."].score == pytest.approx(-0.1)
    assert final["Tell the mood of the review."].score == pytest.approx(-2.5)
    assert all(final["Judge the sentiment of the review."].correct)
    assert not any(final["Tell the mood of the review."].correct)
    stage1 = {by_text[e.candidate_id]: e.score for e in scored if e.purpose == "stage1"}
    assert stage1["Do it now."] == pytest.approx(-20.0) and stage1[INITIAL] == pytest.approx(-20.0)
    sds = kinds(events, "step_done")
    assert by_text[sds[-1].best_id] == "Judge the sentiment of the review."
    assert sds[-1].best_score == pytest.approx(-0.1)
    assert sds[0].best_score == pytest.approx(-20.0)  # the initial prompt's dev log-likelihood


def test_gold_logprob_matching_and_missing_logprobs_error():
    top = [{"token": "The", "logprob": -0.2}, {"token": " POS", "logprob": -1.0}, {"token": "positive", "logprob": -3.0}]
    assert gold_logprob(top, "positive") == (-1.0, " POS")
    assert gold_logprob(top, "negative") == (-20.0, None)
    assert gold_logprob([{"token": " ", "logprob": -0.1}], "yes", floor=-7.0) == (-7.0, None)
    with pytest.raises(LikelihoodUnavailable, match="score_method=\"accuracy\""):
        run(Opt(), task=lambda req: "positive", score_method="likelihood", server=NoLogprobsStub)


# --- Monte-Carlo resampling -----------------------------------------------------------------------------------------

def test_mc_rounds_resample_the_best_and_keep_the_best():
    def resample(text, i):
        src = text.split("Input: ")[1].split("\n")[0]
        return f"Output: {src} Mind the sentiment ({i})." if i == 2 else f"Here is a variation: {src} ({i})"

    events, _, err, ctx = run(Opt(resample=resample), mc_rounds=2, mc_samples=2, num_subsamples=1,
                              num_prompts_per_subsample=3)
    assert err is None
    res = metas(events, "resample")
    assert len(res) == 4
    sds = kinds(events, "step_done")
    by_text = texts(events)
    final_step = next(s.step for s in kinds(events, "selection") if s.method == "final")
    best_after_final = next(sd.best_id for sd in sds if sd.step == final_step)
    first = res[0].messages[-1]["content"]
    assert f"Input: {by_text[best_after_final]}\n" in first and "semantic meaning" in first
    assert res[0].params["temperature"] == 0.9
    props = [e for e in kinds(events, "candidate_proposed") if e.origin == "resample"]
    assert props[0].parents == [best_after_final] and props[0].info["round"] == 1
    assert all(not p.text.startswith(("Output", "Here is")) for p in props)
    sels = [s for s in kinds(events, "selection") if s.method == "resample"]
    assert [s.step for s in sels] == [final_step + 1, final_step + 2]
    # the variation that mentions the sentiment scores 1.0 on dev and becomes the best; round 2 resamples it
    winner = sds[-1].best_id
    assert "Mind the sentiment (2)" in by_text[winner] and sds[-1].best_score == 1.0
    assert f"Input: {by_text[winner]}\n" in res[2].messages[-1]["content"]
    for s in sels:
        assert s.estimates[0]["mean"] == max(e["mean"] for e in s.estimates)


# --- budget and determinism ------------------------------------------------------------------------------------------

def test_budget_stops_the_run():
    full, reqs_full, err, _ = run()
    assert err is None
    n = len(reqs_full) - 5
    events, reqs, err, _ = run(budget=Budget(max_calls=n))
    assert isinstance(err, BudgetExceeded) and len(reqs) <= n
    assert kinds(events, "step_done") and len(kinds(events, "step_done")) < len(kinds(full, "step_done"))
    # a tight budget stops inside induction, after the baseline step
    events, reqs, err, _ = run(budget=Budget(max_calls=10))
    assert isinstance(err, BudgetExceeded) and len(reqs) <= 10
    assert [sd.step for sd in kinds(events, "step_done")] == [0]


def _trajectory(events, reqs):
    opt = [(r["messages"], r.get("seed"), r.get("temperature")) for r in reqs if r["model"] == OPT_MODEL]
    task = sorted(json.dumps(r["messages"]) for r in reqs if r["model"] == TASK_MODEL)
    return [e.text for e in kinds(events, "candidate_proposed")], opt, task


TINY = dict(num_subsamples=2, num_prompts_per_subsample=2, dev=toy_examples(4, seed=1, start=100))


@pytest.mark.parametrize("evaluator", ["multistage", "ucb"])
def test_same_seed_same_trajectory_other_seed_differs(evaluator):
    a = _trajectory(*run(seed=7, evaluator=evaluator, **TINY)[:2])
    b = _trajectory(*run(seed=7, evaluator=evaluator, **TINY)[:2])
    assert a == b
    c = _trajectory(*run(seed=8, evaluator=evaluator, **TINY)[:2])
    assert [m[-1]["content"] for m, _, _ in a[1]] != [m[-1]["content"] for m, _, _ in c[1]]  # other demos
    assert a[2] != c[2]  # other scoring subsets


# --- through the run engine: stored events, budget stop, resume by replay ------------------------------------------

@pytest.mark.parametrize("score_method", ["accuracy", "likelihood"])
def test_runner_budget_then_resume_replays(tmp_path, score_method):
    opt = Opt(induce=lambda i: " judge the sentiment of the review." if i % 3 == 0 else f" do task {i}.")
    task = loglik_task if score_method == "likelihood" else None
    with StubServer(scripted(opt, task) if task else scripted(opt)) as stub:
        store = Store(tmp_path / "runs.sqlite")

        def backend(cfg):
            ep = Endpoint(stub.base_url, "k", max_retries=0, patience=1.0, max_concurrency=2)
            return Backend(ep, False, TASK_MODEL, ep.base_url)

        runner = Runner(store, backend_factory=backend)
        cfg = RunConfig(optimizer="ape", params={**SMALL, "score_method": score_method, "fit_budget": False},
                        initial_prompt=INITIAL, task=TOY_TASK,
                        data=DataConfig(name="toy", input_cols=["text"], label_col="label"),
                        optimizer_model=OPT_MODEL, cache_dir=str(tmp_path / "cache"), budget=Budget(max_calls=30),
                        report_splits=["dev"])
        sp = Splits(toy_examples(16), toy_examples(6, seed=1, start=100), toy_examples(4, seed=2, start=200))
        rid = runner.create(cfg, sp)
        res = runner.execute(rid)
        assert res.status == "budget" and res.optimization_usage.calls <= 30
        n_before = len(stub.chat_requests())
        with store._tx() as c:
            conf = store.get_run(rid)["config"]
            conf["budget"]["max_calls"] = None
            c.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(conf), rid))
        res2 = runner.execute(rid)
        assert res2.status == "done", res2.reason
        steps = [e.step for _, e in store.events(rid, kinds=["step_done"])]
        assert steps == sorted(set(steps)) and steps[0] == 0  # no step stored twice
        def key(r):
            return json.dumps([r["messages"], r.get("seed"), r["model"], r.get("logprobs"), r.get("temperature")])

        first = {key(r) for r in stub.chat_requests()[:n_before]}
        assert not any(key(r) in first for r in stub.chat_requests()[n_before:])  # the stored part came from the cache
        assert "sentiment" in res2.best_prompt
        sel = [e for _, e in store.events(rid, kinds=["selection"])]
        assert sel and sel[-1].method == "final"
