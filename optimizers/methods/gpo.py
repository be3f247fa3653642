"""GPO: "Unleashing the Potential of Large Language Models as Prompt Optimizers: An Analogical Analysis with
Gradient-based Model Optimizers" (Tang et al., arXiv 2402.17564).

The optimizer model is driven like a gradient-based optimizer. The update direction is a few prompts retrieved from
the optimization trajectory (by relevance to the current prompt, with their dev scores); the update is a freshly
generated prompt (not an edit); the step size is a word budget ("change up to N words") that decays on a cosine
schedule, like learning-rate decay. Each step the best new candidate becomes the current prompt, even when it scores
below the current one (as in the official code).

The paper's design space is exposed as knobs, GPO's choices as defaults (RUCAIBox/GPO `GPO.sh`), so its ablations can
be rerun: gradient (none | feedback), momentum content (none | para | feedback), momentum selection (recency |
relevance | importance, k), momentum update (k-list | real-time), learning rate (with | without), decay (cosine |
linear | fixed, optional warm-up) and update method (edit | generate | edit_without | generate_without).
Ours: the word-level edit distance of every candidate to the current prompt is measured and recorded against the
budget (optionally rejecting over-budget candidates), and the best trajectory prompt by dev score is returned; between
equal scores the one with the higher macro-F1 on the same examples (tie_break; the paper preset keeps the earliest).
With a call cap (`fit_budget`): when the schedule costs more than the run's call allowance, the run plans the steps
it can pay for (fewer candidates a step, then a dev subset, at least min_steps) and the step-size schedule spans
those steps, so the word budget decays within the run (a Plan event says how).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from ..base import TIE_BREAK_HELP, Candidate, Optimizer, Params, TieBreak, better, register
from ..budget import BudgetExceeded
from ..data import Example
from ..events import CandidateRejected, EditBudget, Event, Gradient, Plan, Retrieval, Selection
from ..prompt import join_prompt, split_prompt
from ..similarity import Similarity
from .gpo_prompts import (
    FEEDBACK_ERROR,
    FEEDBACK_PROMPT,
    GENERATE,
    REALTIME_FEEDBACK_PROMPT,
    REALTIME_PARA_PROMPT,
    SCORE_NOTE,
    entry,
    generation_request,
)
from .rules import RULE, applies, input_noun, rule_request, with_rule
from .text import input_text, pred_text, render, word_distance

# --- schedule -----------------------------------------------------------------------------------------------------

def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """train // batch, +1 if the remainder is at least half a batch (official code). Ours: at least 1 step when
    there is any training data (the code would run no step on fewer than batch/2 examples)."""
    steps = n_train // batch_size + (1 if n_train % batch_size >= batch_size / 2 else 0)
    return max(steps, 1 if n_train else 0)


def total_steps(n_train: int, batch_size: int, epochs: int) -> int:
    return epochs * steps_per_epoch(n_train, batch_size)


def step_size(t: int, total: int, *, decay: str = "cosine", initial: int = 50, final: int = 10,
              use_warmup: bool = False, warmup_steps: int = 5) -> int:
    """The word budget N_t at step t (1-based; t = len(trajectory) in the code) of `total` steps.

    cosine: int(final + (initial - final) * 0.5 * (1 + cos(pi * t / T))); linear: int(initial - (initial - final)
    / T * t); fixed: initial. Warm-up: for t < warmup_steps, int(initial * t / warmup_steps), after which the decay
    runs over (t - warmup) / (T - warmup). Ours: without warm-up the linear decay spans all T steps (the code
    subtracts warmup_steps from T even when warm-up is off, a no-op with GPO.sh's warmup_steps 0)."""
    w = warmup_steps if use_warmup and warmup_steps > 0 else 0
    if w and t < w:
        return int(initial * t / w)
    if decay == "fixed":
        return int(initial)
    span = max(total - w, 1)
    if decay == "linear":
        return int(initial - (initial - final) / span * (t - w))
    frac = (t - w) / span
    return int(final + (initial - final) * 0.5 * (1 + math.cos(math.pi * frac)))


# --- the optimizer ------------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    cand: Candidate
    score: float
    step: int
    critique: str | None = None  # the feedback gradient computed while this prompt was current


@register
class GPO(Optimizer):
    # the defaults are the paper's but for these (ours)
    presets = {"paper": {"rule_start": 0, "regenerate": 0, "tie_break": "first"}}
    name = "gpo"
    title = "GPO (trajectory retrieval + generation + decaying edit budget)"
    paper = ("Tang et al., Unleashing the Potential of Large Language Models as Prompt Optimizers: An Analogical "
             "Analysis with Gradient-based Model Optimizers, arXiv 2402.17564")

    class Params(Params):
        epochs: int = Field(3, ge=1, description="Passes over the train split; steps = epochs x steps per epoch")
        batch_size: int = Field(8, ge=1, description="Train minibatch per step (steps per epoch = train // batch, "
                                                     "+1 if the remainder is at least half a batch)")
        num_candidates: int = Field(8, ge=1, description="Prompts generated per step (one request each)")
        temperature: float = Field(1.0, ge=0.0, le=2.0, description="Optimizer-model temperature when generating")
        format_data_num: int = Field(3, ge=0, description="Fixed train examples shown in the meta-prompt (drawn "
                                                          "once per run)")
        gradient: Literal["none", "feedback"] = Field(
            "none", description="Textual gradient: none (GPO) or feedback, a critique of the current prompt's "
                                "wrong minibatch examples (shown with update_method edit/generate)")
        momentum_content: Literal["none", "para", "feedback"] = Field(
            "para", description="Momentum: para (past prompts with scores, GPO), feedback (past critiques; needs "
                                "gradient=feedback) or none")
        momentum_selection: Literal["recency", "relevance", "importance"] = Field(
            "relevance", description="Which past entries are shown: most similar to the current (GPO), latest, "
                                     "or best scoring")
        momentum_k: int = Field(3, ge=1, description="Entries shown, the current one included (k-list)")
        momentum_update: Literal["k-list", "real-time"] = Field(
            "k-list", description="k-list: show k past entries (GPO); real-time: the optimizer merges the previous "
                                  "momentum and the current entry into one each step")
        learning_rate: Literal["with", "without"] = Field(
            "with", description="Add the 'change up to N words' line (GPO) or not")
        decay: Literal["cosine", "linear", "fixed"] = Field(
            "cosine", description="How the word budget decays from initial_step_size to final_step_size")
        initial_step_size: int = Field(50, ge=0, description="Word budget at the start")
        final_step_size: int = Field(10, ge=0, description="Word budget at the last step")
        use_warmup: bool = Field(False, description="Grow the budget linearly during the first warmup_steps steps")
        warmup_steps: int = Field(5, ge=0, description="Warm-up length in steps (used only with use_warmup)")
        update_method: Literal["edit", "generate", "edit_without", "generate_without"] = Field(
            "generate_without", description="Write a new prompt (generate) or revise the current one (edit); "
                                            "'_without': no critique in the meta-prompt (GPO: generate_without)")
        over_budget: Literal["flag", "reject"] = Field(
            "flag", description="Candidates changing more words than the budget: flag them (paper) or reject them")
        regenerate: int = Field(2, ge=0, description="Ours: rounds of new samples for rejected ones, so a step "
                                                     "still has num_candidates to score (0: the paper's single round)")
        rule_start: int = Field(4, ge=0, description="Ours: before the first step, this many rules induced from "
                                                     "train examples grouped by label (optimizers.methods.rules), each "
                                                     "appended to the initial prompt and scored; the best starts the "
                                                     "trajectory (classification tasks with word labels; 0: off)")
        rule_examples: Literal["random", "contrast"] = Field(
            "random", description="Ours: the train examples each rule request shows: drawn per label (random), or "
                                  "the target label's drawn and, for each, the nearest in wording of every other "
                                  "label (contrast: minimal pairs)")
        keep_if_worse: bool = Field(False, description="Ours: keep the current prompt when no new candidate beats "
                                                       "it (the paper always moves to the best new one)")
        tie_break: TieBreak = Field("macro_f1", description="Ours (the paper keeps the highest score). " + TIE_BREAK_HELP)
        similarity: Literal["auto", "embeddings", "lexical"] = Field(
            "auto", description="Relevance backend: endpoint embeddings with lexical fallback (auto), embeddings "
                                "only, or lexical (rapidfuzz) only")
        embedding_model: str | None = Field(None, description="Embedding model name at the endpoint (empty: the "
                                                              "optimizer model's name)")
        aux_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Temperature of the feedback and real-time "
                                                                        "momentum requests (code: 0)")
        fit_budget: bool = Field(True, description="With a call cap, plan the steps it pays for: fewer candidates "
                                                   "a step (then a dev subset) so min_steps fit, and the step-size "
                                                   "schedule spans the planned steps (a Plan event says how); off: "
                                                   "the paper's schedule until the cap stops the run (ours)")
        min_steps: int = Field(3, ge=1, description="With a call cap: the steps the plan keeps (k = 3 momentum "
                                                    "needs more than 3 to choose between entries) (ours)")
        min_eval_examples: int = Field(20, ge=1, description="With a call cap: the smallest selection subset (ours)")

        @model_validator(mode="after")
        def _feedback_momentum_needs_gradient(self) -> GPO.Params:
            if self.momentum_content == "feedback" and self.gradient != "feedback":
                raise ValueError("momentum_content='feedback' needs gradient='feedback' (critiques to remember)")
            return self

    p: GPO.Params

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        ctx, p = self.ctx, self.p
        self.split = "dev" if ctx.dev else "train"
        self.eval_set: list[Example] = list(ctx.dev or ctx.train)
        self.scores: dict[str, float] = {}
        self.similarity = Similarity(p.similarity, ctx.llm, p.embedding_model or ctx.llm.model)
        self.rt_para: _Entry | None = None  # real-time momentum (para)
        self.rt_feedback: str | None = None  # real-time momentum (feedback)
        # drawn once per run: the fixed demo examples, then the order in which train is walked
        self.demos = ctx.sample(ctx.train, p.format_data_num)
        order = ctx.sample(ctx.train, len(ctx.train))
        spe = steps_per_epoch(len(ctx.train), p.batch_size)
        self.T = p.epochs * spe
        batches = [order[i * p.batch_size:(i + 1) * p.batch_size] or order for i in range(spe)]

        self.num_candidates = p.num_candidates
        self.n_rules = p.rule_start if applies(ctx.task.labels) else 0
        init = yield from ctx.propose(ctx.initial_prompt, step=0, origin="initial")
        if init is None:
            raise ValueError("the initial prompt is empty")
        plan = self.plan()
        if plan is not None:
            yield plan
            self.T, self.num_candidates = plan.settings["steps"], plan.settings["candidates_per_step"]
            self.n_rules = plan.settings.get("rules", self.n_rules)
            if plan.settings["selection_examples"] < len(self.eval_set):
                self.eval_set = ctx.stratified(self.eval_set, plan.settings["selection_examples"])
        s0 = yield from self.evaluate(init, step=0, purpose="baseline")
        self.trajectory = [_Entry(init, s0, 0)]
        if self.n_rules:
            try:
                yield from self.rule_start(init)
            except BudgetExceeded:
                yield ctx.step_done(0, self.best().cand, self.split)
                raise
        # the best so far, by the same rule as every later step (a run the cap ends in step 1 reports this one)
        yield ctx.step_done(0, self.best().cand, self.split, [self.trajectory[-1].cand])
        for t in range(1, self.T + 1):
            batch = batches[(t - 1) % spe]
            self.step_scored: list[tuple[float, Candidate]] = []
            try:
                yield from self.step(t, batch)
            except BudgetExceeded:
                # Ours: a step the budget cut still scored some candidates on the whole selection split; one that
                # beats the trajectory is the run's best (scored like every trajectory entry), not thrown away.
                top = max(self.step_scored, key=lambda sc: sc[0], default=None)
                if top is not None and top[0] > max(e.score for e in self.trajectory):
                    yield ctx.step_done(t, top[1], self.split, [top[1]])
                raise
            yield ctx.step_done(t, self.best().cand, self.split, [self.trajectory[-1].cand])

    def best(self) -> _Entry:
        """The trajectory's best by selection score (the paper's return); between equals the earliest, or with
        tie_break=macro_f1 the one with the higher macro-F1 on the selection set."""
        best = self.trajectory[0]
        for e in self.trajectory[1:]:
            if better(e.cand, best.cand, e.score, best.score, self.p.tie_break, self.split, self.eval_set,
                      self.ctx.task.labels):
                best = e
        return best

    # --- the run's size under a call cap (ours) --------------------------------------------------------------------
    def plan(self) -> Plan | None:
        """At 8 candidates a step, each scored on all of dev, a 300-call cap ended GPO inside its first step, and
        the cosine schedule (over epochs x steps per epoch) never decayed (measured). Keep min_steps: fewer
        candidates a step (down to 2), then a fixed random dev subset (down to min_eval_examples); then as many
        steps as the allowance pays for, which the step-size schedule spans."""
        ctx, p = self.ctx, self.p
        if ctx.call_allowance is None or not p.fit_budget:
            return None
        allowance, n, g, full_steps = ctx.call_allowance, len(self.eval_set), p.num_candidates, self.T
        steps, rules = min(full_steps, p.min_steps), self.n_rules
        if self.cost(n, g, full_steps) <= allowance:
            return None
        floor = min(p.min_eval_examples, n)
        # min_steps first, then the rule start (down to one rule per label before fewer), then the selection
        # subset, then candidates a step
        keep = min(2, rules)
        order = [*range(rules, keep - 1, -1), *range(keep - 1, -1, -1)]
        choice = next(((g_, m, r) for r in order for m in range(n, floor - 1, -1) for g_ in range(g, 1, -1)
                       if self.cost(m, g_, steps, r) <= allowance), None)
        if choice is None:  # not even min_steps fit: the steps are cut by the cap; the rule start (it moved the
            g_, m = min(g, 2), floor  # 1.5B) is sized to fit whole next to the baseline
            while rules > 0 and self.cost(m, g_, 0, rules) > allowance:
                rules -= 1
        else:
            g_, m, rules = choice
        while steps < full_steps and self.cost(m, g_, steps + 1, rules) <= allowance:
            steps += 1
        return Plan(step=0, allowance=allowance,
                    defaults={"steps": full_steps, "candidates_per_step": g, "selection_examples": n,
                              "rules": self.n_rules},
                    settings={"steps": steps, "candidates_per_step": g_, "selection_examples": m, "rules": rules},
                    estimated_calls=self.cost(m, g_, steps, rules),
                    note=f"{min(full_steps, p.min_steps)} steps at the paper's sizes need about "
                         f"{self.cost(n, g, min(full_steps, p.min_steps))} calls, the allowance is {allowance}: "
                         f"{g_} candidates a step scored on {m} "
                         f"{self.split} examples, the schedule over {steps} steps")

    def cost(self, m: int, g: int, steps: int, rules: int | None = None) -> int:
        """Worst-case calls: the baseline on m, each start rule's requests (retries included) and its m scores, then
        per step g generations (and as many again for each round of regeneration), g x m scores, a critique (with
        its minibatch) or a real-time merge when those are on, and one embeddings request for relevance retrieval."""
        p = self.p
        rules = self.n_rules if rules is None else rules
        per = g * (1 + (p.regenerate if p.temperature > 0 else 0)) + g * m + 1
        if p.gradient == "feedback":
            per += 1 + p.batch_size
        if p.momentum_update == "real-time":
            per += 2
        return m + rules * (1 + self.rule_retries() + m) + (m if self.combines(rules) else 0) + steps * per

    def combines(self, rules: int) -> bool:
        """With three labels or more the rule start also scores the rules joined, one per label: a rule for one of
        three labels says nothing about telling the other two apart (helpdesk_queues: each queue's remit alone kept
        the favourite answer for the others), a remit per label is what a classification instruction is."""
        return len(self.ctx.task.labels or []) >= 3 and rules >= 2

    def rule_start(self, init: Candidate) -> Generator[Event, None, None]:
        """Ours (optimizers.methods.rules): rules for each label in turn, each appended to the initial prompt and
        scored on the selection split, then (three labels or more) the best rule of each label joined. The trajectory is the initial prompt, then the rules by score, so the best
        start is the current prompt (the initial one unless a rule beats it) and the others are there for retrieval."""
        ctx, p = self.ctx, self.p
        labels = list(ctx.task.labels or [])
        instruction, demos = split_prompt(init.text)
        noun = input_noun(ctx.task.template, ctx.task.input_cols)
        scored: list[tuple[float, Candidate]] = []
        best_rule: dict[str, tuple[float, str]] = {}  # label -> its best-scoring rule, for the joined candidate
        try:
            for i in range(self.n_rules):
                target = labels[i % len(labels)]
                rule = None
                for attempt in range(1 + self.rule_retries()):  # an unreadable reply costs one request: ask again
                    msg = rule_request(instruction, ctx.train, labels, target, ctx.rng,
                                       contrast=p.rule_examples == "contrast")
                    comp = yield from ctx.ask("gpo.rule", [{"role": "user", "content": msg}], step=0,
                                              ref=f"r{i}.{attempt}", temperature=min(p.temperature, 0.7),
                                              max_tokens=p.optimizer_max_tokens)
                    rule, how = RULE.parse(comp.text, target=target, noun=noun,
                                           others=[x for x in labels if x != target])
                    if rule is not None:
                        break
                    yield CandidateRejected(step=0, text=(comp.text or "")[:2000], reason=how, parents=[init.id],
                                            origin="rule")
                if rule is None:
                    continue
                text = join_prompt(with_rule(instruction, rule, target, labels), demos)
                cand = yield from ctx.propose(text, step=0,
                                              parents=[init.id], origin="rule", max_words=p.max_prompt_words,
                                              info={"rule": rule, "target": target}, allow_existing=True)
                if cand is None or any(c.id == cand.id for _, c in scored):
                    continue
                s = yield from self.evaluate(cand, step=0)
                scored.append((s, cand))
                if s > best_rule.get(target, (-1.0, ""))[0]:
                    best_rule[target] = (s, rule)
            if self.combines(self.n_rules) and len(best_rule) >= 2:
                rules = {lab: best_rule[lab][1] for lab in labels if lab in best_rule}
                cand = yield from ctx.propose(join_prompt(f"{instruction.rstrip()} {' '.join(rules.values())}", demos),
                                              step=0, parents=[init.id], origin="rule", max_words=p.max_prompt_words,
                                              info={"rules": rules}, allow_existing=True)
                if cand is not None and all(c.id != cand.id for _, c in scored):
                    s = yield from self.evaluate(cand, step=0)
                    scored.append((s, cand))
        finally:  # a budget cut keeps what was scored
            first = self.trajectory[0]
            ranked = sorted(scored, key=lambda sc: sc[0])
            self.trajectory = [first, *(_Entry(c, s, 0) for s, c in ranked)]
            if ranked and ranked[-1][0] <= first.score:
                self.trajectory.append(first)  # no rule beats it: the initial prompt stays current
        if not scored:
            return
        yield Selection(step=0, method="gpo.rules",
                        estimates=[{"candidate_id": c.id, "mean": s, "n": c.n(self.split)}
                                   for s, c in [(self.scores[init.id], init), *scored]],
                        survivors=[self.trajectory[-1].cand.id])

    def rule_retries(self) -> int:
        return self.p.regenerate if self.p.temperature > 0 else 0

    def evaluate(self, cand: Candidate, *, step: int, purpose: str = "selection") -> Generator[Event, None, float]:
        """The candidate's score on the selection split; an already-scored prompt reuses its score."""
        if cand.id not in self.scores:
            res = yield from self.ctx.score(cand, self.eval_set, self.split, step=step, purpose=purpose)
            self.scores[cand.id] = res.score
        return self.scores[cand.id]

    def step(self, t: int, batch: Sequence[Example]) -> Generator[Event, None, None]:
        ctx, p = self.ctx, self.p
        cur = self.trajectory[-1]
        # (1) the gradient: a critique of the current prompt's wrong minibatch examples (optional)
        critique = None
        if p.gradient == "feedback":
            critique = yield from self.feedback(cur, batch, t)
            cur.critique = critique
        shown_critique = yield from self.critique_momentum(cur, critique, t)
        # (2) the update direction: past prompts with scores
        momentum = yield from self.para_momentum(cur, t)
        # (3) the step size
        budget = self.budget(t)
        meta = self.meta_prompt(cur, momentum, shown_critique, budget)
        # (4) generate, (5) measure the step against the budget and register the candidates; (ours) a rejected
        # sample is replaced by a new one, up to `regenerate` rounds: the 1.5B optimizer model had every sample of a
        # step rejected (echoes of the meta-prompt), which left the step nothing to score and the budget unspent
        pool: list[Candidate] = []
        measured: list[dict[str, Any]] = []
        seen: set[str] = set()
        i = 0
        for _ in range(1 + p.regenerate):
            texts: list[tuple[str | None, str, bool]] = []
            for _ in range(self.num_candidates - len(pool)):
                comp = yield from ctx.ask("gpo.generate", [{"role": "user", "content": meta}], step=t,
                                          ref=f"s{t}.{i}", temperature=p.temperature,
                                          max_tokens=p.optimizer_max_tokens)
                i += 1
                text, how = GENERATE.parse(comp.text, max_words=p.max_prompt_words)
                texts.append((text, how, comp.truncated))
            got, m = yield from self.admit(cur, texts, budget, t, seen)
            pool += got
            measured += m
            if len(pool) >= self.num_candidates or p.temperature == 0:  # at temperature 0 a new sample is the same
                break
        yield EditBudget(step=t, budget_words=budget, schedule=self.schedule_name(), measured=measured)
        # (6) score and select
        scored = []
        for cand in pool:
            s = yield from self.evaluate(cand, step=t)
            scored.append((s, cand))
            self.step_scored.append((s, cand))
        nxt = self.select(cur, scored, t)
        estimates = [{"candidate_id": c.id, "mean": s, "n": c.n(self.split), "chosen_before": self._chosen(c),
                      "reused": c.step < t} for s, c in scored]
        yield Selection(step=t, method="gpo", estimates=estimates, survivors=[nxt.cand.id])
        self.trajectory.append(nxt if nxt is not cur else _Entry(cur.cand, cur.score, t, cur.critique))

    # --- gradient and momentum ------------------------------------------------------------------------------------
    def feedback(self, cur: _Entry, batch: Sequence[Example], t: int) -> Generator[Event, None, str | None]:
        """Score the current prompt on the minibatch and ask why it got the wrong ones wrong (temperature 0)."""
        ctx = self.ctx
        if not batch:
            return None
        res = yield from ctx.score(cur.cand, batch, "train", step=t, purpose="minibatch")
        by_id = {ex.id: ex for ex in batch}
        wrong = [(by_id[pr.example_id], pr) for pr in res.predictions if not pr.correct]
        if not wrong:  # ours: nothing to criticise (the code still asks, with an empty list)
            return None
        errors = "\n\n".join(render(FEEDBACK_ERROR, input=input_text(ex), prediction=pred_text(pr), gold=ex.label)
                             for ex, pr in wrong)
        msg = FEEDBACK_PROMPT.render(prompt=cur.cand.text, errors=errors)
        comp = yield from ctx.ask("gpo.feedback", [{"role": "user", "content": msg}], step=t, ref=f"g{t}",
                                  temperature=self.p.aux_temperature, max_tokens=self.p.optimizer_max_tokens)
        critique = FEEDBACK_PROMPT.parse(comp.text)
        if not critique:
            return None
        yield Gradient(step=t, gradient_id=f"g{t}", parent_id=cur.cand.id, critique=critique,
                       errors=[{"id": ex.id, "input": input_text(ex), "gold": ex.label,
                                "prediction": pred_text(pr)} for ex, pr in wrong])
        return critique

    def critique_momentum(self, cur: _Entry, critique: str | None, t: int) -> Generator[Event, None, str | None]:
        """The critique text the meta-prompt shows: this step's, or (momentum 'feedback') past critiques too."""
        p = self.p
        if p.momentum_content != "feedback" or critique is None:
            return critique
        if p.momentum_update == "real-time":
            if self.rt_feedback is None:
                self.rt_feedback = critique
                return critique
            msg = REALTIME_FEEDBACK_PROMPT.render(previous=self.rt_feedback, current=critique)
            comp = yield from self.ctx.ask("gpo.momentum", [{"role": "user", "content": msg}], step=t,
                                           ref=f"m{t}", temperature=p.aux_temperature,
                                           max_tokens=p.optimizer_max_tokens)
            merged = REALTIME_FEEDBACK_PROMPT.parse(comp.text)
            if merged and not comp.truncated:
                self.rt_feedback = merged
            return self.rt_feedback
        entries = [e for e in self._unique() if e.critique]
        picked, rel, backend = self.retrieve(cur, entries, key=lambda e: e.critique or "")
        yield Retrieval(step=t, current_id=cur.cand.id, rule=p.momentum_selection, similarity=backend,
                        retrieved=[{"candidate_id": e.cand.id, "text": e.critique, "score": e.score,
                                    "relevance": r, "content": "feedback"} for e, r in zip(picked, rel, strict=True)])
        return "\n\n".join(e.critique or "" for e in picked)

    def para_momentum(self, cur: _Entry, t: int) -> Generator[Event, None, tuple[str, list[_Entry]]]:
        """('list' | 'realtime' | 'current', entries): what the meta-prompt shows as the update direction."""
        p = self.p
        if p.momentum_content != "para":
            return "current", [cur]
        if p.momentum_update == "real-time":
            entry = yield from self.realtime_para(cur, t)
            yield Retrieval(step=t, current_id=cur.cand.id, rule="real-time", similarity="none",
                            retrieved=[{"candidate_id": entry.cand.id, "text": entry.cand.text, "score": entry.score,
                                        "relevance": None}])
            return "realtime", [entry]
        picked, rel, backend = self.retrieve(cur, self._unique(), key=lambda e: e.cand.text)
        yield Retrieval(step=t, current_id=cur.cand.id, rule=p.momentum_selection, similarity=backend,
                        retrieved=[{"candidate_id": e.cand.id, "text": e.cand.text, "score": e.score,
                                    "relevance": r} for e, r in zip(picked, rel, strict=True)])
        return "list", picked

    def realtime_para(self, cur: _Entry, t: int) -> Generator[Event, None, _Entry]:
        """Real-time momentum: the first step shows the current prompt; afterwards the optimizer merges the previous
        momentum prompt and the current prompt into one (temperature 0), which is scored and shown. (The code scores
        the current prompt instead of the merged one, a bug not copied.)"""
        ctx, p = self.ctx, self.p
        prev = self.rt_para
        if prev is None:
            self.rt_para = cur
            return cur
        msg = REALTIME_PARA_PROMPT.render(score_note=SCORE_NOTE, previous=entry(prev.cand.text, prev.score),
                                          current=entry(cur.cand.text, cur.score))
        comp = yield from ctx.ask("gpo.momentum", [{"role": "user", "content": msg}], step=t, ref=f"m{t}",
                                  temperature=p.aux_temperature, max_tokens=p.optimizer_max_tokens)
        text, how = REALTIME_PARA_PROMPT.parse(comp.text, max_words=p.max_prompt_words)
        if text is None:
            yield CandidateRejected(step=t, text="", reason="no_tags", parents=[cur.cand.id], origin="momentum")
            return prev
        cand = yield from ctx.propose(text, step=t, parents=[cur.cand.id], origin="momentum", truncated=comp.truncated,
                                      max_words=p.max_prompt_words, info={"parsed": how, "previous": prev.cand.id},
                                      allow_existing=True)
        if cand is None:
            return prev
        s = yield from self.evaluate(cand, step=t, purpose="momentum")
        self.rt_para = _Entry(cand, s, t)
        return self.rt_para

    def _unique(self) -> list[_Entry]:
        """The trajectory with each prompt once (its latest entry), oldest first."""
        seen: dict[str, _Entry] = {}
        for e in self.trajectory:
            seen.pop(e.cand.id, None)
            seen[e.cand.id] = e
        return list(seen.values())

    def retrieve(self, cur: _Entry, entries: list[_Entry],
                 key: Any) -> tuple[list[_Entry], list[float | None], str]:
        """The k entries shown (current first for relevance and recency), their relevance, the similarity backend."""
        p, k = self.p, self.p.momentum_k
        if p.momentum_selection == "recency":
            picked = list(reversed(entries))[:k]  # newest first: the current one leads
            return picked, [None] * len(picked), "none"
        if p.momentum_selection == "importance":
            ranked = sorted(enumerate(entries), key=lambda ie: (-ie[1].score, -ie[0]))  # ties: the newer first
            picked = [e for _, e in ranked[:k]]
            return picked, [None] * len(picked), "none"
        others = [e for e in entries if e.cand.id != cur.cand.id]
        current = next((e for e in entries if e.cand.id == cur.cand.id), cur)
        if k <= 1 or not others:
            return [current], [1.0], self.similarity.backend
        sims, backend = self.similarity.similarities(key(current), [key(e) for e in others])
        order = sorted(range(len(others)), key=lambda i: (-sims[i], -i))[:k - 1]  # ties: the newer first
        return [current] + [others[i] for i in order], [1.0] + [sims[i] for i in order], backend

    # --- the meta-prompt ------------------------------------------------------------------------------------------
    def budget(self, t: int) -> int | None:
        p = self.p
        if p.learning_rate == "without":
            return None
        return step_size(t, self.T, decay=p.decay, initial=p.initial_step_size, final=p.final_step_size,
                         use_warmup=p.use_warmup, warmup_steps=p.warmup_steps)

    def schedule_name(self) -> str:
        p = self.p
        if p.learning_rate == "without":
            return "none"
        warm = f", warm-up {p.warmup_steps}" if p.use_warmup else ""
        return f"{p.decay} {p.initial_step_size}->{p.final_step_size} over {self.T} steps{warm}"

    def meta_prompt(self, cur: _Entry, momentum: tuple[str, list[_Entry]], critique: str | None,
                    budget: int | None) -> str:
        p = self.p
        kind, entries = momentum
        return generation_request(
            edit=p.update_method.startswith("edit"), momentum=kind, entries=[(e.cand.text, e.score) for e in entries],
            current=(cur.cand.text, cur.score), critique=critique if p.update_method in ("edit", "generate") else None,
            demos=[(self.ctx.task.render("<Prompt>", ex), ex.label) for ex in self.demos], budget=budget)

    # --- candidates -----------------------------------------------------------------------------------------------
    def admit(self, cur: _Entry, texts: list[tuple[str | None, str, bool]], budget: int | None,
              t: int, seen: set[str]) -> Generator[Event, None, tuple[list[Candidate], list[dict[str, Any]]]]:
        """Parse failures and repeats within the step (`seen`) are rejected; each remaining text is measured against
        the budget; over-budget ones are flagged or rejected; a prompt scored before comes back with its score."""
        ctx, p = self.ctx, self.p
        pool: list[Candidate] = []
        measured: list[dict[str, Any]] = []
        for text, how, truncated in texts:
            if text is None:
                yield CandidateRejected(step=t, text="", reason="no_tags", parents=[cur.cand.id], origin="generated")
                continue
            if text and text in seen:
                yield CandidateRejected(step=t, text=text[:2000], reason="duplicate", parents=[cur.cand.id],
                                        origin="generated")
                continue
            if not text:  # rejected as empty, nothing to measure
                yield from ctx.propose(text, step=t, parents=[cur.cand.id], origin="generated")
                continue
            seen.add(text)
            dist = word_distance(text, cur.cand.text)
            within = budget is None or dist <= budget
            m: dict[str, Any] = {"candidate_id": None, "text": text, "distance_words": dist,
                                 "within_budget": within, "accepted": False}
            measured.append(m)
            if not within and p.over_budget == "reject":
                yield CandidateRejected(step=t, text=text[:2000], reason="over_budget", parents=[cur.cand.id],
                                        origin="generated")
                continue
            info = {"parsed": how, "budget_words": budget, "distance_words": dist, "within_budget": within}
            cand = yield from ctx.propose(text, step=t, parents=[cur.cand.id], origin="generated", truncated=truncated,
                                          max_words=p.max_prompt_words, info=info, allow_existing=True)
            if cand is None:
                continue
            m["candidate_id"], m["accepted"] = cand.id, True
            m["reused"] = cand.id in self.scores
            pool.append(cand)
        return pool, measured

    def _chosen(self, cand: Candidate) -> bool:
        return any(e.cand.id == cand.id for e in self.trajectory)

    def select(self, cur: _Entry, scored: list[tuple[float, Candidate]], t: int) -> _Entry:
        """The best-scoring candidate not chosen at an earlier step (the top one if all were); with keep_if_worse,
        the current prompt stays unless that candidate beats it; with no candidate at all, it stays too."""
        if not scored:
            return cur
        ranked = sorted(scored, key=lambda sc: -sc[0])  # stable: generation order breaks ties
        fresh = [sc for sc in ranked if not self._chosen(sc[1])]
        s, cand = (fresh or ranked)[0]
        if self.p.keep_if_worse and s <= cur.score:
            return cur
        return _Entry(cand, s, t)
