"""OPRO: "Large Language Models as Optimizers" (Yang et al., ICLR 2024).

The optimizer model sees a trajectory of past instructions with their scores, sorted ascending so the best sit
last (next to where it writes), plus a few train problems showing where the instruction goes (<INS>), and is asked
for a new instruction that scores higher. No critique, no gradient: the scored history is the only signal.

Loop (official code google-deepmind/opro, `opt_utils.run_evolution`): step 0 scores the initial instruction (it may
be empty) on the whole train split. Each search step builds one meta-prompt (the top `max_num_instructions` of the
history at or above `old_instruction_score_threshold`, scores as integers 0-100; `num_few_shot_questions` train
exemplars), samples `num_generated_instructions` replies from it at `optimizer_temperature` (one request each, each
with its own seed), parses the first <INS>...</INS>, cleans it, skips what was seen before / is over 500 characters /
still contains "INS", and scores every new instruction on the whole train split. Every `eval_interval` steps the
current top instruction(s) are scored on dev for the chart (never used to pick, except to break ties).

Where we differ from the code (each also noted where it happens):
- The final prompt is the best by train score, ties broken by dev (the code pickles everything and names none).
- Every `eval_interval` steps we score the current top `eval_top_k` on dev (the code scores that step's new
  instructions on its eval split, which is empty for GSM8K and BBH); the count starts at step 0, the baseline.
- `num_search_steps` keeps the paper's 200: in practice the run's budget stops it first, at a step boundary.
- The instruction slot: scoring always uses the task template, so the default `before_Q` shows <INS> exactly where
  the template's {prompt} is. Q_begin / Q_end / A_begin move <INS> to the start / end of the input fields or to the
  end of the rendered template in the exemplars only; pick them when the template puts {prompt} there.
- `most_frequent_wrong` takes the train questions most often answered wrong so far (ties at random); the code ranks
  them by that count but then samples uniformly from every question ever answered wrong. Fewer than needed: the rest
  are random train questions.
- The initial instruction counts as already scored (the code leaves it out of its hash set and may re-score it).
- A reply that repeats <INS> instead of closing it ends the instruction at the second tag (small models do this);
  a reply cut by the token limit with no closing tag is rejected as truncated.
- The A_begin variant keeps the <INS> wording (the code switches to a "starting sentence" in <Start> tags).
- With a call cap (`fit_budget`): when `min_search_steps` steps on all of train cost more than the run's call
  allowance, instructions are scored on a fixed random train subset (down to `min_score_examples`), then fewer are
  sampled per step, so the trajectory still has steps (a Plan event says how); the paper's BBH runs also scored on a
  small training split.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Literal, NamedTuple

from pydantic import Field

from ..base import Candidate, Optimizer, Params, register
from ..data import Example, render_template
from ..events import CandidateRejected, Event, Plan, Selection
from ..task import Task
from . import parsing
from .text import Signature, polish, render

# --- meta-prompt (our wording, the official structure and placeholders) and the parser of its reply --------------

HEADER = ("Your task is to write the instruction <INS>. Here are instructions tried so far, each with its score. "
          "Scores go from 0 to 100.\n")
PAIR = "\ntext:\n{instruction}\nscore:\n{score}\n"
EXEMPLARS_INTRO = "Here are some example problems.\n"
EXEMPLAR = "\nProblem:\n{problem}\nGround truth answer:\n{answer}\n"
REQUEST = ("\n\nWrite a new instruction <INS> that differs from every instruction above and would score higher than "
           "all of them. Start it with <INS> and end it with </INS>. Make it concise, effective and general enough "
           "to apply to all the problems above.")

INS, INS_END = "<INS>", "</INS>"
_BRACKETS = re.compile(r"\[([^\[\]\n]+)\]")


def bucketize(score: float, buckets: int) -> int:
    """A 0-1 score shown as an integer 0-100 in `buckets` steps (100 buckets: round(score * 100), as the code)."""
    return int(round(round(score * buckets) * 100 / buckets))


def render_exemplar(task: Task, ex: Example, pos: str) -> str:
    """The exemplar as the task model would see it, with <INS> where the instruction goes.

    before_Q: the template's own {prompt} slot. Q_begin / Q_end: the slot is emptied and <INS> goes on its own line
    before the first / after the last input field. A_begin: after the rendered template (where the answer starts)."""
    if pos == "before_Q":
        return task.render(INS, ex).strip()
    marks = {c: f"\x00F{i}\x00" for i, c in enumerate(task.input_cols)}
    text = render_template(task.template, {**ex.fields, **marks}, "")
    found = [(text.find(m), m) for m in marks.values() if m in text]
    if pos == "A_begin" or not found:
        text = text.rstrip() + " " + INS
    elif pos == "Q_begin":
        at = min(found)[0]
        text = text[:at] + INS + "\n" + text[at:]
    else:  # Q_end
        at, m = max(found)
        at += len(m)
        text = text[:at] + "\n" + INS + text[at:]
    for c, m in marks.items():
        text = text.replace(m, str(ex.fields.get(c, "")))
    text = re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", text)
    return text.strip()


class Instruction(NamedTuple):
    text: str
    how: str  # tagged | brackets | untagged
    closed: bool


def parse_instruction(reply: str) -> Instruction:
    """The first <INS>...</INS> (a missing close tag runs to the end or to a repeated <INS>; a missing open tag
    starts at 0, as the code), else the first [...] (the text-bison format), else the cleaned reply. `closed` says
    whether the instruction ended at a tag (so a token limit did not cut it)."""
    text = reply or ""
    low = text.lower()
    start_tag, end_tag = INS.lower(), INS_END.lower()
    if start_tag in low:
        s = low.index(start_tag) + len(start_tag)
        ends = [i for i in (low.find(end_tag, s), low.find(start_tag, s)) if i >= 0]
        e = min(ends) if ends else len(text)
        return Instruction(parsing.clean(text[s:e]), "tagged", bool(ends))
    if end_tag in low:
        return Instruction(parsing.clean(text[:low.index(end_tag)]), "tagged", True)
    m = _BRACKETS.search(text)
    if m:
        return Instruction(parsing.clean(m.group(1)), "brackets", True)
    return Instruction(parsing.clean(text), "untagged", False)


GENERATE = Signature(HEADER + "{history}{exemplars}" + REQUEST, parse_instruction)


@register
class OPRO(Optimizer):
    presets = {"paper (GPT scorer)": {"old_instruction_score_threshold": 0.3},
               "paper (PaLM scorer)": {"old_instruction_score_threshold": 0.0}}
    name = "opro"
    title = "OPRO (optimization by prompting)"
    paper = "Yang et al., Large Language Models as Optimizers, ICLR 2024"
    allows_empty_prompt = True  # "" is one of the paper's starting points

    class Params(Params):
        num_search_steps: int = Field(200, ge=0, description="Search steps after step 0 (paper 200; the budget "
                                                             "usually stops the run first)")
        num_generated_instructions: int = Field(8, ge=1, description="Instructions sampled from each step's "
                                                                     "meta-prompt, one request each")
        optimizer_temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature of the "
                                                                              "optimizer model")
        max_num_instructions: int = Field(20, ge=1, description="Most past instructions shown in the meta-prompt "
                                                                "(the best ones, sorted ascending)")
        num_score_buckets: int = Field(100, ge=1, description="Scores are shown as integers 0-100 rounded to this "
                                                              "many buckets")
        old_instruction_score_threshold: float = Field(
            0.0, ge=0.0, le=1.0, description="Only instructions scoring at least this (0-1) are shown; 0 shows all "
                                             "(code: 0.0 for PaLM scorers, 0.3 for GPT scorers)")
        num_few_shot_questions: int = Field(3, ge=0, description="Train problems shown as exemplars with the <INS> "
                                                                 "placeholder")
        few_shot_selection: Literal["random", "most_frequent_wrong"] = Field(
            "random", description="Exemplars: random each step, or the train problems answered wrong most often "
                                  "so far")
        instruction_pos: Literal["before_Q", "Q_begin", "Q_end", "A_begin"] = Field(
            "before_Q", description="Where <INS> is shown in the exemplars: the template's slot (before_Q), start "
                                    "or end of the input, or start of the answer")
        eval_interval: int = Field(3, ge=1, description="Every this many steps the current top instruction is "
                                                        "scored on dev for the chart")
        eval_top_k: int = Field(1, ge=0, description="How many top instructions are scored on dev at each "
                                                     "eval_interval step (ours)")
        max_instruction_chars: int = Field(500, ge=1, description="Reject generated instructions longer than this "
                                                                  "many characters")
        fit_budget: bool = Field(True, description="With a call cap, scale the search down to what it pays for "
                                                   "(a Plan event says how); off: the paper's sizes until the cap "
                                                   "stops the run (ours)")
        min_search_steps: int = Field(3, ge=1, description="With a call cap: size the scoring set (then the samples "
                                                           "per step) so that at least this many steps fit (ours)")
        min_score_examples: int = Field(20, ge=1, description="With a call cap: the smallest train subset the "
                                                              "instructions are scored on (ours)")

    p: OPRO.Params

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> Iterator[Event]:
        ctx, p = self.ctx, self.p
        self.history: list[Candidate] = []  # every scored instruction, in the order scored
        self.seen: set[str] = set()  # every text met so far, kept or not (the code's md5 set)
        self.wrong: Counter[str] = Counter()  # train example id -> times answered wrong (most_frequent_wrong)
        self.scoring: list[Example] = list(ctx.train)
        samples = p.num_generated_instructions
        init = yield from self.propose_initial()
        plan = self.plan()
        if plan is not None:
            yield plan
            samples = plan.settings["samples_per_step"]
            self.scoring = ctx.stratified(ctx.train, plan.settings["score_examples"])
        yield from self.score_train(init, step=0, purpose="baseline")
        yield from self.eval_dev(0)
        yield ctx.step_done(0, init, "train", self.ranked()[:p.max_num_instructions])
        for step in range(1, p.num_search_steps + 1):
            shown = self.shown()
            exemplars = self.exemplars()
            msg = self.meta_prompt(shown, exemplars)
            new: list[Candidate] = []
            for i in range(samples):
                ref = f"s{step}.{i}"
                comp = yield from ctx.ask("opro.generate", [{"role": "user", "content": msg}], step=step, ref=ref,
                                          temperature=p.optimizer_temperature)
                text, how, closed = GENERATE.parse(comp.text)
                info = {"meta_prompt_rank": i, "ref": ref, "parsed": how, "exemplars": [ex.id for ex in exemplars],
                        "shown": len(shown)}
                cand = yield from self.admit(polish(text), step, shown, info, truncated=comp.truncated and not closed)
                if cand is not None:
                    new.append(cand)
            for cand in new:  # every new instruction on the whole train split (or the planned subset of it)
                yield from self.score_train(cand, step=step, purpose="selection")
            yield from self.eval_dev(step)
            ranked = self.ranked()
            top = ranked[:p.max_num_instructions]
            nxt = self.shown()
            yield Selection(step=step, method="top_k_history", estimates=self.estimates(top, new, nxt),
                            survivors=[c.id for c in reversed(nxt)])
            yield ctx.step_done(step, ranked[0], "train", top)

    # --- candidates -----------------------------------------------------------------------------------------------
    def propose_initial(self) -> Generator[Event, None, Candidate]:
        """The initial instruction; OPRO allows an empty one ("" is one of the paper's starting points)."""
        ctx = self.ctx
        text = (ctx.initial_prompt or "").strip()
        self.seen.add(text)
        cand = yield from ctx.propose(text, step=0, origin="initial", allow_empty=True,
                                      info={"empty": True} if not text else None)
        if cand is None:
            raise ValueError("the initial prompt was rejected")
        return cand

    def admit(self, text: str, step: int, shown: Sequence[Candidate], info: dict[str, Any],
              truncated: bool) -> Generator[Event, None, Candidate | None]:
        """The code's hygiene: skip a text seen before (kept or not), over max_instruction_chars, or containing
        'INS'; then the shared checks (empty, truncated, too many words)."""
        ctx, p = self.ctx, self.p
        parents = [c.id for c in reversed(shown)]  # the meta-prompt's history, best first
        reason = None
        if text and text in self.seen:
            reason = "duplicate"
        elif len(text) > p.max_instruction_chars:
            reason = "too_long"
        elif "INS" in text:
            reason = "contains_tag"
        if text:
            self.seen.add(text)
        if reason:
            yield CandidateRejected(step=step, text=text[:2000], reason=reason, parents=parents, origin="generated")
            return None
        return (yield from ctx.propose(text, step=step, parents=parents, origin="generated", truncated=truncated,
                                       max_words=p.max_prompt_words, info=info))

    # --- scoring --------------------------------------------------------------------------------------------------
    def score_train(self, cand: Candidate, *, step: int, purpose: str) -> Generator[Event, None, None]:
        res = yield from self.ctx.score(cand, self.scoring, "train", step=step, purpose=purpose)
        for pr in res.predictions:
            if not pr.correct:
                self.wrong[pr.example_id] += 1
        self.history.append(cand)

    # --- the search's size under a call cap (ours) -----------------------------------------------------------------
    def plan(self) -> Plan | None:
        """Scoring 8 instructions a step on all of train can spend a 300-call cap in one step (measured: one
        candidate scored). OPRO is a trajectory method, so keep min_search_steps: shrink the scoring set (a fixed
        random train subset, the paper's own choice of a small training split) down to min_score_examples, then the
        samples per step down to 2, then the steps."""
        ctx, p = self.ctx, self.p
        allowance = ctx.call_allowance
        if allowance is None or not p.fit_budget or p.num_search_steps == 0:
            return None
        n, g, steps = len(ctx.train), p.num_generated_instructions, min(p.min_search_steps, p.num_search_steps)
        if self.cost(n, g, steps) <= allowance:
            return None
        floor = min(p.min_score_examples, n)
        choice = None
        for s_ in range(steps, 0, -1):
            for g_ in range(g, 1, -1):
                fits = [m for m in range(floor, n + 1) if self.cost(m, g_, s_) <= allowance]
                if fits:
                    choice = (fits[-1], g_, s_)
                    break
            if choice:
                break
        m, g_, s_ = choice or (floor, min(g, 2), 1)
        return Plan(step=0, allowance=allowance,
                    defaults={"score_examples": n, "samples_per_step": g, "steps": steps},
                    settings={"score_examples": m, "samples_per_step": g_, "steps": s_},
                    estimated_calls=self.cost(m, g_, s_),
                    note=f"{steps} steps of {g} instructions scored on all {n} train examples need about "
                         f"{self.cost(n, g, steps)} calls, the allowance is {allowance}: {g_} a step on {m} train "
                         f"examples, at least {s_} step(s)")

    def cost(self, m: int, g: int, steps: int) -> int:
        """Worst-case calls of `steps` steps: the baseline on m examples, g samples a step each scored on m, and the
        dev evaluations at step 0 and every eval_interval steps (the initial's own request is free)."""
        p = self.p
        dev = p.eval_top_k * len(self.ctx.dev)
        return m + dev + sum(g + g * m + (dev if s % p.eval_interval == 0 else 0) for s in range(1, steps + 1))

    def eval_dev(self, step: int) -> Generator[Event, None, None]:
        """Every eval_interval steps: the current top eval_top_k on dev, once each (for the chart and ties)."""
        ctx, p = self.ctx, self.p
        if step % p.eval_interval or not ctx.dev:
            return
        for cand in self.ranked()[:p.eval_top_k]:
            if "dev" not in cand.last:
                yield from ctx.score(cand, ctx.dev, "dev", step=step, purpose="eval_interval")

    @staticmethod
    def train_score(c: Candidate) -> float:
        s = c.last.get("train", c.mean("train"))
        return s if s is not None else 0.0

    def ranked(self) -> list[Candidate]:
        """The history best first: by train score, ties by dev score (scored ones first), then the older."""
        order = {c.id: i for i, c in enumerate(self.history)}
        return sorted(self.history, key=lambda c: (-self.train_score(c), -c.last.get("dev", -1.0), order[c.id]))

    def shown(self) -> list[Candidate]:
        """The meta-prompt's history, ascending (best last): the top max_num_instructions, then the threshold."""
        p = self.p
        top = self.ranked()[:p.max_num_instructions]
        th = p.old_instruction_score_threshold
        return [c for c in reversed(top) if not th or self.train_score(c) >= th]

    # --- the meta-prompt ------------------------------------------------------------------------------------------
    def exemplars(self) -> list[Example]:
        """num_few_shot_questions train problems, in train order: random each step (seeded by the run), or the
        most often answered wrong so far (ties at random; random ones fill up when too few were ever wrong)."""
        ctx, p = self.ctx, self.p
        k = min(p.num_few_shot_questions, len(ctx.train))
        if k == 0:
            return []
        index = {ex.id: i for i, ex in enumerate(ctx.train)}
        if p.few_shot_selection == "random":
            picked = ctx.sample(range(len(ctx.train)), k)
        else:
            tie = {i: ctx.rng.random() for i in self.wrong}
            ids = sorted((i for i in self.wrong if i in index), key=lambda i: (-self.wrong[i], tie[i]))[:k]
            picked = [index[i] for i in ids]
            if len(picked) < k:
                rest = [i for i in range(len(ctx.train)) if i not in picked]
                picked += ctx.sample(rest, k - len(picked))
        return [ctx.train[i] for i in sorted(picked)]

    def meta_prompt(self, shown: Sequence[Candidate], exemplars: Sequence[Example]) -> str:
        p = self.p
        history = "".join(render(PAIR, instruction=c.text, score=bucketize(self.train_score(c), p.num_score_buckets))
                          for c in shown)
        shown_exemplars = "".join(
            render(EXEMPLAR, problem=render_exemplar(self.ctx.task, ex, p.instruction_pos), answer=ex.label)
            for ex in exemplars)
        return GENERATE.render(history=history,
                               exemplars="\n\n" + EXEMPLARS_INTRO + shown_exemplars if exemplars else "")

    def estimates(self, top: Sequence[Candidate], new: Sequence[Candidate],
                  nxt: Sequence[Candidate]) -> list[dict[str, Any]]:
        """The top of the history and this step's new instructions, with what the next meta-prompt shows."""
        shown_ids, new_ids = {c.id for c in nxt}, {c.id for c in new}
        out, done = [], set()
        for c in list(top) + list(new):
            if c.id in done:
                continue
            done.add(c.id)
            s = self.train_score(c)
            out.append({"candidate_id": c.id, "mean": s, "n": c.n("train"), "dev": c.last.get("dev"),
                        "score_shown": bucketize(s, self.p.num_score_buckets), "step": c.step,
                        "in_meta_prompt": c.id in shown_ids, "new": c.id in new_ids})
        return out
