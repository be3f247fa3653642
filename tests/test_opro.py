"""OPRO against the scripted stub (real HTTP): the meta-prompt (ascending top-k history with integer scores, the
threshold, train exemplars with <INS> at the chosen position), n samples per step at temperature 1.0, hygiene with
reasons, whole-train scoring, no re-scoring of duplicates, dev scoring every eval_interval steps, best by train with
the dev tie-break, an empty initial instruction, the budget and seed determinism.

The scripted task model makes scores readable: an instruction containing "level K" answers example i (the number in
"Review i", modulo 100) right when i <= K, so on the 10 train examples its score is K/10; "polished" in the
instruction makes every dev answer right (to create dev-only differences)."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import pytest

import optimizers.methods.opro  # noqa: F401  (registers "opro")
from optimizers.base import candidate_id
from optimizers.config import DataConfig, RunConfig
from optimizers.llm import Budget, BudgetExceeded
from optimizers.methods.opro import (
    EXEMPLAR,
    HEADER,
    OPRO,
    PAIR,
    REQUEST,
    bucketize,
    parse_instruction,
    render_exemplar,
)
from tests.conftest import OPT_MODEL, TASK_MODEL, TOY_TASK, kinds, last_user, make_ctx, scripted, toy_examples
from tests.stub_server import StubReply, StubServer

INITIAL = "Classify the text."
SMALL = dict(num_search_steps=3, num_generated_instructions=4)
TRAIN_N, DEV_N = 10, 8
_PAIR_RE = re.compile(r"\ntext:\n(.*?)\nscore:\n(\S*)\n", re.S)
_EXEMPLAR_RE = re.compile(r"\nProblem:\n(.*?)\nGround truth answer:\n(.*?)\n", re.S)


def level_task(req):
    text = last_user(req)
    instruction = text.split("\n\nText:")[0].lower()
    m = re.search(r"level (\d+)", instruction)
    k = int(m.group(1)) if m else 0
    i = int(re.search(r"Review (\d+):", text).group(1))
    review = text.split("Text:")[-1].lower()
    gold = "positive" if any(w in review for w in ("loved", "wonderful", "delight", "great", "superb", "moving")) \
        else "negative"
    wrong = "negative" if gold == "positive" else "positive"
    if i >= 100 and "polished" in instruction:
        return gold
    return gold if i % 100 <= k else wrong


class Scripted:
    """The optimizer model: replies from a list (cycled by request number), or a function of (meta-prompt, n)."""

    def __init__(self, replies=None, fn=None):
        self.replies, self.fn = replies, fn
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, req):
        with self.lock:
            self.n += 1
            n = self.n
        if self.fn:
            return self.fn(last_user(req), n)
        if self.replies:
            return self.replies[(n - 1) % len(self.replies)]
        return f"<INS>Answer at level {n % 11}, take {n}.</INS>"


def run(opt=None, *, seed=0, budget=None, initial=INITIAL, dev=True, **params):
    """Run to the end (or the budget); returns (events, stub requests, error or None, ctx)."""
    opt = opt or Scripted()
    with StubServer(scripted(opt, level_task)) as stub:
        ctx = make_ctx(stub, train=toy_examples(TRAIN_N), dev=toy_examples(DEV_N, seed=1, start=101) if dev else [],
                       initial_prompt=initial, seed=seed, budget=budget)
        events, err = [], None
        try:
            for ev in OPRO(ctx, {**SMALL, **params}).run():
                events.append(ev)
        except BudgetExceeded as e:
            err = e
        return events, list(stub.chat_requests()), err, ctx


def metas(events):
    return [e for e in events if e.kind == "meta_prompt" and e.purpose == "opro.generate"]


def train_scores_before(events, step):
    """candidate id -> train score, for every candidate scored on train before `step`."""
    return {e.candidate_id: e.score for e in kinds(events, "candidate_scored")
            if e.split == "train" and e.step < step}


def texts(events):
    return {e.candidate_id: e.text for e in kinds(events, "candidate_proposed")}


# --- defaults and helpers ---------------------------------------------------------------------------------------

def test_defaults_are_the_papers():
    d = OPRO.defaults()
    assert {k: d[k] for k in ("num_search_steps", "num_generated_instructions", "optimizer_temperature",
                              "max_num_instructions", "num_score_buckets", "old_instruction_score_threshold",
                              "num_few_shot_questions", "few_shot_selection", "instruction_pos", "eval_interval",
                              "eval_top_k", "max_instruction_chars")} == {
        "num_search_steps": 200, "num_generated_instructions": 8, "optimizer_temperature": 1.0,
        "max_num_instructions": 20, "num_score_buckets": 100, "old_instruction_score_threshold": 0.0,
        "num_few_shot_questions": 3, "few_shot_selection": "random", "instruction_pos": "before_Q",
        "eval_interval": 3, "eval_top_k": 1, "max_instruction_chars": 500}
    helps = OPRO.param_help()
    assert all(helps[k] for k in OPRO.Params.model_fields)
    assert "0.3" in helps["old_instruction_score_threshold"]
    with pytest.raises(ValueError):
        OPRO.Params(instruction_pos="middle")
    with pytest.raises(ValueError):
        OPRO.Params(few_shot_selection="constant_ish")
    assert "<INS>" in HEADER and "{instruction}" in PAIR and "{score}" in PAIR
    assert "{problem}" in EXEMPLAR and "{answer}" in EXEMPLAR
    assert "<INS>" in REQUEST and "</INS>" in REQUEST


def test_bucketize_and_parse():
    assert [bucketize(s, 100) for s in (0.0, 0.333, 0.5, 0.6666, 1.0)] == [0, 33, 50, 67, 100]
    assert bucketize(0.34, 10) == 30 and bucketize(0.36, 10) == 40  # 10 buckets, still shown on 0-100
    assert parse_instruction("blah <INS>Think first.</INS> more <INS>x</INS>") == ("Think first.", "tagged", True)
    assert parse_instruction("Sure! <INS>Think first, then answer") == ("Think first, then answer", "tagged", False)
    assert parse_instruction("<INS>Think first.<INS>") == ("Think first.", "tagged", True)
    assert parse_instruction("Think first.</INS>") == ("Think first.", "tagged", True)
    assert parse_instruction("New text: [Think first.]") == ("Think first.", "brackets", True)
    assert parse_instruction('"Think first."') == ("Think first.", "untagged", False)


@pytest.mark.parametrize("pos,expected", [
    ("before_Q", "<INS>\n\nText: Review 1: {r}\nAnswer:"),
    ("Q_begin", "Text: <INS>\nReview 1: {r}\nAnswer:"),
    ("Q_end", "Text: Review 1: {r}\n<INS>\nAnswer:"),
    ("A_begin", "Text: Review 1: {r}\nAnswer: <INS>"),
])
def test_render_exemplar_positions(pos, expected):
    ex = toy_examples(1)[0]
    review = ex.fields["text"].split(": ", 1)[1]
    assert render_exemplar(TOY_TASK, ex, pos) == expected.replace("{r}", review)


# --- step 0 and the meta-prompt ----------------------------------------------------------------------------------

def test_step0_scores_the_initial_instruction_on_the_whole_train_split():
    events, _, err, ctx = run(num_search_steps=1)
    assert err is None
    first = kinds(events, "candidate_proposed")[0]
    assert first.origin == "initial" and first.text == INITIAL and first.step == 0
    s0 = [e for e in kinds(events, "candidate_scored") if e.step == 0 and e.split == "train"]
    assert len(s0) == 1 and s0[0].n == TRAIN_N and s0[0].purpose == "baseline"
    sd0 = kinds(events, "step_done")[0]
    assert sd0.step == 0 and sd0.best_id == first.candidate_id and sd0.beam == [first.candidate_id]
    # step 1's meta-prompt shows the initial instruction with its integer score
    msg = metas(events)[0].messages[-1]["content"]
    assert _PAIR_RE.findall(msg) == [(INITIAL, "0")]
    assert msg.startswith(HEADER) and msg.endswith(REQUEST)


def test_history_is_sorted_ascending_truncated_to_top_k_with_integer_scores():
    k = 4
    events, *_ = run(num_search_steps=5, max_num_instructions=k)
    names = texts(events)
    ms = metas(events)
    assert len(ms) == 5 * SMALL["num_generated_instructions"]
    seen_longer = False
    for m in ms:
        pairs = _PAIR_RE.findall(m.messages[-1]["content"])
        scores = [int(s) for _, s in pairs]  # integers, no decimals
        assert all(re.fullmatch(r"\d+", s) for _, s in pairs)
        assert scores == sorted(scores)  # ascending: the best last
        hist = train_scores_before(events, m.step)
        assert len(pairs) == min(k, len(hist))
        seen_longer |= len(hist) > k
        # exactly the top k of the history by train score, each with round(score * 100)
        best = sorted(hist.values(), reverse=True)[:k]
        assert sorted(scores) == sorted(round(s * 100) for s in best)
        by_text = {names[c]: s for c, s in hist.items()}
        for t, s in pairs:
            assert int(s) == round(by_text[t] * 100)
    assert seen_longer  # the history outgrew k, so truncation was exercised
    # Selection and StepDone report the same top-k (best first); the meta-prompt shows them ascending
    for sel, sd in zip(kinds(events, "selection"), kinds(events, "step_done")[1:], strict=True):
        assert sel.method == "top_k_history" and sel.step == sd.step
        assert sd.beam == sel.survivors and len(sd.beam) <= k and sd.best_id == sd.beam[0]
        nxt = [m for m in ms if m.step == sd.step + 1]
        if nxt:
            shown = [t for t, _ in _PAIR_RE.findall(nxt[0].messages[-1]["content"])]
            assert shown == [names[c] for c in reversed(sel.survivors)]
        ests = {e["candidate_id"]: e for e in sel.estimates}
        assert set(sel.survivors) <= set(ests)
        assert all(ests[c]["in_meta_prompt"] for c in sel.survivors)
        assert all(isinstance(e["score_shown"], int) for e in ests.values())


def test_threshold_leaves_low_scores_out_of_the_meta_prompt():
    events, *_ = run(num_search_steps=3, old_instruction_score_threshold=0.5)
    names = texts(events)
    excluded = 0
    for m in metas(events):
        pairs = _PAIR_RE.findall(m.messages[-1]["content"])
        assert all(int(s) >= 50 for _, s in pairs)
        hist = train_scores_before(events, m.step)
        expected = {names[c] for c, s in hist.items() if s >= 0.5}
        assert {t for t, _ in pairs} == expected
        excluded += len(hist) - len(expected)
    assert excluded  # some instructions were scored but not shown
    assert INITIAL not in "".join(m.messages[-1]["content"] for m in metas(events))  # it scored 0


@pytest.mark.parametrize("pos,pattern", [
    ("before_Q", r"<INS>\n\nText: Review (\d+): [^\n]*\nAnswer:"),
    ("Q_end", r"Text: Review (\d+): [^\n]*\n<INS>\nAnswer:"),
])
def test_exemplars_come_from_train_with_ins_at_the_position(pos, pattern):
    events, _, _, ctx = run(num_search_steps=4, instruction_pos=pos)
    train = {ex.id: ex for ex in ctx.train}
    dev_ids = {ex.id for ex in ctx.dev}
    per_step = {}
    for m in metas(events):
        msg = m.messages[-1]["content"]
        blocks = _EXEMPLAR_RE.findall(msg)
        assert len(blocks) == 3  # num_few_shot_questions
        ids = []
        for problem, answer in blocks:
            mm = re.fullmatch(pattern, problem)
            assert mm, problem
            ids.append(mm.group(1))
            assert mm.group(1) in train and mm.group(1) not in dev_ids
            assert answer == train[mm.group(1)].label  # the gold answer, no model output
            assert problem.count("<INS>") == 1
        assert ids == sorted(ids, key=int)  # in train order, as the code sorts its indices
        per_step.setdefault(m.step, set()).add(tuple(ids))
    assert all(len(v) == 1 for v in per_step.values())  # one meta-prompt per step, shared by its samples
    assert len({next(iter(v)) for v in per_step.values()}) > 1  # drawn again each step


def test_most_frequent_wrong_shows_the_most_often_wrong_train_questions():
    events, *_ = run(num_search_steps=4, few_shot_selection="most_frequent_wrong")
    for m in metas(events):
        wrong = Counter()
        for e in kinds(events, "candidate_scored"):
            if e.split == "train" and e.step < m.step:
                for i, ok in zip(e.example_ids, e.correct, strict=True):
                    wrong[i] += 0 if ok else 1
        ids = re.findall(r"Review (\d+):", "".join(p for p, _ in _EXEMPLAR_RE.findall(m.messages[-1]["content"])))
        assert len(ids) == 3
        third = sorted(wrong.values(), reverse=True)[2]
        assert all(wrong[i] >= third for i in ids)
        assert {i for i, c in wrong.items() if c > third} <= set(ids)


def test_n_requests_per_step_at_temperature_one_each_with_its_own_seed():
    events, reqs, *_ = run(num_search_steps=3, num_generated_instructions=5)
    ms = metas(events)
    assert Counter(m.step for m in ms) == {1: 5, 2: 5, 3: 5}
    opt_reqs = [r for r in reqs if r["model"] == OPT_MODEL]
    assert len(opt_reqs) == 15
    assert all(r["temperature"] == 1.0 for r in opt_reqs) and all(m.params["temperature"] == 1.0 for m in ms)
    assert len({r["seed"] for r in opt_reqs}) == 15
    for step in (1, 2, 3):
        assert len({json.dumps(m.messages) for m in ms if m.step == step}) == 1
    props = [e for e in kinds(events, "candidate_proposed") if e.origin == "generated"]
    assert props and all(set(p.info) >= {"meta_prompt_rank", "ref", "parsed", "exemplars"} for p in props)
    assert {p.info["meta_prompt_rank"] for p in props} <= set(range(5))
    refs = {m.ref for m in ms}
    assert all(p.info["ref"] in refs for p in props)


# --- hygiene and scoring -----------------------------------------------------------------------------------------

def test_duplicates_by_text_are_not_scored_again():
    replies = ["<INS>Answer at level 4.</INS>", "<INS>answer at level 4.</INS>", f"<INS>{INITIAL}</INS>",
               "<INS>Answer at level 6.</INS>"]
    events, reqs, _, ctx = run(Scripted(replies), num_search_steps=3)
    train = [e for e in kinds(events, "candidate_scored") if e.split == "train"]
    per_cand = Counter(e.candidate_id for e in train)
    assert max(per_cand.values()) == 1
    assert set(texts(events).values()) == {INITIAL, "Answer at level 4.", "Answer at level 6."}
    dups = [e for e in kinds(events, "candidate_rejected") if e.reason == "duplicate"]
    assert len(dups) == 3 * 4 - 2  # all but the first two new texts
    dev_scored = sum(e.n for e in kinds(events, "candidate_scored") if e.split == "dev")
    assert len([r for r in reqs if r["model"] == TASK_MODEL]) == 3 * TRAIN_N + dev_scored


def test_hygiene_rejections_with_reasons():
    replies = [
        "<INS>" + "Answer at level 9 and explain every word. " * 15 + "</INS>",  # > 500 characters
        "<INS>Follow the INSTRUCTIONS at level 5.</INS>",  # still contains INS
        "<INS></INS>",  # empty
        StubReply("<INS>Answer at level 7 and then", "length"),  # cut by the token limit, no closing tag
        "<INS>**answer** at level 3, no closing tag",  # accepted: polished, open tag tolerated
        "Here it is: [answer at level 2 in brackets]",  # accepted: the square-bracket fallback
        "<INS>Answer at level 8 once.<INS>",  # accepted: a repeated open tag ends it
        StubReply("<INS>Answer at level 1, complete.</INS> and some chatter", "length"),  # closed: accepted
    ]
    events, *_ = run(Scripted(replies), num_search_steps=1, num_generated_instructions=8)
    rej = {e.reason: e for e in kinds(events, "candidate_rejected")}
    assert set(rej) == {"too_long", "contains_tag", "empty", "truncated"}
    assert len(rej["too_long"].text) > 500 and "INS" in rej["contains_tag"].text
    assert all(e.origin == "generated" for e in rej.values())
    gen = {e.text: e for e in kinds(events, "candidate_proposed") if e.origin == "generated"}
    assert set(gen) == {"Answer at level 3, no closing tag", "Answer at level 2 in brackets",
                        "Answer at level 8 once.", "Answer at level 1, complete."}
    assert gen["Answer at level 2 in brackets"].info["parsed"] == "brackets"
    scored = {e.candidate_id for e in kinds(events, "candidate_scored") if e.split == "train"}
    assert {e.candidate_id for e in gen.values()} <= scored
    assert all(candidate_id(r.text) not in scored for r in rej.values())


def test_every_new_candidate_is_scored_on_the_whole_train_split():
    events, _, _, ctx = run(num_search_steps=3)
    train_ids = [ex.id for ex in ctx.train]
    scored = [e for e in kinds(events, "candidate_scored") if e.split == "train"]
    assert all(e.example_ids == train_ids and e.n == TRAIN_N for e in scored)
    proposed = [e.candidate_id for e in kinds(events, "candidate_proposed")]
    assert sorted(proposed) == sorted(e.candidate_id for e in scored)
    # scores follow the scripted task model: "level K" -> K/10
    names = texts(events)
    for e in scored:
        m = re.search(r"level (\d+)", names[e.candidate_id])
        assert e.score == pytest.approx(min(int(m.group(1)), TRAIN_N) / TRAIN_N if m else 0.0)
    assert not [e for e in scored if e.split == "test"]


def test_dev_scoring_every_eval_interval_steps_for_the_current_top():
    events, _, _, ctx = run(num_search_steps=5, eval_interval=2)
    dev = [e for e in kinds(events, "candidate_scored") if e.split == "dev"]
    assert {e.step for e in dev} == {0, 2, 4}
    assert all(e.purpose == "eval_interval" and e.n == DEV_N for e in dev)
    sds = {sd.step: sd for sd in kinds(events, "step_done")}
    for e in dev:
        hist = train_scores_before(events, e.step + 1)
        assert hist[e.candidate_id] == max(hist.values())  # the current top by train
        assert e.candidate_id == sds[e.step].best_id
    assert len(Counter(e.candidate_id for e in dev)) == len(dev)  # never scored on dev twice
    # no dev split: nothing scored on dev, the run goes on
    events, *_ = run(num_search_steps=3, eval_interval=1, dev=False)
    assert not [e for e in kinds(events, "candidate_scored") if e.split == "dev"]
    assert len(kinds(events, "step_done")) == 4


def test_best_is_by_train_score_with_dev_breaking_ties():
    replies = ["<INS>Answer at level 5 plainly.</INS>", "<INS>Answer at level 5, polished.</INS>",
               "<INS>Answer at level 2 polished.</INS>"]
    events, *_ = run(Scripted(replies), num_search_steps=1, num_generated_instructions=3, eval_interval=1,
                     eval_top_k=2)
    names = texts(events)
    sd = kinds(events, "step_done")[-1]
    # equal on train (0.5); the second has the better dev score, so it wins although it came later
    assert names[sd.best_id] == "Answer at level 5, polished."
    dev = {names[e.candidate_id]: e.score for e in kinds(events, "candidate_scored") if e.split == "dev"}
    assert dev["Answer at level 5, polished."] == 1.0 > dev["Answer at level 5 plainly."]
    # the better dev score of a worse train score does not win
    assert names[sd.beam[-1]] in (INITIAL, "Answer at level 2 polished.")
    assert [names[c] for c in sd.beam[:2]] == ["Answer at level 5, polished.", "Answer at level 5 plainly."]
    # without dev scores a tie goes to the older instruction; a later, worse one never displaces the best
    replies = ["<INS>Answer at level 6, first.</INS>", "<INS>Answer at level 6, second.</INS>",
               "<INS>Answer at level 3.</INS>"]
    events, *_ = run(Scripted(replies), num_search_steps=3, num_generated_instructions=3, dev=False)
    names = texts(events)
    assert {names[sd.best_id] for sd in kinds(events, "step_done")[1:]} == {"Answer at level 6, first."}


def test_empty_initial_instruction_is_allowed():
    events, _, err, _ = run(initial="", num_search_steps=2)
    assert err is None
    first = kinds(events, "candidate_proposed")[0]
    assert first.text == "" and first.origin == "initial" and first.candidate_id == candidate_id("")
    s0 = [e for e in kinds(events, "candidate_scored") if e.step == 0 and e.split == "train"]
    assert len(s0) == 1 and s0[0].candidate_id == first.candidate_id and s0[0].n == TRAIN_N
    assert "\ntext:\n\nscore:\n0\n" in metas(events)[0].messages[-1]["content"]
    assert not [e for e in kinds(events, "candidate_rejected") if e.step == 0]
    assert len(kinds(events, "step_done")) == 3


# --- budget and determinism --------------------------------------------------------------------------------------

def test_budget_stops_the_run():
    full, reqs_full, err, _ = run(num_search_steps=3)
    assert err is None
    n = len(reqs_full) - 7
    events, reqs, err, _ = run(num_search_steps=3, budget=Budget(max_calls=n))
    assert isinstance(err, BudgetExceeded) and len(reqs) <= n
    assert kinds(events, "step_done") and len(kinds(events, "step_done")) < len(kinds(full, "step_done"))
    # the paper's 200 steps: only the budget stops it
    events, reqs, err, _ = run(num_search_steps=200, budget=Budget(max_calls=60))
    assert isinstance(err, BudgetExceeded) and len(reqs) <= 60
    assert kinds(events, "step_done")[-1].step < 200


def _trajectory(events, reqs):
    opt = [(r["messages"], r.get("seed"), r.get("temperature")) for r in reqs if r["model"] == OPT_MODEL]
    task = sorted(json.dumps(r["messages"]) for r in reqs if r["model"] == TASK_MODEL)
    return [e.text for e in kinds(events, "candidate_proposed")], opt, task


def test_same_seed_same_trajectory_other_seed_differs():
    a = _trajectory(*run(seed=3)[:2])
    b = _trajectory(*run(seed=3)[:2])
    assert a == b
    c = _trajectory(*run(seed=4)[:2])

    def shown(t):
        return [_EXEMPLAR_RE.findall(m[-1]["content"]) for m, _, _ in t[1]]

    assert shown(a) != shown(c)  # the exemplars drawn differ, not only the request seeds
    assert [s for _, s, _ in a[1]] != [s for _, s, _ in c[1]]


# --- through the run engine --------------------------------------------------------------------------------------

def test_runner_end_to_end_with_an_empty_initial_instruction(tmp_path):
    from optimizers.backend import Backend
    from optimizers.data import Splits
    from optimizers.llm import Endpoint
    from optimizers.runner import Runner
    from optimizers.store import Store

    with StubServer(scripted(Scripted(), level_task)) as stub:
        store = Store(tmp_path / "runs.sqlite")

        def backend(cfg):
            ep = Endpoint(stub.base_url, "k", max_retries=0, patience=1.0, max_concurrency=2)
            return Backend(ep, False, "stub-task", ep.base_url)

        runner = Runner(store, backend_factory=backend)
        cfg = RunConfig(optimizer="opro", params={"num_search_steps": 2, "num_generated_instructions": 3},
                        initial_prompt="", task=TOY_TASK,
                        data=DataConfig(name="toy", input_cols=["text"], label_col="label"),
                        optimizer_model="stub-opt", cache_dir=str(tmp_path / "cache"))
        splits = Splits(toy_examples(TRAIN_N), toy_examples(DEV_N, seed=1, start=101),
                        toy_examples(6, seed=2, start=201))
        rid = runner.create(cfg, splits)
        res = runner.execute(rid)
        assert res.status == "done", res
        assert res.initial_prompt == "" and "level" in res.best_prompt.lower()
        ks = [e.kind for _, e in store.events(rid)]
        assert ks.count("step_done") == 3 and ks.count("meta_prompt") == 6 and ks.count("selection") == 2
